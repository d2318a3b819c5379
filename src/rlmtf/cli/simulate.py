"""``rlmtf simulate`` (log a behaviour policy's exploration to Parquet) and ``rlmtf sim`` (the simulator's
config and its calibration against KuaiRand-Pure)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rlmtf.cli.common import (
    ActionSpaceOpt,
    EnvOpt,
    FlagGroup,
    JsonOpt,
    KuaiRandDirOpt,
    KuaiRandModelsOpt,
    SimConfigOpt,
    check,
    claim_dir,
    console,
    errors,
    make_env,
    out_console,
    print_json,
    progress,
)

sim_app = typer.Typer(help="The user-session simulator.", no_args_is_help=True, cls=FlagGroup)


def simulate(
    out: Annotated[Path, typer.Option(help="Output directory of the Parquet dataset.")],
    policy: Annotated[str, typer.Option(help="Behaviour policy: baseline, valid-only, random, oracle, or a saved "
                                             "policy (JSON file, model directory or run directory).")] = "baseline",
    explore: Annotated[str, typer.Option(help="Exploration: none, uniform (docs/design.md#exploration) or noise "
                                              "(N(0, sigma)).")] = "uniform",
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
    log_candidates: Annotated[bool, typer.Option("--log-candidates", help="Also log the candidate sample: beside "
                                                 "each shown row, one of the request's candidates drawn uniformly "
                                                 "(docs/design.md#the-candidate-sample).")] = False,
    action_space: ActionSpaceOpt = None,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the dataset in OUT (refused without "
                                            "it).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a behaviour policy in the simulator and log every shown user-item pair to Parquet."""
    check(per in ("request", "item"), f"--per must be 'request' or 'item', got {per!r}")
    check(explore in ("none", "uniform", "noise"), f"--explore must be none, uniform or noise, got {explore!r}")
    for flag, value in (("--sessions", sessions), ("--days", days), ("--users", users)):
        check(value is None or value >= 1, f"{flag} must be >= 1, got {value}")
    check(workers >= 1, f"--workers must be >= 1, got {workers}")
    check(lower_b <= upper_b, f"--lower-b {lower_b} is above --upper-b {upper_b} (lower_b <= upper_b)")
    claim_dir(out, "a dataset", overwrite)
    import time

    import numpy as np

    from rlmtf.algos.registry import load_policy
    from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet

    with errors():
        sim = make_env(env, sim_config, kuairand_dir, kuairand_models, action_space)
        if days is None and sessions is None:
            days = 1
        base = load_policy(policy, sim.cfg.action_space, seed=seed)
        pol = behaviour_policy(base, explore, per, lower_b, upper_b, sigma, seed=seed)  # type: ignore[arg-type]
        user_ids = None if users is None else np.arange(users)
        t0 = time.perf_counter()
        with progress() as bar:
            task = bar.add_task("simulate", total=sessions, extra="")
            rows = [0]

            def tick(n_sessions: int, n_rows: int) -> None:
                rows[0] += n_rows
                bar.update(task, advance=n_sessions, extra=f"{rows[0]:,} rows")

            result, path = simulate_to_parquet(sim, pol, out, seed=seed, sessions=sessions, days=days,
                                               users=user_ids, start_day=start_day, overwrite=overwrite,
                                               workers=workers, log_candidates=log_candidates,
                                               info={"explore": explore, "per": per, "lower_b": lower_b,
                                                     "upper_b": upper_b, "sigma": sigma}, progress=tick)
            bar.update(task, total=result.n_sessions, completed=result.n_sessions)
        dt = time.perf_counter() - t0
    summary = {"out": str(path), "policy": pol.name, "sessions": result.n_sessions, "rows": result.n_rows,
               "days": int(result.days.size), "seconds": round(dt, 2), "rows_per_s": round(result.n_rows / dt)}
    if json_out:
        print_json(summary)
    else:
        console.print(f"wrote {summary['rows']:,} rows ({summary['sessions']:,} sessions, {summary['days']} day(s)) "
                      f"to {path} in {dt:.1f}s")


