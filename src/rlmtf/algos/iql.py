"""Implicit Q-Learning (IQL): an offline baseline that never queries Q on actions outside the data.

Paper: I. Kostrikov, A. Nair, S. Levine, "Offline Reinforcement Learning with Implicit Q-Learning",
ICLR 2022.

On the *user state* s_t (one action per request, reward r_t):

- a state value V(s) fits the tau-expectile (tau = 0.7) of min_i Q'_i(s, a) over the *logged* actions
  (Formula 5 of the paper: L_V = E[L_2^tau(Q'(s, a) - V(s))], L_2^tau(u) = |tau - 1(u < 0)| u^2);
- twin critics Q_1, Q_2 regress on r + gamma * (1 - done) * V(s') (Formula 6), so the Bellman backup
  uses only dataset actions; their target copies follow by Polyak averaging (rate 0.005 every step);
- the actor is extracted by advantage-weighted regression (Formula 7):
  L_pi = -E[exp(beta * (min_i Q'_i(s, a) - V(s))) log pi(a | s)], beta = 3, weights clipped at 100.

The actor (:class:`rlmtf.algos.gaussian.GaussianActor`) is CORL's: a Gaussian whose mean is
tanh(MLP(s)) and whose log-std is a learned, state-independent vector (clamped to [-20, 2]); its
deterministic action is the mean, in [-1, 1]. Differences from the paper's reference code: no cosine
learning-rate decay of the actor and no dropout; the networks use the shared encoder of
:mod:`rlmtf.core.nets` (standardised inputs, one embedding per feature group); the exploration box of
the logs is ignored, as for every plain baseline.
As in the authors' JAX code (and unlike CORL), the critics' targets and the actor's advantages use V
after its step of the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from rlmtf.algos.base import Algorithm, BaselineConfig, register
from rlmtf.algos.gaussian import GaussianActor
from rlmtf.algos.losses import critic_mse, frozen, soft_update, target_copy
from rlmtf.core.bellman import bellman_target
from rlmtf.core.nets import CriticEnsemble, StateEncoder, mlp
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.transitions import RequestBatch

# --- pure helpers -------------------------------------------------------------------------------------


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric squared loss L_2^tau averaged: mean |tau - 1(diff < 0)| * diff^2, diff = Q - V."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff**2).mean()


def awr_weights(adv: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """exp(beta * advantage), clipped above at ``max_weight`` (no gradient is wanted through them:
    pass a detached advantage)."""
    return torch.exp(beta * adv).clamp(max=max_weight)


def awr_actor_loss(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted behaviour cloning: -mean(w * log pi(a | s)); log_prob (B,), weights (B,)."""
    return -(weights * log_prob).mean()


# --- networks -----------------------------------------------------------------------------------------


class ValueNet(nn.Module):
    """V(s): encoder + MLP -> (B,)."""

    def __init__(self, group_dims: list[int], hidden: tuple[int, ...] = (256, 256), embed_dim: int = 32):
        super().__init__()
        self.encoder = StateEncoder(group_dims, embed_dim)
        self.head = mlp([self.encoder.out_dim, *hidden, 1])

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(state)).squeeze(-1)


# --- the algorithm --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IQLConfig(BaselineConfig):
    """Hyper-parameters; the IQL ones from the paper's locomotion settings, the shared ones of
    :class:`BaselineConfig`."""

    expectile: float = 0.7
    """tau of the expectile regression of V on Q (0.5 would be the mean, 1 the max)."""
    beta: float = 3.0
    """Inverse temperature of the advantage weights exp(beta * A)."""
    max_weight: float = 100.0
    """The advantage weights are clipped above at this value."""
    value_lr: float = 3e-4
    """Adam learning rate of V."""


