"""Loss helpers shared by the algorithms, as pure functions of tensors, and the two idioms for networks
that a loss must not train: frozen critics during an actor step (:func:`frozen`) and target networks
(:func:`target_copy`, moved only by :func:`soft_update`).

Enhanced-State RL's own losses (the paper's Formulas 5-7) are here as well, since IntegratedRL-MTF shares
them; a helper only one algorithm uses stays in that algorithm's file.

Shapes: m critics, B requests, l items per request (l = 1 for user-level methods), A action dims.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from rlmtf.core.bellman import bellman_target

M = TypeVar("M", bound=nn.Module)

# --- critic losses (TD targets: rlmtf.core.bellman) ------------------------------------------------------


def critic_mse(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared TD error averaged over the batch and summed over the critics: q (m, B), target (B,) (one
    target for every critic, broadcast over them) or (m, B) (one per critic)."""
    return ((q - target) ** 2).mean(-1).sum()


# --- Enhanced-State RL and IntegratedRL-MTF (Formulas 5-7) --------------------------------------------


def bound_penalty(mu: torch.Tensor, mu_bp: torch.Tensor, lower_b: torch.Tensor, upper_b: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """d(mu, mu_bp) of Formula 6, summed over the action dimensions: (..., A) -> (...).

    Zero inside the exploration box [mu_bp + lower_b, mu_bp + upper_b]; outside it grows as
    exp(distance / (beta * (upper_b - lower_b))), so it starts at 1 on the box's edge and
    punishes leaving the region the data covers.
    """
    lo = mu_bp + lower_b
    hi = mu_bp + upper_b
    scale = beta * (upper_b - lower_b).clamp_min(1e-6)
    # the exponent is capped at 30 only to keep float32 finite; e^30 already dwarfs any Q value
    above = torch.where(mu > hi, torch.exp(((mu - hi) / scale).clamp_max(30.0)), torch.zeros_like(mu))
    below = torch.where(mu < lo, torch.exp(((lo - mu) / scale).clamp_max(30.0)), torch.zeros_like(mu))
    return (above + below).sum(-1)


def td_target(item_reward: torch.Tensor, done: torch.Tensor, next_q: torch.Tensor, next_penalty: torch.Tensor,
              gamma: float | torch.Tensor, delta: float) -> torch.Tensor:
    """List-level TD target of Formula 7, per critic: (m, B).

    y_i = sum_j r_tj + gamma * (1 - done_t) * sum_j' [Q'_i(s_(t+1)j', mu'(s_(t+1)j'))
                                                       - delta * d(mu'(s_(t+1)j'), mu_bp(s_(t+1)j'))]

    item_reward (B, l); done (B,); next_q (m, B, l'); next_penalty (B, l'); gamma a number or (B,). The
    paper prints delta*d outside the square, where it has no gradient with respect to the critic; it
    belongs in the target (penalise the next action for leaving the box), as the text around the formula
    describes.
    """
    future = (next_q - delta * next_penalty.unsqueeze(0)).sum(-1)  # (m, B)
    return bellman_target(item_reward.sum(-1), done, future, gamma)  # (m, B)


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Formula 7: (sum_j Q^i(s_tj, a_tj) - y_i)^2, averaged over requests, summed over critics.

    q (m, B, l) per-item values; target (m, B)."""
    return critic_mse(q.sum(-1), target)


def actor_loss(q: torch.Tensor, penalty: torch.Tensor, eta: float, lam: float) -> torch.Tensor:
    """Formula 5: mean over states of -mean_i Q^i + eta * d + lambda * std_i Q^i.

    q (m, S) values of the actor's actions on S states; penalty (S,). The std is the population std
    sqrt(1/m sum_i (Q^i - mean Q)^2), as printed."""
    return (-q.mean(0) + eta * penalty + lam * q.std(0, unbiased=False)).mean()


# --- networks a loss must not train ----------------------------------------------------------------


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off gradients of ``modules`` for the block (a loss computed inside, such as an actor loss
    through the critics, leaves no gradient on them), and turn them back on afterwards."""
    for m in modules:
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m in modules:
            m.requires_grad_(True)


def target_copy(module: M) -> M:
    """A target network of ``module``: a copy that no loss trains (only :func:`soft_update` moves it)."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def soft_update(target: torch.nn.Module, source: torch.nn.Module, rate: float) -> None:
    """target <- (1 - rate) * target + rate * source, parameters and buffers."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, rate)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)