# --- sim ------------------------------------------------------------------------------------------

@sim_app.command("config")
def sim_config_cmd(sim_config: SimConfigOpt = None) -> None:
    """Print the resolved simulator config as TOML (defaults, overridden by --sim-config)."""
    from rlmtf.envs.sim.config import load_sim_config, to_toml

    with errors():
        sys.stdout.write(to_toml(load_sim_config(sim_config)))


@sim_app.command("calibrate")
def sim_calibrate(
    data_dir: Annotated[Path | None, typer.Option(help="KuaiRand-Pure directory (default: $RLMTF_KUAIRAND_DIR "
                                                        "or shared/data/kuairand_pure).")] = None,
    users: Annotated[int, typer.Option(help="Simulated users (one day, baseline policy).")] = 3000,
    seed: Annotated[int, typer.Option()] = 12345,
    fit: Annotated[Path | None, typer.Option(help="Fit the behaviour intercepts to the real log and write them "
                                                  "as a TOML sim config to this file.")] = None,
    fit_in_order: Annotated[bool, typer.Option(
        "--fit-in-order", help="Also fit the in-order consumption offsets (the baseline consumes as many items "
                               "per session and opens as many sessions per user-day as with every list consumed; "
                               "5,000 users x 2 days) and use them.")] = False,
    sim_config: SimConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Simulated behaviour rates and watch-ratio quantiles beside KuaiRand-Pure's, and the baseline's session
    statistics with every list consumed and consumed in order (docs/design.md#in-order-consumption)."""
    import dataclasses

    from rlmtf.envs.kuairand.paths import default_kuairand_dir
    from rlmtf.envs.sim.calibrate import compare, fit_behaviour, real_stats, session_stats, sim_stats
    from rlmtf.envs.sim.calibrate import fit_in_order as fit_offsets
    from rlmtf.envs.sim.config import load_sim_config, to_toml

    with errors():
        cfg = load_sim_config(sim_config)
        data_dir = data_dir or default_kuairand_dir()
        if data_dir is None:
            raise FileNotFoundError("KuaiRand-Pure not found: pass --data-dir or set RLMTF_KUAIRAND_DIR")
        real = real_stats(data_dir)
        if fit is not None:
            cfg = fit_behaviour(cfg, real, n_users=users, seed=seed, log=console.print)
            fit.write_text(to_toml(cfg))
            console.print(f"wrote fitted config to {fit}")
        offsets = None
        if fit_in_order:
            offsets = fit_offsets(cfg, log=console.print)
            cfg = dataclasses.replace(cfg, consumption=dataclasses.replace(
                cfg.consumption, leave_offset=offsets["leave_offset"], return_offset=offsets["return_offset"]))
            if fit is not None:
                fit.write_text(to_toml(cfg))
        with console.status("simulating the baseline policy..."):
            sim = sim_stats(cfg, n_users=users, seed=seed)
            sessions = session_stats(cfg, n_users=users, seed=seed)
        rows = compare(sim, real)
    if json_out:
        print_json({"rows": rows, "simulated": sim.to_dict(), "real": real.to_dict(), "sessions": sessions,
                    "in_order_offsets": offsets})
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
    out_console().print(table)
    c = cfg.consumption
    st = Table(title=f"Baseline sessions: every list consumed vs in rank order (leave_offset {c.leave_offset:+.3f}, "
                     f"return_offset {c.return_offset:+.3f}; {users:,} users x 2 days)")
    for col in ("quantity", "all", "in_order", "gap"):
        st.add_column(col, justify="left" if col == "quantity" else "right")
    for r in sessions:
        st.add_row(r["quantity"], f"{r['all']:.4f}", f"{r['in_order']:.4f}", f"{r['gap']:+.1%}")
    out_console().print(st)
    if offsets is not None:
        out_console().print(f"fitted in-order offsets: leave_offset = {offsets['leave_offset']:+.4f}, "
                            f"return_offset = {offsets['return_offset']:+.4f}")
    if not all(r["ok"] for r in rows if r["ok"] is not None):
        raise typer.Exit(1)
