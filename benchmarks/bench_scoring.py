"""In-process scoring latency of a fusion policy on one core: the Enhanced-State actor on every
candidate (item-level; the paper's actor and the residual variant's, whose user trunk runs once per request)
against one action per request (user-level), plus the fusion and top-k.

    python benchmarks/bench_scoring.py [--candidates 100 500] [--repeats 300] [--hidden 256,256]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from rlmtf.algos.esrl import EnhancedStateRL, ESRLConfig
from rlmtf.algos.integrated import IntegratedRL
from rlmtf.core.fusion import fused_log_score, rank_top_l
from rlmtf.core.provenance import git_commit
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.world import feature_spec
from rlmtf.policy.base import RequestObs


def obs_for(spec, n: int, rng: np.random.Generator) -> RequestObs:
    f = np.float32
    return RequestObs(user_id=np.zeros(1, np.int64), request_key=np.zeros(1, np.uint64),
                      user_profile=rng.random((1, spec.user_profile.dim)).astype(f),
                      user_history=rng.random((1, spec.user_history.dim)).astype(f),
                      context=rng.random((1, spec.context.dim)).astype(f), item_id=np.arange(n)[None],
                      mtl_scores=rng.random((1, n, 5)).astype(f),
                      item_features_=rng.random((1, n, spec.item_features.dim)).astype(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--hidden", default="256,256")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    spec = feature_spec(SimConfig())
    cfg = ESRLConfig(hidden=tuple(int(h) for h in a.hidden.split(",")))
    rng = np.random.default_rng(0)
    rows = []
    residual = dataclasses.replace(cfg, variant="residual")
    for cls, c, label in ((EnhancedStateRL, cfg, "esrl (item-level)"),
                          (EnhancedStateRL, residual, "esrl residual (item-level)"),
                          (IntegratedRL, cfg, "integrated (user-level)")):
        pol = cls(spec, c).policy()
        for n in a.candidates:
            obs = obs_for(spec, n, rng)
            times = []
            for i in range(a.repeats + 20):
                t = time.perf_counter()
                act = pol.act(obs)
                scores = fused_log_score(obs.mtl_scores, act if act.ndim == 3 else act[:, None, :])
                rank_top_l(scores, 5)
                if i >= 20:  # warm-up excluded
                    times.append(time.perf_counter() - t)
            ms = np.array(times) * 1000
            rows.append({"policy": label, "candidates": n,
                         "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))})
    out = {"hidden": a.hidden, "threads": 1, "commit": git_commit(), "rows": rows}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"one core, hidden {a.hidden}, act + fusion + top-5, {a.repeats} repeats")
    p50 = {(r["policy"], r["candidates"]): r["p50_ms"] for r in rows}
    for r in rows:
        print(f"  {r['policy']:<28} {r['candidates']:>5} candidates  "
              f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
              f"p50 / user-level {r['p50_ms'] / p50[('integrated (user-level)', r['candidates'])]:.2f}x")


if __name__ == "__main__":
    main()
