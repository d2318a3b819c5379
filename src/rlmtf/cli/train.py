"""``rlmtf train`` (one algorithm on logged data, also under torchrun) and ``rlmtf ptm`` (progressive
training: rounds of exploring around the newest policy and training)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rlmtf.cli.common import (
    ActionSpaceOpt,
    EnvOpt,
    JsonOpt,
    KuaiRandDirOpt,
    KuaiRandModelsOpt,
    ObjectiveOpt,
    OverwriteOpt,
    SimConfigOpt,
    check,
    claim_dir,
    console,
    errors,
    fail,
    given_flags,
    make_env,
    objective_settings,
    out_console,
    print_json,
    progress,
)
from rlmtf.cli.runs import RunArgs, bar_updater, check_train_args, parse_hidden, resumed_config, warn_exploration

RUN_ENTRIES = ("config.json", "metrics.jsonl", "checkpoint", "policy")
#: The flags that fix a run's configuration: on --resume they come from its config.json, and one given
#: with another value is refused. (--steps, --device, --eval-every, --checkpoint-every, --compile and
#: --threads may change.)
RUN_FLAGS = ("algo", "data", "hidden", "critics", "batch_size", "embed_dim", "objective", "seed", "stream",
             "buffer_shards", "reuse")


def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Run directory: config, metrics.jsonl, checkpoint/, policy/.")],
    algo: Annotated[str | None, typer.Option(
        help="esrl (Enhanced-State RL), integrated (IntegratedRL-MTF), ddpg, cql_sac, bcq (BatchRL-MTF), iql, or es "
             "(online CMA-ES in the simulator); any case. Required unless --resume.")] = None,
    data: Annotated[Path | None, typer.Option(help="Logged exploration data (Parquet dataset); for es, the data "
                                              "that fixes the input standardisation and the validation set. "
                                              "Required unless --resume.")] = None,
    steps: Annotated[int, typer.Option(help="Gradient steps in all (the paper: 300,000); --resume: the run's "
                                       "own unless given.")] = 2000,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its checkpoint, with the "
                                         "configuration in its config.json (a flag that contradicts it is "
                                         "refused).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run in OUT (refused without it).")]
    = False,
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes of actor and critics, e.g. 256,256.")] = "256,256",
    critics: Annotated[int, typer.Option(help="m, the number of critics.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Requests per batch.")] = 256,
    embed_dim: Annotated[int | None, typer.Option(
        help="Per-feature-group embedding size (0: none, a plain trunk on the standardised state; default: "
             "the algorithm's, 32).")] = None,
    eval_every: Annotated[int, typer.Option(help="Steps between validation weighted GAUCs (0: at the end).")] = 500,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 1000,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Stream DATA in units of whole sessions (shards from "
                                         "`rlmtf data shard`, or files) with bounded memory instead of loading "
                                         "it.")] = False,
    buffer_shards: Annotated[int, typer.Option(help="--stream: units in memory at once (one more loads ahead).")] = 4,
    reuse: Annotated[float, typer.Option(help="--stream: draws per request before its unit is replaced.")] = 1.0,
    compile: Annotated[str, typer.Option(help="torch.compile the networks: none, default, reduce-overhead "
                                         "(CUDA graphs), max-autotune.")] = "none",
    objective: ObjectiveOpt = None,
    algo_config: Annotated[Path | None, typer.Option(
        help="TOML/YAML/JSON file of the algorithm's hyper-parameters (fields of its config, e.g. actor_lr = "
             "1e-3; an unknown one is refused by name), applied on top of the defaults and the flags above; "
             "a field that a given flag also sets is refused.")] = None,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a fusion policy from logged data (losses, Q, validation GAUC and steps/s on the progress bar).
    For es a step is one CMA-ES generation evaluated in the simulator (``--sim-config``). Ctrl-C saves a
    checkpoint that --resume continues from.

    Data-parallel on several processes, GPUs or nodes: ``torchrun --nproc_per_node N -m rlmtf train ...``
    (the global --batch-size is split over the processes; rank 0 writes OUT)."""
    given = given_flags(ctx)
    args = RunArgs(out=out, algo=algo.lower() if algo else None, data=data, steps=steps, seed=seed, hidden=hidden,
                   critics=critics, batch_size=batch_size, embed_dim=embed_dim, objective=objective, stream=stream,
                   buffer_shards=buffer_shards, reuse=reuse)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if resume and algo_config is not None:
        fail("--algo-config with --resume: the run's hyper-parameters are the ones in its config.json")
    saved = resumed_config(args, given) if resume else None
    check_train_args(args, device, eval_every, checkpoint_every, compile)
    if not resume and main_rank:
        claim_dir(out, "a run directory", overwrite, own=RUN_ENTRIES, also=" or --resume to continue it")
    import dataclasses

    import torch

    from rlmtf.algos import algorithm_class
    from rlmtf.train.loop import TrainConfig, TrainingInterrupted
    from rlmtf.train.loop import train as run_train

    with errors():
        assert args.algo is not None and args.data is not None
        if threads:
            torch.set_num_threads(threads)
        config_cls = algorithm_class(args.algo).config_cls
        names = {f.name for f in dataclasses.fields(config_cls)}
        if saved is not None:
            from rlmtf.core.config_io import config_from_json

            algo_cfg = config_from_json(config_cls, saved["algo_config"])
            train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
            cfg = TrainConfig(**{k: v for k, v in saved["train_config"].items() if k in train_fields})
            cfg = dataclasses.replace(cfg, steps=args.steps, device=device, compile=compile,
                                      **({"eval_every": eval_every} if "eval_every" in given else {}),
                                      **({"checkpoint_every": checkpoint_every} if "checkpoint_every" in given
                                         else {}))
        else:
            wanted = {"hidden": args.hidden_sizes, "ensemble_size": critics, "batch_size": batch_size}
            if embed_dim is not None:
                wanted["embed_dim"] = embed_dim
            obj = objective_settings(objective, names)
            fields = {**{k: v for k, v in wanted.items() if k in names}, **obj.algo}
            if algo_config is not None:
                fields = with_algo_config(fields, algo_config, config_cls, given)
            algo_cfg = config_cls(**fields)
            cfg = TrainConfig(steps=args.steps, seed=seed, device=device, eval_every=eval_every,
                              checkpoint_every=checkpoint_every, stream=stream, buffer_shards=buffer_shards,
                              reuse=reuse, compile=compile, **obj.train)
            if main_rank:
                warn_exploration(args.algo, args.data)
        online = getattr(algorithm_class(args.algo), "online", False)
        sim = make_env(env, sim_config, kuairand_dir, kuairand_models) if online else None
        if not main_rank:  # the other torchrun processes train silently; rank 0 reports
            run_train(args.algo, args.data, out, cfg=cfg, algo_cfg=algo_cfg, resume=resume, sim=sim)
            return
        last: dict[str, float] = {}
        try:
            with progress() as bar:
                task = bar.add_task(f"train {args.algo}", total=args.steps, extra="")
                trained = run_train(args.algo, args.data, out, cfg=cfg, algo_cfg=algo_cfg, resume=resume,
                                    on_step=bar_updater(bar, task, last), sim=sim)
        except TrainingInterrupted as e:
            console.print(f"interrupted at step {e.step}: checkpoint saved in {e.checkpoint}; continue with "
                          f"`rlmtf train --out {out} --resume`", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            console.print("interrupted before training started: nothing saved", highlight=False)
            raise typer.Exit(130) from None
    gauc = last.get("gauc")
    summary = {"out": str(out), "algo": args.algo, "steps": trained.step, "policy": str(Path(out) / "policy"),
               "val_weighted_gauc": gauc}
    if json_out:
        print_json(summary)
    else:
        shown = f"validation weighted GAUC {gauc:.4f}" if gauc is not None else "no validation GAUC"
        console.print(f"trained {args.algo} for {trained.step} steps ({shown}); policy in {summary['policy']}",
                      highlight=False, soft_wrap=True)


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
    gate: Annotated[bool, typer.Option("--gate", help="Accept a round's policy only if it passes an offline test "
                                       "and an A/B against the incumbent on held-out users "
                                       "(docs/design.md#progressive-training); else keep the incumbent and shrink "
                                       "the box.")] = False,
    gate_metric: Annotated[str, typer.Option(help="--gate: the A/B's metric (uvc, udt, sessions, reward).")] = "uvc",
    gate_users: Annotated[int, typer.Option(help="--gate: users of the A/B, the top ids, never explored.")] = 2000,
    gate_days: Annotated[int, typer.Option(help="--gate: days of the A/B (with --gate-mde: of its pilot).")] = 1,
    gate_mde: Annotated[float, typer.Option(help="--gate: the relative lift the A/B should detect (e.g. 0.01): "
                                            "the A/B's days are sized to its pilot's variance "
                                            "(docs/design.md#sizing-the-gates-ab); 0: --gate-days as they are.")] = 0.0,
    gate_power: Annotated[float, typer.Option(help="--gate-mde: the chance a candidate better by it passes.")] = 0.8,
    gate_max_days: Annotated[int, typer.Option(help="--gate-mde: the most days the sized A/B runs.")] = 8,
    gate_offline: Annotated[str, typer.Option(help="--gate: the offline test before the A/B on held-out user-days: "
                                              "dm (the first-order direct method; FQE for an item-level "
                                              "candidate), fqe (fitted Q evaluation), critic (the candidate's own "
                                              "critics, optimistic) or none.")] = "dm",
    gate_fqe_steps: Annotated[int, typer.Option(help="--gate-offline fqe: gradient steps per FQE fit.")] = 4000,
    gate_screen: Annotated[str, typer.Option(help="--gate: the offline test rejects when its 95% interval lies "
                                             "below 0 (bound) or its point estimate is <= 0 (sign).")] = "bound",
    steps_rule: Annotated[str, typer.Option(help="fixed (every round --steps-per-round) or horizon (a round "
                                            "trained from scratch at least the steps its episode needs, "
                                            "docs/design.md#how-many-steps).")] = "fixed",
    box: Annotated[float, typer.Option(help="Half-width of the first round's exploration box.")] = 0.15,
    box_shrink: Annotated[float, typer.Option(help="--gate: box width factor after a rejected round.")] = 0.5,
    train_on: Annotated[str, typer.Option(help="round (each round's logs, the paper) or all (every round's).")] = (
        "round"),
    per: Annotated[str | None, typer.Option(help="Exploration noise per request, item or day (default: item for "
                                            "esrl, request for integrated).")] = None,
    edge: Annotated[str, typer.Option(help="clip draws at the action space's edge (the paper) or shift the box "
                                      "inside.")] = "clip",
    item_keep: Annotated[float, typer.Option(help="Per-item exploration: cut its noise each round to keep this share "
                                             "of the behaviour policy's top l shown (e.g. 0.8; 0: the box as "
                                             "given; docs/design.md#what-exploring-costs-the-list).")] = 0.0,
    objective: ObjectiveOpt = None,
    action_space: ActionSpaceOpt = None,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Progressive training: explore around the newest policy, train (warm start), evaluate; repeat."""
    algo = algo.lower()
    check(algo in ("esrl", "integrated"), f"--algo must be esrl or integrated, got {algo!r}")
    hid = parse_hidden(hidden)
    for flag, value, low in (("--rounds", rounds, 1), ("--sessions-per-round", sessions_per_round, 1),
                             ("--steps-per-round", steps_per_round, 0), ("--test-sessions", test_sessions, 1),
                             ("--users", users, 1), ("--days", days, 1), ("--critics", critics, 1),
                             ("--workers", workers, 1)):
        check(value >= low, f"{flag} must be >= {low}, got {value}")
    claim_dir(out, "a progressive-training directory", overwrite,
              own=("test", "round_*", "ptm.json", "ptm.csv", "ptm.png"))
    import dataclasses

    from rlmtf.algos.esrl import ESRLConfig
    from rlmtf.pipelines.ptm import PTMConfig, run_ptm
    from rlmtf.train.loop import TrainConfig

    with errors():
        obj = objective_settings(objective, {f.name for f in dataclasses.fields(ESRLConfig)})
        sim = make_env(env, sim_config, kuairand_dir, kuairand_models, action_space)
        cfg = PTMConfig(rounds=rounds, sessions_per_round=sessions_per_round, steps_per_round=steps_per_round,
                        test_sessions=test_sessions, online_users=users, online_days=days, seed=seed, workers=workers,
                        gate=gate, gate_metric=gate_metric, gate_users=gate_users, gate_days=gate_days,
                        gate_mde=gate_mde, gate_power=gate_power, gate_max_days=gate_max_days, box=box,
                        box_shrink=box_shrink, train_on=train_on, per=per, edge=edge, item_keep=item_keep,
                        gate_offline=gate_offline, gate_fqe_steps=gate_fqe_steps, gate_screen=gate_screen,
                        steps_rule=steps_rule)
        with progress() as bar:
            # run_ptm reports each round's exploration (sessions) and training (steps); A/B tests are logged lines
            task = bar.add_task("ptm: exploring", total=rounds * sessions_per_round, extra="")
            steps_task = bar.add_task("ptm: training", total=rounds * steps_per_round, extra="")

            def on_step(k: int, step: int, m: dict) -> None:
                bar.update(steps_task, completed=(k - 1) * steps_per_round + step, extra=f"round {k}")

            def log(msg: str) -> None:
                bar.console.print(msg, highlight=False, soft_wrap=True)
                bar.update(task, extra=msg.split(":", 1)[0])

            rows = run_ptm(algo, sim, out, cfg,
                           dataclasses.replace(ESRLConfig(), hidden=hid, ensemble_size=critics, **obj.algo),
                           TrainConfig(steps=steps_per_round, device=device, eval_every=0, seed=seed, **obj.train),
                           log=log, progress=lambda n, _rows: bar.update(task, advance=n), on_step=on_step).rows
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"Progressive training of {algo} ({out / 'ptm.png'})")
    for col in ("round", "policy", "weighted GAUC", "UVC lift", "UDT lift"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["round"]), r["policy"], f"{r['weighted_gauc']:.4f}", f"{r['uvc_lift']:+.2%}",
                      f"{r['udt_lift']:+.2%}")
    out_console().print(table)


#: train's flags that set a field of the algorithm config
_FLAG_FIELDS = {"hidden": "hidden", "critics": "ensemble_size", "batch_size": "batch_size", "embed_dim": "embed_dim"}


def with_algo_config(fields: dict, path: Path, config_cls: type, given: set[str]) -> dict:
    """``fields`` (from the flags) updated by the algorithm-config file at ``path``; every error names the
    file and the key (unknown fields, wrong types, values out of range, a field a given flag also sets)."""
    import dataclasses

    from rlmtf.core.config_io import ConfigError, build, check_values, read_config_file

    data = read_config_file(path, "algorithm config")
    twice = sorted(f"--{flag.replace('_', '-')} and {key}" for flag, key in _FLAG_FIELDS.items()
                   if flag in given and key in data)
    if twice:
        raise ConfigError(f"{path}: set twice: {', '.join(twice)}")
    try:
        cfg = build(config_cls, {**fields, **data})
        problems = check_values(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}")
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}

