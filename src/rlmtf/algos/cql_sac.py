"""Conservative Q-Learning on Soft Actor-Critic (CQL+SAC): the conservative offline baseline.

Paper: A. Kumar, A. Zhou, G. Tucker, S. Levine, "Conservative Q-Learning for Offline Reinforcement
Learning", NeurIPS 2020; built on T. Haarnoja, A. Zhou, P. Abbeel, S. Levine, "Soft Actor-Critic:
Off-Policy Maximum Entropy Deep Reinforcement Learning with a Stochastic Actor", ICML 2018 (and its
automatic entropy tuning, Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018).

On the *user state* s_t (one action per request, reward r_t):

- SAC: a tanh-squashed Gaussian actor, twin critics whose targets use min_i Q'_i(s', a'), a' ~ pi(s'),
  Polyak-averaged target critics (rate 0.005 every step), the actor minimising
  E[alpha log pi(a|s) - min_i Q_i(s, a)], and the temperature alpha tuned automatically towards the
  target entropy -A (loss -log_alpha * (log pi + target_entropy));
- CQL(H): every critic additionally minimises alpha_cql * E_s[log sum_a exp Q(s, a) - Q(s, a_data)],
  with the log-sum-exp estimated by importance sampling over n uniform actions (density 2^-A) and n
  actions of the current policy drawn at s and n drawn at s' (all evaluated at s, each divided by its
  density), as in the authors' code: logsumexp over the 3n values Q(s, a_k) - log p(a_k).

Fixed for logged data, as the references do it:

- the conservative weight is tuned automatically, the Lagrangian form of the paper's Appendix F ("CQL-Lagrange",
  as d3rlpy's ``CQLConfig`` does it by default): the critics minimise alpha' * w * (gap - tau_cql) with
  gap = log sum exp - Q(s, a_data), w = ``cql_alpha``, tau_cql = ``cql_threshold`` (10, d3rlpy's
  ``alpha_threshold``) and alpha' = exp(log alpha') >= 0, while log alpha' ascends the same expression
  (Adam, ``cql_alpha_lr`` 1e-4, d3rlpy's ``alpha_learning_rate``): alpha' shrinks while the gap is below
  the threshold and grows while it is above;
- the actor's learning rate is CQL's policy learning rate, 1e-4 (``policy_lr``; the paper's Appendix F,
  the authors' SAC-CQL code and d3rlpy's ``actor_learning_rate``), a third of the critics': the actor
  must not outrun the conservative critics.

Measured (``benchmarks/peer_d3rlpy.py``, BENCHMARKS.md; per-request exploration data in a +-0.15 box
around the hand-set fusion, 3,000 steps, 64x64): with the actor at 3e-4 it put 50-68% of its action
dimensions outside the logged box and 27-48% at the edge of [-1, 1], -26.6% to -29.4% UVC online
(fixed or tuned weight alike); at 1e-4, 6% outside and none at the edge, +1.5% UVC, as d3rlpy's CQL
(+1.6%). Confining the actor to the logged range instead (as DDPG does, :mod:`rlmtf.algos.action_range`)
measured worse for CQL (-2.8% to -4.1% UVC): the uniform actions of the log-sum-exp then lie inside the
data, so the penalty no longer separates the data from the actions around it.

Differences from the paper: the target omits the entropy bonus by default (``backup_entropy``), as the
CQL reference implementations do; no behaviour-cloning warm-up of the actor; the temperature's learning
rate is d3rlpy's 1e-4 and the critics' 3e-4; the networks use the shared encoder of :mod:`rlmtf.core.nets`.
The deterministic action that is served is tanh(mean(s)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from rlmtf.algos.base import Algorithm, BaselineConfig, register
from rlmtf.algos.gaussian import TanhGaussianActor, gaussian_log_prob, tanh_log_det
from rlmtf.algos.losses import critic_mse, frozen, soft_update, target_copy
from rlmtf.core.bellman import bellman_target
from rlmtf.core.nets import CriticEnsemble
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.transitions import RequestBatch

# --- pure helpers -------------------------------------------------------------------------------------


def cql_logsumexp(q_ood: torch.Tensor, log_density: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
    """Importance-sampled soft maximum temp * logsumexp_k((Q(s, a_k) - log p(a_k)) / temp):
    q_ood (m, B, K), log_density (B, K) -> (m, B). (The constant -log K of a proper sample mean is
    left out, as in the authors' code; it does not change any gradient.)"""
    return temp * torch.logsumexp((q_ood - log_density.unsqueeze(0)) / temp, dim=-1)


def cql_penalty(q_ood: torch.Tensor, log_density: torch.Tensor, q_data: torch.Tensor,
                temp: float = 1.0) -> torch.Tensor:
    """CQL(H) regulariser per critic: mean_s [soft max of Q(s, .) - Q(s, a_data)]: q_ood (m, B, K),
    log_density (B, K), q_data (m, B) -> (m,)."""
    return (cql_logsumexp(q_ood, log_density, temp) - q_data).mean(-1)


def cql_alpha_loss(log_alpha: torch.Tensor, gap: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """Loss of the Lagrange multiplier log alpha' of CQL-Lagrange: -alpha' * weight * (gap - threshold),
    summed over the critics; gap (m,) detached. Its gradient makes alpha' grow while the gap is above the
    threshold and shrink while it is below."""
    return -(log_alpha.exp() * weight * (gap - threshold)).sum()


def sac_actor_loss(q_pi: torch.Tensor, log_pi: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """E[alpha log pi(a|s) - Q(s, a)], a ~ pi(s): q_pi (B,) (min over critics), log_pi (B,)."""
    return (alpha * log_pi - q_pi).mean()


def temperature_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """-E[log_alpha * (log pi + target_entropy)]: alpha grows while the entropy -log pi is below the target.
    Pass a detached log_pi (B,)."""
    return -(log_alpha * (log_pi + target_entropy)).mean()


# --- networks -----------------------------------------------------------------------------------------


class LogAlpha(nn.Module):
    """The learned log-temperature of SAC, a module so that it is saved with the networks."""

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.value


# --- the algorithm --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CQLSACConfig(BaselineConfig):
    """Hyper-parameters; CQL ones from the paper / reference code, the shared ones of :class:`BaselineConfig`."""

    cql_alpha: float = 5.0
    """w: weight of the CQL(H) regulariser in every critic's loss (times the Lagrange multiplier alpha')."""
    cql_alpha_lr: float = 1e-4
    """Adam learning rate of log alpha' (CQL-Lagrange; d3rlpy's ``alpha_learning_rate``); 0: alpha' stays 1,
    a fixed weight w."""
    cql_threshold: float = 10.0
    """tau_cql: the gap (log sum exp - Q(s, a_data)) the multiplier steers towards (d3rlpy's ``alpha_threshold``)."""
    policy_lr: float | None = 1e-4
    """Adam learning rate of the actor: CQL's policy learning rate (the paper's Appendix F, d3rlpy's
    ``actor_learning_rate``); None: the shared ``actor_lr``."""
    n_action_samples: int = 10
    """n: uniform actions, and policy actions at s and at s', drawn per state for the log-sum-exp."""
    cql_temp: float = 1.0
    """Temperature of the log-sum-exp."""
    backup_entropy: bool = False
    """Subtract alpha log pi(a'|s') in the TD target (plain SAC); off, as in CQL's reference code."""
    init_log_alpha: float = 0.0
    """Initial log of the entropy temperature alpha."""
    alpha_lr: float = 1e-4
    """Adam learning rate of log alpha (d3rlpy's ``temp_learning_rate``)."""


class CQLSAC(Algorithm):
    """CQL(H) on SAC on the user state: tanh-Gaussian actor, twin conservative critics, auto-tuned alpha."""

    kind: ClassVar[str] = "cql_sac"
    level: ClassVar[Literal["user", "item"]] = "user"
    config_cls: ClassVar[type] = CQLSACConfig
    cfg: CQLSACConfig

    def __init__(self, spec: FeatureSpec, cfg: CQLSACConfig | None = None, device: str = "cpu", seed: int = 0):
        super().__init__(spec, cfg, device, seed)
        cfg = self.cfg
        dims, a = self.group_dims(spec), spec.action_dim
        self.target_entropy = -float(a)
        self.actor = TanhGaussianActor(dims, a, cfg.hidden, cfg.embed_dim).to(self.device)
        self.critic = CriticEnsemble(dims, a, 2, cfg.hidden, cfg.embed_dim).to(self.device)
        self.critic_target = target_copy(self.critic)
        self.log_alpha = LogAlpha(cfg.init_log_alpha).to(self.device)
        self.log_cql_alpha = LogAlpha(0.0).to(self.device)
        self.actor_opt = self.adam(self.actor.parameters(), cfg.actor_lr if cfg.policy_lr is None else cfg.policy_lr)
        self.critic_opt = self.adam(self.critic.parameters(), cfg.critic_lr)
        self.alpha_opt = self.adam(self.log_alpha.parameters(), cfg.alpha_lr)
        self.cql_alpha_opt = self.adam(self.log_cql_alpha.parameters(), cfg.cql_alpha_lr)

    def act_tensor(self, state: torch.Tensor) -> torch.Tensor:
        """The deterministic action tanh(mean(s))."""
        return self.actor(state)

    def _repeat(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(B, D) -> (B * n, D), each row n times in a row."""
        return x.unsqueeze(1).expand(-1, n, -1).reshape(-1, x.shape[-1])

    def _sample_n(self, s: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws of the policy at every state, as ``self.actor.sample(self._repeat(s, n), self.gen)``
        gives them (the same noise in the same order: (B*n, A), (B*n,)), but with the actor's network run
        once per state instead of once per draw: its mean and log-std are repeated, not recomputed."""
        mean, log_std = (self._repeat(x, n) for x in self.actor.dist(s))  # (B*n, A) each
        eps = torch.randn(mean.shape, generator=self.gen, device=mean.device, dtype=mean.dtype)
        u = mean + torch.exp(log_std) * eps  # (B*n, A)
        return torch.tanh(u), gaussian_log_prob(u, mean, log_std) - tanh_log_det(u)

    def critic_loss(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, done: torch.Tensor,
                    s2: torch.Tensor, discount: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of both critics + alpha' * cql_alpha * CQL(H) penalty (alpha' detached: the threshold of
        the Lagrangian is a constant here), and pieces for the metrics; ``discount`` (B,) defaults to gamma."""
        cfg = self.cfg
        bsz, a_dim = a.shape
        n = cfg.n_action_samples
        alpha = self.log_alpha().detach()
        with torch.no_grad():
            a2, logp2 = self.actor.sample(s2, self.gen)  # (B, A), (B,)
            q2 = self.critic_target(s2, a2).min(0).values  # (B,)
            if cfg.backup_entropy:
                q2 = q2 - alpha * logp2
            y = bellman_target(r, done, q2, cfg.gamma if discount is None else discount)  # (B,)
            a_rand = torch.rand((bsz, n, a_dim), generator=self.gen, device=self.device) * 2.0 - 1.0  # (B, n, A)
            a_cur, logp_cur = self._sample_n(s, n)  # (B*n, A), (B*n,)
            a_nxt, logp_nxt = self._sample_n(s2, n)  # (B*n, A), (B*n,)
            log_density = torch.cat([torch.full((bsz, n), -a_dim * math.log(2.0), device=self.device),
                                     logp_cur.reshape(bsz, n), logp_nxt.reshape(bsz, n)], 1)  # (B, 3n)
        critic = self.net("critic")
        q = critic(s, a)  # (2, B)
        # Q(s, a_k) for the 3n actions of every state, one kind (uniform, pi(s), pi(s')) at a time: the same
        # values as one call on all 3*B*n rows, with activations a third the size; measured 9-15% faster per
        # update on a 2-core CPU (benchmarks/bench_algos.py)
        s_rep = self._repeat(s, n)  # (B*n, D)
        q_ood = torch.cat([critic(s_rep, x.reshape(-1, a_dim)).reshape(-1, bsz, n)
                           for x in (a_rand, a_cur, a_nxt)], 2)  # (2, B, 3n)
        td = critic_mse(q, y)
        pen = cql_penalty(q_ood, log_density, q, cfg.cql_temp)  # (2,)
        weight = cfg.cql_alpha * self.log_cql_alpha().detach().exp()
        return td + weight * pen.sum(), {"td": td, "cql": pen.mean(), "gap": pen.detach(), "q": q, "y": y,
                                         "q_rand": q_ood[:, :, :n]}

    def actor_loss(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAC's actor loss with the current alpha, and the (detached) log pi of the draws; call with the
        critic frozen (``update`` does)."""
        a_pi, logp = self.net("actor").sample(s, self.gen)  # (B, A), (B,)
        q_pi = self.critic(s, a_pi).min(0).values  # (B,)
        return sac_actor_loss(q_pi, logp, self.log_alpha().detach()), logp.detach()

    def update(self, batch: RequestBatch) -> dict[str, float]:
        """One step of the critics, then of the actor, of alpha, of alpha', then the soft target update."""
        cfg = self.cfg
        s, a, r, done, s2, disc = self.user_tensors(batch)

        loss_c, parts = self.critic_loss(s, a, r, done, s2, disc)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_c.backward()
        self.critic_opt.step()

        with frozen(self.critic):  # the actor loss leaves no gradient on the critics
            loss_a, logp = self.actor_loss(s)
            self.actor_opt.zero_grad(set_to_none=True)
            loss_a.backward()
            self.actor_opt.step()

        loss_t = temperature_loss(self.net("log_alpha")(), logp, self.target_entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        loss_t.backward()
        self.alpha_opt.step()

        loss_l = cql_alpha_loss(self.net("log_cql_alpha")(), parts["gap"], cfg.cql_alpha, cfg.cql_threshold)
        self.cql_alpha_opt.zero_grad(set_to_none=True)
        loss_l.backward()
        self.cql_alpha_opt.step()

        self.step += 1
        soft_update(self.critic_target, self.critic, cfg.tau)
        return self.metrics({"losses/critic": loss_c, "losses/td": parts["td"], "losses/cql": parts["cql"],
                        "losses/actor": loss_a, "losses/alpha": loss_t, "alpha": self.log_alpha().exp(),
                        "cql_alpha": cfg.cql_alpha * self.log_cql_alpha().exp(),
                        "actor/entropy": -logp.mean(), "q/mean": parts["q"].mean(), "q/target_mean": parts["y"].mean(),
                        "q/random_mean": parts["q_rand"].mean()})

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                "log_alpha": self.log_alpha, "log_cql_alpha": self.log_cql_alpha}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt,
                "cql_alpha_opt": self.cql_alpha_opt}


register(CQLSAC)
