"""Multi-task fusion (the paper's Formula 1) and the action <-> fusion-parameter map.

    final_score = prod_{i=1..K} (score_i + bias_i) ** power_i

computed in log space as ``sum_i power_i * log(score_i + bias_i)`` so that products of many small
probabilities neither underflow nor lose ranking resolution. Ranking by the log score is identical
to ranking by the product because ``exp`` is monotonic.

Two parameterisations of the action (``ActionSpace.parameterisation``, docs/design.md#the-action-space):

- ``"paper"`` (the default, the papers' own): a vector in ``[-1, 1]^(2K)`` laid out as
  ``(power_1..power_K, bias_1..bias_K)``, mapped affinely to ``power in power_range`` and ``bias in
  bias_range`` (defaults ``[0, 2]`` and ``[0.01, 1]``; the papers do not publish theirs). Scaling all K
  powers by one factor leaves every ranking unchanged, so one direction of this space changes nothing,
  and the hand-set biases (0.05 to 0.1) sit 0.08 to 0.18 action units from the bias floor.
- ``"relative"``: ``[-1, 1]^(2K-1)`` laid out as ``(power_2..power_K, bias_1..bias_K)``. The first
  task's power is fixed at 1 (the only scale-free choice: any fusion with ``power_1 > 0`` ranks like one
  with ``power_1 = 1``), the others map affinely to ``power_range`` relative to it, and the biases map
  on a log scale to ``log_bias_range`` (default ``[0.001, 1]``). ``d log(s + b) / d log b = b / (s + b)``,
  so a log scale gives a bias the same leverage per action unit wherever it is, and the hand-set biases
  sit in the middle of the range rather than at its edge.

Both numpy arrays and torch tensors are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
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


PARAMETERISATIONS: tuple[str, ...] = ("paper", "relative")


@dataclass(frozen=True)
class ActionSpace:
    """Map between normalised actions in [-1, 1]^dim and fusion powers and biases (see the module doc)."""

    power_range: tuple[float, float] = (0.0, 2.0)
    """Range of the exponents ``power_i``; action -1 maps to the low end, +1 to the high end."""
    bias_range: tuple[float, float] = (0.01, 1.0)
    """Range of the offsets ``bias_i``; the low end must be > 0 so that log(score + bias) is finite."""
    n_tasks: int = N_TASKS
    """Number of fused MTL scores K; the action has 2K ("paper") or 2K - 1 ("relative") dimensions."""
    parameterisation: str = "paper"
    """"paper": every power and bias free, affine; "relative": the first power fixed at 1, biases on a
    log scale (docs/design.md#the-action-space)."""
    log_bias_range: tuple[float, float] = (0.001, 1.0)
    """Range of the biases under the "relative" parameterisation, mapped on a log scale."""

    def __post_init__(self) -> None:
        if self.parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {', '.join(PARAMETERISATIONS)}, "
                             f"got {self.parameterisation!r}")
        lo, hi = self.power_range
        if not lo < hi:
            raise ValueError(f"power_range must be increasing, got {self.power_range}")
        for name in ("bias_range", "log_bias_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"{name} must satisfy 0 < low < high, got {getattr(self, name)}")

    @property
    def relative(self) -> bool:
        return self.parameterisation == "relative"

    @property
    def dim(self) -> int:
        return 2 * self.n_tasks - (1 if self.relative else 0)

    @property
    def n_power(self) -> int:
        """Action dimensions that set powers (the first ``n_power`` of the action)."""
        return self.n_tasks - (1 if self.relative else 0)

    @classmethod
    def from_dict(cls, d: dict) -> ActionSpace:
        """The inverse of ``dataclasses.asdict`` (as logs and saved policies record it); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"action_space: unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def for_dim(cls, dim: int) -> ActionSpace:
        """The default space of an action dimension: 2K the paper's, 2K - 1 the relative one."""
        for space in (cls(), cls(parameterisation="relative")):
            if space.dim == dim:
                return space
        raise ValueError(f"no action space has {dim} dimensions ({cls().dim}: the paper's, "
                         f"{cls(parameterisation='relative').dim}: the relative one)")

    def names(self) -> tuple[str, ...]:
        """One name per action dimension, e.g. ``power:finish`` or ``bias:like``."""
        tasks = MTL_TASKS[: self.n_tasks]
        return tuple(f"power:{t}" for t in tasks[self.n_tasks - self.n_power:]) + tuple(f"bias:{t}" for t in tasks)

    def to_params(self, action):
        """Action (..., dim) in [-1, 1] -> (power (..., K), bias (..., K))."""
        if action.shape[-1] != self.dim:
            raise ValueError(f"action has {action.shape[-1]} dimensions, expected {self.dim} "
                             f"(the {self.parameterisation!r} action space)")
        xp = _xp(action)
        k = self.n_power
        half = (action + 1.0) * 0.5  # [0, 1]
        p_lo, p_hi = self.power_range
        power = p_lo + (p_hi - p_lo) * half[..., :k]
        if not self.relative:
            b_lo, b_hi = self.bias_range
            return power, b_lo + (b_hi - b_lo) * half[..., k:]
        one = xp.ones_like(power[..., :1])
        power = xp.concatenate([one, power], -1) if xp is np else xp.cat([one, power], -1)
        l_lo, l_hi = (float(np.log(v)) for v in self.log_bias_range)
        return power, xp.exp(l_lo + (l_hi - l_lo) * half[..., k:])

    def from_params(self, power, bias):
        """Inverse of :meth:`to_params`: (power, bias) -> action in [-1, 1]. Under "relative" the powers are
        first divided by the first one (the same ranking), which must be > 0."""
        xp = _xp(power)
        p_lo, p_hi = self.power_range
        cat = (lambda xs: xp.concatenate(xs, -1)) if xp is np else (lambda xs: xp.cat(xs, -1))
        if not self.relative:
            b_lo, b_hi = self.bias_range
            a_p = 2.0 * (power - p_lo) / (p_hi - p_lo) - 1.0
            return cat([a_p, 2.0 * (bias - b_lo) / (b_hi - b_lo) - 1.0])
        if (power[..., :1] <= 0).any():
            raise ValueError("the relative action space fixes the first power at 1; a fusion whose first power "
                             "is <= 0 has no equivalent in it")
        rel = power[..., 1:] / power[..., :1]
        l_lo, l_hi = (float(np.log(v)) for v in self.log_bias_range)
        return cat([2.0 * (rel - p_lo) / (p_hi - p_lo) - 1.0, 2.0 * (xp.log(bias) - l_lo) / (l_hi - l_lo) - 1.0])



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
