"""What every command shares: the stderr console, the common options, error handling (a library
validation error becomes a one-line message and exit code 2), the progress display and the
environment of ``--env``."""

from __future__ import annotations

import json
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
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["EnvOpt", "JsonOpt", "KuaiRandDirOpt", "KuaiRandModelsOpt", "ObjectiveOpt", "SimConfigOpt", "console",
           "errors", "fail", "load_sim", "make_env", "objective_settings", "print_json", "progress"]

#: Messages, tables' titles and progress go to stderr; stdout carries results (``--json``).
console = Console(stderr=True)

SimConfigOpt = Annotated[Path | None, typer.Option("--sim-config", help="YAML/TOML/JSON file overriding simulator "
                                                                          "parameters (see `rlmtf sim config`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
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
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


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


def progress() -> Progress:
    """A rich progress display on stderr (tasks add their own totals and descriptions)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def load_sim(sim_config: Path | None):
    """The embedded simulator, configured by ``--sim-config``."""
    return make_env("sim", sim_config)


def make_env(env: str = "sim", sim_config: Path | None = None, kuairand_dir: Path | None = None,
             kuairand_models: Path | None = None):
    """The environment of ``--env``: the embedded simulator, or the KuaiRand-Pure environment."""
    from rlmtf.envs.factory import make_env as factory_make_env

    return factory_make_env(env, sim_config, kuairand_dir, kuairand_models, log=console.print)


def print_json(obj) -> None:
    """``obj`` as indented JSON on stdout (numpy numbers as floats)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=float) + "\n")
