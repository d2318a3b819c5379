"""Simulated online A/B test (``docs/design.md#simulated-online-ab-test``; the paper's Tables 2 and 4).

Every policy serves the same simulated users for the same days with the same seed. Randomness in
the simulator is counter-based, so the arms face common random numbers: a difference between arms
comes from the policies, and the comparison is paired per user.

Per user (over the days of the test): UVC = valid consumptions a day, UDT = watch time (minutes) a
day, sessions a day, reward a day, and session length (requests per session, users with sessions
in both arms). Each policy's lift over the first comes with a 95% confidence interval and a
paired-t p-value over users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rlmtf.envs.engine import Environment, RunResult
from rlmtf.eval.stats import Lift, mean_ci, over_seeds, paired_lift
from rlmtf.policy.base import Policy

METRICS = ("uvc", "udt", "sessions", "reward", "session_length")
METRIC_LABELS = {"uvc": "UVC (valid views / user-day)", "udt": "UDT (watch minutes / user-day)",
                 "sessions": "sessions / user-day", "reward": "reward / user-day",
                 "session_length": "requests / session"}


def per_user_metrics(r: RunResult) -> dict[str, np.ndarray]:
    """Per-user values of each metric (users in ``r.user_ids`` order; session_length NaN if none)."""
    n_days = max(r.valid.shape[1], 1)
    sessions = r.sessions.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        length = np.where(sessions > 0, r.requests.sum(1) / sessions, np.nan)
    return {"uvc": r.valid.sum(1) / n_days, "udt": r.watch_time.sum(1) / 60.0 / n_days,
            "sessions": sessions / n_days, "reward": r.reward.sum(1) / n_days, "session_length": length}


@dataclass
class ArmResult:
    policy: str
    means: dict[str, dict[str, float]]  # metric -> {mean, ci_low, ci_high}
    lifts: dict[str, dict] = field(default_factory=dict)  # metric -> Lift.to_dict() (not for the control)
    n_sessions: int = 0
    n_rows: int = 0


@dataclass
class ABResult:
    users: int
    days: int
    seed: int
    arms: list[ArmResult]
    per_user: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    """Per arm, each metric per user (same users, same order in every arm); for lifts against any arm
    and for pooling over seeds. Not part of ``to_dict``."""

    def to_dict(self) -> dict:
        return {"users": self.users, "days": self.days, "seed": self.seed, "control": self.arms[0].policy,
                "arms": [a.__dict__ for a in self.arms]}


def online_ab(policies: Sequence[Policy], sim: Environment, *, users: int | np.ndarray, days: int, seed: int,
              on_arm: Callable[[int, str], Callable[[int, int], None] | None] | None = None,
              workers: int = 1, confidence: float = 0.95) -> ABResult:
    """Run every policy on the same ``users`` (a count: ids 0..users-1; or the ids) for ``days`` days with
    ``seed``; lifts with two-sided ``confidence`` intervals.

    ``on_arm(i, name)`` may return a progress callback for arm i."""
    if len(policies) < 1:
        raise ValueError("give at least one policy")
    if np.ndim(users) == 0:
        if not 1 <= int(users) <= sim.cfg.n_users:
            raise ValueError(f"users must be in [1, {sim.cfg.n_users}] (the simulator's population), got {users}")
        user_ids = np.arange(int(users))
    else:
        user_ids = np.asarray(users, np.int64)
        if user_ids.size < 2 or user_ids.min() < 0 or user_ids.max() >= sim.cfg.n_users:
            raise ValueError(f"user ids must be at least 2 ids in [0, {sim.cfg.n_users})")
        users = int(user_ids.size)
    per_arm: list[dict[str, np.ndarray]] = []
    arms: list[ArmResult] = []
    for i, pol in enumerate(policies):
        progress = on_arm(i, pol.name) if on_arm else None
        if workers > 1:
            from rlmtf.envs.parallel import run_parallel

            r, _ = run_parallel(sim, pol, workers=workers, seed=seed, days=days, users=user_ids, max_sessions=None,
                                progress=progress, log_true_scores=False)
        else:
            r = sim.run(pol, seed=seed, days=days, users=user_ids, progress=progress)
        m = per_user_metrics(r)
        per_arm.append(m)
        means = {}
        for k, values in m.items():
            v = values[np.isfinite(values)]
            mean, lo, hi = mean_ci(v) if v.size >= 2 else (float(v.mean()) if v.size else float("nan"),) * 3
            means[k] = {"mean": mean, "ci_low": lo, "ci_high": hi}
        arms.append(ArmResult(policy=pol.name, means=means, n_sessions=r.n_sessions, n_rows=r.n_rows))
    control = per_arm[0]
    for arm, m in zip(arms[1:], per_arm[1:], strict=True):
        for k in METRICS:
            ok = np.isfinite(control[k]) & np.isfinite(m[k])
            try:
                arm.lifts[k] = paired_lift(control[k][ok], m[k][ok], confidence).to_dict()
            except ValueError as e:  # e.g. a control mean of zero: report rather than crash
                arm.lifts[k] = {"error": str(e)}
    return ABResult(users=users, days=days, seed=seed, arms=arms, per_user=per_arm)


__all__ = ["METRICS", "ABResult", "ArmResult", "Lift", "online_ab", "per_user_metrics"]


def lifts_over_seeds(abs_: Sequence[dict], metrics: Sequence[str] = METRICS) -> dict[str, dict]:
    """``{"<arm>: <metric>": over_seeds(lifts)}`` for every treatment arm of A/Bs of several seeds (each an
    ``ABResult.to_dict()`` with the same arms)."""
    out = {}
    for arm in abs_[0]["arms"][1:]:
        name = arm["policy"]
        for m in metrics:
            vals = [next(x for x in ab["arms"] if x["policy"] == name)["lifts"][m]["lift"] for ab in abs_]
            out[f"{name}: {m}"] = over_seeds(vals)
    return out
