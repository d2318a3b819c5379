"""``rlmtf train`` (one algorithm on logged data, also under torchrun) and ``rlmtf ptm`` (progressive
training: rounds of exploring around the newest policy and training)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rlmtf.cli.common import (
    EnvOpt,
    JsonOpt,
    KuaiRandDirOpt,
    KuaiRandModelsOpt,
    ObjectiveOpt,
    SimConfigOpt,
    console,
    errors,
    make_env,
    objective_settings,
    print_json,
    progress,
)


def train(
    algo: Annotated[str, typer.Option(help="esrl (Enhanced-State RL), integrated (IntegratedRL-MTF), ddpg, cql_sac, "
                                      "bcq (BatchRL-MTF), iql, or es (online CMA-ES in the simulator).")],
    data: Annotated[Path, typer.Option(help="Logged exploration data (Parquet dataset); for es, the data that "
                                       "fixes the input standardisation and the validation set.")],
    out: Annotated[Path, typer.Option(help="Run directory: config, metrics.jsonl, checkpoint/, policy/.")],
    steps: Annotated[int, typer.Option(help="Gradient steps (the paper: 300,000).")] = 2000,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUT from its checkpoint.")] = False,
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes of actor and critics, e.g. 256,256.")] = "256,256",
    critics: Annotated[int, typer.Option(help="m, the number of critics.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Requests per batch.")] = 256,
    embed_dim: Annotated[int | None, typer.Option(
        help="Per-feature-group embedding size (0: none, a plain trunk on the standardised state; default: "
             "the algorithm's, 32).")] = None,
    eval_every: Annotated[int, typer.Option(help="Steps between validation weighted GAUCs.")] = 500,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 1000,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    stream: Annotated[bool, typer.Option(help="Stream DATA in units of whole sessions (shards from `rlmtf data "
                                         "shard`, or files) with bounded memory instead of loading it.")] = False,
    buffer_shards: Annotated[int, typer.Option(help="--stream: units in memory at once (one more loads ahead).")] = 4,
    reuse: Annotated[float, typer.Option(help="--stream: draws per request before its unit is replaced.")] = 1.0,
    compile: Annotated[str, typer.Option(help="torch.compile the networks: none, default, reduce-overhead "
                                         "(CUDA graphs), max-autotune.")] = "none",
    objective: ObjectiveOpt = None,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a fusion policy from logged data (losses, Q, steps/s on the progress bar). For es a step is
    one CMA-ES generation evaluated in the simulator (``--sim-config``).

    Data-parallel on several processes, GPUs or nodes: ``torchrun --nproc_per_node N -m rlmtf train ...``
    (the global --batch-size is split over the processes; rank 0 writes OUT)."""
    import dataclasses

    import torch

    from rlmtf.algos import ALGORITHMS, algorithm_class
    from rlmtf.train.loop import TrainConfig
    from rlmtf.train.loop import train as run_train

    with errors():
        if algo not in ALGORITHMS:
            raise ValueError(f"--algo must be one of {', '.join(ALGORITHMS)}, got {algo!r}")
        try:
            hid = tuple(int(h) for h in hidden.split(",") if h.strip())
        except ValueError as e:
            raise ValueError(f"--hidden must be comma-separated integers, got {hidden!r}") from e
        if threads:
            torch.set_num_threads(threads)
        config_cls = algorithm_class(algo).config_cls
        wanted = {"hidden": hid, "ensemble_size": critics, "batch_size": batch_size}
        if embed_dim is not None:
            wanted["embed_dim"] = embed_dim
        names = {f.name for f in dataclasses.fields(config_cls)}
        obj = objective_settings(objective, names)
        algo_cfg = config_cls(**{k: v for k, v in wanted.items() if k in names}, **obj.algo)
        cfg = TrainConfig(steps=steps, seed=seed, device=device, eval_every=eval_every,
                          checkpoint_every=checkpoint_every, stream=stream, buffer_shards=buffer_shards,
                          reuse=reuse, compile=compile, **obj.train)
        main_rank = int(os.environ.get("RANK", "0")) == 0
        online = getattr(algorithm_class(algo), "online", False)
        sim = make_env(env, sim_config, kuairand_dir, kuairand_models) if online else None
        if not main_rank:  # the other torchrun processes train silently; rank 0 reports
            run_train(algo, data, out, cfg=cfg, algo_cfg=algo_cfg, resume=resume, sim=sim)
            return
        with progress() as bar:
            task = bar.add_task(f"train {algo}", total=steps, extra="")
            last = {"gauc": float("nan")}

            def on_step(step: int, m: dict) -> None:
                if not m:  # metrics come at logged steps only
                    bar.update(task, completed=step)
                    return
                if "eval/val_weighted_gauc" in m:
                    last["gauc"] = m["eval/val_weighted_gauc"]
                sps = m.get("charts/steps_per_s")
                shown = [f"{k.split('/', 1)[1]} {m[k]:.3g}" for k in m
                         if k.startswith(("losses/", "es/fitness")) or k == "q/mean"][:4]
                extra = " ".join(shown) + f" val GAUC {last['gauc']:.4f}" + (f" {sps:.1f} steps/s" if sps else "")
                bar.update(task, completed=step, extra=extra)

            trained = run_train(algo, data, out, cfg=cfg, algo_cfg=algo_cfg, resume=resume, on_step=on_step,
                                sim=sim)
    summary = {"out": str(out), "algo": algo, "steps": trained.step, "policy": str(Path(out) / "policy"),
               "val_weighted_gauc": last["gauc"]}
    if json_out:
        print_json(summary)
    else:
        console.print(f"trained {algo} for {trained.step} steps; policy in {summary['policy']}")


