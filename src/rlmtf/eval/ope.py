"""Off-policy evaluation: which of several candidate fusions would do best online, estimated from logs
(``docs/design.md#off-policy-evaluation``; ``rlmtf evaluate ope``).

For each policy, per metric of :data:`rlmtf.eval.fqe.OPE_METRICS` (per episode: a session or a user-day):

- **FQE** (:mod:`rlmtf.eval.fqe`), with a bootstrap-ensemble interval, and its lift over the logging
  policy's mean action (paired per member);
- **IPW** and **SNIPW**, importance weights from the exploration's known density: the logged action is
  uniform in the box ``[mu_bp + lower_b, mu_bp + upper_b]`` (density ``1 / prod(width)``), and the
  deterministic evaluated policy is smoothed by a box kernel of half-width ``bandwidth`` x the box's
  half-width per dimension (Kallus and Zhou 2018 for kernels on continuous actions). With the default
  bandwidth 1 a sample's weight is 1 where the logged noise lies within the kernel around the noise the
  policy would need, else 0, so the logging policy itself gets weight 1 everywhere and IPW returns the
  logged mean. Exploration per request multiplies one weight per request along the episode (per-decision
  weights); exploration per user-day draws one noise for the day, so the episode has one weight (the
  policy's noise averaged over the day's requests: exact for a policy whose action does not change
  within a day). The estimate is then of the policy smoothed by the kernel (bias that grows with the
  bandwidth) and its effective sample size says how many episodes carry it;
- **DR** (per-decision doubly robust, Jiang and Li 2016) with the FQE model as the control variate.

IS-based intervals are percentile bootstraps over episodes. A policy whose actions leave the logged boxes
on more than ``max_outside`` of the requests gets a warning: its estimates are extrapolation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rlmtf.data.io import LoggedData
from rlmtf.data.transitions import Transitions, build_transitions
from rlmtf.eval.fqe import FQEConfig, episode_starts, fit_fqe, metric_rewards, policy_actions
from rlmtf.policy.base import Policy

__all__ = ["OPEConfig", "evaluate_ope", "exploration_unit", "importance_weights", "is_estimates"]


@dataclass(frozen=True)
class OPEConfig:
    episode: str = "day"
    """"day" (the user-day, undiscounted by default) or "session"."""
    fqe: FQEConfig = field(default_factory=FQEConfig)
    bandwidth: float = 1.0
    """Box-kernel half-width as a multiple of each dimension's exploration half-width."""
    bootstrap: int = 200
    max_outside: float = 0.2
    """Warn when more than this share of the evaluated policy's actions lie outside the logged boxes."""

    def __post_init__(self) -> None:
        if self.episode not in ("day", "session"):
            raise ValueError(f"episode must be day or session, got {self.episode!r}")
        if not self.bandwidth > 0 or self.bootstrap < 10 or not 0 <= self.max_outside <= 1:
            raise ValueError("bandwidth must be > 0, bootstrap >= 10 and max_outside in [0, 1]")


def exploration_unit(t: Transitions, tol: float = 1e-5) -> str:
    """How the logs were explored: "item" (noise per shown item), "day" (one noise per user-day) or "request"."""
    noise = t.action - t.mu_bp  # (R, l, A)
    if np.abs(noise - noise[:, :1]).max(initial=0.0) > tol:
        return "item"
    n0 = noise[:, 0]
    day = np.stack([t.user_id, t.day.astype(np.int64)], 1)
    first = np.r_[True, (day[1:] != day[:-1]).any(1)]
    head = np.maximum.accumulate(np.where(first, np.arange(len(t)), 0))
    return "day" if np.abs(n0 - n0[head]).max(initial=0.0) <= tol and not first.all() else "request"


