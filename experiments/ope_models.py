"""Which direct-method model ranks fusions as the online A/B does? A check on policies no method learned.

Logs an OPE set the way the paper experiment does (the improved setting: the relative action space, one
uniform noise per user-day in +-0.15 around the hand-set baseline, shifted at the edges), then estimates,
with every model of ``rlmtf.eval.ope.direct_method``, the lift over the baseline of

- ``--fixed`` fixed fusions, half at random corners of the box and half at random points inside it, and
- ``--personal`` personalised fusions, ``baseline + box * tanh(b + z W)`` with ``z`` the standardised user
  state and random ``b``, ``W`` (a different action per user, mostly inside the box, as a learned policy's),

and runs all of them in one A/B (common random numbers, ``--users`` x 2 days) for the truth, and in the
A/B's first day alone (an OPE set of single user-days cannot see what a day's fusion does to the next). The seed and
policies are drawn here and used for nothing else, so the choice of model is not tuned on the paper
experiment's A/B. Written: ``OUT/result.json`` and ``OUT/result.md`` (per model: Spearman with the online
lift, mean absolute error, interval coverage, mean interval width; with the OPE set whole and its first
quarter of user-days).

    python experiments/ope_models.py --out runs/ope_models --sessions 16000 --users 3000 --seed 7
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from rlmtf.core.provenance import file_logger, git_commit
from rlmtf.data import read_logs
from rlmtf.data.transitions import build_transitions
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.factory import with_action_space
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.fqe import metric_rewards, policy_actions
from rlmtf.eval.online import online_ab
from rlmtf.eval.ope import DM_MODELS, DirectMethod
from rlmtf.policy.base import Policy, RequestObs
from rlmtf.policy.fixed import FixedPolicy, baseline_policy

BOX = 0.15
METRICS = ("uvc", "reward", "udt")


class StatePolicy(Policy):
    """``clip(base + box * tanh(b + z W))``, ``z`` the user state standardised by the OPE set's statistics."""

    level = "user"

    def __init__(self, base: np.ndarray, mean: np.ndarray, sd: np.ndarray, b: np.ndarray, w: np.ndarray,
                 space, name: str):
        self.base, self.mean, self.sd, self.b, self.w = base, mean, sd, b, w
        self.action_space, self.name = space, name

    def act(self, obs: RequestObs) -> np.ndarray:
        z = (obs.user_state() - self.mean) / self.sd
        return np.clip(self.base + BOX * np.tanh(self.b + z @ self.w), -1, 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ope_models"))
    ap.add_argument("--sessions", type=int, default=16_000)
    ap.add_argument("--users", type=int, default=3000, help="users of the A/B (x 2 days)")
    ap.add_argument("--fixed", type=int, default=8)
    ap.add_argument("--personal", type=int, default=8)
    ap.add_argument("--boot", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)
    log = file_logger(a.out / "log.txt")
    sim = Simulator(with_action_space(SimConfig(), "relative"))
    space = sim.cfg.action_space
    base = baseline_policy(space)
    data = a.out / "ope_logs"
    t0 = time.perf_counter()
    simulate_to_parquet(sim, behaviour_policy(base, "uniform", "day", lower_b=-BOX, upper_b=BOX, seed=a.seed,
                                              edge="shift"), data, seed=a.seed, sessions=a.sessions,
                        start_day=3000, overwrite=True)
    logs = read_logs(data)
    t = build_transitions(logs).day_episodes()
    log(f"OPE set: {len(t)} requests in {a.sessions} sessions ({time.perf_counter() - t0:.0f}s)")
    rng = np.random.default_rng(a.seed)
    dim = space.dim
    pols: list[Policy] = [base]
    for i in range(a.fixed):
        u = rng.choice([-1.0, 1.0], dim) if i % 2 == 0 else rng.uniform(-1, 1, dim)
        pols.append(FixedPolicy(np.clip(base.action + BOX * u, -1, 1), name=f"fixed{i}", space=space))
    st = t.user_state
    mean, sd = st.mean(0), np.maximum(st.std(0), 1e-6)
    for i in range(a.personal):
        b = rng.uniform(-1, 1, dim)
        w = rng.normal(0, 1.5 / np.sqrt(st.shape[1]), (st.shape[1], dim))
        pols.append(StatePolicy(base.action, mean, sd, b.astype(np.float32), w.astype(np.float32), space,
                                f"personal{i}"))
    t0 = time.perf_counter()
    ab = online_ab(pols, sim, users=a.users, days=2, seed=a.seed + 1)
    ab1 = online_ab(pols, sim, users=a.users, days=1, seed=a.seed + 1)  # the first day alone: no carry-over
    log(f"A/B of {len(pols)} arms: {time.perf_counter() - t0:.0f}s")
    parts = {"whole": t, "quarter": t.split(0.25, seed=a.seed)[0]}  # the OPE set at a quarter of the size
    rows = [{"policy": p.name, "online": {m: arm.lifts[m] for m in METRICS},
             "online_day1": {m: arm1.lifts[m] for m in METRICS}, "dm": {}}
            for p, arm, arm1 in zip(pols[1:], ab.arms[1:], ab1.arms[1:], strict=True)]
    for part, tp in parts.items():
        rewards = {m: r for m, r in metric_rewards(tp, logs).items() if m in METRICS}
        acts = [policy_actions(p, logs, tp, dim) for p in pols[1:]]
        for model in DM_MODELS:
            t0 = time.perf_counter()
            dm = DirectMethod(tp, rewards, n_boot=a.boot, seed=a.seed, model=model)
            for r, x in zip(rows, acts, strict=True):
                e = dm.estimate(x)
                r["dm"][f"{model}/{part}"] = {m: e[m]["lift"] for m in METRICS}
            log(f"{model} on the {part} set: {time.perf_counter() - t0:.0f}s for {len(acts)} policies")
    keys = list(rows[0]["dm"])
    summary: dict = {}
    for key in keys:
        summary[key] = {}
        for m in METRICS:
            on = np.array([r["online"][m]["lift"] for r in rows])
            e = np.array([r["dm"][key][m]["mean"] for r in rows])
            lo = np.array([r["dm"][key][m]["ci_low"] for r in rows])
            hi = np.array([r["dm"][key][m]["ci_high"] for r in rows])
            on1 = np.array([r["online_day1"][m]["lift"] for r in rows])
            summary[key][m] = {"spearman": float(spearmanr(e, on)[0]), "mae": float(np.abs(e - on).mean()),
                               "coverage": float(((lo <= on) & (on <= hi)).mean()), "width": float((hi - lo).mean()),
                               "spearman_day1": float(spearmanr(e, on1)[0]), "mae_day1": float(np.abs(e - on1).mean()),
                               "bias": float((e - on).mean()), "bias_day1": float((e - on1).mean())}
    lines = [f"# Direct-method models against the A/B (commit {git_commit()}, seed {a.seed})", "",
             (f"{len(rows)} policies; OPE set {a.sessions} sessions ({len(np.unique(t.episode_id))} user-days; "
              f"quarter: {len(np.unique(parts['quarter'].episode_id))}); A/B {a.users} users x 2 days."), "",
             ("| model / OPE set | metric | Spearman | mean abs. error | mean error | 95% CI coverage | mean CI width "
              "| Spearman, day 1 | mean error, day 1 |"), "|---|---|---|---|---|---|---|---|---|"]
    for key, per in summary.items():
        for m, s in per.items():
            lines.append(f"| {key} | {m} | {s['spearman']:+.2f} | {s['mae']:.2%} | {s['bias']:+.2%} | "
                         f"{s['coverage']:.0%} | {s['width']:.2%} | {s['spearman_day1']:+.2f} | "
                         f"{s['bias_day1']:+.2%} |")
    lines += ["", "| policy | online UVC | day 1 | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['online']['uvc']['lift']:+.2%} | {r['online_day1']['uvc']['lift']:+.2%} | "
                     + " | ".join(f"{r['dm'][k]['uvc']['mean']:+.2%}" for k in keys) + " |")
    (a.out / "result.md").write_text("\n".join(lines) + "\n")
    doc = {"commit": git_commit(), "args": {k: str(v) for k, v in vars(a).items()}, "summary": summary, "rows": rows}
    (a.out / "result.json").write_text(json.dumps(doc, indent=2, default=float))
    log("\n".join(lines))


if __name__ == "__main__":
    main()
