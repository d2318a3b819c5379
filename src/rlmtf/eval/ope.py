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

__all__ = ["DM_MODELS", "DirectMethod", "OPEConfig", "evaluate_ope", "exploration_unit", "first_order_dm",
           "importance_weights", "is_estimates"]


#: The direct method's models of an episode's total given its state s and mean logged noise x
#: (docs/design.md#off-policy-evaluation): each adds terms to the one before.
DM_MODELS = ("linear", "quadratic", "personal")


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
    dm_model: str = "linear"
    """The direct method's model (:data:`DM_MODELS`)."""

    def __post_init__(self) -> None:
        if self.episode not in ("day", "session"):
            raise ValueError(f"episode must be day or session, got {self.episode!r}")
        if self.dm_model not in DM_MODELS:
            raise ValueError(f"dm_model must be one of {', '.join(DM_MODELS)}, got {self.dm_model!r}")
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


def _dm_terms(st: np.ndarray, x: np.ndarray, model: str) -> np.ndarray:
    """The action terms of the direct method's regression for states st (E, D) and noises x (E, A)."""
    parts = [x]
    if model in ("quadratic", "personal"):
        parts.append(x * x)  # curvature per dimension (uniform noise: x and x^2 are uncorrelated)
    if model == "personal":
        parts.append((st[:, :, None] * x[:, None, :]).reshape(len(x), -1))  # a slope per state feature
    return np.concatenate(parts, 1)