def importance_weights(t: Transitions, actions: np.ndarray, bandwidth: float = 1.0) -> tuple[np.ndarray, str, float]:
    """Cumulative weights rho_(0:t) (R,) of a user-level policy's actions (R, 1, A) against the logged uniform
    boxes, the exploration unit, and the share of requests whose action lies outside its logged box."""
    unit = exploration_unit(t)
    if unit == "item":
        raise ValueError("importance weights need user-level exploration (per request or per day); these logs "
                         "explore per shown item")
    if actions.shape[1] != 1:
        raise ValueError("importance weights are defined here for user-level policies (one action per request)")
    f64 = np.float64
    mu, lo, hi = t.mu_bp[:, 0].astype(f64), t.lower_b[:, 0].astype(f64), t.upper_b[:, 0].astype(f64)
    width = np.maximum(hi - lo, 1e-8)
    h = bandwidth * width / 2.0
    need = actions[:, 0].astype(f64) - mu  # the noise the policy's action would be (R, A)
    outside = float(((need < lo - 1e-6) | (need > hi + 1e-6)).any(1).mean())
    got = t.action[:, 0].astype(f64) - mu
    ep = t.episode_id
    if unit == "day":  # one draw per user-day: compare with the policy's noise averaged over the day
        day = np.unique(np.stack([t.user_id, t.day.astype(np.int64)], 1), axis=0, return_inverse=True)[1].ravel()
        cnt = np.bincount(day)
        need = np.stack([np.bincount(day, need[:, j]) / cnt for j in range(need.shape[1])], 1)[day]
    # box kernel 1{|got - need| <= h} / prod(2h) over the uniform density 1 / prod(width)
    ratio = np.all(np.abs(got - need) <= h + 1e-7, axis=1) * np.prod(width / (2.0 * h), axis=1)  # (R,)
    if unit == "day":
        return ratio, unit, outside  # the same weight for every request of the day
    # per-decision: the product of the weights of the episode's requests so far (requests sorted in time)
    zero = ratio <= 0
    log_r = np.log(np.where(zero, 1.0, ratio))  # zeros are counted apart: a zero weight ends the product
    start = np.r_[True, ep[1:] != ep[:-1]]
    seg = np.cumsum(start) - 1
    cum = np.cumsum(log_r)
    base = np.r_[0.0, cum][np.flatnonzero(start)][seg]
    zeros = np.cumsum(zero)
    zbase = np.r_[0, zeros][np.flatnonzero(start)][seg]
    return np.where(zeros - zbase > 0, 0.0, np.exp(cum - base)), unit, outside


def is_estimates(t: Transitions, rho: np.ndarray, r: np.ndarray, q: np.ndarray | None = None,
                 v: np.ndarray | None = None, wts: np.ndarray | None = None) -> dict[str, float]:
    """IPW, SNIPW and (with the model's Q(s_t, a_t) and V(s_t) = Q(s_t, pi(s_t)), each (R,)) per-decision
    DR of one reward (R,) per episode, and the effective sample size of the episodes' final weights.
    ``wts`` (R,): each request's episode multiplicity (a bootstrap draw; default 1)."""
    ep = t.episode_id
    wts = np.ones(len(t)) if wts is None else wts
    start = np.r_[True, ep[1:] != ep[:-1]]
    n_ep = max(float(wts[start].sum()), 1e-300)
    seg = np.cumsum(start) - 1
    pos = np.arange(len(t)) - np.flatnonzero(start)[seg]  # the request's index within its episode
    # self-normalised per decision: the weights of each episode's t-th request normalised over the episodes
    norm = np.bincount(pos, rho * wts) / np.maximum(np.bincount(pos, wts), 1e-300)
    out = {"ipw": float((wts * rho * r).sum() / n_ep),
           "snipw": float((wts * rho * r / np.maximum(norm[pos], 1e-300)).sum() / n_ep)}
    if q is not None and v is not None:
        prev = np.where(start, 1.0, np.r_[1.0, rho[:-1]])  # rho_(0:t-1)
        out["dr"] = float((wts * (rho * (r - q) + prev * v)).sum() / n_ep)
    last = np.r_[ep[1:] != ep[:-1], True]
    w_end = rho[last] * wts[last]
    out["ess"] = float(w_end.sum() ** 2 / max((rho[last] ** 2 * wts[last]).sum(), 1e-300))
    return out


