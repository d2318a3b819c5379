"""How many gradient steps a progressive round needs before its candidate is worth an A/B.

In the improved setting (``rlmtf.pipelines.settings``: the relative action space, exploration per user-day
around the hand-set baseline with the box shifted inside, the undiscounted user-day objective) the gated
progressive rounds' first candidates lost 5-8% UVC while IntegratedRL-MTF trained once on the same kind of
logs for 5x the steps gained 1.5%. This script separates the two differences: per seed it logs one round
of exploration around the baseline, trains IntegratedRL-MTF on it (no warm start) for each of ``--steps``,
with the same seed, and puts every policy in one A/B against the baseline. It also records the critics'
TD loss and the mean action at the end of each run, so the step count can be read off the training side
(the critics' convergence), not only the A/B.

    python experiments/ptm_steps.py --out runs/ptm_steps --seeds 11 12 --steps 600 1500 3000 6000
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
from rlmtf.core.provenance import file_logger, write_summary
from rlmtf.data.io import read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.factory import with_action_space
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.offline import mean_policy_action
from rlmtf.eval.online import lifts_over_seeds, online_ab
from rlmtf.pipelines.settings import SETTINGS
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, train


def last_metrics(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_rows = [r for r in rows if "losses/critic" in r]
    return train_rows[-1] if train_rows else {}


def one_seed(seed: int, out: Path, a: argparse.Namespace, sim: Simulator, log) -> dict:
    st = SETTINGS["improved"]
    space = sim.cfg.action_space
    base = baseline_policy(space)
    data = out / "data"
    if not (data / "_meta.json").is_file():
        simulate_to_parquet(sim, behaviour_policy(base, "uniform", st.per, lower_b=-a.box, upper_b=a.box, seed=seed,
                                                  edge=st.edge), data, seed=seed, sessions=a.sessions, start_day=0,
                            overwrite=True)
    logs = read_logs(data)
    algo_cfg = st.algo_config(dataclasses.replace(ESRLConfig(), hidden=tuple(a.hidden), ensemble_size=a.critics))
    policies, res = [base], {"seed": seed, "runs": {}}
    for steps in a.steps:
        t = time.perf_counter()
        algo = train("integrated", logs, out / f"steps_{steps}", algo_cfg=algo_cfg, space=space,
                     cfg=TrainConfig(steps=steps, seed=seed, eval_every=0, log_every=max(1, steps // 20),
                                     checkpoint_every=10**9, episode=st.episode))
        pol = algo.policy(name=f"{steps} steps")
        policies.append(pol)
        m = last_metrics(out / f"steps_{steps}")
        res["runs"][str(steps)] = {"seconds": time.perf_counter() - t, "last": m,
                                   "mean_action": np.round(mean_policy_action(pol, logs), 4).tolist()}
        log(f"seed {seed}: {steps} steps in {time.perf_counter() - t:.0f}s; critic loss "
            f"{m.get('losses/critic', float('nan')):.4g}; mean action {res['runs'][str(steps)]['mean_action']}")
    ab = online_ab(policies, sim, users=a.users, days=a.days, seed=seed + 50_000)
    res["ab"] = ab.to_dict()
    for arm in ab.arms[1:]:
        log(f"seed {seed}: {arm.policy}: " + ", ".join(
            f"{k} {arm.lifts[k]['lift']:+.2%} [{arm.lifts[k]['ci_low']:+.2%}, {arm.lifts[k]['ci_high']:+.2%}]"
            for k in ("uvc", "udt", "reward")))
    (out / "result.json").write_text(json.dumps(res, indent=2, default=float))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ptm_steps"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12])
    ap.add_argument("--steps", type=int, nargs="+", default=[600, 1500, 3000, 6000])
    ap.add_argument("--sessions", type=int, default=4000)
    ap.add_argument("--box", type=float, default=0.15)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--critics", type=int, default=10)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    sim = Simulator(with_action_space(SimConfig(), SETTINGS["improved"].action_space))
    a.out.mkdir(parents=True, exist_ok=True)
    log = file_logger(a.out / "log.txt")
    results = [one_seed(s, a.out / f"seed_{s}", a, sim, log) for s in a.seeds]
    summary = lifts_over_seeds([r["ab"] for r in results], metrics=("uvc", "udt", "reward"))
    write_summary(a.out, vars(a), summary, results, log)


if __name__ == "__main__":
    main()
