"""The end-to-end demo: simulate -> train -> evaluate -> report, on the default simulator.

1. log exploration data: the baseline fusion with uniform exploration (SPEC section 4);
2. log a test set with the baseline policy on later days (another seed);
3. train: IntegratedRL-MTF and Enhanced-State RL on the exploration logs (small networks, a few
   hundred steps), and one fixed fusion searched by CMA-ES over weighted GAUC;
4. evaluate the hand-set policies and the trained one by weighted GAUC on the test set;
5. a simulated online A/B test of the same policies against the baseline;
6. write ``report.md``, ``results.json`` and two plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from rlmtf.data.io import read_logs
from rlmtf.eval.offline import evaluate_gauc
from rlmtf.eval.online import METRIC_LABELS, METRICS, online_ab
from rlmtf.policy.registry import load_policy
from rlmtf.sim.collect import behaviour_policy, git_commit, simulate_to_parquet
from rlmtf.sim.config import load_sim_config, to_toml
from rlmtf.sim.simulator import Simulator


def run_demo(out: Path, *, sessions: int, test_sessions: int, users: int, days: int, seed: int,
             sim_config: Path | None, console, progress, steps: int = 300) -> dict:
    import dataclasses

    from rlmtf.algos.esrl import ESRLConfig
    from rlmtf.algos.fixed_search import FixedSearchConfig, fixed_search
    from rlmtf.algos.train import TrainConfig, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_sim_config(sim_config)
    (out / "sim_config.toml").write_text(to_toml(cfg))
    sim = Simulator(cfg)
    space = cfg.action_space
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def log_data(name: str, policy, n: int, run_seed: int, start_day: int):
        with progress() as bar:
            task = bar.add_task(name, total=n, extra="")
            simulate_to_parquet(sim, policy, out / name, seed=run_seed, sessions=n, start_day=start_day,
                                overwrite=True, progress=lambda s, r: bar.update(task, advance=s))

    t = time.perf_counter()
    base = load_policy("baseline", space)
    log_data("explore", behaviour_policy(base, "uniform", "request", seed=seed), sessions, seed, 0)
    log_data("test", base, test_sessions, seed + 1000, 30)
    timings["simulate"] = time.perf_counter() - t

    t = time.perf_counter()
    train_logs = read_logs(out / "explore")
    with progress() as bar:
        task = bar.add_task("train: CMA-ES fixed fusion", total=30, extra="")
        tuned, history = fixed_search(train_logs, base.action, FixedSearchConfig(seed=seed), space,
                                      on_generation=lambda g, v: bar.update(task, advance=1, extra=f"GAUC {v:.4f}"))
    tuned.save(out / "fixed_search_policy.json", space)
    rl = {}
    algo_cfg = dataclasses.replace(ESRLConfig(), hidden=(64, 64))
    for name in ("integrated", "esrl"):
        with progress() as bar:
            task = bar.add_task(f"train: {name}", total=steps, extra="")
            trained = train(name, train_logs, out / f"run_{name}", algo_cfg=algo_cfg, space=space,
                            cfg=TrainConfig(steps=steps, seed=seed, eval_every=0, log_every=50,
                                            checkpoint_every=steps),
                            on_step=lambda s, m, bar=bar, task=task: bar.update(task, completed=s,
                                                                                extra=f"Q {m['q/mean']:.2f}"))
        rl[name] = trained.policy(name=name)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    test = read_logs(out / "test")
    policies = {name: load_policy(name, space, seed=seed) for name in ("baseline", "random", "valid-only", "oracle")}
    policies["fixed-search"] = tuned
    policies.update(rl)
    gaucs = {name: evaluate_gauc(p, test, space).to_dict() for name, p in policies.items()}
    timings["evaluate_gauc"] = time.perf_counter() - t

    t = time.perf_counter()
    order = ["baseline", "integrated", "esrl", "fixed-search", "random", "valid-only", "oracle"]
    with progress() as bar:
        def on_arm(i: int, name: str):
            task = bar.add_task(f"A/B arm {i + 1}/{len(order)}: {name}", total=None, extra="")
            return lambda s, r: bar.update(task, advance=s)
        ab = online_ab([policies[n] for n in order], sim, users=users, days=days, seed=seed + 2000, on_arm=on_arm)
    timings["evaluate_online"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    results = {"commit": git_commit(), "seed": seed, "sessions": sessions, "test_sessions": test_sessions,
               "gauc": gaucs, "online": ab.to_dict(), "fixed_search_history": history, "timings_s": timings}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    _plots(out, gaucs, ab, order)
    _report(out, results, order)
    console.print(f"demo finished in {timings['total']:.0f}s: see {out / 'report.md'}")
    return results


def _plots(out: Path, gaucs: dict, ab, order: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    vals = [gaucs[n]["gauc"] for n in order]
    ax.barh(order, vals, color=["#555" if n == "baseline" else "#3a7" for n in order])
    ax.set_xlim(min(vals) - 0.02, max(vals) + 0.01)
    ax.set_xlabel("weighted GAUC on the baseline-logged test set")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.4f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gauc.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, metric in zip(axes, ("uvc", "udt"), strict=True):
        arms = ab.arms[1:]
        lifts = [a.lifts[metric]["lift"] * 100 for a in arms]
        err = np.array([[(a.lifts[metric]["lift"] - a.lifts[metric]["ci_low"]) * 100,
                         (a.lifts[metric]["ci_high"] - a.lifts[metric]["lift"]) * 100] for a in arms]).T
        ax.barh([a.policy for a in arms], lifts, xerr=err, color="#37a", capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"{metric.upper()} lift over {ab.arms[0].policy} (%), 95% CI")
    fig.tight_layout()
    fig.savefig(out / "online_lifts.png", dpi=120)
    plt.close(fig)


def _report(out: Path, r: dict, order: list[str]) -> None:
    lines = ["# rlmtf demo report", "",
             (f"Commit `{r['commit']}`, seed {r['seed']}; {r['sessions']:,} exploration sessions, "
              f"{r['test_sessions']:,} test sessions logged by the baseline policy."), "",
             "## Weighted GAUC on the test set", "", "| policy | weighted GAUC | users | users skipped |",
             "|---|---:|---:|---:|"]
    for n in order:
        g = r["gauc"][n]
        lines.append(f"| {n} | {g['gauc']:.4f} | {g['n_users']:,} | {g['n_users_skipped']:,} |")
    on = r["online"]
    lines += ["", "![GAUC](gauc.png)", "",
              f"## Simulated online A/B ({on['users']:,} users x {on['days']} days, control: {on['control']})", "",
              "| metric | " + " | ".join(a["policy"] for a in on["arms"]) + " |",
              "|---|" + "---:|" * len(on["arms"])]
    for k in METRICS:
        cells = []
        for i, a in enumerate(on["arms"]):
            m = a["means"][k]["mean"]
            lift = a["lifts"].get(k)
            cells.append(f"{m:.3f}" if i == 0 or not lift or "error" in lift else
                         f"{m:.3f} ({lift['lift']:+.1%}, 95% CI [{lift['ci_low']:+.1%}, {lift['ci_high']:+.1%}], "
                         f"p={lift['p_value']:.2g})")
        lines.append(f"| {METRIC_LABELS[k]} | " + " | ".join(cells) + " |")
    lines += ["", "![online lifts](online_lifts.png)", "", "## Timings (s)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in r["timings_s"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
