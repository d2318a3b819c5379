"""``rlmtf serve`` (the HTTP ranking service), ``rlmtf loop`` (the simulator's users against a running
service) and ``rlmtf logs`` (the serving log as training data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlmtf.cli.common import (
    FlagGroup,
    JsonOpt,
    KuaiRandDirOpt,
    KuaiRandModelsOpt,
    SimConfigOpt,
    claim_dir,
    console,
    errors,
    fail,
    load_sim,
    make_env,
    print_json,
    progress,
)

logs_app = typer.Typer(help="The serving log.", no_args_is_help=True, cls=FlagGroup)

ServeEnvOpt = Annotated[str | None, typer.Option(
    "--env", help="Features to serve a policy that records none (the built-ins, a fixed-fusion JSON file): sim "
                  "(the simulator's, with --sim-config; the default) or kuairand (the KuaiRand-Pure "
                  "environment's). A trained policy is served with the features its policy.json records; "
                  "--env or --sim-config given with one must agree with them.")]


def _env_features(env: str | None, sim_config: Path | None, kuairand_dir: Path | None,
                  kuairand_models: Path | None):
    """The feature spec of ``--env`` (the simulator's without building its world)."""
    if env in (None, "sim"):
        from rlmtf.envs.sim.config import load_sim_config
        from rlmtf.envs.sim.world import feature_spec

        return feature_spec(load_sim_config(sim_config))
    return make_env(env, sim_config, kuairand_dir, kuairand_models).spec


def serve(
    log_dir: Annotated[Path, typer.Option(help="Directory of the durable request/feedback log (SQLite, WAL).")],
    policy: Annotated[str, typer.Option(help="baseline (or another built-in), a fixed-fusion JSON file, a saved "
                                             "policy directory or a run directory (its policy/).")] = "baseline",
    port: Annotated[int, typer.Option()] = 8000,
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    explore_fraction: Annotated[float, typer.Option(help="Share of users (stable hash) served with exploration.")]
    = 0.0,
    lower_b: Annotated[float, typer.Option()] = -0.15,
    upper_b: Annotated[float, typer.Option()] = 0.15,
    bounds: Annotated[Path | None, typer.Option(help="Per-user exploration bounds: a JSON or Parquet file mapping "
                                                     "user ids to lower_b/upper_b (see rlmtf.serve.bounds).")]
    = None,
    durability: Annotated[str, typer.Option(help="fsync: an acknowledged record survives a power loss (fsync per "
                                                 "group commit); process: it survives a killed server process.")]
    = "fsync",
    max_candidates: Annotated[int, typer.Option()] = 2000,
    models_dir: Annotated[Path | None, typer.Option(help="The only directory POST /v1/admin/reload loads saved "
                                                          "policies from (named relative to it); without it only "
                                                          "the built-ins can be reloaded.")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 above).")] = 8 * 1024 * 1024,
    max_string_length: Annotated[int, typer.Option(help="Longest id (user, session, item, request, event) "
                                                        "accepted (422 above).")] = 256,
    max_watch_time: Annotated[float, typer.Option(help="Largest watch_time (seconds) a feedback may report.")]
    = 86400.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a request body may take to arrive (408 after).")]
    = 30.0,
    keep_alive_timeout: Annotated[float, typer.Option(help="Seconds an idle keep-alive connection stays open.")]
    = 5.0,
    max_connections: Annotated[int | None, typer.Option(help="Concurrent connections per worker (503 above; "
                                                             "default: unlimited).")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (they stop with this process).")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    env: ServeEnvOpt = None,
    sim_config: SimConfigOpt = None,
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
) -> None:
    """The HTTP ranking service (docs/design.md#the-ranking-service): /v1/schema, /v1/rank, /v1/feedback, /healthz,
    /metrics, /v1/admin/reload (token in $RLMTF_ADMIN_TOKEN).

    The service accepts the features of its policy: a trained policy's own (recorded in its policy.json,
    e.g. KuaiRand-Pure's for a policy trained with --env kuairand), else those of --env; /v1/schema lists
    them. A reload to a policy trained on other features is refused (422); so is a --log-dir written
    with other features."""
    import json
    import os

    from rlmtf.algos.registry import saved_feature_spec
    from rlmtf.serve.app import create_app
    from rlmtf.serve.run import run_server
    from rlmtf.serve.wire import spec_difference

    # a torch policy gets an equal share of the cores per worker (no oversubscription)
    torch_threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    with errors():
        chosen = None if env is None and sim_config is None else _env_features(env, sim_config, kuairand_dir,
                                                                                 kuairand_models)
        own = saved_feature_spec(policy)
        if chosen is not None and own is not None and own != chosen:
            raise ValueError(f"{policy} was trained on other features than --env {env or 'sim'} gives (policy vs "
                             f"--env: {spec_difference(own, chosen)}); leave out --env and --sim-config to serve "
                             "it with its own")
        if models_dir is not None and not models_dir.is_dir():
            raise FileNotFoundError(f"--models-dir {models_dir}: not a directory")
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        app = create_app(policy, feature_spec=chosen, log_dir=log_dir, explore_fraction=explore_fraction,
                         lower_b=lower_b, upper_b=upper_b, max_candidates=max_candidates, seed=seed, bounds=bounds,
                         durability=durability, torch_threads=torch_threads, models_dir=models_dir,
                         max_body_bytes=max_body_bytes, max_string_length=max_string_length,
                         max_watch_time_s=max_watch_time, body_timeout_s=body_timeout)
        app.state.store.close()  # fail here, with a clear message, not in a worker
    os.environ.update({"RLMTF_SERVE_POLICY": policy, "RLMTF_SERVE_LOG_DIR": str(log_dir),
                       "RLMTF_SERVE_FEATURE_SPEC": json.dumps(app.state.feature_spec.to_json()),
                       "RLMTF_SERVE_EXPLORE_FRACTION": str(explore_fraction), "RLMTF_SERVE_LOWER_B": str(lower_b),
                       "RLMTF_SERVE_UPPER_B": str(upper_b), "RLMTF_SERVE_MAX_CANDIDATES": str(max_candidates),
                       "RLMTF_SERVE_SEED": str(seed), "RLMTF_SERVE_BOUNDS": str(bounds) if bounds else "",
                       "RLMTF_SERVE_DURABILITY": durability, "RLMTF_SERVE_TORCH_THREADS": str(torch_threads),
                       "RLMTF_SERVE_MODELS_DIR": str(models_dir) if models_dir else "",
                       "RLMTF_SERVE_MAX_BODY_BYTES": str(max_body_bytes),
                       "RLMTF_SERVE_MAX_STRING_LENGTH": str(max_string_length),
                       "RLMTF_SERVE_MAX_WATCH_TIME": str(max_watch_time),
                       "RLMTF_SERVE_BODY_TIMEOUT": str(body_timeout)})
    try:
        run_server("rlmtf.serve.run:app_from_env", host=host, port=port, workers=workers,
                   keep_alive_s=keep_alive_timeout, max_connections=max_connections)
    except OSError as e:  # the port is taken, or the address is not ours
        fail(f"cannot listen on {host}:{port}: {e}")


def loop(
    server: Annotated[str, typer.Option(help="URL of a running `rlmtf serve`, e.g. http://127.0.0.1:8000.")],
    users: Annotated[int, typer.Option(help="Simulated users (ids 0..U-1).")] = 100,
    sessions: Annotated[int, typer.Option(help="Sessions to play (whole user-days).")] = 200,
    seed: Annotated[int, typer.Option()] = 0,
    start_day: Annotated[int, typer.Option()] = 0,
    sim_config: SimConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Let the simulator's users talk to a running ranking service over HTTP (rank, then feedback)."""
    import numpy as np

    from rlmtf.serve.loop import RemoteRanker

    with errors():
        sim = load_sim(sim_config)
        ranker = RemoteRanker(server, sim.spec)
        ranker.check_schema()
        with progress() as bar:
            task = bar.add_task("loop", total=sessions, extra="")
            r = sim.run(ranker, seed=seed, days=None, max_sessions=sessions, users=np.arange(users),
                        start_day=start_day, progress=lambda s, n: bar.update(task, advance=s), log_true_scores=False)
    summary = {"sessions": r.n_sessions, "requests": ranker.requests, "feedback_events": ranker.feedback}
    if json_out:
        print_json(summary)
    else:
        console.print("loop: " + ", ".join(f"{v:,} {k}" for k, v in summary.items()))


@logs_app.command("export")
def logs_export(
    log_dir: Annotated[Path, typer.Option(help="The service's log directory.")],
    out: Annotated[Path, typer.Option(help="Output Parquet dataset (the logged-data schema).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the dataset in OUT (refused without "
                                            "it).")] = False,
    salvage: Annotated[bool, typer.Option("--salvage", help="Export what a damaged log still holds; the summary "
                                          "counts the rows lost per table.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Join served requests and feedback into training data that `rlmtf train` reads unchanged.

    The data have the features the log records: those the service was started with. Feedback values the
    export cannot store (from logs written before the service checked them) are left out and counted."""
    claim_dir(out, "a dataset", overwrite)
    from rlmtf.serve.export import export_logs

    with errors():
        summary = export_logs(log_dir, out, overwrite=overwrite, salvage=salvage)
    if json_out:
        print_json(summary)
    else:
        console.print("exported: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


@logs_app.command("check")
def logs_check(
    log_dir: Annotated[Path, typer.Option(help="The service's log directory.")],
    json_out: JsonOpt = False,
) -> None:
    """Report the serving log's integrity (SQLite's integrity_check, read-only) and its row counts; exit 1
    when it is damaged (then `rlmtf logs export --salvage` exports what can be read)."""
    from rlmtf.serve.logcheck import check_log

    with errors():
        report = check_log(log_dir)
    if json_out:
        print_json(report)
    elif report["ok"]:
        console.print(f"{report['path']}: ok; " + ", ".join(f"{report[t]:,} {t}" for t in ("requests", "shown",
                                                                                             "feedback")))
    else:
        console.print(f"[bold red]damaged:[/] {report['path']}: " + "; ".join(report["problems"][:5]))
    if not report["ok"]:
        raise typer.Exit(1)
