"""``rlmtf experiment`` (the paper's Tables 1-4: run, or render from the seeds that finished) and
``rlmtf demo`` (the experiment's smoke preset)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rlmtf.cli.common import (
    EnvOpt,
    FlagGroup,
    JsonOpt,
    KuaiRandDirOpt,
    KuaiRandModelsOpt,
    OverwriteOpt,
    SimConfigOpt,
    claim_dir,
    console,
    errors,
    make_env,
    print_json,
)

#: What ``experiment paper`` writes into OUT (``--overwrite`` deletes these and nothing else).
EXPERIMENT_ENTRIES = ("seed_*", "tables.md", "tables.csv", "tables.json", "report.html", "config.json",
                      "sim_config.toml", "action_distributions.png", "paper", "improved")

experiment_app = typer.Typer(help="Reproduce the paper's experiments.", no_args_is_help=True, cls=FlagGroup)


def _run_paper(out: Path, preset: str, seeds: int | None, first_seed: int, methods: str | None, workers: int,
               device: str, threads: int | None, env: str, sim_config: Path | None, json_out: bool,
               resume: bool = False, kuairand_dir: Path | None = None, kuairand_models: Path | None = None,
               overwrite: bool = False, resumable: bool = True, setting: str = "paper",
               ope_sessions: int | None = None) -> None:
    if not resume:
        claim_dir(out, "an experiment directory", overwrite, own=EXPERIMENT_ENTRIES,
                  also=" or --resume to reuse its finished seeds" if resumable else "")
    import time

    from rlmtf.pipelines.paper import PRESETS, run_paper
    from rlmtf.pipelines.settings import SETTINGS
    from rlmtf.train.loop import resolve_device

    with errors():
        if preset not in PRESETS:
            raise ValueError(f"unknown --preset {preset!r}; choose from {', '.join(PRESETS)}")
        chosen = PRESETS[preset]
        if ope_sessions is not None:
            if ope_sessions < 0:
                raise ValueError(f"--ope-sessions must be >= 0, got {ope_sessions}")
            import dataclasses

            chosen = dataclasses.replace(chosen, ope_sessions=ope_sessions)
        names = list(SETTINGS) if setting == "both" else [setting]
        if any(n not in SETTINGS for n in names):
            raise ValueError(f"unknown --setting {setting!r}; choose from {', '.join(SETTINGS)} or both")
        if threads:
            import torch

            torch.set_num_threads(threads)
        t0 = time.perf_counter()

        def log(msg: str) -> None:
            console.print(f"[dim]{time.perf_counter() - t0:7.1f}s[/] {msg}")

        all_tables = {}
        for name in names:
            sim = make_env(env, sim_config, kuairand_dir, kuairand_models, SETTINGS[name].action_space)
            def log_setting(s: str, n: str = name) -> None:
                log(f"{n} setting: {s}" if setting == "both" else s)

            all_tables[name] = run_paper(
                out / name if setting == "both" else out, preset=chosen, seeds=seeds, first_seed=first_seed, sim=sim,
                env=env, methods=tuple(m.strip() for m in methods.split(",")) if methods else None, workers=workers,
                device=resolve_device(device), resume=resume, log=log_setting, setting=name)
    if json_out:
        print_json(all_tables if setting == "both" else all_tables[setting])
        return
    from rlmtf.pipelines.paper import tables_markdown

    text = "".join((f"# The {name} setting\n\n" if setting == "both" else "") + tables_markdown(t) + "\n"
                   for name, t in all_tables.items())
    if setting == "both":
        (out / "tables.md").write_text(f"# The paper experiment in both settings\n\n{text}")
    sys.stdout.write(text)
    _preset_note(preset)


def _preset_note(preset: str) -> None:
    from rlmtf.pipelines.tables import preset_note

    note = preset_note(preset)
    if note:
        console.print(f"[bold yellow]note:[/] {note}", highlight=False, soft_wrap=True)


@experiment_app.command("paper")
def experiment_paper(
    out: Annotated[Path, typer.Option(help="Output directory (tables, report.html, one directory per seed).")] = Path(
        "runs/paper"),
    preset: Annotated[str, typer.Option(help="smoke (minutes, checks the pipeline), default (CPU-sized, under an "
                                        "hour on 2 cores) or full (paper-sized, GPU).")] = "default",
    seeds: Annotated[int | None, typer.Option(help="Seeds (default: the preset's).")] = None,
    first_seed: Annotated[int, typer.Option(help="The first seed; seeds run first_seed, first_seed+1, ...")] = 0,
    methods: Annotated[str | None, typer.Option(
        help="Comma-separated subset of fixed, es, ddpg, cql_sac, bcq, iql, integrated_once, integrated, esrl, "
             "esrl_residual, esrl_list (default: all).")] = None,
    workers: Annotated[int, typer.Option(help="Simulation processes.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 is fastest when other jobs share "
                                                "the cores).")] = None,
    setting: Annotated[str, typer.Option(help="paper (the papers' choices), improved (the relative action space, the "
                                         "user-day objective, per-day exploration, gated progressive training; "
                                         "docs/design.md#settings) or both (OUT/paper and OUT/improved).")] = "paper",
    env: EnvOpt = "sim",
    sim_config: SimConfigOpt = None,
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    ope_sessions: Annotated[int | None, typer.Option(help="Sessions of the exploration log every method is "
                                                     "evaluated on off-policy (Table 6; default: the preset's, "
                                                     "0: no off-policy evaluation).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Reuse the seeds that already finished in OUT.")] = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """The paper's Tables 1-4 (Table 5: every method against the hand-set baseline and the CMA-ES fixed
    fusion; Table 6: off-policy estimates against the A/B) on the simulator: every method, several seeds,
    tables + report.html."""
    _run_paper(out, preset, seeds, first_seed, methods, workers, device, threads, env, sim_config, json_out, resume,
               kuairand_dir, kuairand_models, overwrite, setting=setting, ope_sessions=ope_sessions)


@experiment_app.command("render")
def experiment_render(
    out: Annotated[Path, typer.Argument(help="An experiment directory (of `rlmtf experiment paper`).")],
    json_out: JsonOpt = False,
) -> None:
    """Rebuild tables and report.html from the seeds that finished (while a run goes on, or after a crash)."""
    from rlmtf.pipelines.paper import render, tables_markdown

    with errors():
        tables = render(out, log=console.print)
    if json_out:
        print_json(tables)
    else:
        sys.stdout.write(tables_markdown(tables))
        _preset_note(str(tables.get("preset", "")))


def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's data, runs, tables and report.")] = Path(
        "runs/demo"),
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    sim_config: SimConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """End to end in minutes: the paper experiment's smoke preset (simulate, train every method, evaluate
    offline and online, write tables and report.html). The smoke preset checks the pipeline: its networks
    and data are tiny and its numbers mean little; `rlmtf experiment paper --preset default` reproduces."""
    _run_paper(out, "smoke", None, seed, None, 1, "cpu", threads, "sim", sim_config, False, overwrite=overwrite,
               resumable=False)
