"""Exploration policies (``docs/design.md#exploration``, the paper's Formula 4).

``UniformExploration``: ``a = clip(mu_bp(s) + eps, -1, 1)`` with ``eps ~ U(lower_b, upper_b)`` per
dimension; defaults lower_b = -0.15, upper_b = +0.15 (IntegratedRL-MTF's). Noise is drawn once per
request (``per="request"``, one action for all candidates) or once per user-item pair
(``per="item"``, the data Enhanced-State RL is trained on), or once per user and day (``per="day"``:
every request of a user's day carries the same noise, so that the logs show what one fusion does to a
whole day, return visits included; the environments' requests carry the key it needs). Every sample
records mu_bp, lower_b, upper_b and the action.

``SharedItemExploration``: per-day (or per-request) noise on the shared action plus small per-item noise
(Enhanced-State RL's residual variant).

``ActionNoiseExploration``: the comparator ``eps ~ N(0, sigma)``, sigma = 0.2. It logs the same
nominal box so that an analysis can count how many of its samples land inside it.

Draws are counter-based (see :mod:`rlmtf.core.rng`): a pure function of (seed, request, candidate,
dimension), so the same seed reproduces the same exploration. They have 16-bit resolution (65536
equally spaced values per dimension), far finer than any effect of the noise.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from rlmtf.core import rng as crng
from rlmtf.policy.base import Decision, Policy, RequestObs, check_actions

_S_UNIFORM, _S_NOISE, _S_ITEM = 311, 312, 313


def _bounds(value: float | np.ndarray, name: str) -> np.ndarray:
    """A box bound: one number for every action dimension, or one per dimension (checked against the
    action's dimension when the first action is drawn)."""
    b = np.array(value, dtype=np.float32)
    if b.ndim > 1 or not np.isfinite(b).all():
        raise ValueError(f"{name} must be a finite number or a list of them, got {b.tolist()}")
    return b


def _fit(bound: np.ndarray, dim: int, name: str) -> np.ndarray:
    if bound.ndim == 1 and bound.size != dim:
        raise ValueError(f"{name} has {bound.size} numbers, but the actions have {dim} dimensions")
    return np.broadcast_to(bound, (dim,)).astype(np.float32)


class _Exploration(Policy):
    def __init__(self, base: Policy, per: Literal["request", "item", "day"], seed: int):
        if per not in ("request", "item", "day"):
            raise ValueError(f"per must be 'request', 'item' or 'day', got {per!r}")
        self.base, self.per, self.seed = base, per, seed
        self.action_space = base.action_space
        self.level = "item" if per == "item" or base.level == "item" else "user"  # type: ignore[misc]
        self.score_source = base.score_source

    def _keys(self, obs: RequestObs) -> np.ndarray:
        """One key per request (B,), per candidate (B, N) or per user-day (B,); each yields the A noise
        dimensions."""
        if self.per == "item":
            return crng.key(self.seed, obs.request_key[:, None], np.arange(obs.n_candidates))  # (B, N)
        if self.per == "day":
            if obs.user_day_key is None:
                raise ValueError("per-day exploration needs requests with a user_day_key (the environments set "
                                 "it; a ranking service's requests have none)")
            return crng.key(self.seed, obs.user_day_key)  # (B,)
        return crng.key(self.seed, obs.request_key)  # (B,)

    def _mu_bp(self, obs: RequestObs) -> np.ndarray:
        mu = check_actions(self.base.act(obs), obs, self.base.level, self.base.name, dim=None)
        if self.level == "item" and mu.ndim == 2:
            mu = np.broadcast_to(mu[:, None, :], (obs.batch_size, obs.n_candidates, mu.shape[-1]))
        return mu

    def _box(self, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = mu.shape[-1]
        return _fit(self.lower_b, a, "lower_b"), _fit(self.upper_b, a, "upper_b")

    @staticmethod
    def _align(eps: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """Per-request noise (B, A) shared by all candidates of an item-level mu_bp (B, N, A)."""
        return eps[:, None, :] if eps.ndim == 2 and mu.ndim == 3 else eps

    def act(self, obs: RequestObs) -> np.ndarray:
        return self.decide(obs).action


class UniformExploration(_Exploration):
    """mu_bp + U(lower_b, upper_b), clipped to [-1, 1] (``edge="clip"``, the paper's Formula 4), or with the
    box moved inside [-1, 1] where it crosses an edge (``edge="shift"``: uniform over a box of the full width
    that touches the edge, logged as that box). Clipping puts every draw beyond an edge exactly on it, so a
    policy at the edge is logged there again and again and its critics never see actions back inside;
    shifting keeps the samples spread, so a dimension that reached an edge can come back."""

    def __init__(self, base: Policy, lower_b: float | np.ndarray = -0.15, upper_b: float | np.ndarray = 0.15,
                 per: Literal["request", "item", "day"] = "request", seed: int = 0,
                 edge: Literal["clip", "shift"] = "clip"):
        super().__init__(base, per, seed)
        if edge not in ("clip", "shift"):
            raise ValueError(f"edge must be 'clip' or 'shift', got {edge!r}")
        self.edge = edge
        self.lower_b, self.upper_b = _bounds(lower_b, "lower_b"), _bounds(upper_b, "upper_b")
        lo, hi = np.broadcast_arrays(self.lower_b, self.upper_b)
        bad = np.flatnonzero(np.atleast_1d(lo > hi))
        if bad.size:
            raise ValueError(f"lower_b > upper_b in dimension {int(bad[0])}: "
                             f"{np.atleast_1d(lo)[bad[0]]} > {np.atleast_1d(hi)[bad[0]]}")
        self.name = f"{base.name}+uniform"

    def decide(self, obs: RequestObs) -> Decision:
        mu = self._mu_bp(obs)
        lower_b, upper_b = self._box(mu)
        u = crng.uniforms16(self._keys(obs), _S_UNIFORM, mu.shape[-1])  # (B, A) or (B, N, A)
        if self.edge == "shift":
            lo, hi = mu + lower_b, mu + upper_b  # (B, [N,] A)
            move = np.maximum(-1.0 - lo, 0.0) - np.maximum(hi - 1.0, 0.0)  # into [-1, 1] (if the box fits)
            lo, hi = np.maximum(lo + move, -1.0), np.minimum(hi + move, 1.0)
            u = self._align(u, mu)
            action = (lo + (hi - lo) * u).astype(np.float32)
            return Decision(action=action, mu_bp=mu, lower_b=(lo - mu).astype(np.float32),
                            upper_b=(hi - mu).astype(np.float32))
        eps = self._align(lower_b + (upper_b - lower_b) * u, mu)
        return Decision(action=np.clip(mu + eps, -1.0, 1.0), mu_bp=mu, lower_b=lower_b, upper_b=upper_b)


class SharedItemExploration(_Exploration):
    """Two levels of uniform noise (the data of Enhanced-State RL's residual variant): one draw per user-day
    (``shared_per="day"``) or per request on the shared action, in ``[lower_b, upper_b]`` as
    :class:`UniformExploration` draws it, plus one draw per user-item pair in ``[item_lower_b, item_upper_b]``,
    clipped to [-1, 1]. The shared noise shows what a fusion does to a whole day (or request); the item's,
    kept small, what a correction does to one item without re-ranking the whole list. Logged per item: mu_bp
    and the box of the sum (the shared box plus the item's); the density in it is the convolution of the two
    uniforms, not uniform, which only importance weights would need (item-level logs get none)."""

    def __init__(self, base: Policy, lower_b: float | np.ndarray = -0.15, upper_b: float | np.ndarray = 0.15,
                 item_lower_b: float | np.ndarray = -0.05, item_upper_b: float | np.ndarray = 0.05, seed: int = 0,
                 edge: Literal["clip", "shift"] = "clip", shared_per: Literal["request", "day"] = "day"):
        super().__init__(base, "item", seed)
        if shared_per not in ("request", "day"):
            raise ValueError(f"shared_per must be 'request' or 'day', got {shared_per!r}")
        self.day = UniformExploration(base, lower_b, upper_b, per=shared_per, seed=seed, edge=edge)
        self.lower_b, self.upper_b = self.day.lower_b, self.day.upper_b
        self.item_lower_b, self.item_upper_b = _bounds(item_lower_b, "item_lower_b"), _bounds(item_upper_b,
                                                                                              "item_upper_b")
        if np.any(self.item_lower_b > self.item_upper_b):
            raise ValueError("item_lower_b > item_upper_b")
        self.name = f"{base.name}+uniform {shared_per}+item"

    def decide(self, obs: RequestObs) -> Decision:
        d = self.day.decide(obs)
        b, n, a = obs.batch_size, obs.n_candidates, d.action.shape[-1]

        def per_item(x: np.ndarray) -> np.ndarray:  # (A,), (B, A) or (B, N, A) -> (B, N, A)
            x = np.asarray(x, np.float32)
            return np.broadcast_to(x[:, None, :] if x.ndim == 2 else x, (b, n, a))

        lo, hi = _fit(self.item_lower_b, a, "item_lower_b"), _fit(self.item_upper_b, a, "item_upper_b")
        u = crng.uniforms16(crng.key(self.seed, obs.request_key[:, None], np.arange(n)), _S_ITEM, a)  # (B, N, A)
        action = np.clip(per_item(d.action) + lo + (hi - lo) * u, -1.0, 1.0).astype(np.float32)
        return Decision(action=action, mu_bp=per_item(d.mu_bp).copy(), lower_b=(per_item(d.lower_b) + lo),
                        upper_b=(per_item(d.upper_b) + hi))


class ActionNoiseExploration(_Exploration):
    """mu_bp + N(0, sigma), clipped to [-1, 1]; logs the nominal box for comparison."""

    def __init__(self, base: Policy, sigma: float = 0.2, per: Literal["request", "item", "day"] = "request",
                 seed: int = 0, lower_b: float = -0.15, upper_b: float = 0.15):
        super().__init__(base, per, seed)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = sigma
        self.lower_b, self.upper_b = _bounds(lower_b, "lower_b"), _bounds(upper_b, "upper_b")
        self.name = f"{base.name}+noise"

    def decide(self, obs: RequestObs) -> Decision:
        mu = self._mu_bp(obs)
        lower_b, upper_b = self._box(mu)
        eps = self._align(np.float32(self.sigma) * crng.normals(self._keys(obs), _S_NOISE, mu.shape[-1]), mu)
        return Decision(action=np.clip(mu + eps, -1.0, 1.0), mu_bp=mu, lower_b=lower_b, upper_b=upper_b)
