"""Where an item-level actor's actions land on the candidates it scores at serving time, trained without and
with the candidate sample (docs/design.md#the-candidate-sample).

One per-item exploration log with the candidate sample; Enhanced-State RL (``--variant``) trained on it three
times, identical but for what it reads of the sample (nothing; ``candidate_penalty``; ``candidate_penalty`` and
``candidate_stats``); then, on every candidate of requests recorded under the baseline
(fresh users and seed), the share of the actor's actions outside the logged box (the baseline's action
+- the box), their mean distance outside it, and the share of the baseline's top l the actor still shows;
last, a simulated A/B of all three against the baseline (UVC, UDT, reward per user-day).

    python experiments/candidate_box.py --out runs/candidate_box [--variant paper] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rlmtf.algos.esrl import ESRLConfig
from rlmtf.core.fusion import fused_log_score, rank_top_l
from rlmtf.data.io import read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig, load_sim_config
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.exploration import RequestSampler
from rlmtf.eval.online import online_ab
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, train


def serving_box(pol, requests, base, space, box: float, list_len: int) -> dict:
    """On every candidate of ``requests``: the share of ``pol``'s action dimensions outside ``base`` +- ``box``,
    the share of candidates with any dimension outside, the mean distance outside, and the top-l overlap."""
    out_dim = out_any = dist = kept = n_cand = n_dim = n_req = 0.0
    for obs in requests:
        a = pol.act(obs)  # (B, N, A)
        b = base.act(obs)
        mu = np.broadcast_to(b[:, None, :] if b.ndim == 2 else b, a.shape)
        over = np.maximum(np.abs(a - mu) - box, 0.0)
        out_dim += float((over > 1e-6).sum())
        out_any += float((over > 1e-6).any(-1).sum())
        dist += float(over.sum())
        n_dim += over.size
        n_cand += over.shape[0] * over.shape[1]
        shown = rank_top_l(fused_log_score(obs.mtl_scores, a, space), list_len)
        ref = rank_top_l(fused_log_score(obs.mtl_scores, mu, space), list_len)
        kept += float((ref[:, :, None] == shown[:, None, :]).any(-1).sum())
        n_req += a.shape[0]
    return {"outside_dims": out_dim / n_dim, "outside_candidates": out_any / n_cand,
            "mean_distance_outside": dist / n_dim, "top_l_kept": kept / (n_req * list_len)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sim-config", type=Path, default=None)
    ap.add_argument("--variant", default="paper", choices=["paper", "residual"])
    ap.add_argument("--sessions", type=int, default=4000)
    ap.add_argument("--box", type=float, default=0.15)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--users", type=int, default=2000, help="users of the A/B (1 day)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    cfg = load_sim_config(a.sim_config) if a.sim_config else SimConfig()
    sim = Simulator(cfg)
    space, base = cfg.action_space, baseline_policy(cfg.action_space)
    data = a.out / "data"
    simulate_to_parquet(sim, behaviour_policy(base, "uniform", "item", lower_b=-a.box, upper_b=a.box, seed=a.seed + 1),
                        data, seed=a.seed + 1, sessions=a.sessions, overwrite=True, log_candidates=True)
    logs = read_logs(data)
    print(f"{time.perf_counter() - t0:6.0f}s logged {len(next(iter(logs.columns.values()))):,} rows")
    sampler = RequestSampler(base, space, cfg.list_len, limit=3000)
    sim.run(sampler, seed=a.seed + 777, days=1, users=np.arange(cfg.n_users - 600, cfg.n_users), log_true_scores=False)
    rows, policies = {}, []
    for arm, (penalty, stats) in {"shown only": (False, False), "candidate penalty": (True, False),
                                  "candidate penalty and stats": (True, True)}.items():
        name = f"esrl {a.variant}, {arm}"
        algo = train("esrl", logs, a.out / f"run_{int(penalty)}{int(stats)}",
                     cfg=TrainConfig(steps=a.steps, seed=a.seed, eval_every=0),
                     algo_cfg=ESRLConfig(variant=a.variant, candidate_penalty=penalty, candidate_stats=stats),
                     space=space)
        pol = algo.policy(name)
        policies.append(pol)
        rows[name] = serving_box(pol, sampler.obs, base, space, a.box, cfg.list_len)
        print(f"{time.perf_counter() - t0:6.0f}s {name}: {json.dumps(rows[name])}")
    ab = online_ab([base, *policies], sim, users=a.users, days=1, seed=a.seed + 999)
    for arm in ab.arms[1:]:
        rows[arm.policy]["ab"] = {m: {k: float(arm.lifts[m][k]) for k in ("lift", "ci_low", "ci_high")}
                                for m in ("uvc", "udt", "reward")}
        lf = rows[arm.policy]["ab"]
        print(f"{arm.policy}: UVC {lf['uvc']['lift']:+.2%} [{lf['uvc']['ci_low']:+.2%}, {lf['uvc']['ci_high']:+.2%}], "
              f"UDT {lf['udt']['lift']:+.2%}, reward {lf['reward']['lift']:+.2%} vs the baseline")
    info = {"args": {k: str(v) for k, v in vars(a).items()}, "requests": sum(o.batch_size for o in sampler.obs),
            "seconds": round(time.perf_counter() - t0), "rows": rows}
    (a.out / "candidate_box.json").write_text(json.dumps(info, indent=2))
    print(f"wrote {a.out / 'candidate_box.json'} ({info['seconds']}s)")


if __name__ == "__main__":
    main()