def _bootstrap(t: Transitions, fn: Callable[[np.ndarray], dict[str, float]], n: int, seed: int) -> dict:
    """Percentile intervals of ``fn``'s estimates over episode resamples (``fn`` takes per-request weights)."""
    ep = t.episode_id
    _, e = np.unique(ep, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        counts = rng.multinomial(e.max() + 1, np.full(e.max() + 1, 1.0 / (e.max() + 1)))
        draws.append(fn(counts[e].astype(np.float64)))
    keys = [k for k in draws[0] if k not in ("ess", "episodes")]
    return {k: (float(np.nanpercentile([d[k] for d in draws], 2.5)),
                float(np.nanpercentile([d[k] for d in draws], 97.5))) for k in keys}


def evaluate_ope(policies: Sequence[Policy], logs: LoggedData, cfg: OPEConfig = OPEConfig(), *,
                 space_dim: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Every estimate for every policy, plus the logging policy's mean action as the reference."""
    t = build_transitions(logs)
    if cfg.episode == "day":
        t = t.day_episodes()
    dim = space_dim if space_dim is not None else logs.meta.feature_spec.action_dim
    rewards = metric_rewards(t, logs)
    unit = exploration_unit(t)
    log(f"off-policy evaluation on {len(t)} requests, {len(episode_starts(t))} {cfg.episode} episodes "
        f"(exploration per {unit})")
    ref = fit_fqe(t, logs, t.mu_bp[:, :1].copy(), cfg.fqe)
    n_ep = len(episode_starts(t))
    out = {"episode": cfg.episode, "exploration": unit, "requests": len(t), "episodes": int(n_ep),
           "reference": {m: ref.summary(m) for m in ref.members},
           "logged": {m: float(rewards[m].sum() / max(n_ep, 1)) for m in rewards}, "policies": []}
    for pol in policies:
        log(f"{pol.name}: fitting FQE ({cfg.fqe.steps} steps, {cfg.fqe.members} bootstrap members per metric)")
        acts = policy_actions(pol, logs, t, dim)
        res = fit_fqe(t, logs, acts, cfg.fqe)
        entry: dict = {"policy": pol.name, "level": res.level, "fqe": {}, "warnings": []}
        for m in res.members:
            s = res.summary(m)
            lift = res.members[m] / ref.members[m] - 1.0  # paired members: the same bootstrap weights
            s["lift"] = {"mean": float(lift.mean()), "ci_low": float(lift.mean() - 1.96 * lift.std(ddof=1)),
                         "ci_high": float(lift.mean() + 1.96 * lift.std(ddof=1))}
            entry["fqe"][m] = s
        if res.level == "user" and unit != "item":
            rho, _, outside = importance_weights(t, acts, cfg.bandwidth)
            entry["outside_box"] = outside
            if outside > cfg.max_outside:
                entry["warnings"].append(f"{outside:.0%} of its actions lie outside the logged boxes: the "
                                         "estimates extrapolate")
            entry["is"] = {}
            for m in res.members:
                args = (t, rho, rewards[m], res.q_logged[m], res.v_policy[m])
                point = is_estimates(*args)
                ci = _bootstrap(t, lambda wts, a=args: is_estimates(*a, wts=wts), cfg.bootstrap, cfg.fqe.seed)
                entry["is"][m] = {k: {"value": point[k], "ci_low": ci[k][0], "ci_high": ci[k][1]}
                                  for k in ("ipw", "snipw", "dr")} | {"ess": point["ess"]}
            if entry["is"]["uvc"]["ess"] < 30:
                entry["warnings"].append(f"effective sample size {entry['is']['uvc']['ess']:.0f} episodes: the "
                                         "importance-weighted estimates rest on very few logged episodes")
        else:
            entry["is"] = None
            entry["warnings"].append("importance weights need user-level policies on user-level exploration")
        out["policies"].append(entry)
    return out
