"""The ``rlmtf`` command line: simulate, calibrate, validate, evaluate, demo."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
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
from rich.table import Table

app = typer.Typer(help="Reinforcement-learning multi-task fusion for recommender systems.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
sim_app = typer.Typer(help="The user-session simulator.", no_args_is_help=True)
data_app = typer.Typer(help="Logged data.", no_args_is_help=True)
eval_app = typer.Typer(help="Offline (weighted GAUC) and simulated online (A/B) evaluation.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="evaluate")
analyze_app = typer.Typer(help="Analyses of logged data.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")
logs_app = typer.Typer(help="The serving log.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
experiment_app = typer.Typer(help="Reproduce the paper's experiments.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")

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


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


@contextmanager
def _errors():
    """Turn the library's validation errors into a one-line message and exit code 2."""
    from rlmtf.algos.registry import PolicyLoadError
    from rlmtf.core.config_io import ConfigError
    from rlmtf.data.io import LogDataError

    try:
        yield
    except (LogDataError, PolicyLoadError, ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        _fail(str(e))


def _progress() -> Progress:
    """A rich progress display on stderr (tasks add their own totals and descriptions)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def _load_sim(sim_config: Path | None):
    from rlmtf.envs.sim.config import load_sim_config
    from rlmtf.envs.sim.simulator import Simulator

    return Simulator(load_sim_config(sim_config))


def _make_env(env: str = "sim", sim_config: Path | None = None, kuairand_dir: Path | None = None,
              kuairand_models: Path | None = None):
    """The environment of ``--env``: the embedded simulator, or the KuaiRand-Pure environment."""
    if env == "sim":
        return _load_sim(sim_config)
    from rlmtf.envs.factory import make_env

    return make_env(env, sim_config, kuairand_dir, kuairand_models, log=console.print)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=float) + "\n")


# --- simulate -------------------------------------------------------------------------------------

@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output directory of the Parquet dataset.")],
    policy: Annotated[str, typer.Option(help="Behaviour policy: baseline, valid-only, random, oracle, or a saved "
                                             "policy (JSON file or model directory).")] = "baseline",
    explore: Annotated[str, typer.Option(help="Exploration: none, uniform (SPEC 4) or noise (N(0, sigma)).")] =
    "uniform",
    per: Annotated[str, typer.Option(help="Draw exploration noise per 'request' (user-level) or per 'item'.")] =
    "request",
    lower_b: Annotated[float, typer.Option(help="Lower exploration bound, added to mu_bp.")] = -0.15,
    upper_b: Annotated[float, typer.Option(help="Upper exploration bound, added to mu_bp.")] = 0.15,
    sigma: Annotated[float, typer.Option(help="Standard deviation of action-noise exploration.")] = 0.2,
    sessions: Annotated[int | None, typer.Option(help="Stop after this many sessions.")] = None,
    days: Annotated[int | None, typer.Option(help="Simulate this many days (default 1 when --sessions is not "
                                                  "given).")] = None,
    users: Annotated[int | None, typer.Option(help="Use users 0..U-1 of the population (default: all).")] = None,
    start_day: Annotated[int, typer.Option(help="Day index of the first simulated day.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the run (the world is fixed by the config's world_seed).")] = 0,
    workers: Annotated[int, typer.Option(help="Processes; each simulates a block of users and writes its own "
                                              "shard.")] = 1,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset in OUT.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a behaviour policy in the simulator and log every shown user-item pair to Parquet."""
    import time

    import numpy as np

    from rlmtf.algos.registry import load_policy
    from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet

    with _errors():
        if per not in ("request", "item"):
            raise ValueError(f"--per must be 'request' or 'item', got {per!r}")
        sim = _make_env(env, sim_config, kuairand_dir, kuairand_models)
        if days is None and sessions is None:
            days = 1
        base = load_policy(policy, sim.cfg.action_space, seed=seed)
        pol = behaviour_policy(base, explore, per, lower_b, upper_b, sigma, seed=seed)  # type: ignore[arg-type]
        user_ids = None if users is None else np.arange(users)
        t0 = time.perf_counter()
        with _progress() as bar:
            task = bar.add_task("simulate", total=sessions, extra="")
            rows = [0]

            def tick(n_sessions: int, n_rows: int) -> None:
                rows[0] += n_rows
                bar.update(task, advance=n_sessions, extra=f"{rows[0]:,} rows")

            result, path = simulate_to_parquet(sim, pol, out, seed=seed, sessions=sessions, days=days,
                                               users=user_ids, start_day=start_day, overwrite=overwrite,
                                               workers=workers,
                                               info={"explore": explore, "per": per, "lower_b": lower_b,
                                                     "upper_b": upper_b, "sigma": sigma}, progress=tick)
        dt = time.perf_counter() - t0
    summary = {"out": str(path), "policy": pol.name, "sessions": result.n_sessions, "rows": result.n_rows,
               "days": int(result.days.size), "seconds": round(dt, 2), "rows_per_s": round(result.n_rows / dt)}
    if json_out:
        _print_json(summary)
    else:
        console.print(f"wrote {summary['rows']:,} rows ({summary['sessions']:,} sessions, {summary['days']} day(s)) "
                      f"to {path} in {dt:.1f}s")


# --- sim ------------------------------------------------------------------------------------------

@sim_app.command("config")
def sim_config_cmd(sim_config: SimConfigOpt = None) -> None:
    """Print the resolved simulator config as TOML (defaults, overridden by --sim-config)."""
    from rlmtf.envs.sim.config import load_sim_config, to_toml

    with _errors():
        sys.stdout.write(to_toml(load_sim_config(sim_config)))


@sim_app.command("calibrate")
def sim_calibrate(
    data_dir: Annotated[Path | None, typer.Option(help="KuaiRand-Pure directory (default: $RLMTF_KUAIRAND_DIR "
                                                        "or shared/data/kuairand_pure).")] = None,
    users: Annotated[int, typer.Option(help="Simulated users (one day, baseline policy).")] = 3000,
    seed: Annotated[int, typer.Option()] = 12345,
    fit: Annotated[Path | None, typer.Option(help="Fit the behaviour intercepts to the real log and write them "
                                                  "as a TOML sim config to this file.")] = None,
    sim_config: SimConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Simulated behaviour rates and watch-ratio quantiles beside KuaiRand-Pure's."""
    from rlmtf.envs.kuairand.paths import default_kuairand_dir
    from rlmtf.envs.sim.calibrate import compare, fit_behaviour, real_stats, sim_stats
    from rlmtf.envs.sim.config import load_sim_config, to_toml

    with _errors():
        cfg = load_sim_config(sim_config)
        data_dir = data_dir or default_kuairand_dir()
        if data_dir is None:
            raise FileNotFoundError("KuaiRand-Pure not found: pass --data-dir or set RLMTF_KUAIRAND_DIR")
        real = real_stats(data_dir)
        if fit is not None:
            cfg = fit_behaviour(cfg, real, n_users=users, seed=seed, log=console.print)
            fit.write_text(to_toml(cfg))
            console.print(f"wrote fitted config to {fit}")
        with console.status("simulating the baseline policy..."):
            sim = sim_stats(cfg, n_users=users, seed=seed)
        rows = compare(sim, real)
    if json_out:
        _print_json({"rows": rows, "simulated": sim.to_dict(), "real": real.to_dict()})
        return
    table = Table(title=f"Simulator vs KuaiRand-Pure ({sim.rows:,} simulated, {real.rows:,} real impressions)")
    for col in ("quantity", "simulated", "real", "error", "tolerance", "ok"):
        table.add_column(col, justify="left" if col == "quantity" else "right")
    for r in rows:
        err = f"{r['error']:.1%}" if r["kind"] == "relative" else f"{r['error']:.3f}"
        tol = "" if r["tolerance"] is None else (f"{r['tolerance']:.0%}" if r["kind"] == "relative"
                                                 else f"{r['tolerance']:.2f}")
        ok = "" if r["ok"] is None else ("[green]yes[/]" if r["ok"] else "[red]NO[/]")
        table.add_row(r["quantity"], f"{r['simulated']:.4f}", f"{r['real']:.4f}", err, tol, ok)
    Console().print(table)
    if not all(r["ok"] for r in rows if r["ok"] is not None):
        raise typer.Exit(1)


# --- data -----------------------------------------------------------------------------------------

@data_app.command("validate")
def data_validate(path: Annotated[Path, typer.Argument(help="Dataset directory or Parquet file.")],
                  json_out: JsonOpt = False) -> None:
    """Check a logged dataset against the schema; print a summary or the first problem."""
    from rlmtf.data.io import validate_logs

    with _errors():
        summary = validate_logs(path)
    if json_out:
        _print_json(summary)
    else:
        console.print("ok: " + ", ".join(f"{v:,} {k}" for k, v in summary.items()))


@data_app.command("shard")
def data_shard(
    src: Annotated[Path, typer.Argument(help="Dataset directory (or Parquet file) to repartition.")],
    dst: Annotated[Path, typer.Argument(help="Output: DST/shard=K/, each a dataset of whole sessions.")],
    shards: Annotated[int, typer.Option(help="Number of shards (at least the number of training processes; "
                                        "sized so that a few fit in memory at once).")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it is a dataset.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Repartition logged data by a hash of session_id, so that no session spans two shards: what
    `rlmtf train --stream` and torchrun training read. Reads one input file at a time."""
    from rlmtf.data.io import read_meta
    from rlmtf.data.shard import shard_dataset

    with _errors():
        total = read_meta(src).info.get("rows") if src.is_dir() else None
        with _progress() as bar:
            task = bar.add_task(f"shard into {shards}", total=total, extra="")
            info = shard_dataset(src, dst, shards, overwrite=overwrite,
                                 progress=lambda n: bar.update(task, advance=n))
    summary = {"out": str(dst), "shards": info.n_shards, "rows": sum(info.rows_per_shard), "files": info.files,
               "rows_per_shard_min": min(info.rows_per_shard), "rows_per_shard_max": max(info.rows_per_shard)}
    if json_out:
        _print_json(summary)
    else:
        console.print(f"{summary['rows']:,} rows into {info.n_shards} shards ({summary['rows_per_shard_min']:,}-"
                      f"{summary['rows_per_shard_max']:,} rows each) in {dst}")


@data_app.command("kuairand")
def data_kuairand(
    download: Annotated[Path | None, typer.Option(help="Fetch the official KuaiRand-Pure release into DIR, unpack "
                                                  "and validate it.")] = None,
    check: Annotated[Path | None, typer.Option(help="Validate a KuaiRand-Pure directory and summarise it.")] = None,
    fit: Annotated[Path | None, typer.Option(help="Fit the response and MTL models (first 10 days) into DIR.")] = None,
    kuairand_dir: KuaiRandDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """KuaiRand-Pure: download, validate, fit the models of the kuairand environment."""
    from rlmtf.envs.kuairand.data import download as fetch
    from rlmtf.envs.kuairand.data import load_kuairand
    from rlmtf.envs.kuairand.paths import resolve_data_dir

    with _errors():
        if not (download or check or fit):
            raise ValueError("give --download DIR, --check DIR or --fit DIR")
        out: dict = {}
        if download:
            out["downloaded"] = str(fetch(download, log=console.print))
        if check or download:
            d = load_kuairand(check or download)
            out["summary"] = d.summary()
        if fit:
            from rlmtf.envs.kuairand.fit import fit_all

            out["fit"] = fit_all(resolve_data_dir(kuairand_dir), fit, log=console.print)
    if json_out:
        _print_json(out)
    else:
        for k, v in out.items():
            console.print(f"[bold]{k}[/]: {v if not isinstance(v, dict) else json.dumps(v, default=str)[:2000]}")


# --- evaluate -------------------------------------------------------------------------------------

@eval_app.command("gauc")
def evaluate_gauc_cmd(
    policy: Annotated[list[str], typer.Option(help="Policy to evaluate (repeatable): a built-in name or a saved "
                                                   "policy.")],
    data: Annotated[Path, typer.Option(help="Logged test data (Parquet dataset directory or file).")],
    seed: Annotated[int, typer.Option(help="Seed of stochastic policies.")] = 0,
    sim_config: SimConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Weighted GAUC (SPEC section 9) of each policy on logged data."""
    from rlmtf.algos.registry import load_policy
    from rlmtf.data.io import read_logs
    from rlmtf.envs.sim.config import load_sim_config
    from rlmtf.eval.offline import evaluate_gauc

    with _errors():
        space = load_sim_config(sim_config).action_space
        with console.status(f"reading {data}..."):
            logs = read_logs(data)
        results = []
        for p in policy:
            with console.status(f"scoring {p}..."):
                results.append(evaluate_gauc(load_policy(p, space, seed=seed), logs, space).to_dict())
    if json_out:
        _print_json(results[0] if len(results) == 1 else results)
        return
    table = Table(title=f"Weighted GAUC on {data} ({len(logs):,} rows)")
    for col in ("policy", "weighted GAUC", "users", "users skipped"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["policy"], f"{r['gauc']:.4f}", f"{r['n_users']:,}", f"{r['n_users_skipped']:,}")
    Console().print(table)


@eval_app.command("real-gauc")
def evaluate_real_gauc_cmd(
    policy: Annotated[list[str], typer.Option(help="Policy (repeatable): built-in, fixed-fusion JSON, or a policy "
                                              "trained with --env kuairand.")],
    split: Annotated[str, typer.Option(help="test (2022-05-05..08) or train (the first 10 days).")] = "test",
    mtl_scores: Annotated[bool, typer.Option("--mtl-scores", help="Also rank by each single MTL score.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of stochastic policies.")] = 0,
    sim_config: SimConfigOpt = None,
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Weighted GAUC on the real KuaiRand-Pure interactions (label long view, weight real reward + 1)."""
    from rlmtf.algos.registry import load_policy
    from rlmtf.core.fusion import MTL_TASKS
    from rlmtf.envs.kuairand.data import load_kuairand
    from rlmtf.envs.kuairand.paths import resolve_data_dir
    from rlmtf.eval.real_gauc import RealGAUCEvaluator

    with _errors():
        env = _make_env("kuairand", sim_config, kuairand_dir, kuairand_models)
        with console.status("reading KuaiRand-Pure and scoring its rows..."):
            ev = RealGAUCEvaluator(env, load_kuairand(resolve_data_dir(kuairand_dir)), split=split)
        results = [ev.policy_gauc(load_policy(p, env.cfg.action_space, seed=seed)).to_dict() for p in policy]
        if mtl_scores:
            results += [ev.score_gauc(t).to_dict() for t in MTL_TASKS]
    if json_out:
        _print_json(results[0] if len(results) == 1 else results)
        return
    table = Table(title=f"Weighted GAUC on the real KuaiRand-Pure interactions ({split} days)")
    for col in ("policy", "level", "GAUC (long view)", "GAUC (play > 10 s)", "users", "users skipped"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["policy"]), str(r.get("level", "")), f"{r['gauc']:.4f}", f"{r['gauc_play10s']:.4f}",
                      str(r["n_users"]), str(r["n_users_skipped"]))
    Console().print(table)


@eval_app.command("online")
def evaluate_online_cmd(
    policy: Annotated[list[str], typer.Option(help="Policies to compare (repeat; the first is the control).")],
    users: Annotated[int, typer.Option(help="Simulated users in every arm.")] = 2000,
    days: Annotated[int, typer.Option(help="Days of the test.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed shared by all arms (common random numbers).")] = 0,
    workers: Annotated[int, typer.Option(help="Processes per arm (users are split between them).")] = 1,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Simulated online A/B test: UVC, UDT, sessions, reward and session length, with lifts over the first."""
    from rlmtf.algos.registry import load_policy
    from rlmtf.eval.online import METRIC_LABELS, METRICS, online_ab

    with _errors():
        sim = _make_env(env, sim_config, kuairand_dir, kuairand_models)
        pols = [load_policy(p, sim.cfg.action_space, seed=seed) for p in policy]
        names = [p.name for p in pols]
        if len(set(names)) != len(names):
            for i, p in enumerate(pols):
                p.name = f"{p.name}#{i}"
        with _progress() as bar:
            def on_arm(i: int, name: str):
                task = bar.add_task(f"arm {i + 1}/{len(pols)}: {name}", total=None, extra="")
                return lambda s, r: bar.update(task, advance=s, extra="sessions")
            res = online_ab(pols, sim, users=users, days=days, seed=seed, on_arm=on_arm, workers=workers)
    if json_out:
        _print_json(res.to_dict())
        return
    table = Table(title=f"Simulated A/B: {users:,} users x {days} day(s), seed {seed}; lifts over {res.arms[0].policy}")
    table.add_column("metric")
    for arm in res.arms:
        table.add_column(arm.policy, justify="right")
    for k in METRICS:
        cells = []
        for i, arm in enumerate(res.arms):
            m = arm.means[k]["mean"]
            if i == 0:
                cells.append(f"{m:.3f}")
            else:
                lift = arm.lifts[k]
                if "error" in lift:
                    cells.append(f"{m:.3f}")
                else:
                    cells.append(f"{m:.3f} ({lift['lift']:+.2%} [{lift['ci_low']:+.2%}, {lift['ci_high']:+.2%}] "
                                 f"p={lift['p_value']:.3g})")
        table.add_row(METRIC_LABELS[k], *cells)
    Console().print(table)


# --- analyze --------------------------------------------------------------------------------------

@analyze_app.command("exploration")
def analyze_exploration(
    data: Annotated[Path, typer.Option(help="Logged exploration data.")],
    sigma: Annotated[float, typer.Option(help="Standard deviation of the action-noise comparator.")] = 0.2,
    plot: Annotated[Path | None, typer.Option(help="Write the action-distribution figure (PNG) here "
                                                   "(default: DATA/exploration.png).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Exploration efficiency of uniform vs action-noise exploration, from the logs and analytically."""
    from rlmtf.data.io import read_logs
    from rlmtf.eval.exploration import analyse, plot_action_distributions

    with _errors():
        logs = read_logs(data)
        rep = analyse(logs, sigma=sigma, seed=seed)
        png = plot_action_distributions(logs, plot or Path(data) / "exploration.png", sigma=sigma, seed=seed)
    out = {**rep.to_dict(), "plot": str(png)}
    if json_out:
        _print_json(out)
        return
    console.print(f"{rep.rows:,} logged samples (exploration: {rep.logged_by})")
    console.print(f"  in the box, all {len(rep.in_box_per_dim_logged)} dimensions: logged {rep.in_box_all_logged:.4f}; "
                  f"action noise N(0, {sigma}): analytic {rep.in_box_all_noise_analytic:.5f}, "
                  f"Monte Carlo {rep.in_box_all_noise_monte_carlo:.5f}")
    console.print(f"  per dimension, action noise: {np.mean(rep.in_box_per_dim_noise_analytic):.4f} (analytic)")
    console.print(f"  exploration efficiency: {rep.efficiency_from_logs:.0f}x from the logs "
                  f"(logged in-box fraction / action noise's), {rep.efficiency_analytic:.0f}x analytic without "
                  f"clipping, {rep.efficiency_analytic_clipped:.0f}x analytic with clipping to [-1, 1]")
    console.print(f"  figure: {png}")


# --- train ----------------------------------------------------------------------------------------

@app.command()
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

    with _errors():
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
        algo_cfg = config_cls(**{k: v for k, v in wanted.items() if k in names})
        cfg = TrainConfig(steps=steps, seed=seed, device=device, eval_every=eval_every,
                          checkpoint_every=checkpoint_every, stream=stream, buffer_shards=buffer_shards,
                          reuse=reuse, compile=compile)
        main_rank = int(os.environ.get("RANK", "0")) == 0
        online = getattr(algorithm_class(algo), "online", False)
        sim = _make_env(env, sim_config, kuairand_dir, kuairand_models) if online else None
        if not main_rank:  # the other torchrun processes train silently; rank 0 reports
            run_train(algo, data, out, cfg=cfg, algo_cfg=algo_cfg, resume=resume, sim=sim)
            return
        with _progress() as bar:
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
        _print_json(summary)
    else:
        console.print(f"trained {algo} for {trained.step} steps; policy in {summary['policy']}")


@app.command()
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

    with _errors():
        if algo not in ("esrl", "integrated"):
            raise ValueError(f"--algo must be esrl or integrated, got {algo!r}")
        hid = tuple(int(h) for h in hidden.split(","))
        sim = _make_env(env, sim_config, kuairand_dir, kuairand_models)
        cfg = PTMConfig(rounds=rounds, sessions_per_round=sessions_per_round, steps_per_round=steps_per_round,
                        test_sessions=test_sessions, online_users=users, online_days=days, seed=seed, workers=workers)
        rows = run_ptm(algo, sim, out, cfg, dataclasses.replace(ESRLConfig(), hidden=hid, ensemble_size=critics),
                       TrainConfig(steps=steps_per_round, device=device, eval_every=0, seed=seed),
                       log=console.print).rows
    if json_out:
        _print_json(rows)
        return
    table = Table(title=f"Progressive training of {algo} ({out / 'ptm.png'})")
    for col in ("round", "policy", "weighted GAUC", "UVC lift", "UDT lift"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["round"]), r["policy"], f"{r['weighted_gauc']:.4f}", f"{r['uvc_lift']:+.2%}",
                      f"{r['udt_lift']:+.2%}")
    Console().print(table)


# --- serving --------------------------------------------------------------------------------------

@app.command()
def serve(
    log_dir: Annotated[Path, typer.Option(help="Directory of the durable request/feedback log (SQLite, WAL).")],
    policy: Annotated[str, typer.Option(help="baseline or a saved policy directory.")] = "baseline",
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
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The HTTP ranking service (SPEC section 12): /v1/schema, /v1/rank, /v1/feedback, /healthz, /metrics,
    /v1/admin/reload (token in $RLMTF_ADMIN_TOKEN)."""
    import os

    from rlmtf.serve.app import create_app
    from rlmtf.serve.run import run_server

    # a torch policy gets an equal share of the cores per worker (no oversubscription)
    torch_threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    with _errors():
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        create_app(policy, log_dir=log_dir, explore_fraction=explore_fraction, lower_b=lower_b, upper_b=upper_b,
                   max_candidates=max_candidates, seed=seed, bounds=bounds, durability=durability,
                   torch_threads=torch_threads).state.store.close()  # fail here, with a clear message, not in a worker
    os.environ.update({"RLMTF_SERVE_POLICY": policy, "RLMTF_SERVE_LOG_DIR": str(log_dir),
                       "RLMTF_SERVE_EXPLORE_FRACTION": str(explore_fraction), "RLMTF_SERVE_LOWER_B": str(lower_b),
                       "RLMTF_SERVE_UPPER_B": str(upper_b), "RLMTF_SERVE_MAX_CANDIDATES": str(max_candidates),
                       "RLMTF_SERVE_SEED": str(seed), "RLMTF_SERVE_BOUNDS": str(bounds) if bounds else "",
                       "RLMTF_SERVE_DURABILITY": durability, "RLMTF_SERVE_TORCH_THREADS": str(torch_threads)})
    try:
        run_server("rlmtf.serve.app:app_from_env", host=host, port=port, workers=workers)
    except OSError as e:  # the port is taken, or the address is not ours
        _fail(f"cannot listen on {host}:{port}: {e}")


@app.command()
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

    with _errors():
        sim = _load_sim(sim_config)
        ranker = RemoteRanker(server, sim.spec)
        with _progress() as bar:
            task = bar.add_task("loop", total=sessions, extra="")
            r = sim.run(ranker, seed=seed, days=None, max_sessions=sessions, users=np.arange(users),
                        start_day=start_day, progress=lambda s, n: bar.update(task, advance=s), log_true_scores=False)
    summary = {"sessions": r.n_sessions, "requests": ranker.requests, "feedback_events": ranker.feedback}
    if json_out:
        _print_json(summary)
    else:
        console.print("loop: " + ", ".join(f"{v:,} {k}" for k, v in summary.items()))


@logs_app.command("export")
def logs_export(
    log_dir: Annotated[Path, typer.Option(help="The service's log directory.")],
    out: Annotated[Path, typer.Option(help="Output Parquet dataset (the logged-data schema).")],
    overwrite: Annotated[bool, typer.Option()] = False,
    json_out: JsonOpt = False,
) -> None:
    """Join served requests and feedback into training data that `rlmtf train` reads unchanged."""
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.world import feature_spec
    from rlmtf.serve.export import export_logs

    with _errors():
        summary = export_logs(log_dir, out, feature_spec(SimConfig()), overwrite=overwrite)
    if json_out:
        _print_json(summary)
    else:
        console.print("exported: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


# --- demo -----------------------------------------------------------------------------------------



def _run_paper(out: Path, preset: str, seeds: int | None, first_seed: int, methods: str | None, workers: int,
               device: str, threads: int | None, env: str, sim_config: Path | None, json_out: bool,
               resume: bool = False, kuairand_dir: Path | None = None, kuairand_models: Path | None = None) -> None:
    import time

    from rlmtf.pipelines.paper import PRESETS, run_paper
    from rlmtf.train.loop import resolve_device

    with _errors():
        if preset not in PRESETS:
            raise ValueError(f"unknown --preset {preset!r}; choose from {', '.join(PRESETS)}")
        if threads:
            import torch

            torch.set_num_threads(threads)
        sim = _make_env(env, sim_config, kuairand_dir, kuairand_models)
        t0 = time.perf_counter()

        def log(msg: str) -> None:
            console.print(f"[dim]{time.perf_counter() - t0:7.1f}s[/] {msg}")

        tables = run_paper(out, preset=preset, seeds=seeds, first_seed=first_seed, sim=sim, env=env,
                           methods=tuple(m.strip() for m in methods.split(",")) if methods else None,
                           workers=workers, device=resolve_device(device), resume=resume, log=log)
    if json_out:
        _print_json(tables)
        return
    from rlmtf.pipelines.paper import tables_markdown

    sys.stdout.write(tables_markdown(tables))


@experiment_app.command("paper")
def experiment_paper(
    out: Annotated[Path, typer.Option(help="Output directory (tables, report.html, one directory per seed).")] = Path(
        "runs/paper"),
    preset: Annotated[str, typer.Option(help="smoke (minutes, checks the pipeline), default (CPU-sized, under an "
                                        "hour on 2 cores) or full (paper-sized, GPU).")] = "default",
    seeds: Annotated[int | None, typer.Option(help="Seeds (default: the preset's).")] = None,
    first_seed: Annotated[int, typer.Option(help="The first seed; seeds run first_seed, first_seed+1, ...")] = 0,
    methods: Annotated[str | None, typer.Option(help="Comma-separated subset of es, ddpg, cql_sac, bcq, iql, "
                                                "integrated_once, integrated, esrl (default: all).")] = None,
    workers: Annotated[int, typer.Option(help="Simulation processes.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 is fastest when other jobs share "
                                                "the cores).")] = None,
    env: EnvOpt = "sim",
    sim_config: SimConfigOpt = None,
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    resume: Annotated[bool, typer.Option(help="Reuse the seeds that already finished in OUT.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The paper's Tables 1-4 on the simulator: every method, several seeds, tables + report.html."""
    _run_paper(out, preset, seeds, first_seed, methods, workers, device, threads, env, sim_config, json_out, resume,
               kuairand_dir, kuairand_models)


@experiment_app.command("render")
def experiment_render(
    out: Annotated[Path, typer.Argument(help="An experiment directory (of `rlmtf experiment paper`).")],
    json_out: JsonOpt = False,
) -> None:
    """Rebuild tables and report.html from the seeds that finished (while a run goes on, or after a crash)."""
    from rlmtf.pipelines.paper import render, tables_markdown

    with _errors():
        tables = render(out, log=console.print)
    if json_out:
        _print_json(tables)
    else:
        sys.stdout.write(tables_markdown(tables))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's data, runs, tables and report.")] = Path(
        "runs/demo"),
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    sim_config: SimConfigOpt = None,
) -> None:
    """End to end in minutes: the paper experiment's smoke preset (simulate, train every method, evaluate
    offline and online, write tables and report.html)."""
    _run_paper(out, "smoke", None, seed, None, 1, "cpu", threads, "sim", sim_config, False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
