"""The policy interface shared by user-level and item-level fusion policies.

A policy sees one :class:`RequestObs` per batch of concurrent requests and returns actions in
[-1, 1]^10 (see :mod:`rlmtf.core.fusion`):

- a **user-level** policy (``level = "user"``; IntegratedRL-MTF, DDPG, ES, hand-set fusions) returns
  (B, A): one action per request, applied to every candidate;
- an **item-level** policy (``level = "item"``; Enhanced-State RL) returns (B, N, A): one action per
  user-item pair, computed from the enhanced state.

``decide`` returns a :class:`Decision`, which also carries what exploration logs: the behaviour
policy's own action ``mu_bp`` and the exploration box ``[mu_bp + lower_b, mu_bp + upper_b]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from rlmtf.core.fusion import ACTION_DIM, ActionSpace


@dataclass
class RequestObs:
    """What the ranking stage knows about B concurrent requests with N candidates each.

    Item features are either given as ``item_features`` (B, N, F) or gathered lazily, on first
    access, from a catalogue table ``item_table`` (I, F) by ``item_id`` (a policy that never looks
    at them costs nothing)."""

    user_id: np.ndarray  # (B,) int64
    request_key: np.ndarray  # (B,) uint64: a unique, seed-dependent key for counter-based draws
    user_profile: np.ndarray  # (B, P) float32
    user_history: np.ndarray  # (B, H) float32
    context: np.ndarray  # (B, X) float32
    item_id: np.ndarray  # (B, N) int64
    mtl_scores: np.ndarray  # (B, N, K) float32
    item_features_: np.ndarray | None = None  # (B, N, F) float32
    item_table: np.ndarray | None = None  # (I, F) float32
    true_scores: np.ndarray | None = None  # (B, N, K): simulator only, the exact task probabilities
    session_id: np.ndarray | None = None  # (B,) int64: the simulator's session of each request
    user_day_key: np.ndarray | None = None  # (B,) uint64: one key per user and day (per-day exploration)

    @property
    def item_features(self) -> np.ndarray:
        """(B, N, F) float32."""
        if self.item_features_ is None:
            if self.item_table is None:
                raise ValueError("RequestObs has neither item_features nor an item_table")
            ids = self.item_id.ravel()
            self.item_features_ = np.take(self.item_table, ids, axis=0).reshape(*self.item_id.shape, -1)
        return self.item_features_

    @property
    def batch_size(self) -> int:
        return self.item_id.shape[0]

    @property
    def n_candidates(self) -> int:
        return self.item_id.shape[1]

    def user_state(self) -> np.ndarray:
        """(B, P + H + X): the paper's original state s_t."""
        return np.concatenate([self.user_profile, self.user_history, self.context], -1).astype(np.float32)

    def enhanced_state(self) -> np.ndarray:
        """(B, N, P + H + X + F + K): one enhanced state s_tj per user-item pair."""
        b, n = self.item_id.shape
        us = np.broadcast_to(self.user_state()[:, None, :], (b, n, self.user_state().shape[-1]))
        return np.concatenate([us, self.item_features, self.mtl_scores.astype(np.float32)], -1)


@dataclass
class Decision:
    """Actions and their exploration record. Arrays are (B, A) for user-level decisions or
    (B, N, A) for item-level ones; ``lower_b``/``upper_b`` broadcast against ``mu_bp``."""

    action: np.ndarray
    mu_bp: np.ndarray
    lower_b: np.ndarray
    upper_b: np.ndarray

    @property
    def level(self) -> Literal["user", "item"]:
        return "item" if self.action.ndim == 3 else "user"


class Policy(ABC):
    """Base of every fusion policy."""

    level: ClassVar[Literal["user", "item"]] = "user"
    #: "mtl" ranks with the MTL model's scores; "true" with the exact probabilities (simulator oracle).
    score_source: Literal["mtl", "true"] = "mtl"
    name: str = "policy"
    #: The fusion parameterisation its actions are in (docs/design.md#the-action-space); None: the
    #: environment's. A policy trained in the relative space carries it, so it ranks the same anywhere.
    action_space: ActionSpace | None = None

    @abstractmethod
    def act(self, obs: RequestObs) -> np.ndarray:
        """Actions in [-1, 1]: (B, A) for a user-level policy, (B, N, A) for an item-level one."""

    def decide(self, obs: RequestObs) -> Decision:
        """Act without exploration: mu_bp is the action and the exploration box is empty."""
        a = self.act(obs)
        zero = np.zeros(a.shape[-1], dtype=np.float32)
        return Decision(action=a, mu_bp=a, lower_b=zero, upper_b=zero)

    def rank(self, obs: RequestObs, l: int) -> np.ndarray | None:
        """Positions (B, l) of the items to show, for a policy that ranks by itself (e.g. a remote ranking
        service); None (the default): the environment shows the top l by the fused score of its actions."""
        return None

    def observe(self, obs: RequestObs, items: np.ndarray, feedback: dict[str, np.ndarray], done: np.ndarray) -> None:
        """Called after the users reacted to the shown ``items`` (B, l) with ``feedback`` (behaviour -> (B, l)),
        ``done`` (B,) marking the last request of a session. The default ignores it; a ranking service's
        client forwards it to the service."""
        return None


def space_of(policy: Policy, default: ActionSpace) -> ActionSpace:
    """The action space ``policy``'s actions are in: its own, else ``default`` (the environment's)."""
    return policy.action_space if policy.action_space is not None else default


def check_actions(a: np.ndarray, obs: RequestObs, level: str, who: str, dim: int | None = ACTION_DIM) -> np.ndarray:
    """Validate a policy's output shape and range; returns it as float32. ``dim``: the action space's
    dimension (None: any)."""
    b, n = obs.item_id.shape
    d = a.shape[-1] if dim is None and a.ndim else dim
    expected = (b, d) if level == "user" else (b, n, d)
    if a.shape != expected:
        hint = (f" (an action space of {d} dimensions; {ACTION_DIM}: the paper's, {ACTION_DIM - 1}: the relative one, "
                "docs/design.md#the-action-space)" if a.ndim and a.shape[-1] != d else "")
        raise ValueError(f"{who}: {level}-level policy returned actions of shape {a.shape}, expected {expected}{hint}")
    if not np.isfinite(a).all():
        raise ValueError(f"{who}: returned non-finite actions")
    if (np.abs(a) > 1 + 1e-6).any():
        raise ValueError(f"{who}: returned actions outside [-1, 1] (max |a| = {np.abs(a).max():.4f})")
    return a.astype(np.float32, copy=False)
