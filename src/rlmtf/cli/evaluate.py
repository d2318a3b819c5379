"""``rlmtf evaluate`` (weighted GAUC on logged data or on the real KuaiRand-Pure interactions, and the
simulated online A/B test) and ``rlmtf analyze`` (exploration efficiency of logged data; which objective
to optimise)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rlmtf.cli.common import (
    EnvOpt,
    FlagGroup,
    JsonOpt,
    KuaiRandDirOpt,
    KuaiRandModelsOpt,
    SimConfigOpt,
    check,
    console,
    errors,
    fail,
    labelled_policies,
    make_env,
    out_console,
    print_json,
    progress,
)

eval_app = typer.Typer(help="Offline (weighted GAUC) and simulated online (A/B) evaluation.", no_args_is_help=True,
                       cls=FlagGroup)
analyze_app = typer.Typer(help="Analyses of logged data and of what to optimise.", no_args_is_help=True,
                          cls=FlagGroup)


@eval_app.command("gauc")
def evaluate_gauc_cmd(
    policy: Annotated[list[str], typer.Option(help="Policy to evaluate (repeatable): a built-in name or a saved "
                                                   "policy (JSON file, model directory or run directory); "
                                                   "NAME=PATH labels it NAME.")],
    data: Annotated[Path, typer.Option(help="Logged test data (Parquet dataset directory or file).")],
    seed: Annotated[int, typer.Option(help="Seed of stochastic policies.")] = 0,
    sim_config: SimConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Weighted GAUC (docs/design.md#weighted-gauc) of each policy on logged data."""
    from rlmtf.data.io import read_logs
    from rlmtf.envs.sim.config import load_sim_config
    from rlmtf.eval.offline import evaluate_gauc

    with errors():
        space = load_sim_config(sim_config).action_space
        pols = labelled_policies(policy, space, seed)
        with console.status(f"reading {data}..."):
            logs = read_logs(data)
        results = []
        for pol in pols:
            with console.status(f"scoring {pol.name}..."):
                results.append(evaluate_gauc(pol, logs, space).to_dict())
    if json_out:
        print_json(results[0] if len(results) == 1 else results)
        return
    table = Table(title=f"Weighted GAUC on {data} ({len(logs):,} rows)")
    for col in ("policy", "weighted GAUC", "users", "users skipped"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["policy"], f"{r['gauc']:.4f}", f"{r['n_users']:,}", f"{r['n_users_skipped']:,}")
    out_console().print(table)


