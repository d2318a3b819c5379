"""Enhanced-State RL against IntegratedRL-MTF on the default simulator (the paper's Tables 3 and 4),
and IntegratedRL-MTF with against without progressive training.

Per seed:
1. exploration data: the baseline fusion with uniform exploration per request (valid for both
   methods: every item of a request carries the request's action), and a second set explored per
   user-item pair (Enhanced-State RL's own exploration, as in the paper);
2. a test set logged by the baseline policy (no exploration), later days, another seed;
3. train IntegratedRL-MTF and Enhanced-State RL on the per-request data, and Enhanced-State RL on the
   per-item data ("esrl-item"), the same networks and steps;
4. weighted GAUC on the test set; a simulated online A/B with IntegratedRL-MTF as control;
5. PTM: IntegratedRL-MTF over `rounds` rounds of `sessions / rounds` sessions each, against
   IntegratedRL-MTF trained once on the first round's data for as many steps in total.

    python experiments/esrl_vs_integrated.py --out runs/esrl_vs_integrated [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlmtf.algos.esrl import ESRLConfig
from rlmtf.core.provenance import file_logger, git_commit
from rlmtf.data.io import read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.offline import evaluate_gauc
from rlmtf.eval.online import online_ab
from rlmtf.eval.stats import mean_ci
from rlmtf.pipelines.ptm import PTMConfig, run_ptm
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, train


def one_seed(seed: int, out: Path, a: argparse.Namespace, sim: Simulator, log) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    base = baseline_policy(sim.cfg.action_space)
    t0 = time.perf_counter()
    for per in ("request", "item"):
        simulate_to_parquet(sim, behaviour_policy(base, "uniform", per, seed=seed), out / f"explore_{per}",
                            seed=seed, sessions=a.sessions, overwrite=True, workers=a.workers)
    simulate_to_parquet(sim, base, out / "test", seed=seed + 1000, sessions=a.test_sessions, start_day=100,
                        overwrite=True, workers=a.workers)
    test = read_logs(out / "test")
    log(f"seed {seed}: data in {time.perf_counter() - t0:.0f}s")
    algo_cfg = dataclasses.replace(ESRLConfig(), hidden=tuple(a.hidden), ensemble_size=a.critics)
    tc = TrainConfig(steps=a.steps, seed=seed, eval_every=0, log_every=100, checkpoint_every=10**9)
    pols = {"baseline": base}
    for name, algo, data in (("integrated", "integrated", "explore_request"), ("esrl", "esrl", "explore_request"),
                             ("esrl-item", "esrl", "explore_item")):
        if name not in a.variants:
            continue
        t = time.perf_counter()
        trained = train(algo, out / data, out / f"run_{name}", cfg=tc, algo_cfg=algo_cfg, space=sim.cfg.action_space)
        pols[name] = trained.policy(name=name)
        log(f"seed {seed}: trained {name} in {time.perf_counter() - t:.0f}s")
    gauc = {n: evaluate_gauc(p, test, sim.cfg.action_space).gauc for n, p in pols.items()}
    arms = [pols[n] for n in ("integrated", "esrl", "esrl-item", "baseline") if n in pols]
    ab = online_ab(arms, sim, users=a.users, days=a.days, seed=seed + 2000, workers=a.workers)
    if a.skip_ptm:
        res = {"seed": seed, "gauc": gauc, "online": ab.to_dict()}
        (out / "result.json").write_text(json.dumps(res, indent=2, default=float))
        log(f"seed {seed}: done in {time.perf_counter() - t0:.0f}s; GAUC " +
            ", ".join(f"{k} {v:.4f}" for k, v in gauc.items()))
        return res
    # PTM vs no PTM (IntegratedRL-MTF)
    per_round = a.sessions // a.rounds
    ptm_rows = run_ptm("integrated", sim, out / "ptm", PTMConfig(
        rounds=a.rounds, sessions_per_round=per_round, steps_per_round=a.steps // a.rounds,
        test_sessions=a.test_sessions, online_users=a.users // 2, online_days=1, seed=seed, workers=a.workers),
        algo_cfg, dataclasses.replace(tc, steps=a.steps // a.rounds), log=log).rows
    ptm_policy = ptm_rows[-1]["policy"]
    ptm_final = read_ptm_policy(out / "ptm" / f"round_{a.rounds}" / "run" / "policy")
    once = train("integrated", out / "ptm" / "round_1" / "data", out / "run_integrated_once", cfg=tc,
                 algo_cfg=algo_cfg, space=sim.cfg.action_space).policy(name="integrated w/o PTM")
    ptm_final.name = "integrated w/ PTM"
    gauc["integrated w/o PTM"] = evaluate_gauc(once, test, sim.cfg.action_space).gauc
    gauc["integrated w/ PTM"] = evaluate_gauc(ptm_final, test, sim.cfg.action_space).gauc
    ab_ptm = online_ab([once, ptm_final, base], sim, users=a.users, days=a.days, seed=seed + 3000, workers=a.workers)
    res = {"seed": seed, "gauc": gauc, "online": ab.to_dict(), "online_ptm": ab_ptm.to_dict(), "ptm_rounds": ptm_rows,
           "ptm_policy": ptm_policy}
    (out / "result.json").write_text(json.dumps(res, indent=2, default=float))
    log(f"seed {seed}: done in {time.perf_counter() - t0:.0f}s; GAUC " +
        ", ".join(f"{k} {v:.4f}" for k, v in gauc.items()))
    return res


def read_ptm_policy(path: Path):
    from rlmtf.algos.registry import load_policy

    return load_policy(str(path))


def summarise(results: list[dict]) -> dict:
    def stat(xs):
        xs = np.asarray(xs, dtype=np.float64)
        m, lo, hi = mean_ci(xs) if xs.size > 1 else (float(xs[0]),) * 3
        return {"mean": m, "sd": float(xs.std(ddof=1)) if xs.size > 1 else 0.0, "ci_low": lo, "ci_high": hi,
                "values": xs.tolist()}

    gauc = {k: stat([r["gauc"][k] for r in results]) for k in results[0]["gauc"]}
    lifts = {}
    for key in ("online", "online_ptm"):
        if key not in results[0]:
            continue
        for arm in results[0][key]["arms"][1:]:
            name = arm["policy"]
            for m in ("uvc", "udt", "sessions", "reward", "session_length"):
                vals = [next(x for x in r[key]["arms"] if x["policy"] == name)["lifts"][m] for r in results]
                lifts[f"{name} vs {results[0][key]['control']}: {m}"] = {
                    "lift": stat([v["lift"] for v in vals]),
                    "per_seed": [{"lift": v["lift"], "ci": [v["ci_low"], v["ci_high"]], "p": v["p_value"]}
                                 for v in vals]}
    return {"gauc": gauc, "lifts": lifts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/esrl_vs_integrated"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sessions", type=int, default=20000)
    ap.add_argument("--test-sessions", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--critics", type=int, default=10)
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-ptm", action="store_true", help="only the ESRL vs IntegratedRL comparison")
    ap.add_argument("--variants", nargs="+", default=["integrated", "esrl", "esrl-item"],
                    help="which of integrated, esrl (per-request data), esrl-item (per-item data) to train")
    a = ap.parse_args()
    torch.set_num_threads(2)
    sim = Simulator(SimConfig())
    log = file_logger(a.out / "log.txt")

    results = [one_seed(s, a.out / f"seed_{s}", a, sim, log) for s in a.seeds]
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "commit": git_commit(), "summary": summarise(results), "per_seed": results}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    log(json.dumps(summary["summary"]["gauc"], indent=1, default=float))


if __name__ == "__main__":
    main()
