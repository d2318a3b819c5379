"""Offline DDPG: the plainest actor-critic baseline (``docs/design.md#baselines``).

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

Fix for logged data (``data_action_range``, on by default): the algorithm runs in the [-1, 1]^A of the
*logged actions' range* (:mod:`rlmtf.algos.action_range`: d3rlpy's ``MinMaxActionScaler``, the
``action_scale``/``action_bias`` of TD3 and CleanRL), so the actor's tanh squashes into the per-dimension
[min, max] of the logged actions. Without it, on per-request exploration data (a +-0.15 box around the
hand-set fusion), the actor ascends a critic that extrapolates linearly outside the box and ends at a
corner of [-1, 1]^10 in every state (|a| > 0.99 in every dimension, 80% of them outside the box; d3rlpy's
DDPG does the same): -38.7% UVC online against the baseline (``benchmarks/peer_d3rlpy.py``, BENCHMARKS.md).

And TD3's target policy smoothing (S. Fujimoto, H. van Hoof, D. Meger, "Addressing Function Approximation
Error in Actor-Critic Methods", ICML 2018, Eq. 15; d3rlpy's and CleanRL's TD3): the target action is
mu'(s') + clip(N(0, sigma^2), -c, c), clipped to [-1, 1], sigma = 0.2, c = 0.5, so that the critic's
target is an average over a neighbourhood of the target action instead of a single point the actor can
exploit (``target_noise`` 0: DDPG's plain target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from rlmtf.algos.action_range import ActionRange
from rlmtf.algos.base import Algorithm, BaselineConfig, register
from rlmtf.algos.losses import critic_mse, frozen, soft_update, target_copy
from rlmtf.core.bellman import bellman_target
from rlmtf.core.nets import Actor, CriticEnsemble
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.transitions import RequestBatch, Transitions


def smoothed_target_action(action: torch.Tensor, noise: torch.Tensor, noise_clip: float) -> torch.Tensor:
    """TD3's target policy smoothing: clip(action + clip(noise, -noise_clip, noise_clip), -1, 1), (B, A)."""
    return (action + noise.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def ddpg_actor_loss(q_pi: torch.Tensor) -> torch.Tensor:
    """-Q(s, mu(s)) averaged over states (and critics): q_pi (m, B)."""
    return -q_pi.mean()


@dataclass(frozen=True)
class DDPGConfig(BaselineConfig):
    """Hyper-parameters: the ones every offline baseline has (:class:`rlmtf.algos.base.BaselineConfig`), and:"""

    data_action_range: bool = True
    """Act in the per-dimension [min, max] of the logged actions (d3rlpy's ``MinMaxActionScaler``; see
    :mod:`rlmtf.algos.action_range`); off: in all of [-1, 1]^A, as the paper."""
    target_noise: float = 0.2
    """sigma of TD3's target policy smoothing noise (in the algorithm's [-1, 1] coordinates); 0: none."""
    target_noise_clip: float = 0.5
    """c: the smoothing noise is clipped to [-c, c] (TD3: 0.5)."""


class DDPG(Algorithm):
    """Offline DDPG on the user state: one deterministic action per request."""

    kind: ClassVar[str] = "ddpg"
    level: ClassVar[Literal["user", "item"]] = "user"
    config_cls: ClassVar[type] = DDPGConfig
    acting: ClassVar[tuple[str, ...]] = ("actor", "action_range")
    cfg: DDPGConfig

    def __init__(self, spec: FeatureSpec, cfg: DDPGConfig | None = None, device: str = "cpu", seed: int = 0):
        super().__init__(spec, cfg, device, seed)
        cfg = self.cfg
        dims, a = self.group_dims(spec), spec.action_dim
        self.actor = Actor(dims, a, cfg.hidden, cfg.embed_dim).to(self.device)
        self.critic = CriticEnsemble(dims, a, 1, cfg.hidden, cfg.embed_dim).to(self.device)
        self.actor_target = target_copy(self.actor)
        self.critic_target = target_copy(self.critic)
        self.action_range = ActionRange(a).to(self.device)
        self.actor_opt = self.adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = self.adam(self.critic.parameters(), cfg.critic_lr)

    def set_normalisation(self, t: Transitions) -> None:
        """Input standardisation, and the logged actions' range (``data_action_range``)."""
        super().set_normalisation(t)
        if self.cfg.data_action_range:
            self.action_range.fit(torch.as_tensor(t.action[:, 0], device=self.device))

    def act_tensor(self, state: torch.Tensor) -> torch.Tensor:
        """mu(s), mapped from the algorithm's [-1, 1]^A to the action range."""
        return self.action_range.unscale(self.actor(state))

    def critic_loss(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, done: torch.Tensor,
                    s2: torch.Tensor, discount: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The TD loss, the critic's values (1, B) and the targets (B,); ``discount`` (B,) defaults to gamma.
        ``a`` is in the algorithm's coordinates (``update`` scales the logged action)."""
        with torch.no_grad():
            a2 = self.actor_target(s2)  # (B, A)
            if self.cfg.target_noise > 0:
                eps = torch.randn(a2.shape, generator=self.gen, device=a2.device, dtype=a2.dtype)
                a2 = smoothed_target_action(a2, self.cfg.target_noise * eps, self.cfg.target_noise_clip)
            q2 = self.critic_target(s2, a2)[0]  # (B,)
            y = bellman_target(r, done, q2, self.cfg.gamma if discount is None else discount)  # (B,)
        q = self.net("critic")(s, a)  # (1, B)
        return critic_mse(q, y), q, y

    def actor_loss(self, s: torch.Tensor) -> torch.Tensor:
        """-Q(s, mu(s)); call with the critic frozen (``update`` does)."""
        return ddpg_actor_loss(self.critic(s, self.net("actor")(s)))  # critic output (1, B)

    def update(self, batch: RequestBatch) -> dict[str, float]:
        """One gradient step of the critic, then of the actor, then the soft target update."""
        s, a, r, done, s2, disc = self.user_tensors(batch)
        a = self.action_range.scale(a)  # (B, A) in the algorithm's [-1, 1] coordinates

        loss_c, q, y = self.critic_loss(s, a, r, done, s2, disc)
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
                "critic_target": self.critic_target, "action_range": self.action_range}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}


register(DDPG)
