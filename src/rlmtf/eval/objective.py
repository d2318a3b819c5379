"""Choosing what to optimise before training: finite-difference gradients of candidate objectives in an
environment and how well each agrees with the online metrics (``rlmtf analyze objective``).

At a user-level fusion ``a`` (the hand-set baseline, or where a trained policy sits on average), every
action dimension i is moved by ``+-h`` and the environment plays the same users and days under each
fixed fusion with the same seed (common random numbers, so the differences come from the fusion). For
each candidate objective (``rlmtf.core.objective.Objective``) and each online metric (UVC, UDT, reward
per user-day) this gives a gradient ``(f(a + h e_i) - f(a - h e_i)) / 2h``; an objective whose gradient
points away from UVC's (cosine < 0) would, followed by a critic, move the fusion where UVC falls.
Standard errors come from a bootstrap over users (the same resample in every run, since the runs are
paired by user).

An objective's value: the session episode's mean discounted session return (what the paper's critics
estimate), the day episode's mean discounted day return per user-day (days without a session count 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from rlmtf.core.fusion import ActionSpace
from rlmtf.core.objective import Objective, user_day_values
from rlmtf.envs.engine import Environment
from rlmtf.eval.online import per_user_metrics
from rlmtf.policy.fixed import FixedPolicy

__all__ = ["ACTION_NAMES", "DEFAULT_OBJECTIVES", "GradientReport", "objective_gradients"]

TARGETS = ("uvc", "udt", "reward")
ACTION_NAMES = ActionSpace().names()
DEFAULT_OBJECTIVES = ("session:gamma=0.9", "session:gamma=1", "day:gamma=0.9,session_gamma=0.9",
                      "day:gamma=1,session_gamma=1")


@dataclass
class GradientReport:
    """Gradients (per unit action) of every metric and objective at ``action``, with bootstrap SEs."""

    action: list[float]
    step: float
    users: int
    days: int
    seed: int
    value: dict[str, float]  # at the centre (the mean of the +h and -h runs)
    gradient: dict[str, list[float]]  # (A,)
    gradient_se: dict[str, list[float]]
    cosine: dict[str, dict[str, float]]  # objective -> target -> cosine
    cosine_se: dict[str, dict[str, float]]
    objectives: dict[str, str] = field(default_factory=dict)  # name -> label
    action_names: list[str] = field(default_factory=lambda: list(ACTION_NAMES))

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def levers(self, name: str, k: int = 3) -> list[tuple[str, float, float]]:
        """The k action dimensions with the largest |gradient| of ``name``: (dimension, gradient, se)."""
        g, se = np.asarray(self.gradient[name]), np.asarray(self.gradient_se[name])
        order = np.argsort(-np.abs(g))[:k]
        return [(self.action_names[i], float(g[i]), float(se[i])) for i in order]


def _per_user(env: Environment, policy: FixedPolicy, objectives: Mapping[str, Objective], users: np.ndarray,
              days: int, seed: int, progress: Callable[[int, int], None] | None) -> dict[str, tuple]:
    """(numerator, denominator) per user of every target and objective for one fixed fusion."""
    keep = ("session_id", "t", "reward")
    chunks: list[dict[str, np.ndarray]] = []
    r = env.run(policy, seed=seed, days=days, users=users, progress=progress, log_true_scores=False,
                sink=lambda day, cols: chunks.append({k: cols[k] for k in keep}))
    n_days = float(days)
    out: dict[str, tuple] = {k: (v, np.full(users.size, 1.0)) for k, v in per_user_metrics(r).items()
                             if k in TARGETS}
    pos = np.full(env.cfg.n_users, -1, np.int64)
    pos[users] = np.arange(users.size)
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in keep} if chunks else {k: np.zeros(0) for k in keep}
    # rows -> requests (the sink hands whole sessions sorted by (session, t, position))
    sid, t, rew = cols["session_id"].astype(np.int64), cols["t"].astype(np.int64), cols["reward"].astype(np.float64)
    order = np.lexsort((t, sid))
    sid, t, rew = sid[order], t[order], rew[order]
    new_req = np.r_[True, (sid[1:] != sid[:-1]) | (t[1:] != t[:-1])] if sid.size else np.zeros(0, bool)
    req = np.cumsum(new_req) - 1
    req_reward = np.bincount(req, weights=rew) if sid.size else np.zeros(0)
    req_sid, req_t = sid[new_req], t[new_req]
    m = env.cfg.days.max_sessions_per_day
    for name, obj in objectives.items():
        day_user, value, episodes = user_day_values(req_sid, req_t, req_reward, obj, m)
        u = pos[day_user % env.cfg.n_users]
        num = np.bincount(u, weights=value, minlength=users.size)
        if obj.episode == "session":  # mean per session
            den = np.bincount(u, weights=episodes, minlength=users.size)
        else:  # mean per user-day, days without a session counting 0
            den = np.full(users.size, n_days)
        out[name] = (num, den)
    return out


def objective_gradients(env: Environment, action: np.ndarray, objectives: Mapping[str, Objective], *,
                        users: int = 3000, days: int = 2, seed: int = 0, step: float = 0.15, bootstrap: int = 200,
                        on_run: Callable[[int, int], Callable[[int, int], None] | None] | None = None
                        ) -> GradientReport:
    """Central finite differences of every target and objective at ``action`` (module docstring).

    ``on_run(i, n)`` may return a progress callback for run i of n. At a box edge the difference is
    one-sided (the step is clipped to [-1, 1])."""
    action = np.asarray(action, np.float64)
    dim = env.cfg.action_space.dim
    if action.shape != (dim,) or not np.isfinite(action).all() or (np.abs(action) > 1).any():
        raise ValueError(f"action must be {dim} finite numbers in [-1, 1], got {action.tolist()}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if not 1 <= users <= env.cfg.n_users or days < 1:
        raise ValueError(f"users must be in [1, {env.cfg.n_users}] and days >= 1, got {users} and {days}")
    user_ids = np.arange(users)
    names = list(TARGETS) + list(objectives)
    runs = []
    for i in range(dim):
        for sign in (+1, -1):
            a = action.copy()
            a[i] = np.clip(a[i] + sign * step, -1.0, 1.0)
            runs.append(a)
    per_run = []
    for j, a in enumerate(runs):
        progress = on_run(j, len(runs)) if on_run else None
        per_run.append(_per_user(env, FixedPolicy(a.astype(np.float32), name="probe"), objectives, user_ids, days,
                                 seed, progress))
    width = np.array([runs[2 * i][i] - runs[2 * i + 1][i] for i in range(dim)])  # (A,)

    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(users), rng.multinomial(users, np.full(users, 1.0 / users), size=bootstrap)])

    def estimates(name: str) -> np.ndarray:  # (1 + B, runs)
        num = np.stack([p[name][0] for p in per_run], 1)  # (U, R)
        den = np.stack([p[name][1] for p in per_run], 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ num) / (weights @ den)

    grads, values = {}, {}
    for name in names:
        est = estimates(name)
        grads[name] = (est[:, 0::2] - est[:, 1::2]) / width  # (1 + B, A)
        values[name] = float(est[0].mean())

    def cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x * y).sum(-1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-300)

    cosine = {n: {tgt: float(cos(grads[n][0], grads[tgt][0])) for tgt in TARGETS} for n in objectives}
    cosine_se = {n: {tgt: float(np.nanstd(cos(grads[n][1:], grads[tgt][1:]))) for tgt in TARGETS}
                 for n in objectives}
    return GradientReport(action=action.tolist(), step=step, users=users, days=days, seed=seed, value=values,
                          gradient={n: g[0].tolist() for n, g in grads.items()},
                          gradient_se={n: np.nanstd(g[1:], 0).tolist() for n, g in grads.items()},
                          cosine=cosine, cosine_se=cosine_se,
                          objectives={n: o.label for n, o in objectives.items()},
                          action_names=list(env.cfg.action_space.names()))
