"""Multi-task fusion (the paper's Formula 1) and the action <-> fusion-parameter map.

    final_score = prod_{i=1..K} (score_i + bias_i) ** power_i

computed in log space as ``sum_i power_i * log(score_i + bias_i)`` so that products of many small
probabilities neither underflow nor lose ranking resolution. Ranking by the log score is identical
to ranking by the product because ``exp`` is monotonic.

An action is a vector in ``[-1, 1]^(2K)`` laid out as ``(power_1..power_K, bias_1..bias_K)``. It
maps affinely to ``power in power_range`` and ``bias in bias_range`` (defaults ``[0, 2]`` and
``[0.01, 1]``; the papers do not publish theirs). Both numpy arrays and torch tensors are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The MTL tasks whose scores are fused, in order: P(watch > 10 s), predicted watch time scaled to
#: [0, 1] by a fixed cap, P(play to the end), P(like), P(share).
MTL_TASKS: tuple[str, ...] = ("valid", "watch_time", "finish", "like", "share")
N_TASKS: int = len(MTL_TASKS)
ACTION_DIM: int = 2 * N_TASKS


def _xp(x: Any):
    """numpy or torch, whichever ``x`` belongs to."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


@dataclass(frozen=True)
class ActionSpace:
    """Affine map between normalised actions in [-1, 1]^(2K) and fusion powers and biases."""

    power_range: tuple[float, float] = (0.0, 2.0)
    """Range of the exponents ``power_i``; action -1 maps to the low end, +1 to the high end."""
    bias_range: tuple[float, float] = (0.01, 1.0)
    """Range of the offsets ``bias_i``; the low end must be > 0 so that log(score + bias) is finite."""
    n_tasks: int = N_TASKS
    """Number of fused MTL scores K; the action has 2K dimensions."""

    def __post_init__(self) -> None:
        lo, hi = self.power_range
        if not lo < hi:
            raise ValueError(f"power_range must be increasing, got {self.power_range}")
        lo, hi = self.bias_range
        if not 0 < lo < hi:
            raise ValueError(f"bias_range must satisfy 0 < low < high, got {self.bias_range}")

    @property
    def dim(self) -> int:
        return 2 * self.n_tasks

    def to_params(self, action):
        """Action (..., 2K) in [-1, 1] -> (power (..., K), bias (..., K))."""
        if action.shape[-1] != self.dim:
            raise ValueError(f"action has {action.shape[-1]} dimensions, expected {self.dim}")
        k = self.n_tasks
        half = (action + 1.0) * 0.5  # [0, 1]
        p_lo, p_hi = self.power_range
        b_lo, b_hi = self.bias_range
        power = p_lo + (p_hi - p_lo) * half[..., :k]
        bias = b_lo + (b_hi - b_lo) * half[..., k:]
        return power, bias

    def from_params(self, power, bias):
        """Inverse of :meth:`to_params`: (power, bias) -> action in [-1, 1]."""
        xp = _xp(power)
        p_lo, p_hi = self.power_range
        b_lo, b_hi = self.bias_range
        a_p = 2.0 * (power - p_lo) / (p_hi - p_lo) - 1.0
        a_b = 2.0 * (bias - b_lo) / (b_hi - b_lo) - 1.0
        return xp.concatenate([a_p, a_b], -1) if xp is np else xp.cat([a_p, a_b], -1)


def fused_log_score(scores, action, space: ActionSpace = ActionSpace()):
    """log(final_score) = sum_i power_i * log(score_i + bias_i).

    ``scores``: (..., K) MTL scores, finite and >= 0. ``action``: (..., 2K), broadcastable against
    ``scores`` on the leading axes (a user-level action (B, 1, 2K) against candidates (B, N, K), or
    an item-level action (B, N, 2K)). Returns (...,) log scores.
    """
    xp = _xp(scores)
    if scores.shape[-1] != space.n_tasks:
        raise ValueError(f"scores have {scores.shape[-1]} tasks, expected {space.n_tasks}")
    power, bias = space.to_params(action)
    logs = xp.log(scores + bias)
    if xp is np and scores.ndim == 3 and power.ndim == 3 and power.shape[1] == 1 and power.shape[0] == scores.shape[0]:
        # one action per row (B, 1, K): a batched mat-vec product, much faster than a reduce over K
        return np.matmul(logs, power[:, 0, :, None].astype(logs.dtype, copy=False))[..., 0]
    return (power * logs).sum(-1)


def final_score(scores, action, space: ActionSpace = ActionSpace()):
    """The fused ranking score ``prod_i (score_i + bias_i) ** power_i`` (Formula 1)."""
    return _xp(scores).exp(fused_log_score(scores, action, space))


def check_scores(scores: np.ndarray, what: str = "mtl_scores") -> None:
    """Raise ValueError naming the first row with a NaN, infinite or negative score."""
    bad = ~np.isfinite(scores) | (scores < 0)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise ValueError(f"{what}: invalid score {scores[tuple(idx)]!r} at index {tuple(int(i) for i in idx)} "
                         "(scores must be finite and >= 0)")


def rank_top_l(log_scores: np.ndarray, l: int) -> np.ndarray:
    """Indices (B, l) of the l highest scores per row of (B, N), best first."""
    n = log_scores.shape[-1]
    if l > n:
        raise ValueError(f"cannot show {l} items from {n} candidates")
    part = np.argpartition(-log_scores, l - 1, axis=-1)[..., :l]
    order = np.argsort(-np.take_along_axis(log_scores, part, -1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1)
