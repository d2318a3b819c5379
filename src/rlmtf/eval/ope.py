"""Off-policy evaluation: which of several candidate fusions would do best online, estimated from logs
(``docs/design.md#off-policy-evaluation``; ``rlmtf evaluate ope``).

For each policy, per metric of :data:`rlmtf.eval.fqe.OPE_METRICS` (per episode: a session or a user-day):

- **FQE** (:mod:`rlmtf.eval.fqe`), with a bootstrap-ensemble interval, and its lift over the logging
  policy's mean action (paired per member);
- **IPW** and **SNIPW**, importance weights from the exploration's known density: the logged action is
  uniform in the box ``[mu_bp + lower_b, mu_bp + upper_b]`` (density ``1 / prod(width)``), and the
  deterministic evaluated policy is smoothed by a box kernel of half-width ``bandwidth`` x the box's
  half-width per dimension (Kallus and Zhou 2018 for kernels on continuous actions). With the default
  bandwidth 1 a sample's weight is (box width / the kernel's width inside the box) where the logged noise
  lies within the kernel around the noise the policy would need, else 0, so in a box centred on mu_bp the
  logging policy itself gets weight 1 everywhere and IPW returns the logged mean. Exploration per request
  multiplies one weight per request along the episode (per-decision weights); exploration per user-day
  draws one noise for the day, so the episode has one weight (the
  policy's noise averaged over the day's requests: exact for a policy whose action does not change
  within a day). The estimate is then of the policy smoothed by the kernel (bias that grows with the
  bandwidth) and its effective sample size says how many episodes carry it;
- **DR** (per-decision doubly robust, Jiang and Li 2016) with the FQE model as the control variate;
- **DM** (:func:`first_order_dm`): the direct method at first order, a regression of each episode's total
  on its state and its mean logged noise, no bootstrapped targets.

The box kernel is renormalised to its part inside the logged box, so a policy at the box's edge is not
counted as lighter than one in its middle (the kernel's mass outside the box has no logged support).

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

__all__ = ["OPEConfig", "evaluate_ope", "exploration_unit", "first_order_dm", "importance_weights", "is_estimates"]


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
    # box kernel 1{|got - need| <= h}, renormalised to its part inside the logged box (a kernel centred near
    # the box's edge would otherwise lose the mass outside it and IPW would shrink towards 0), over the
    # uniform density 1 / prod(width)
    inside = np.minimum(need + h, hi) - np.maximum(need - h, lo)  # (R, A) the kernel's length inside the box
    support = np.all(inside > 1e-9, axis=1)
    ratio = np.where(support & np.all(np.abs(got - need) <= h + 1e-7, axis=1),
                     np.prod(width / np.maximum(inside, 1e-9), axis=1), 0.0)  # (R,)
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


def first_order_dm(t: Transitions, rewards: dict[str, np.ndarray], actions: np.ndarray, n_boot: int = 200,
                   seed: int = 0, ridge: float = 1.0) -> dict[str, dict]:
    """The direct method at first order: per metric, a ridge regression of each episode's total on its first
    request's user state and its mean logged noise ``a - mu_bp`` (in box half-widths), and the policy's value
    as the episode totals moved by the fitted action slope times the policy's mean noise over the episode.

    No bootstrapped targets, so nothing compounds over the episode (FQE's failure at the box's corners); the
    slope is unbiased because the exploration noise is drawn independently of the state (uniform in the
    box), the state only absorbs variance. First order: it sees the box's average gradient, not curvature,
    and extrapolates linearly outside the box. Interval: percentile bootstrap over episodes. Returns per
    metric ``{"value", "ci_low", "ci_high", "lift": {"mean", "ci_low", "ci_high"}}`` (lift over the logged
    mean per episode)."""
    f64 = np.float64
    ep = t.episode_id
    _, e = np.unique(ep, return_inverse=True)
    n = int(e.max()) + 1
    cnt = np.bincount(e).astype(f64)
    half = np.maximum((t.upper_b[:, 0] - t.lower_b[:, 0]).astype(f64) / 2, 1e-8)
    got = (t.action[:, 0] - t.mu_bp[:, 0]).astype(f64) / half
    need = (actions[:, 0] - t.mu_bp[:, 0]).astype(f64) / half
    x_act, x_pol = (np.stack([np.bincount(e, x[:, j]) / cnt for j in range(x.shape[1])], 1)
                    for x in (got, need))  # (E, A): each episode's mean noise, logged and the policy's
    first = np.r_[True, ep[1:] != ep[:-1]]
    st = t.user_state[first].astype(f64)
    st = (st - st.mean(0)) / np.maximum(st.std(0), 1e-8)  # (E, D)
    x = np.concatenate([np.ones((n, 1)), st, x_act], 1)
    a_cols = slice(1 + st.shape[1], x.shape[1])
    pen = np.full(x.shape[1], ridge)
    pen[0] = 0.0
    pen[a_cols] = 0.0  # only the state is shrunk: the action slope is what is estimated
    rng = np.random.default_rng(seed)
    draws = [np.ones(n)] + [rng.multinomial(n, np.full(n, 1.0 / n)).astype(f64) for _ in range(n_boot)]
    out = {}
    for m, r in rewards.items():
        y = np.bincount(e, r, minlength=n)
        vals, lifts = [], []
        for w in draws:
            xtw = x.T * w
            try:
                coef = np.linalg.solve(xtw @ x + np.diag(pen), xtw @ y)
            except np.linalg.LinAlgError:  # fewer distinct episodes than regressors: the minimum-norm fit
                coef = np.linalg.lstsq(xtw @ x + np.diag(pen), xtw @ y, rcond=None)[0]
            base = float((w * y).sum() / w.sum())
            v = base + float((w[:, None] * (x_pol - x_act)).sum(0) / w.sum() @ coef[a_cols])
            vals.append(v)
            lifts.append(v / base - 1.0 if base else float("nan"))
        v0, l0 = vals[0], lifts[0]
        out[m] = {"value": v0, "ci_low": float(np.percentile(vals[1:], 2.5)),
                  "ci_high": float(np.percentile(vals[1:], 97.5)),
                  "lift": {"mean": l0, "ci_low": float(np.nanpercentile(lifts[1:], 2.5)),
                           "ci_high": float(np.nanpercentile(lifts[1:], 97.5))}}
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
                 space_dim: int | None = None, log: Callable[[str], None] = lambda s: None,
                 with_fqe: bool = True) -> dict:
    """Every estimate for every policy, plus the logging policy's mean action as the reference.

    ``with_fqe=False`` skips the model-based estimates (FQE and DR: the slow part) and gives the importance-
    weighted ones and the direct method only."""
    t = build_transitions(logs)
    if cfg.episode == "day":
        t = t.day_episodes()
    dim = space_dim if space_dim is not None else logs.meta.feature_spec.action_dim
    rewards = metric_rewards(t, logs)
    unit = exploration_unit(t)
    log(f"off-policy evaluation on {len(t)} requests, {len(episode_starts(t))} {cfg.episode} episodes "
        f"(exploration per {unit})")
    ref = fit_fqe(t, logs, t.mu_bp[:, :1].copy(), cfg.fqe) if with_fqe else None
    n_ep = len(episode_starts(t))
    out = {"episode": cfg.episode, "exploration": unit, "requests": len(t), "episodes": int(n_ep),
           "reference": {m: ref.summary(m) for m in ref.members} if ref else {},
           "logged": {m: float(rewards[m].sum() / max(n_ep, 1)) for m in rewards}, "policies": []}
    for pol in policies:
        acts = policy_actions(pol, logs, t, dim)
        level = "user" if acts.shape[1] == 1 else "item"
        entry: dict = {"policy": pol.name, "level": level, "fqe": {}, "warnings": []}
        res = None
        if with_fqe:
            log(f"{pol.name}: fitting FQE ({cfg.fqe.steps} steps, {cfg.fqe.members} bootstrap members per metric)")
            res = fit_fqe(t, logs, acts, cfg.fqe)
            for m in res.members:
                s = res.summary(m)
                lift = res.members[m] / ref.members[m] - 1.0  # paired members: the same bootstrap weights
                s["lift"] = {"mean": float(lift.mean()), "ci_low": float(lift.mean() - 1.96 * lift.std(ddof=1)),
                             "ci_high": float(lift.mean() + 1.96 * lift.std(ddof=1))}
                entry["fqe"][m] = s
        if level == "user" and unit != "item":
            rho, _, outside = importance_weights(t, acts, cfg.bandwidth)
            entry["outside_box"] = outside
            if outside > cfg.max_outside:
                entry["warnings"].append(f"{outside:.0%} of its actions lie outside the logged boxes: the "
                                         "estimates extrapolate")
            entry["is"] = {}
            for m in rewards:
                args = (t, rho, rewards[m]) + ((res.q_logged[m], res.v_policy[m]) if res else ())
                point = is_estimates(*args)
                ci = _bootstrap(t, lambda wts, a=args: is_estimates(*a, wts=wts), cfg.bootstrap, cfg.fqe.seed)
                entry["is"][m] = {k: {"value": point[k], "ci_low": ci[k][0], "ci_high": ci[k][1]}
                                  for k in ("ipw", "snipw", "dr") if k in point} | {"ess": point["ess"]}
            entry["dm"] = first_order_dm(t, rewards, acts, cfg.bootstrap, cfg.fqe.seed)
            if entry["is"]["uvc"]["ess"] < 30:
                entry["warnings"].append(f"effective sample size {entry['is']['uvc']['ess']:.0f} episodes: the "
                                         "importance-weighted estimates rest on very few logged episodes")
        else:
            entry["is"] = None
            entry["warnings"].append("importance weights need user-level policies on user-level exploration")
        out["policies"].append(entry)
    return out