def ptm(
    algo: Annotated[str, typer.Option(help="esrl or integrated.")],
    out: Annotated[Path, typer.Option(help="Directory for every round's data, run and the PTM table.")],
    rounds: Annotated[int, typer.Option(help="Exploration + training rounds.")] = 5,
    sessions_per_round: Annotated[int, typer.Option(help="Exploration sessions per round.")] = 5000,
    steps_per_round: Annotated[int, typer.Option(help="Training steps per round.")] = 2000,
    test_sessions: Annotated[int, typer.Option(help="Baseline-logged test sessions (weighted GAUC).")] = 3000,
    users: Annotated[int, typer.Option(help="Users of each round's online A/B against the baseline.")] = 2000,
    days: Annotated[int, typer.Option(help="Days of each round's online A/B.")] = 2,
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes, e.g. 256,256.")] = "256,256",
    critics: Annotated[int, typer.Option(help="m, the number of critics.")] = 10,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    workers: Annotated[int, typer.Option(help="Simulation processes.")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    objective: ObjectiveOpt = None,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Progressive training: explore around the newest policy, train (warm start), evaluate; repeat."""
    import dataclasses

    from rlmtf.algos.esrl import ESRLConfig
    from rlmtf.pipelines.ptm import PTMConfig, run_ptm
    from rlmtf.train.loop import TrainConfig

    with errors():
        if algo not in ("esrl", "integrated"):
            raise ValueError(f"--algo must be esrl or integrated, got {algo!r}")
        hid = tuple(int(h) for h in hidden.split(","))
        obj = objective_settings(objective, {f.name for f in dataclasses.fields(ESRLConfig)})
        sim = make_env(env, sim_config, kuairand_dir, kuairand_models)
        cfg = PTMConfig(rounds=rounds, sessions_per_round=sessions_per_round, steps_per_round=steps_per_round,
                        test_sessions=test_sessions, online_users=users, online_days=days, seed=seed, workers=workers)
        rows = run_ptm(algo, sim, out, cfg,
                       dataclasses.replace(ESRLConfig(), hidden=hid, ensemble_size=critics, **obj.algo),
                       TrainConfig(steps=steps_per_round, device=device, eval_every=0, seed=seed, **obj.train),
                       log=console.print).rows
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"Progressive training of {algo} ({out / 'ptm.png'})")
    for col in ("round", "policy", "weighted GAUC", "UVC lift", "UDT lift"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["round"]), r["policy"], f"{r['weighted_gauc']:.4f}", f"{r['uvc_lift']:+.2%}",
                      f"{r['udt_lift']:+.2%}")
    Console().print(table)
