"""What every command shares: the stderr console, the common options, error handling (a library
validation error becomes a one-line message and exit code 2), the progress display and the
environment of ``--env``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from typer.core import TyperGroup

__all__ = ["ALGORITHM_NAMES", "ActionSpaceOpt", "EnvOpt", "FlagGroup", "JsonOpt", "KuaiRandDirOpt", "KuaiRandModelsOpt",
           "ObjectiveOpt", "OverwriteOpt", "SimConfigOpt", "check", "claim_dir", "console", "errors", "fail",
           "given_flags", "labelled_policies", "load_sim", "make_env", "objective_settings", "out_console",
           "print_json", "progress", "warn"]


def _width(stream) -> int | None:
    """Rich's width for ``stream``: the terminal's; outside a terminal (a pipe, a log file) wide enough not
    to cut lines at rich's default of 80 columns, unless $COLUMNS says otherwise."""
    isatty = getattr(stream, "isatty", None)
    if (isatty is not None and isatty()) or os.environ.get("COLUMNS"):
        return None
    return 200


#: Messages, tables' titles and progress go to stderr; stdout carries results (``--json``).
console = Console(stderr=True, width=_width(sys.stderr))

#: ``--algo`` names of ``rlmtf train`` (the keys of ``rlmtf.algos.ALGORITHMS``; a test keeps them equal),
#: here so that a wrong name is refused before the library is imported.
ALGORITHM_NAMES = ("esrl", "integrated", "es", "ddpg", "cql_sac", "bcq", "iql")


def out_console() -> Console:
    """The stdout console that prints result tables."""
    return Console(width=_width(sys.stdout))


class FlagGroup(TyperGroup):
    """A command group whose flags (options that take no value: ``--json``, ``--help``) show no ``<bool>``
    value in the help, which would suggest ``--json true``."""

    def get_params(self, ctx):
        return _bare_flags(super().get_params(ctx))

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not isinstance(cmd, FlagGroup):
            _bare_flags(cmd.get_params(ctx))
        return cmd


def _bare_flags(params: list) -> list:
    for p in params:
        if getattr(p, "is_flag", False) and not getattr(p, "count", False):
            p.metavar = ""
    return params

SimConfigOpt = Annotated[Path | None, typer.Option("--sim-config", help="YAML/TOML/JSON file overriding simulator "
                                                                          "parameters (see `rlmtf sim config`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace what OUT holds (refused without it).")]
ActionSpaceOpt = Annotated[str | None, typer.Option(
    "--action-space", help="Fusion parameterisation the actions are in: paper (10 numbers, the papers') or relative "
    "(the first power fixed at 1, biases on a log scale: no direction that changes nothing, no bias floor next to "
    "the hand-set fusion; docs/design.md#the-action-space). Default: the config's (paper). Trained policies carry "
    "theirs, so evaluation needs no flag.")]
EnvOpt = Annotated[str, typer.Option("--env", help="Environment: sim (the embedded simulator) or kuairand (built "
                                                  "from the KuaiRand-Pure log; models fitted on first use).")]
KuaiRandDirOpt = Annotated[Path | None, typer.Option("--kuairand-dir", help="KuaiRand-Pure directory (default: "
                                                     "$RLMTF_KUAIRAND_DIR or shared/data/kuairand_pure).")]
KuaiRandModelsOpt = Annotated[Path | None, typer.Option("--kuairand-models", help="Fitted KuaiRand models (default: "
                                                        "$RLMTF_KUAIRAND_MODELS or a cache; fitted if missing).")]


ObjectiveOpt = Annotated[str | None, typer.Option(
    "--objective", help="What the critics estimate (docs/design.md#the-objective): session[:gamma=G] (the paper's, "
                        "gamma 0.9) or day[:gamma=G,session_gamma=S,return_bonus=B]; `rlmtf analyze objective` "
                        "compares candidates. Default: the algorithm's session objective.")]


@dataclass
class ObjectiveSettings:
    """An ``--objective`` split into the algorithm config's fields and the training config's."""

    algo: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


def objective_settings(text: str | None, algo_fields: set[str]) -> ObjectiveSettings:
    """The config fields an ``--objective`` sets (none when it is not given)."""
    if text is None:
        return ObjectiveSettings()
    from rlmtf.core.objective import Objective

    obj = Objective.parse(text)
    if "gamma" not in algo_fields:
        raise ValueError("--objective: this algorithm has no critic to give an objective (it optimises its own "
                         "fitness)")
    return ObjectiveSettings(algo={"gamma": obj.gamma, "session_gamma": obj.session_gamma},
                             train={"episode": obj.episode, "return_bonus": obj.return_bonus})