class IQL(Algorithm):
    """IQL on the user state: expectile V, twin Q, advantage-weighted Gaussian actor."""

    kind: ClassVar[str] = "iql"
    level: ClassVar[Literal["user", "item"]] = "user"
    config_cls: ClassVar[type] = IQLConfig
    cfg: IQLConfig

    def __init__(self, spec: FeatureSpec, cfg: IQLConfig | None = None, device: str = "cpu", seed: int = 0):
        super().__init__(spec, cfg, device, seed)
        cfg = self.cfg
        dims, a = self.group_dims(spec), spec.action_dim
        self.actor = GaussianActor(dims, a, cfg.hidden, cfg.embed_dim).to(self.device)
        self.critic = CriticEnsemble(dims, a, 2, cfg.hidden, cfg.embed_dim).to(self.device)
        self.value = ValueNet(dims, cfg.hidden, cfg.embed_dim).to(self.device)
        self.critic_target = target_copy(self.critic)
        self.actor_opt = self.adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = self.adam(self.critic.parameters(), cfg.critic_lr)
        self.value_opt = self.adam(self.value.parameters(), cfg.value_lr)

    @torch.no_grad()
    def target_q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """min_i Q'_i(s, a), without gradient: (B,)."""
        return self.critic_target(s, a).min(0).values

    def value_loss(self, s: torch.Tensor, a: torch.Tensor, q_t: torch.Tensor | None = None) -> torch.Tensor:
        """The expectile loss of V(s) towards min_i Q'_i(s, a) (no gradient reaches the critics); ``q_t``:
        that minimum if already computed (``target_q``)."""
        q_t = self.target_q(s, a) if q_t is None else q_t.detach()  # (B,)
        return expectile_loss(q_t - self.net("value")(s), self.cfg.expectile)

    @torch.no_grad()
    def advantage(self, s: torch.Tensor, a: torch.Tensor, q_t: torch.Tensor | None = None) -> torch.Tensor:
        """min_i Q'_i(s, a) - V(s), without gradient: (B,); ``q_t`` as for ``value_loss``."""
        return (self.target_q(s, a) if q_t is None else q_t) - self.value(s)

    def critic_loss(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, done: torch.Tensor,
                    s2: torch.Tensor, discount: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The TD loss of both critics, their values (2, B) and the targets r + gamma (1 - done) V(s') (B,);
        ``discount`` (B,) defaults to gamma."""
        with torch.no_grad():
            y = bellman_target(r, done, self.value(s2), self.cfg.gamma if discount is None else discount)  # (B,)
        q = self.net("critic")(s, a)  # (2, B)
        return critic_mse(q, y), q, y

    def actor_loss(self, s: torch.Tensor, a: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advantage-weighted regression on the logged actions, and the weights (B,)."""
        w = awr_weights(adv.detach(), self.cfg.beta, self.cfg.max_weight)  # (B,)
        return awr_actor_loss(self.net("actor").log_prob(s, a), w), w

    def update(self, batch: RequestBatch) -> dict[str, float]:
        """One step of V, then of the critics, then of the actor, then the soft target update."""
        s, a, r, done, s2, disc = self.user_tensors(batch)

        # the target critics move only at the end of the step: one evaluation serves V's loss and the advantage
        q_t = self.target_q(s, a)  # (B,)
        loss_v = self.value_loss(s, a, q_t)
        self.value_opt.zero_grad(set_to_none=True)
        loss_v.backward()
        self.value_opt.step()

        # as in the authors' code, both the actor's advantages and the critics' targets use V after its step
        adv = self.advantage(s, a, q_t)  # (B,)
        loss_c, q, y = self.critic_loss(s, a, r, done, s2, disc)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_c.backward()
        self.critic_opt.step()

        with frozen(self.critic, self.value):  # the weights carry no gradient anyway; nothing may reach them
            loss_a, w = self.actor_loss(s, a, adv)
            self.actor_opt.zero_grad(set_to_none=True)
            loss_a.backward()
            self.actor_opt.step()

        self.step += 1
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return self.metrics({"losses/value": loss_v, "losses/critic": loss_c, "losses/actor": loss_a,
                             "q/mean": q.mean(), "q/target_mean": y.mean(), "v/adv_mean": adv.mean(),
                             "actor/weight_mean": w.mean(),
                             "actor/weight_clipped": (w >= self.cfg.max_weight).float().mean(),
                             "actor/log_std_mean": self.actor.log_std.mean()})

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "value": self.value, "critic_target": self.critic_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "value_opt": self.value_opt}


register(IQL)
