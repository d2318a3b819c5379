"""The logged actions' range as the action space of an offline actor (DDPG, CQL+SAC).

An offline critic has seen actions only where the behaviour policy put them: here a box of +-0.15 around
the hand-set fusion, a small part of [-1, 1]^10. A ReLU critic extrapolates linearly outside the data,
so an actor that ascends it over all of [-1, 1]^A runs to a corner of the action space that no logged
request ever tried (measured: DDPG's and d3rlpy's DDPG's actions at |a| > 0.99 in every dimension of
every state, 80% of the dimensions outside the box; ``benchmarks/peer_d3rlpy.py``).

The fix is d3rlpy's ``MinMaxActionScaler`` (d3rlpy docs, "Preprocessing: action scaler": actions are
scaled to [-1, 1] by the minimum and maximum of the dataset's actions) and the ``action_scale`` /
``action_bias`` of TD3 and CleanRL's ``td3_continuous_action.py`` (the actor's tanh is stretched to the
action bounds): the algorithm runs in [-1, 1]^A *of the logged range*, so that the actor's tanh squashes
its output into the per-dimension [min, max] of the logged actions, and the served action is mapped
back. The range is a pair of buffers, saved with the policy.
"""

from __future__ import annotations

import torch
from torch import nn

#: a dimension whose logged actions span less than this keeps a range of this width (no division by 0)
MIN_WIDTH = 1e-3


class ActionRange(nn.Module):
    """Per-dimension [low, high] of the logged actions, and the affine maps to and from [-1, 1]^A.

    Starts as the full action space [-1, 1]^A (both maps the identity) until :meth:`fit` is called."""

    def __init__(self, action_dim: int):
        super().__init__()
        self.register_buffer("low", -torch.ones(action_dim))
        self.register_buffer("high", torch.ones(action_dim))

    @torch.no_grad()
    def fit(self, actions: torch.Tensor) -> None:
        """Set the range to the minimum and maximum of ``actions`` (N, A), each at least MIN_WIDTH wide
        and inside [-1, 1]."""
        lo, hi = actions.min(0).values.clamp(-1.0, 1.0), actions.max(0).values.clamp(-1.0, 1.0)
        mid, half = (lo + hi) / 2, ((hi - lo) / 2).clamp_min(MIN_WIDTH / 2)
        self.low.copy_((mid - half).clamp_min(-1.0))
        self.high.copy_((self.low + 2 * half).clamp_max(1.0))

    def scale(self, action: torch.Tensor) -> torch.Tensor:
        """Logged action -> the algorithm's [-1, 1] coordinates: (..., A) -> (..., A)."""
        return 2.0 * (action - self.low) / (self.high - self.low) - 1.0

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        """The algorithm's [-1, 1] coordinates -> an action inside [low, high]: (..., A) -> (..., A)."""
        return (self.low + (x + 1.0) * 0.5 * (self.high - self.low)).clamp(-1.0, 1.0)
