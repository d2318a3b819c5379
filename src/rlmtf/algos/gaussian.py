"""Gaussian actors of the stochastic offline baselines (IQL and CQL+SAC), and their log-densities.

- :class:`GaussianActor` (IQL, as CORL's ``GaussianPolicy``): N(tanh(MLP(s)), diag(exp(log_std))^2)
  with a learned *state-independent* log-std; the density of a logged action is a plain Gaussian one;
- :class:`TanhGaussianActor` (SAC, Haarnoja et al. 2018): u ~ N(mean(s), diag(std(s))^2) with a
  state-dependent log-std, a = tanh(u); log pi(a | s) carries the tanh change-of-variables term.

Both return their deterministic action, in [-1, 1]^A, from ``forward``. Sampling takes an explicit
``torch.Generator`` so that an algorithm's draws come from its own saved stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rlmtf.core.nets import StateEncoder, mlp

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(exp(log_std))^2) summed over the last axis: (..., A) -> (...)."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """log |d tanh(u) / du| = sum log(1 - tanh(u)^2), in the stable form 2 (log 2 - u - softplus(-2u)):
    (..., A) -> (...)."""
    return (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


class GaussianActor(nn.Module):
    """pi(a | s) = N(tanh(MLP(s)), diag(exp(log_std))^2), log_std a learned vector (IQL, CORL-style).

    ``forward`` returns the deterministic action, the mean, which lies in [-1, 1]^A."""

    def __init__(self, group_dims: list[int], action_dim: int, hidden: tuple[int, ...] = (256, 256),
                 embed_dim: int = 32):
        super().__init__()
        self.encoder = StateEncoder(group_dims, embed_dim)
        self.head = mlp([self.encoder.out_dim, *hidden, action_dim], nn.Tanh())
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(state))

    def log_prob(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(action | state): (B, D), (B, A) -> (B,)."""
        return gaussian_log_prob(action, self(state), self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX))


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mean(s), diag(exp(log_std(s)))^2) (SAC); ``forward`` gives tanh(mean(s))."""

    def __init__(self, group_dims: list[int], action_dim: int, hidden: tuple[int, ...] = (256, 256),
                 embed_dim: int = 32):
        super().__init__()
        self.encoder = StateEncoder(group_dims, embed_dim)
        self.head = mlp([self.encoder.out_dim, *hidden, 2 * action_dim])

    def dist(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-std of u: (B, D) -> (B, A), (B, A)."""
        mean, log_std = self.head(self.encoder(state)).chunk(2, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dist(state)[0])

    def sample(self, state: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised draw a ~ pi(. | s) and log pi(a | s): (B, D) -> (B, A), (B,)."""
        mean, log_std = self.dist(state)  # (B, A)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + torch.exp(log_std) * eps  # (B, A)
        return torch.tanh(u), gaussian_log_prob(u, mean, log_std) - tanh_log_det(u)
