"""Offline evaluation of a fusion policy on logged data: the weighted GAUC of ``docs/design.md#weighted-gauc``.

For every logged user-item sample the evaluated policy computes its action on the sample's state
(user-level policies from the user state, item-level ones from the enhanced state of each logged
item), applies it to the sample's MTL scores with Formula 1, and the final scores, min-max
normalised over the test set, are ranked per user against the label ``valid`` (watch > 10 s) with
sample weight ``reward + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlmtf.core import rng as crng
from rlmtf.core.fusion import ActionSpace, fused_log_score
from rlmtf.data.io import LoggedData
from rlmtf.data.transitions import group_requests
from rlmtf.eval.gauc import min_max_normalise, weighted_gauc
from rlmtf.policy.base import Policy, RequestObs, check_actions, space_of


@dataclass
class OfflineResult:
    gauc: float
    n_users: int
    n_users_skipped: int
    rows: int
    policy: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def logged_requests_obs(data: LoggedData, rows: np.ndarray, true_scores: bool = False) -> RequestObs:
    """A :class:`RequestObs` whose candidates are the logged items of each request (rows: (R, l))."""
    c = data.columns
    first = rows[:, 0]
    req_key = crng.key(c["session_id"][first], c["t"][first])
    return RequestObs(user_id=c["user_id"][first], request_key=req_key, user_profile=c["user_profile"][first],
                      user_history=c["user_history"][first], context=c["context"][first], item_id=c["item_id"][rows],
                      mtl_scores=c["mtl_scores"][rows], item_features_=c["item_features"][rows],
                      true_scores=c["true_scores"][rows] if true_scores else None)


def policy_log_scores(policy: Policy, data: LoggedData, space: ActionSpace = ActionSpace(),
                      batch_requests: int = 8192) -> np.ndarray:
    """log(final score) the policy gives each logged row (row order of ``data``); ``space``: the actions' space
    unless the policy carries its own."""
    space = space_of(policy, space)
    rows = group_requests(data)  # (R, l)
    use_true = policy.score_source == "true"
    if use_true and "true_scores" not in data.columns:
        raise ValueError(f"policy {policy.name!r} ranks by true scores but the data has no 'true_scores' column")
    out = np.empty(len(data), dtype=np.float64)
    for lo in range(0, rows.shape[0], batch_requests):
        r = rows[lo: lo + batch_requests]
        obs = logged_requests_obs(data, r, true_scores=use_true)
        a = policy.act(obs)
        a = check_actions(a, obs, "item" if a.ndim == 3 else "user", policy.name, space.dim)
        scores = obs.true_scores if use_true else obs.mtl_scores
        out[r.reshape(-1)] = fused_log_score(scores, a if a.ndim == 3 else a[:, None, :], space).reshape(-1)
    return out


def mean_policy_action(policy: Policy, data: LoggedData, batch_requests: int = 8192) -> np.ndarray:
    """The policy's mean action (A,) over the logged requests of ``data`` (over items for item-level
    policies): where a trained policy sits in action space, e.g. how far progressive training moved it."""
    rows = group_requests(data)
    total, n = None, 0
    for lo in range(0, rows.shape[0], batch_requests):
        obs = logged_requests_obs(data, rows[lo: lo + batch_requests])
        a = np.asarray(policy.act(obs), dtype=np.float64)
        a = a.reshape(-1, a.shape[-1])
        total = a.sum(0) if total is None else total + a.sum(0)
        n += a.shape[0]
    if total is None:
        raise ValueError("no logged requests to act on")
    return total / n


def evaluate_gauc(policy: Policy, data: LoggedData, space: ActionSpace = ActionSpace()) -> OfflineResult:
    """Weighted GAUC of ``policy`` on logged data (label valid, weight reward + 1)."""
    c = data.columns
    for col in ("valid", "reward", "user_id"):
        if col not in c:
            raise ValueError(f"logged data lacks the column {col!r} needed for the weighted GAUC")
    # exp of log scores can overflow; min-max normalising the log score ranks identically per user
    # (a monotone map), and the min-max normalisation of ``docs/design.md#weighted-gauc`` is applied to it.
    pred = min_max_normalise(policy_log_scores(policy, data, space))
    res = weighted_gauc(c["user_id"], c["valid"].astype(np.int64), pred, c["reward"].astype(np.float64) + 1.0)
    return OfflineResult(gauc=float(res.gauc), n_users=int(res.n_users), n_users_skipped=int(res.n_users_skipped),
                         rows=len(data), policy=policy.name)