@eval_app.command("ope")
def evaluate_ope_cmd(
    policy: Annotated[list[str], typer.Option(help="Policy to evaluate (repeatable): a built-in name or a saved "
                                                   "policy; NAME=PATH labels it NAME.")],
    data: Annotated[Path, typer.Option(help="Logged exploration data (Parquet dataset directory).")],
    episode: Annotated[str, typer.Option(help="day (the user-day, the online metrics' unit) or session.")] = "day",
    steps: Annotated[int, typer.Option(help="FQE gradient steps per policy.")] = 4000,
    members: Annotated[int, typer.Option(help="FQE bootstrap members per metric.")] = 5,
    bandwidth: Annotated[float, typer.Option(help="Box-kernel half-width, in units of the exploration "
                                             "half-width (importance weights).")] = 1.0,
    gamma: Annotated[float, typer.Option(help="Discount per request (1: undiscounted).")] = 1.0,
    dm_model: Annotated[str, typer.Option(help="The direct method's model: linear (one slope per action "
                                          "dimension), quadratic (+ curvature) or personal (+ a slope per "
                                          "state feature).")] = "linear",
    seed: Annotated[int, typer.Option(help="Seed of the FQE fit and the bootstrap.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Off-policy evaluation (docs/design.md#off-policy-evaluation): each policy's estimated valid views, watch
    minutes, sessions and reward per episode from logs it did not write (FQE with a bootstrap interval; IPW,
    SNIPW and DR from the exploration's known box density; the direct method), and the lifts over the logging
    policy."""
    check(episode in ("day", "session"), f"--episode must be day or session, got {episode!r}")
    check(steps >= 1 and members >= 2, "--steps must be >= 1 and --members >= 2")
    from rlmtf.data.io import read_logs
    from rlmtf.eval.fqe import FQEConfig
    from rlmtf.eval.ope import DM_MODELS, OPEConfig, evaluate_ope

    check(dm_model in DM_MODELS, f"--dm-model must be one of {', '.join(DM_MODELS)}, got {dm_model!r}")
    with errors():
        if threads:
            import torch

            torch.set_num_threads(threads)
        with console.status(f"reading {data}..."):
            logs = read_logs(data)
        space = logs.meta.action_space
        pols = labelled_policies(policy, space, seed)
        cfg = OPEConfig(episode=episode, bandwidth=bandwidth, dm_model=dm_model,
                        fqe=FQEConfig(steps=steps, members=members, gamma=gamma, session_gamma=gamma, seed=seed))
        with console.status("off-policy evaluation...") as st:
            rep = evaluate_ope(pols, logs, cfg, space_dim=space.dim, log=st.update)
    if json_out:
        print_json(rep)
        return
    table = Table(title=f"Off-policy estimates per {episode} on {data} ({rep['episodes']:,} episodes, exploration "
                        f"per {rep['exploration']})")
    for col in ("policy", "metric", "FQE [95%]", "FQE lift vs logging mean", "DM lift", "SNIPW", "DR", "ESS"):
        table.add_column(col, justify="right")
    for e in rep["policies"]:
        for m, f in e["fqe"].items():
            iw = (e["is"] or {}).get(m)
            dm = (e.get("dm") or {}).get(m)
            table.add_row(e["policy"], m, f"{f['mean']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}]",
                          f"{f['lift']['mean']:+.2%} [{f['lift']['ci_low']:+.2%}, {f['lift']['ci_high']:+.2%}]",
                          f"{dm['lift']['mean']:+.2%}" if dm else "—",
                          f"{iw['snipw']['value']:.3f}" if iw else "—", f"{iw['dr']['value']:.3f}" if iw else "—",
                          f"{iw['ess']:.0f}" if iw else "—")
    out_console().print(table)
    for e in rep["policies"]:
        for w in e["warnings"]:
            console.print(f"[bold yellow]warning:[/] {e['policy']}: {w}", highlight=False)


@eval_app.command("real-gauc")
def evaluate_real_gauc_cmd(
    policy: Annotated[list[str], typer.Option(help="Policy (repeatable): built-in, fixed-fusion JSON, or a policy "
                                              "trained with --env kuairand (its directory or its run's).")],
    split: Annotated[str, typer.Option(help="test (2022-05-05..08) or train (the first 10 days).")] = "test",
    mtl_scores: Annotated[bool, typer.Option("--mtl-scores", help="Also rank by each single MTL score.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of stochastic policies.")] = 0,
    sim_config: SimConfigOpt = None,
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Weighted GAUC on the real KuaiRand-Pure interactions (label long view, weight real reward + 1)."""
    from rlmtf.core.fusion import MTL_TASKS
    from rlmtf.envs.kuairand.data import load_kuairand
    from rlmtf.envs.kuairand.paths import resolve_data_dir
    from rlmtf.eval.real_gauc import RealGAUCEvaluator

    with errors():
        env = make_env("kuairand", sim_config, kuairand_dir, kuairand_models)
        with console.status("reading KuaiRand-Pure and scoring its rows..."):
            ev = RealGAUCEvaluator(env, load_kuairand(resolve_data_dir(kuairand_dir)), split=split)
        results = [ev.policy_gauc(pol).to_dict() for pol in labelled_policies(policy, env.cfg.action_space, seed)]
        if mtl_scores:
            results += [ev.score_gauc(t).to_dict() for t in MTL_TASKS]
    if json_out:
        print_json(results[0] if len(results) == 1 else results)
        return
    table = Table(title=f"Weighted GAUC on the real KuaiRand-Pure interactions ({split} days)")
    for col in ("policy", "level", "GAUC (long view)", "GAUC (play > 10 s)", "users", "users skipped"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["policy"]), str(r.get("level", "")), f"{r['gauc']:.4f}", f"{r['gauc_play10s']:.4f}",
                      str(r["n_users"]), str(r["n_users_skipped"]))
    out_console().print(table)


@eval_app.command("online")
def evaluate_online_cmd(
    policy: Annotated[list[str], typer.Option(help="Policies to compare (repeat; the first is the control): "
                                                   "built-in names or saved policies (JSON file, model directory "
                                                   "or run directory); NAME=PATH labels one NAME.")],
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
    check(users >= 1, f"--users must be >= 1, got {users}")
    check(days >= 1, f"--days must be >= 1, got {days}")
    check(workers >= 1, f"--workers must be >= 1, got {workers}")
    from rlmtf.eval.online import METRIC_LABELS, METRICS, online_ab

    with errors():
        sim = make_env(env, sim_config, kuairand_dir, kuairand_models)
        pols = labelled_policies(policy, sim.cfg.action_space, seed)
        with progress() as bar:
            def on_arm(i: int, name: str):
                task = bar.add_task(f"arm {i + 1}/{len(pols)}: {name}", total=None, extra="sessions")
                return lambda s, r: bar.update(task, advance=s)
            res = online_ab(pols, sim, users=users, days=days, seed=seed, on_arm=on_arm, workers=workers)
    if json_out:
        print_json(res.to_dict())
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
    out_console().print(table)


# --- analyze --------------------------------------------------------------------------------------

@analyze_app.command("exploration")
def analyze_exploration(
    data: Annotated[Path | None, typer.Option(help="Logged exploration data (the efficiency report).")] = None,
    sigma: Annotated[float, typer.Option(help="Standard deviation of the action-noise comparator.")] = 0.2,
    plot: Annotated[Path | None, typer.Option(help="Write the action-distribution figure (the paper's Figure 2, "
                                                   "PNG) to this file (default: no figure; DATA is only read).")]
    = None,
    cost: Annotated[bool, typer.Option("--cost", help="Also simulate what exploring costs the list: for uniform "
                                       "exploration per request, per day and per item around the baseline, the "
                                       "share of the baseline's top l still shown and the A/B lifts of exploring "
                                       "against not exploring.")] = False,
    users: Annotated[int, typer.Option(help="--cost: users of each A/B (1 day).")] = 3000,
    keep: Annotated[float, typer.Option(help="--cost: add per-item exploration at the widest box that keeps this "
                                        "share of the baseline's top l (0: none).")] = 0.8,
    seed: Annotated[int, typer.Option()] = 0,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Exploration efficiency of uniform vs action-noise exploration, from the logs and analytically; with
    --cost, what each exploration granularity costs the shown list and the users (simulated)."""
    import numpy as np

    from rlmtf.data.io import read_logs
    from rlmtf.eval.exploration import COST_SETTINGS, analyse, exploration_cost, item_box_for, plot_action_distributions
    from rlmtf.policy.fixed import baseline_policy

    if data is None and not cost:
        fail("give --data (the efficiency report of logged exploration), --cost (what exploring costs), or both")
    rep, png, rows = None, None, None
    with errors():
        if data is not None:
            logs = read_logs(data)
            rep = analyse(logs, sigma=sigma, seed=seed)
            png = plot_action_distributions(logs, plot, sigma=sigma, seed=seed) if plot is not None else None
        if cost:
            world = make_env(env, sim_config, kuairand_dir, kuairand_models)
            base = baseline_policy(world.cfg.action_space)
            with console.status("simulating exploration's cost..."):
                settings = COST_SETTINGS
                if keep > 0:
                    settings += (("item", round(item_box_for(world, base, keep, seed=seed)["box"], 4)),)
                rows = exploration_cost(world, base, settings, users=users, seed=seed)
    out = {**(rep.to_dict() if rep is not None else {}), "plot": str(png) if png is not None else None,
           "cost": rows}
    if json_out:
        print_json(out)
        return
    if rows is not None:
        table = Table(title=f"What exploring costs ({users:,} users x 1 day, against the baseline without noise)")
        for col in ("exploration", "top-l kept", "UVC", "UDT", "reward / user-day"):
            table.add_column(col, justify="left" if col == "exploration" else "right")
        for r in rows:
            table.add_row(f"uniform per {r['per']} +-{r['box']:g}", f"{r['top_l_kept']:.1%}",
                          *(f"{r[m]['lift']:+.2%} [{r[m]['ci_low']:+.2%}, {r[m]['ci_high']:+.2%}]"
                            for m in ("uvc", "udt", "reward")))
        out_console().print(table)
    if rep is None:
        return
    console.print(f"{rep.rows:,} logged samples (exploration: {rep.logged_by})")
    console.print(f"  in the box, all {len(rep.in_box_per_dim_logged)} dimensions: logged {rep.in_box_all_logged:.4f}; "
                  f"action noise N(0, {sigma}): analytic {rep.in_box_all_noise_analytic:.5f}, "
                  f"Monte Carlo {rep.in_box_all_noise_monte_carlo:.5f}")
    console.print(f"  per dimension, action noise: {np.mean(rep.in_box_per_dim_noise_analytic):.4f} (analytic)")
    console.print(f"  exploration efficiency: {rep.efficiency_from_logs:.0f}x from the logs "
                  f"(logged in-box fraction / action noise's), {rep.efficiency_analytic:.0f}x analytic without "
                  f"clipping, {rep.efficiency_analytic_clipped:.0f}x analytic with clipping to [-1, 1]")
    console.print(f"  figure: {png}" if png is not None else "  figure: none (--plot FILE writes it)")


@analyze_app.command("objective")
def analyze_objective(
    policy: Annotated[str, typer.Option(help="Where to measure: a built-in (baseline), a fixed-fusion JSON, or a "
                                        "saved policy or run directory (at its mean action on --data).")] = "baseline",
    objective: Annotated[list[str] | None, typer.Option(
        help="Candidate objective (repeatable): session[:gamma=G] or day[:gamma=G,session_gamma=S,return_bonus=B] "
             "(docs/design.md#the-objective). Default: the paper's session:gamma=0.9, session:gamma=1, "
             "day:gamma=0.9,session_gamma=0.9 and day:gamma=1,session_gamma=1.")] = None,
    data: Annotated[Path | None, typer.Option(help="Logged data whose requests give a trained policy's mean "
                                              "action (needed for a saved policy).")] = None,
    users: Annotated[int, typer.Option(help="Simulated users in every run.")] = 3000,
    days: Annotated[int, typer.Option(help="Days of every run.")] = 2,
    step: Annotated[float, typer.Option(help="Finite-difference step per action dimension.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed shared by all runs (common random numbers).")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of users for the standard errors.")] = 200,
    sim_config: SimConfigOpt = None,
    env: EnvOpt = "sim",
    kuairand_dir: KuaiRandDirOpt = None,
    kuairand_models: KuaiRandModelsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Which objective to optimise: finite-difference gradients of candidate objectives at a fusion (20 runs
    of the environment with common random numbers) and their cosine with the gradients of UVC, UDT and the
    reward per user-day. An objective pointing away from UVC (cosine < 0) would move a critic's policy
    where UVC falls."""
    from rlmtf.algos.registry import load_policy
    from rlmtf.core.objective import Objective
    from rlmtf.eval.objective import DEFAULT_OBJECTIVES, TARGETS, objective_gradients
    from rlmtf.policy.fixed import FixedPolicy

    with errors():
        objs = {text: Objective.parse(text) for text in (objective or DEFAULT_OBJECTIVES)}
        sim = make_env(env, sim_config, kuairand_dir, kuairand_models)
        pol = load_policy(policy, sim.cfg.action_space, seed=seed)
        if isinstance(pol, FixedPolicy):
            action = pol.action
        else:
            if data is None:
                raise ValueError(f"{policy}: a trained policy is measured at its mean action on logged requests; "
                                 "give them with --data")
            from rlmtf.data.io import read_logs
            from rlmtf.eval.offline import mean_policy_action

            action = mean_policy_action(pol, read_logs(data))
        with progress() as bar:
            task = bar.add_task("runs", total=20, extra="")

            def on_run(i: int, n: int):
                bar.update(task, completed=i, total=n, extra=f"{users} users x {days} days")
                return None

            rep = objective_gradients(sim, action, objs, users=users, days=days, seed=seed, step=step,
                                      bootstrap=bootstrap, on_run=on_run)
            bar.update(task, completed=20)
    if json_out:
        print_json(rep.to_dict())
        return
    table = Table(title=f"Objective alignment at {policy} ({users} users x {days} days, step {step}, seed {seed})")
    table.add_column("objective")
    for t in TARGETS:
        table.add_column(f"cos {t} (se)", justify="right")
    for name in objs:
        table.add_row(name, *(f"{rep.cosine[name][t]:+.2f} ({rep.cosine_se[name][t]:.2f})" for t in TARGETS))
    out_console().print(table)
    console.print("largest levers (gradient per unit action, se):")
    for name in [*TARGETS, *objs]:
        levers = ", ".join(f"{d} {g:+.2f} ({se:.2f})" for d, g, se in rep.levers(name))
        console.print(f"  {name}: {levers}")
