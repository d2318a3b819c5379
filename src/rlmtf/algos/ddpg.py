"""Offline DDPG: the plainest actor-critic baseline (SPEC section 7).

Paper: T. P. Lillicrap, J. J. Hunt, A. Pritzel, N. Heess, T. Erez, Y. Tassa, D. Silver, D. Wierstra,
"Continuous control with deep reinforcement learning", ICLR 2016.

A deterministic actor mu(s) in [-1, 1]^A and one critic Q(s, a) on the *user state* s_t (one action per
request, reward r_t). The critic regresses on r + gamma * (1 - done) * Q'(s', mu'(s')); the actor
ascends Q(s, mu(s)); the target actor and critic follow their online networks by Polyak averaging
with rate tau after every step.

Differences from the paper: the data is logged, so there is no environment interaction and no
exploration noise (the Ornstein-Uhlenbeck process of the paper has nothing to perturb); there is no
behaviour constraint either, which is what makes it the naive offline baseline. Both networks use
the shared encoder of :mod:`rlmtf.core.nets` (standardised inputs, one embedding per feature group) and
Adam at 3e-4 without weight decay instead of 1e-4 / 1e-3 with L2 1e-2 and batch normalisation.

The small helpers below (:func:`bellman_target`, :func:`critic_mse`, :func:`frozen`) are shared with
the other offline baselines (:mod:`rlmtf.algos.iql`, :mod:`rlmtf.algos.cql_sac`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from rlmtf.algos.base import Algorithm, register
from rlmtf.algos.losses import soft_update
from rlmtf.core.nets import Actor, CriticEnsemble
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.transitions import RequestBatch

# --- pure helpers (shared by the offline baselines) -------------------------------------------------


def bellman_target(reward: torch.Tensor, done: torch.Tensor, next_value: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - done) * V(s'): reward (B,), done (B,), next_value (B,) or (m, B) -> same shape."""
    return reward + gamma * (1.0 - done) * next_value


def critic_mse(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared TD error averaged over the batch and summed over critics: q (m, B), target (B,) or (m, B)."""
    return ((q - target) ** 2).mean(-1).sum()


def ddpg_actor_loss(q_pi: torch.Tensor) -> torch.Tensor:
    """-Q(s, mu(s)) averaged over states (and critics): q_pi (m, B)."""
    return -q_pi.mean()


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off gradients of ``modules`` for the block (a loss computed inside leaves no gradient on
    them), and turn them back on afterwards."""
    for m in modules:
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m in modules:
            m.requires_grad_(True)


def user_tensors(algo: Algorithm, batch: RequestBatch) -> tuple[torch.Tensor, ...]:
    """The user-level batch as flat tensors: s (B, D), a (B, A), r (B,), done (B,), s2 (B, D)."""
    v = algo.view(batch.to_torch(algo.device))
    return v["s"][:, 0], v["a"][:, 0], v["r"].sum(-1), v["done"], v["s2"][:, 0]


# --- the algorithm --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DDPGConfig:
    """Hyper-parameters; shared ones (gamma, sizes, learning rates) as in ``ESRLConfig``."""

    gamma: float = 0.9
    """Discount over requests of a session."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layers of the actor and of the critic."""
    embed_dim: int = 32
    """Per-feature-group embedding size of the state encoders (0: none, the trunk reads the standardised
    state as d3rlpy's networks do: fewer parameters, faster steps)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic."""
    batch_size: int = 256
    """Requests per batch."""
    tau: float = 0.005
    """Polyak rate of the target networks, applied after every step."""


class DDPG(Algorithm):
    """Offline DDPG on the user state: one deterministic action per request."""

    kind: ClassVar[str] = "ddpg"
    level: ClassVar[Literal["user", "item"]] = "user"
    config_cls: ClassVar[type] = DDPGConfig
    cfg: DDPGConfig

    def __init__(self, spec: FeatureSpec, cfg: DDPGConfig | None = None, device: str = "cpu", seed: int = 0):
        super().__init__(spec, cfg, device, seed)
        cfg = self.cfg
        dims, a = self.group_dims(spec), spec.action_dim
        self.actor = Actor(dims, a, cfg.hidden, cfg.embed_dim).to(self.device)
        self.critic = CriticEnsemble(dims, a, 1, cfg.hidden, cfg.embed_dim).to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = self.adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = self.adam(self.critic.parameters(), cfg.critic_lr)

    def critic_loss(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, done: torch.Tensor,
                    s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The TD loss, the critic's values (1, B) and the targets (B,)."""
        with torch.no_grad():
            q2 = self.critic_target(s2, self.actor_target(s2))[0]  # (B,)
            y = bellman_target(r, done, q2, self.cfg.gamma)  # (B,)
        q = self.net("critic")(s, a)  # (1, B)
        return critic_mse(q, y), q, y

    def actor_loss(self, s: torch.Tensor) -> torch.Tensor:
        """-Q(s, mu(s)); call with the critic frozen (``update`` does)."""
        return ddpg_actor_loss(self.critic(s, self.net("actor")(s)))  # critic output (1, B)

    def update(self, batch: RequestBatch) -> dict[str, float]:
        """One gradient step of the critic, then of the actor, then the soft target update."""
        s, a, r, done, s2 = user_tensors(self, batch)

        loss_c, q, y = self.critic_loss(s, a, r, done, s2)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_c.backward()
        self.critic_opt.step()

        with frozen(self.critic):  # the actor loss leaves no gradient on the critic
            loss_a = self.actor_loss(s)
            self.actor_opt.zero_grad(set_to_none=True)
            loss_a.backward()
            self.actor_opt.step()

        self.step += 1
        soft_update(self.actor_target, self.actor, self.cfg.tau)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return self.metrics({"losses/critic": loss_c, "losses/actor": loss_a, "q/mean": q.mean(),
                             "q/target_mean": y.mean(), "q/policy_mean": -loss_a})

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}


register(DDPG)
