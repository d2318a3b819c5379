"""Does off-policy evaluation rank fusions as the online A/B does? A small check on the default simulator.

Logs 2 days of 3,000 users exploring per user-day around the hand-set baseline (+-0.15), then estimates
with ``rlmtf.eval.ope`` (FQE, IPW, SNIPW, DR) the baseline and three fusions one action dimension away
from it, and runs the A/B of the same fusions (3,000 users x 2 days) for the truth.

    python experiments/ope_check.py --out runs/ope_check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from rlmtf.core.provenance import file_logger, git_commit
from rlmtf.data import read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.fqe import FQEConfig
from rlmtf.eval.online import online_ab
from rlmtf.eval.ope import OPEConfig, evaluate_ope
from rlmtf.policy.fixed import FixedPolicy, baseline_policy

#: (action dimension, shift) of the three fusions next to the baseline.
SHIFTS = ((2, 0.1), (7, 0.1), (1, -0.1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ope_check"))
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=3000, help="FQE steps")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    log = file_logger(a.out / "log.txt")
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=a.users))
    base = baseline_policy()
    pols = [base]
    for i, d in SHIFTS:
        act = base.action.copy()
        act[i] += d
        pols.append(FixedPolicy(act, name=f"dim{i}{d:+}"))
    data = a.out / "logs"
    simulate_to_parquet(sim, behaviour_policy(base, "uniform", "day", lower_b=-0.15, upper_b=0.15, seed=a.seed),
                        data, seed=a.seed, days=2, overwrite=True)
    t0 = time.perf_counter()
    rep = evaluate_ope(pols, read_logs(data), OPEConfig(fqe=FQEConfig(steps=a.steps)), log=log)
    seconds = time.perf_counter() - t0
    ab = online_ab(pols, sim, users=a.users, days=2, seed=a.seed)
    base_dr = rep["policies"][0]["is"]["uvc"]["dr"]["value"]
    for e, arm in zip(rep["policies"][1:], ab.arms[1:], strict=True):
        log(f"{e['policy']}: online UVC {arm.lifts['uvc']['lift']:+.2%}; FQE {e['fqe']['uvc']['lift']['mean']:+.2%}; "
            f"DR {e['is']['uvc']['dr']['value'] / base_dr - 1:+.2%}")
    log(f"off-policy evaluation of {len(pols)} policies + the reference in {seconds:.0f}s")
    (a.out / "result.json").write_text(json.dumps({"commit": git_commit(), "ope": rep, "online": ab.to_dict(),
                                                   "ope_seconds": seconds}, indent=2, default=float))


if __name__ == "__main__":
    main()