class DirectMethod:
    """The direct method: per metric, a ridge regression of each episode's total on its first request's user
    state and its mean logged noise ``a - mu_bp`` (in box half-widths), and a policy's value as the episode
    totals moved by the fitted action terms at the policy's mean noise over the episode minus at the logged.

    ``model``: ``"linear"`` (the first order: one slope per action dimension), ``"quadratic"`` (plus a
    curvature per dimension) or ``"personal"`` (plus a slope per state feature and action dimension, ridge
    ``ridge`` x the episodes / 100 on those: the policy's gain where it acts differently per user).

    No bootstrapped targets, so nothing compounds over the episode (FQE's failure at the box's corners); the
    slopes are unbiased because the exploration noise is drawn independently of the state (uniform in the
    box), the state only absorbs variance. It sees the box's average shape, and extrapolates outside the box
    by the fitted polynomial. Interval: percentile bootstrap over episodes. The regression (and each
    bootstrap draw's) is fitted once, at construction; :meth:`estimate` applies it to one policy."""

    def __init__(self, t: Transitions, rewards: dict[str, np.ndarray], n_boot: int = 200, seed: int = 0,
                 ridge: float = 1.0, model: str = "linear"):
        if model not in DM_MODELS:
            raise ValueError(f"unknown direct-method model {model!r}; choose from {', '.join(DM_MODELS)}")
        f64 = np.float64
        self.t, self.model, self.metrics = t, model, list(rewards)
        ep = t.episode_id
        _, self.e = np.unique(ep, return_inverse=True)
        n = int(self.e.max()) + 1
        self.cnt = np.bincount(self.e).astype(f64)
        self.half = np.maximum((t.upper_b[:, 0] - t.lower_b[:, 0]).astype(f64) / 2, 1e-8)
        self.x_act = self._episode_noise(t.action[:, 0])  # (E, A)
        first = np.r_[True, ep[1:] != ep[:-1]]
        st = t.user_state[first].astype(f64)
        self.st = (st - st.mean(0)) / np.maximum(st.std(0), 1e-8)  # (E, D)
        self.terms_act = _dm_terms(self.st, self.x_act, model)
        x = np.concatenate([np.ones((n, 1)), self.st, self.terms_act], 1)
        a_cols = slice(1 + self.st.shape[1], x.shape[1])
        pen = np.full(x.shape[1], ridge)
        pen[0] = 0.0
        pen[a_cols] = 0.0  # the state is shrunk, the action terms are what is estimated ...
        n_plain = self.x_act.shape[1] * (1 if model == "linear" else 2)
        pen[a_cols.start + n_plain:] = ridge * n / 100.0  # ... except the per-state slopes, shrunk towards 0
        rng = np.random.default_rng(seed)
        self.draws = [np.ones(n)] + [rng.multinomial(n, np.full(n, 1.0 / n)).astype(f64) for _ in range(n_boot)]
        ys = np.stack([np.bincount(self.e, rewards[m], minlength=n) for m in self.metrics], 1)  # (E, M)
        self.coefs, self.bases = [], []
        for w in self.draws:
            xtw = x.T * w
            gram = xtw @ x + np.diag(pen)
            try:
                coef = np.linalg.solve(gram, xtw @ ys)
            except np.linalg.LinAlgError:  # fewer distinct episodes than regressors: the minimum-norm fit
                coef = np.linalg.lstsq(gram, xtw @ ys, rcond=None)[0]
            self.coefs.append(coef[a_cols])  # (T, M)
            self.bases.append((w[:, None] * ys).sum(0) / w.sum())  # (M,) the logged mean per episode

    def _episode_noise(self, a: np.ndarray) -> np.ndarray:
        x = (a - self.t.mu_bp[:, 0]).astype(np.float64) / self.half
        return np.stack([np.bincount(self.e, x[:, j]) / self.cnt for j in range(x.shape[1])], 1)

    def estimate(self, actions: np.ndarray) -> dict[str, dict]:
        """Per metric ``{"value", "ci_low", "ci_high", "lift": {"mean", "ci_low", "ci_high"}}`` (the lift over
        the logged mean per episode) of the user-level policy whose actions at every request are ``actions``
        (R, 1, A)."""
        delta = _dm_terms(self.st, self._episode_noise(actions[:, 0]), self.model) - self.terms_act  # (E, T)
        vals, lifts = [], []
        for w, coef, base in zip(self.draws, self.coefs, self.bases, strict=True):
            v = base + (w[:, None] * delta).sum(0) / w.sum() @ coef
            vals.append(v)
            with np.errstate(invalid="ignore", divide="ignore"):
                lifts.append(np.where(base != 0, v / base - 1.0, np.nan))
        vals, lifts = np.array(vals), np.array(lifts)  # (1 + n_boot, M)
        return {m: {"value": float(vals[0, k]), "ci_low": float(np.percentile(vals[1:, k], 2.5)),
                    "ci_high": float(np.percentile(vals[1:, k], 97.5)),
                    "lift": {"mean": float(lifts[0, k]), "ci_low": float(np.nanpercentile(lifts[1:, k], 2.5)),
                             "ci_high": float(np.nanpercentile(lifts[1:, k], 97.5))}}
                for k, m in enumerate(self.metrics)}


def first_order_dm(t: Transitions, rewards: dict[str, np.ndarray], actions: np.ndarray, n_boot: int = 200,
                   seed: int = 0, ridge: float = 1.0) -> dict[str, dict]:
    """The direct method at first order for one policy (:class:`DirectMethod` with ``model="linear"``)."""
    return DirectMethod(t, rewards, n_boot, seed, ridge, "linear").estimate(actions)


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
    dm = None
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
            if dm is None:  # one regression serves every policy
                dm = DirectMethod(t, rewards, cfg.bootstrap, cfg.fqe.seed, model=cfg.dm_model)
            entry["dm"] = dm.estimate(acts)
            if entry["is"]["uvc"]["ess"] < 30:
                entry["warnings"].append(f"effective sample size {entry['is']['uvc']['ess']:.0f} episodes: the "
                                         "importance-weighted estimates rest on very few logged episodes")
        else:
            entry["is"] = None
            entry["warnings"].append("importance weights need user-level policies on user-level exploration")
        out["policies"].append(entry)
    return out
