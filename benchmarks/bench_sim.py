"""Simulator throughput: shown user-item pairs per second with 100 candidates per request.

Runs one simulated day of the whole default population (20,000 users) under the baseline policy,
under uniform exploration per request and per item, with and without writing Parquet logs, and
prints rows/s for each (target: >= 100,000 shown pairs a second on 2 cores).

    python benchmarks/bench_sim.py [--users 20000] [--days 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from rlmtf.core.provenance import git_commit
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.parallel import run_parallel
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import baseline_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = SimConfig(n_users=max(args.users, SimConfig().n_users))
    t = time.perf_counter()
    sim = Simulator(cfg)
    build_s = time.perf_counter() - t
    users = np.arange(args.users)
    base = baseline_policy(cfg.action_space)
    rows = []
    per_req = behaviour_policy(base, "uniform", "request")
    per_item = behaviour_policy(base, "uniform", "item")
    cases = [("baseline", base, False, 1), ("uniform per request", per_req, False, 1),
             ("uniform per item", per_item, False, 1), ("uniform per request + Parquet", per_req, True, 1),
             ("baseline, 2 workers", base, False, 2), ("uniform per item, 2 workers", per_item, False, 2),
             ("uniform per request + Parquet, 2 workers", per_req, True, 2)]
    for name, pol, write, workers in cases:
        t = time.perf_counter()
        if write:
            with tempfile.TemporaryDirectory() as d:
                r, _ = simulate_to_parquet(sim, pol, os.path.join(d, "logs"), seed=args.seed, days=args.days,
                                           users=users, workers=workers)
        elif workers > 1:
            r, _ = run_parallel(sim, pol, workers=workers, seed=args.seed, days=args.days, users=users,
                                max_sessions=None)
        else:
            r = sim.run(pol, seed=args.seed, days=args.days, users=users)
        dt = time.perf_counter() - t
        rows.append({"case": name, "rows": r.n_rows, "sessions": r.n_sessions, "seconds": round(dt, 2),
                     "rows_per_s": round(r.n_rows / dt)})
    out = {"users": args.users, "days": args.days, "candidates": cfg.retrieval.n_candidates,
           "world_build_s": round(build_s, 2), "cases": rows, "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "numpy": np.__version__, "commit": git_commit()}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.users:,} users x {args.days} day(s), {cfg.retrieval.n_candidates} candidates/request, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}, world built in {build_s:.2f}s")
    for r in rows:
        print(f"  {r['case']:<42} {r['rows']:>10,} rows {r['sessions']:>8,} sessions {r['seconds']:>7.2f}s "
              f"{r['rows_per_s']:>10,} rows/s")


if __name__ == "__main__":
    main()
