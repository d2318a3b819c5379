"""How long ``rlmtf evaluate ope`` takes for 5 policies on 16,000 logged sessions (the size of a paper-experiment
training set), run as a user runs it: the CLI in a subprocess, timed from start to exit.

Logs ``--sessions`` sessions of the default simulator exploring per user-day around the hand-set baseline,
writes 4 fixed fusions one action dimension away from it as policy files, and times the command on the
baseline and the 4 (FQE with its default 4,000 steps and 5 bootstrap members per metric, IPW/SNIPW/DR with
200 bootstrap resamples).

    python benchmarks/bench_ope.py --out runs/bench_ope
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rlmtf.core.provenance import git_commit
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import FixedPolicy, baseline_policy

#: (action dimension, shift) of the 4 fusions besides the baseline.
SHIFTS = ((2, 0.1), (7, 0.1), (1, -0.1), (4, -0.1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_ope"))
    ap.add_argument("--sessions", type=int, default=16_000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the timed command")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    base = baseline_policy()
    data = a.out / "logs"
    if not (data / "_meta.json").is_file():
        simulate_to_parquet(Simulator(SimConfig()), behaviour_policy(base, "uniform", "day", seed=1), data, seed=1,
                            sessions=a.sessions, overwrite=True)
    specs = ["--policy", "baseline"]
    for i, d in SHIFTS:
        act = base.action.copy()
        act[i] += d
        path = a.out / f"dim{i}{d:+}.json"
        FixedPolicy(act, name=path.stem).save(path)
        specs += ["--policy", str(path)]
    cmd = [sys.executable, "-m", "rlmtf.cli", "evaluate", "ope", "--data", str(data), *specs, "--threads",
           str(a.threads), "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"})
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    rep = json.loads(p.stdout)
    doc = {"commit": git_commit(), "command": " ".join(cmd[1:]), "seconds": seconds, "sessions": a.sessions,
           "episodes": rep["episodes"], "requests": rep["requests"], "policies": len(rep["policies"]),
           "cpus": os.cpu_count(), "threads": a.threads}
    (a.out / "result.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