def fail(msg: str) -> NoReturn:
    """Print ``msg`` as an error and exit with code 2."""
    console.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def given_flags(ctx: typer.Context) -> set[str]:
    """The parameters given on the command line (or by environment variable), not left at their defaults."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {name for name, src in sources.items() if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")}


def check(ok: bool, msg: str) -> None:
    """Fail with ``msg`` unless ``ok``: the argument checks every command makes before importing the
    library (seconds) or drawing a progress bar."""
    if not ok:
        fail(msg)


def warn(msg: str) -> None:
    """Print ``msg`` as a warning (the command goes on)."""
    console.print(f"[bold yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)


def claim_dir(path: Path, what: str, overwrite: bool, own: tuple[str, ...] | None = None, also: str = "") -> None:
    """The one overwrite rule of every command that writes a directory: a non-empty ``path`` is refused
    unless ``--overwrite`` is given (``also``: another way out, e.g. ``--resume``). With ``--overwrite``,
    ``own`` names the entries the command writes (glob patterns): they are deleted, and a directory holding
    anything else is refused (a mistyped path must not cost a directory); ``own=None``: the library replaces
    it itself."""
    import shutil
    from fnmatch import fnmatch

    if not path.exists():
        return
    if not path.is_dir():
        fail(f"{path} exists and is not a directory")
    entries = [e for e in path.iterdir() if not e.name.startswith(".")]
    if not entries:
        return
    if not overwrite:
        fail(f"{path} already exists and is not empty ({what}); pass --overwrite to replace it{also}")
    if own is None:
        return
    foreign = sorted(e.name for e in entries if not any(fnmatch(e.name, pat) for pat in own))
    if foreign:
        fail(f"{path} holds {foreign[:3]}, which is not part of {what}; not deleting it")
    for e in entries:
        shutil.rmtree(e) if e.is_dir() else e.unlink()


def labelled_policies(specs: list[str], action_space, seed: int) -> list:
    """The policies of repeated ``--policy`` options, each labelled: ``NAME=PATH`` names it NAME; otherwise
    it keeps its own name (``baseline``, a trained policy's kind), unless two would share one: then each of
    those is labelled by the path as given (e.g. its path)."""
    from rlmtf.algos.registry import load_policy

    parsed = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if sep and name and rest and not Path(spec).exists() and "/" not in name:
            parsed.append((name, rest))
        else:
            parsed.append((None, spec))
    pols = [load_policy(spec, action_space, seed=seed) for _, spec in parsed]
    own = [name or p.name for (name, _), p in zip(parsed, pols, strict=True)]
    labels = [spec if name is None and own.count(own[i]) > 1 else own[i]
              for i, (name, spec) in enumerate(parsed)]
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise ValueError(f"--policy: two policies are labelled {', '.join(map(repr, dup))}; name them with "
                         "NAME=PATH")
    for p, label in zip(pols, labels, strict=True):
        p.name = label
    return pols


@contextmanager
def errors() -> Iterator[None]:
    """Turn the library's validation errors into a one-line message and exit code 2."""
    from rlmtf.algos.registry import PolicyLoadError
    from rlmtf.core.config_io import ConfigError
    from rlmtf.data.io import LogDataError

    try:
        yield
    except (LogDataError, PolicyLoadError, ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        fail(str(e))


class _Count(ProgressColumn):
    """``done/total``; ``done`` alone when the total is unknown (no ``N/?``) or was only a target that
    the work passed (``--sessions``: admitted users finish their day)."""

    def render(self, task) -> Text:
        done = int(task.completed)
        if task.total is None or done > task.total:
            return Text(f"{done:,}", style="progress.download")
        return Text(f"{done:,}/{int(task.total):,}", style="progress.download")


def progress() -> Progress:
    """A rich progress display on stderr (tasks add their own totals and descriptions)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), _Count(),
                    TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def load_sim(sim_config: Path | None):
    """The embedded simulator, configured by ``--sim-config``."""
    return make_env("sim", sim_config)


def make_env(env: str = "sim", sim_config: Path | None = None, kuairand_dir: Path | None = None,
             kuairand_models: Path | None = None, action_space: str | None = None):
    """The environment of ``--env``: the embedded simulator, or the KuaiRand-Pure environment; ``action_space``
    overrides the config's parameterisation (``--action-space``)."""
    from rlmtf.envs.factory import make_env as factory_make_env

    return factory_make_env(env, sim_config, kuairand_dir, kuairand_models, log=console.print,
                            action_space=action_space)


def print_json(obj) -> None:
    """``obj`` as indented JSON on stdout (numpy numbers as floats)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=float) + "\n")
