"""Rewards (the paper's Formulas 2 and 3).

    r_tj = sum_i w_i * v_i          (one user-item pair)
    r_t  = sum_{j=1..l} r_tj        (one request: the l shown items)

Behaviours v: watch time in minutes, valid consumption (watch > 10 s), like, share, collect,
follow, comment. The weights are a config; the defaults follow ``docs/design.md#reward``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

#: Behaviours that enter the reward, in the order of :class:`RewardWeights`.
REWARD_BEHAVIOURS: tuple[str, ...] = ("watch_time", "valid", "like", "share", "collect", "follow", "comment")


@dataclass(frozen=True)
class RewardWeights:
    """Weight of each behaviour in the item reward r_tj."""

    watch_time: float = 1.0
    """Per minute watched (the behaviour column is in seconds; it is divided by 60)."""
    valid: float = 1.0
    """Valid consumption: watch time > 10 s."""
    like: float = 2.0
    share: float = 3.0
    collect: float = 2.0
    follow: float = 3.0
    comment: float = 2.0

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def item_reward(behaviours: Mapping[str, np.ndarray], weights: RewardWeights = RewardWeights()) -> np.ndarray:
    """r_tj for every user-item pair. ``behaviours`` maps each name in REWARD_BEHAVIOURS to an
    array (watch_time in seconds, the others 0/1); all arrays share one shape."""
    missing = [b for b in REWARD_BEHAVIOURS if b not in behaviours]
    if missing:
        raise KeyError(f"behaviours missing for the reward: {missing}")
    r = np.asarray(behaviours["watch_time"], dtype=np.float64) / 60.0 * weights.watch_time
    for name in REWARD_BEHAVIOURS[1:]:
        r = r + getattr(weights, name) * np.asarray(behaviours[name], dtype=np.float64)
    return r


def request_reward(item_rewards: np.ndarray) -> np.ndarray:
    """r_t = sum over the last (list) axis of the item rewards (..., l)."""
    return np.asarray(item_rewards).sum(-1)
