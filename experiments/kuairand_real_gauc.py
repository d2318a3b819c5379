"""Fusion policies ranked on the real KuaiRand-Pure test days: weighted GAUC with the real behaviours.

Every method ranks the real impressions of the last 4 days (2022-05-05..08) with the fitted MTL model's 5
scores; the weighted GAUC (label long view, weight = real reward + 1) is computed by
``rlmtf.eval.real_gauc`` (see its docstring for the observation each policy sees):

(a) the hand-set baseline fusion;
(b) each single MTL score;
(c) a fixed fusion tuned by CMA-ES (``rlmtf.pipelines.fixed_search``) on the weighted GAUC of the *first 10
    days'* real interactions, starting from the baseline;
(d) IntegratedRL-MTF and (e) Enhanced-State RL trained in the KuaiRand environment
    (``make_env("kuairand")``) on exploration data of the baseline with uniform exploration: per request
    ("integrated", "esrl") and per user-item pair ("esrl-item", Enhanced-State RL's own exploration), one
    run per seed.

Δ is the difference to the baseline with a 95% paired user-bootstrap interval (for several seeds: of the
seed-averaged difference; the ± is the standard deviation over seeds).

    python experiments/kuairand_real_gauc.py --out runs/kuairand_real_gauc [--seeds 0 1 2]

One seed (the default) took 8 minutes on the shared 2-core machine with 1 torch thread (up to 15 when the
machine is busy); each more seed adds about 7 (the two Enhanced-State RL runs dominate: about 3 minutes each
at 1,500 steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rlmtf.algos.esrl import ESRLConfig
from rlmtf.core.fusion import MTL_TASKS
from rlmtf.core.provenance import file_logger, git_commit
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.factory import make_env
from rlmtf.envs.kuairand.data import load_kuairand
from rlmtf.envs.kuairand.paths import resolve_data_dir
from rlmtf.eval.real_gauc import RealGAUCEvaluator
from rlmtf.pipelines.fixed_search import FixedSearchConfig, fixed_search
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, train

VARIANTS = {"integrated": ("integrated", "request"), "esrl": ("esrl", "request"), "esrl-item": ("esrl", "item")}


def fmt_params(ev: RealGAUCEvaluator, action: np.ndarray) -> str:
    power, bias = ev.space.to_params(np.asarray(action, np.float64))
    return " ".join(f"{t}:{p:.2f}/{b:.2f}" for t, p, b in zip(MTL_TASKS, power, bias, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/kuairand_real_gauc"))
    ap.add_argument("--kuairand-dir", type=Path, default=None, help="KuaiRand-Pure directory (default: "
                    "$RLMTF_KUAIRAND_DIR or shared/data/kuairand_pure)")
    ap.add_argument("--kuairand-models", type=Path, default=None, help="fitted KuaiRand models (default: "
                    "$RLMTF_KUAIRAND_MODELS or the cache; fitted there if missing)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sessions", type=int, default=3000, help="exploration sessions per data set and seed")
    ap.add_argument("--steps", type=int, default=1500, help="gradient steps per RL run")
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--generations", type=int, default=30, help="CMA-ES generations of the fixed-fusion search")
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--n-boot", type=int, default=200, help="user-bootstrap replicates of each Δ")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log = file_logger(out / "log.txt", fresh=True)

    env = make_env("kuairand", kuairand_dir=a.kuairand_dir, models_dir=a.kuairand_models, log=log)
    data = load_kuairand(resolve_data_dir(a.kuairand_dir))
    space = env.cfg.action_space
    test = RealGAUCEvaluator(env, data, split="test", space=space)
    train_ev = RealGAUCEvaluator(env, data, split="train", space=space)
    log(f"real rows: train {len(train_ev):,}, test {len(test):,}")

    base = baseline_policy(space)
    entries: list[dict] = []  # one per table row: name, kind, preds (list), results (list), ...

    def add(name: str, kind: str, level: str, preds: list[np.ndarray], results: list, train_results: list,
            info: dict | None = None) -> None:
        entries.append({"name": name, "kind": kind, "level": level, "preds": preds, "results": results,
                        "train_results": train_results, "info": info or {}})

    # (a) baseline, (b) single scores
    add("baseline (hand-set fusion)", "fixed", "user", [test.predictions(base)], [test.policy_gauc(base)],
        [train_ev.policy_gauc(base)], {"params": fmt_params(test, base.action)})
    for task in MTL_TASKS:
        r = test.score_gauc(task)
        add(f"MTL score {task} alone", "score", "score", [test.rows.mtl_scores[:, MTL_TASKS.index(task)]
                                                           .astype(np.float64)], [r], [train_ev.score_gauc(task)])
    # (c) CMA-ES fixed fusion on the training days' real interactions
    t = time.perf_counter()
    fixed, history = fixed_search(train_ev.as_logged(), base.action,
                                  FixedSearchConfig(generations=a.generations, population=a.population, seed=0),
                                  space)
    fixed.name = "fixed-search"
    log(f"fixed-search: train-days GAUC {history[0]:.4f} -> {history[-1]:.4f} in {time.perf_counter() - t:.0f}s; "
        f"{fmt_params(test, fixed.action)}")
    add("fixed fusion, CMA-ES on train days", "fixed", "user", [test.predictions(fixed)], [test.policy_gauc(fixed)],
        [train_ev.policy_gauc(fixed)], {"params": fmt_params(test, fixed.action), "action": fixed.action.tolist(),
                                        "search_history": history})
    # (d, e) RL trained in the KuaiRand environment
    algo_cfg = dataclasses.replace(ESRLConfig(), hidden=tuple(a.hidden), embed_dim=a.embed_dim)
    rl: dict[str, dict] = {v: {"preds": [], "results": [], "train_results": [], "info": []} for v in a.variants}
    for seed in a.seeds:
        sdir = out / f"seed_{seed}"
        pers = sorted({VARIANTS[v][1] for v in a.variants})
        for per in pers:
            t = time.perf_counter()
            res, _ = simulate_to_parquet(env, behaviour_policy(base, "uniform", per, seed=seed),
                                         sdir / f"explore_{per}", seed=seed, sessions=a.sessions, overwrite=True)
            log(f"seed {seed}: {a.sessions} exploration sessions per {per}: {res.n_rows:,} rows in "
                f"{time.perf_counter() - t:.0f}s")
        tc = TrainConfig(steps=a.steps, seed=seed, eval_every=0, log_every=100, checkpoint_every=10**9)
        for v in a.variants:
            algo, per = VARIANTS[v]
            t = time.perf_counter()
            trained = train(algo, sdir / f"explore_{per}", sdir / f"run_{v}", cfg=tc, algo_cfg=algo_cfg, space=space)
            pol = trained.policy(name=v)
            acts = test.actions(pol)
            r, rt = test.policy_gauc(pol), train_ev.policy_gauc(pol)
            rl[v]["preds"].append(test.predictions(pol))
            rl[v]["results"].append(r)
            rl[v]["train_results"].append(rt)
            rl[v]["info"].append({"seed": seed, "mean_action": acts.mean(0).tolist(),
                                  "mean_params": fmt_params(test, acts.mean(0)),
                                  "action_sd_over_rows": acts.std(0).tolist()})
            log(f"seed {seed}: {v} trained in {time.perf_counter() - t:.0f}s; test GAUC {r.gauc:.4f}, "
                f"train-days {rt.gauc:.4f}; mean action {fmt_params(test, acts.mean(0))}")
    labels = {"integrated": "IntegratedRL-MTF (per-request exploration)",
              "esrl": "Enhanced-State RL (per-request exploration)",
              "esrl-item": "Enhanced-State RL (per-item exploration)"}
    for v in a.variants:
        add(labels[v], v, "user" if v == "integrated" else "item", rl[v]["preds"], rl[v]["results"],
            rl[v]["train_results"], {"per_seed": rl[v]["info"]})

    # Δ vs baseline, table, JSON
    base_pred = entries[0]["preds"][0]
    t = time.perf_counter()
    for e in entries[1:]:
        e["delta"] = test.paired_bootstrap(e["preds"], base_pred, n_boot=a.n_boot, seed=0).to_dict()
    log(f"bootstrap ({a.n_boot} replicates per row) in {time.perf_counter() - t:.0f}s")

    def mean_sd(xs: list[float]) -> str:
        if len(xs) == 1:
            return f"{xs[0]:.4f}"
        return f"{np.mean(xs):.4f} ± {np.std(xs, ddof=1):.4f}"

    r0 = entries[0]["results"][0]
    title = (f"Weighted GAUC on the real KuaiRand-Pure test days 2022-05-05..08 ({r0.rows:,} impressions; "
             f"label long view: {r0.n_users:,} users with both labels, {r0.n_users_skipped:,} skipped; "
             f"weight = real reward + 1). RL: {len(a.seeds)} seed(s) {a.seeds}, {a.sessions:,} exploration "
             f"sessions, {a.steps:,} steps, hidden {tuple(a.hidden)}, embed {a.embed_dim}.")
    header = ("| method | level | test GAUC (long view) | Δ vs baseline [95% CI] | test GAUC (play > 10 s) | "
              "train-days GAUC (long view) |")
    lines = [title, "", header, "|---|---|---:|---|---:|---:|"]
    for e in entries:
        g = [r.gauc for r in e["results"]]
        g10 = [r.gauc_play10s for r in e["results"]]
        gt = [r.gauc for r in e["train_results"]]
        if "delta" in e:
            d = e["delta"]
            delta = f"{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
        else:
            delta = "—"
        lines.append(f"| {e['name']} | {e['level']} | {mean_sd(g)} | {delta} | {mean_sd(g10)} | {mean_sd(gt)} |")
    table = "\n".join(lines)
    elapsed = time.perf_counter() - t_start
    (out / "table.md").write_text(table + "\n")
    doc = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "commit": git_commit(),
           "elapsed_s": round(elapsed, 1), "torch_threads": a.threads, "python": platform.python_version(),
           "rows": {"train": len(train_ev), "test": len(test)},
           "results": [{"name": e["name"], "kind": e["kind"], "level": e["level"],
                        "test": [r.to_dict() for r in e["results"]],
                        "train_days": [r.to_dict() for r in e["train_results"]],
                        "delta_vs_baseline": e.get("delta"), "info": e["info"]} for e in entries]}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=float))
    print(table)
    log(f"done in {elapsed:.0f}s -> {out}/table.md, {out}/results.json")


if __name__ == "__main__":
    main()
