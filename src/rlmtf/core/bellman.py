"""TD-target arithmetic shared by the algorithms (``rlmtf.algos``) and off-policy evaluation
(``rlmtf.eval.fqe``): the one-step Bellman target and the per-request discount of session and day
episodes (``docs/design.md#the-objective``). Pure functions of tensors."""

from __future__ import annotations

import torch


def bellman_target(reward: torch.Tensor, done: torch.Tensor, next_value: torch.Tensor,
                   gamma: float | torch.Tensor) -> torch.Tensor:
    """y = r + gamma * (1 - done) * V(s'): reward (B,), done (B,), next_value (B,) or (m, B) -> the shape of
    next_value (the reward and the mask broadcast over the critics). ``gamma`` is a number or a per-request
    discount (B,) (:func:`discounts`)."""
    return reward + gamma * (1.0 - done) * next_value


def discounts(gap: torch.Tensor, gamma: float, session_gamma: float) -> torch.Tensor:
    """Per-request discount (B,) into the next request: ``gamma`` inside a session, ``session_gamma`` where
    the next request opens the user's next session of the day (``gap`` = 1; day episodes only, see
    ``rlmtf.core.objective``)."""
    return gamma + gap * (session_gamma - gamma)
