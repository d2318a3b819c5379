"""Loss helpers of Enhanced-State RL (the paper's Formulas 5-7), as pure functions of tensors.

Shapes: m critics, B requests, l items per request (l = 1 for user-level methods), A action dims.
"""

from __future__ import annotations

import torch


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
              gamma: float, delta: float) -> torch.Tensor:
    """List-level TD target of Formula 7, per critic: (m, B).

    y_i = sum_j r_tj + gamma * (1 - done_t) * sum_j' [Q'_i(s_(t+1)j', mu'(s_(t+1)j'))
                                                       - delta * d(mu'(s_(t+1)j'), mu_bp(s_(t+1)j'))]

    item_reward (B, l); done (B,); next_q (m, B, l'); next_penalty (B, l'). The paper prints delta*d
    outside the square, where it has no gradient with respect to the critic; it belongs in the target
    (penalise the next action for leaving the box), as the text around the formula describes.
    """
    future = (next_q - delta * next_penalty.unsqueeze(0)).sum(-1)  # (m, B)
    return item_reward.sum(-1).unsqueeze(0) + gamma * (1.0 - done).unsqueeze(0) * future


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Formula 7: (sum_j Q^i(s_tj, a_tj) - y_i)^2, averaged over requests, summed over critics.

    q (m, B, l) per-item values; target (m, B)."""
    return ((q.sum(-1) - target) ** 2).mean(-1).sum()


def actor_loss(q: torch.Tensor, penalty: torch.Tensor, eta: float, lam: float) -> torch.Tensor:
    """Formula 5: mean over states of -mean_i Q^i + eta * d + lambda * std_i Q^i.

    q (m, S) values of the actor's actions on S states; penalty (S,). The std is the population std
    sqrt(1/m sum_i (Q^i - mean Q)^2), as printed."""
    return (-q.mean(0) + eta * penalty + lam * q.std(0, unbiased=False)).mean()


@torch.no_grad()
def soft_update(target: torch.nn.Module, source: torch.nn.Module, rate: float) -> None:
    """target <- (1 - rate) * target + rate * source, parameters and buffers."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, rate)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)
