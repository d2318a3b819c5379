"""BatchRL-MTF: Batch-Constrained deep Q-learning (BCQ) for multi-task fusion, a baseline
(``docs/design.md#baselines``).

Papers: Q. Zhang, J. Liu, Y. Dai, Y. Qi, Y. Yuan, K. Zheng, F. Huang, X. Tan, "Multi-Task Fusion via
Reinforcement Learning for Long-Term User Satisfaction in Recommender Systems", KDD 2022
(BatchRL-MTF), which trains its fusion policy with BCQ: S. Fujimoto, D. Meger, D. Precup,
"Off-Policy Deep Reinforcement Learning without Exploration", ICML 2019.

BCQ keeps the learned policy near the logged actions. A conditional VAE G(a|s) models the behaviour
policy; a perturbation network xi(s, a) nudges a generated action by at most rho per dimension; twin
critics are trained on a clipped double-Q target (lambda * min + (1 - lambda) * max of the two
target critics) maximised over n actions generated for the next state. To act, n actions are
generated, perturbed and the one with the highest Q1 is taken.

How it differs here: it acts at the user level (one action per request from the user state s_t,
trained on the request reward r_t), like IntegratedRL-MTF, on the shared networks (per-group state
encoders with training-set standardisation, a vectorised pair of critics); the hidden sizes are the
shared (256, 256) rather than Fujimoto's (750, 750) VAE and (400, 300) actor and critics; acting is
deterministic: the ``n_act_samples`` latent vectors it decodes are drawn once at construction, clipped
to [-0.5, 0.5], and kept in the VAE as a buffer saved with the policy (Fujimoto draws fresh ones each
time); the VAE's decoding inside the perturbation step is detached, so that only the perturbation
network learns from that loss.

Fixed to the reference settings (measured before: rho 0.15 and 10 candidates to act, -6.7% UVC online on
per-request exploration data in a +-0.15 box, ``benchmarks/peer_d3rlpy.py``, BENCHMARKS.md):

- the perturbation limit rho is Fujimoto's ``phi = 0.05`` (the authors' ``BCQ.py``; d3rlpy's
  ``action_flexibility = 0.05``), not 0.15: a perturbation as wide as the exploration box itself lets
  the actor leave the logged box by up to its own width, where the critics only extrapolate;
- acting chooses among 100 generated candidates (Fujimoto's ``select_action`` and d3rlpy's
  ``n_action_samples = 100``), the TD target among 10 (Fujimoto's ``train``): the argmax over the
  behaviour model's modes then covers the box instead of 10 draws of it;
- the perturbation network and the critics learn at Fujimoto's rate 1e-3 (his ``BCQ.py``: Adam at
  ``lr=1e-3`` for both; d3rlpy's ``actor_learning_rate`` and ``critic_learning_rate`` are 1e-3 too), not
  the shared 3e-4: at 3e-4 the perturbation had barely left the generated action after 3,000 steps
  (the policy was the baseline within 0.1%: UVC -0.10%, UDT -0.12%; at 1e-3 -1.41% / +5.38%, d3rlpy's
  -1.87% / +4.34% on the same logs, ``benchmarks/peer_d3rlpy.py``, BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from rlmtf.algos.base import Algorithm, BaselineConfig, register
from rlmtf.algos.losses import critic_mse, frozen, soft_update, target_copy
from rlmtf.core.bellman import bellman_target
from rlmtf.core.nets import CriticEnsemble, StateEncoder, mlp
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.transitions import RequestBatch

#: Fujimoto's clamp of the encoder's log standard deviation.
LOG_STD_MIN, LOG_STD_MAX = -4.0, 15.0
#: Latent vectors drawn to decode are clipped to [-LATENT_CLIP, LATENT_CLIP] (Fujimoto's choice).
LATENT_CLIP = 0.5


@dataclass(frozen=True)
class BCQConfig(BaselineConfig):
    """Hyper-parameters; defaults from Fujimoto et al. where the MTF paper gives none, the shared ones of
    :class:`BaselineConfig` (``actor_lr`` is the perturbation network's)."""

    actor_lr: float = 1e-3
    """Adam learning rate of the perturbation network (Fujimoto's and d3rlpy's 1e-3)."""
    critic_lr: float = 1e-3
    """Adam learning rate of the twin critics (Fujimoto's and d3rlpy's 1e-3)."""
    rho: float = 0.05
    """Maximum perturbation per action dimension (``phi`` in Fujimoto's code, 0.05 there and in d3rlpy)."""
    lambda_: float = 0.75
    """Weight of the minimum of the twin target critics in the clipped double-Q target."""
    n_action_samples: int = 10
    """n: actions generated per next state for the TD target (Fujimoto: 10)."""
    n_act_samples: int = 100
    """Actions generated per state to act from (Fujimoto's ``select_action`` and d3rlpy: 100)."""
    latent_dim: int = 20
    """Size of the VAE's latent space (Fujimoto: twice the action dimension)."""
    kl_weight: float = 0.5
    """Weight of the KL term in the VAE loss (Fujimoto: 0.5)."""
    vae_lr: float = 1e-3
    """Adam learning rate of the VAE."""


# --- loss helpers (pure functions of tensors) -------------------------------------------------------


def vae_loss(recon: torch.Tensor, action: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fujimoto's VAE loss: MSE(recon, action) + kl_weight * KL(N(mean, std^2) || N(0, I)), both averaged
    over every element. recon, action (B, A); mean, std (B, L). Returns (loss, recon term, KL term)."""
    recon_l = ((recon - action) ** 2).mean()
    kl = (-0.5 * (1.0 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2))).mean()
    return recon_l + kl_weight * kl, recon_l, kl


def clipped_double_q(q: torch.Tensor, lambda_: float) -> torch.Tensor:
    """lambda * min + (1 - lambda) * max over the two critics: (2, ...) -> (...)."""
    return lambda_ * q.min(0).values + (1.0 - lambda_) * q.max(0).values


def bcq_target(reward: torch.Tensor, done: torch.Tensor, next_q: torch.Tensor, gamma: float | torch.Tensor,
               lambda_: float) -> torch.Tensor:
    """y = r + gamma * (1 - done) * max_j [lambda * min_i Q'_i(s', a_j) + (1 - lambda) * max_i Q'_i(s', a_j)].

    reward (B,); done (B,); next_q (2, B, n): the target critics on the n perturbed generated actions
    of each next state. Returns (B,)."""
    best = clipped_double_q(next_q, lambda_).max(-1).values  # (B,)
    return bellman_target(reward, done, best, gamma)


# --- networks ------------------------------------------------------------------------------------


class VAE(nn.Module):
    """Conditional VAE G(a | s): encoder (s, a) -> (mean, std) of z; decoder (s, z) -> tanh -> [-1, 1]^A.

    ``act_latents`` (n, L) are the fixed latent vectors decoded when acting (a buffer, so saved with
    the policy)."""

    def __init__(self, group_dims: list[int], action_dim: int, latent_dim: int, n_act: int,
                 hidden: tuple[int, ...], embed_dim: int, generator: torch.Generator):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc_state = StateEncoder(group_dims, embed_dim)
        self.enc = mlp([self.enc_state.out_dim + action_dim, *hidden, 2 * latent_dim])
        self.dec_state = StateEncoder(group_dims, embed_dim)
        self.dec = mlp([self.dec_state.out_dim + latent_dim, *hidden, action_dim], nn.Tanh())
        z = torch.randn(n_act, latent_dim, generator=generator, device=generator.device)
        self.register_buffer("act_latents", z.clamp(-LATENT_CLIP, LATENT_CLIP))

    def encode(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(torch.cat([self.enc_state(state), action], -1))  # (B, 2L)
        mean, log_std = h.split(self.latent_dim, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()

    def decode(self, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.cat([self.dec_state(state), z], -1))

    def forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction (B, A), mean (B, L), std (B, L) with z = mean + std * eps."""
        mean, std = self.encode(state, action)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        return self.decode(state, mean + std * eps), mean, std

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n latent vectors from N(0, I) clipped to [-0.5, 0.5]: (n, L)."""
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.act_latents.device)
        return z.clamp(-LATENT_CLIP, LATENT_CLIP)


class Perturbation(nn.Module):
    """xi(s, a): a + rho * tanh(f(s, a)), clipped to [-1, 1]; never further than rho from a."""

    def __init__(self, group_dims: list[int], action_dim: int, rho: float, hidden: tuple[int, ...],
                 embed_dim: int):
        super().__init__()
        self.rho = rho
        self.encoder = StateEncoder(group_dims, embed_dim)
        self.head = mlp([self.encoder.out_dim + action_dim, *hidden, action_dim], nn.Tanh())

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        delta = self.rho * self.head(torch.cat([self.encoder(state), action], -1))  # (B, A)
        return (action + delta).clamp(-1.0, 1.0)


# --- the algorithm -------------------------------------------------------------------------------


class BCQ(Algorithm):
    """BCQ on the user state: VAE, perturbation network, twin critics and their targets."""

    kind: ClassVar[str] = "bcq"
    level: ClassVar[Literal["user", "item"]] = "user"
    config_cls: ClassVar[type] = BCQConfig
    acting: ClassVar[tuple[str, ...]] = ("vae", "perturb", "critic")
    cfg: BCQConfig

    def __init__(self, spec: FeatureSpec, cfg: BCQConfig | None = None, device: str = "cpu", seed: int = 0):
        super().__init__(spec, cfg, device, seed)
        cfg = self.cfg
        dims = self.group_dims(spec)
        a = spec.action_dim
        # the acting latents come from the algorithm's seeded stream, before any update draws from it
        self.vae = VAE(dims, a, cfg.latent_dim, cfg.n_act_samples, cfg.hidden, cfg.embed_dim,
                       self.gen).to(self.device)
        self.perturb = Perturbation(dims, a, cfg.rho, cfg.hidden, cfg.embed_dim).to(self.device)
        self.critic = CriticEnsemble(dims, a, 2, cfg.hidden, cfg.embed_dim).to(self.device)
        self.perturb_target = target_copy(self.perturb)
        self.critic_target = target_copy(self.critic)
        self.vae_opt = self.adam(self.vae.parameters(), cfg.vae_lr)
        self.actor_opt = self.adam(self.perturb.parameters(), cfg.actor_lr)
        self.critic_opt = self.adam(self.critic.parameters(), cfg.critic_lr)

    # --- training -------------------------------------------------------------------------------------

    def update(self, batch: RequestBatch) -> dict[str, float]:
        """One step of the VAE, the critics and the perturbation network; then soft target updates."""
        cfg = self.cfg
        n = cfg.n_action_samples
        s, a, r, done, s2, disc = self.user_tensors(batch)  # (B, D), (B, A), (B,), (B,), (B, D), (B,)
        bsz = s.shape[0]

        # generative model of the logged actions
        recon, mean, std = self.net("vae")(s, a, self.gen)  # (B, A), (B, L), (B, L)
        loss_v, recon_l, kl = vae_loss(recon, a, mean, std, cfg.kl_weight)
        self.vae_opt.zero_grad(set_to_none=True)
        loss_v.backward()
        self.vae_opt.step()

        # critics: clipped double Q over n perturbed generated actions of the next state
        with torch.no_grad():
            s2_rep = s2.repeat_interleave(n, 0)  # (B*n, D)
            z2 = self.vae.sample_latents(bsz * n, self.gen)  # (B*n, L)
            a2 = self.perturb_target(s2_rep, self.vae.decode(s2_rep, z2))  # (B*n, A)
            q2 = self.critic_target(s2_rep, a2).reshape(2, bsz, n)  # (2, B, n)
            y = bcq_target(r, done, q2, disc, cfg.lambda_)  # (B,)
        q = self.net("critic")(s, a)  # (2, B)
        loss_c = critic_mse(q, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_c.backward()
        self.critic_opt.step()

        # perturbation: maximise Q1 of the perturbed generated action; the critics are frozen and the
        # generated action is a constant, so only the perturbation network receives gradients
        with torch.no_grad():
            gen_a = self.vae.decode(s, self.vae.sample_latents(bsz, self.gen))  # (B, A)
        with frozen(self.critic):
            pert = self.net("perturb")(s, gen_a)  # (B, A)
            loss_a = -self.critic(s, pert)[0].mean()
            self.actor_opt.zero_grad(set_to_none=True)
            loss_a.backward()
            self.actor_opt.step()

        soft_update(self.critic_target, self.critic, cfg.tau)
        soft_update(self.perturb_target, self.perturb, cfg.tau)
        self.step += 1
        with torch.no_grad():
            return self.metrics({"losses/vae": loss_v, "losses/vae_recon": recon_l, "losses/vae_kl": kl,
                                 "losses/critic": loss_c, "losses/actor": loss_a, "q/mean": q.mean(),
                                 "q/std_critics": q.std(0, unbiased=False).mean(), "q/target_mean": y.mean(),
                                 "actor/perturbation": (pert - gen_a).abs().mean()})

    # --- acting ---------------------------------------------------------------------------------------

    def candidate_actions(self, state: torch.Tensor) -> torch.Tensor:
        """The n perturbed generated actions BCQ chooses from, from the fixed acting latents: (S, n, A)."""
        n = self.vae.act_latents.shape[0]
        s_rep = state.repeat_interleave(n, 0)  # (S*n, D)
        z = self.vae.act_latents.repeat(state.shape[0], 1)  # (S*n, L)
        return self.perturb(s_rep, self.vae.decode(s_rep, z)).reshape(state.shape[0], n, -1)

    def act_tensor(self, state: torch.Tensor) -> torch.Tensor:
        """argmax over the n candidate actions of Q1: (S, D) -> (S, A)."""
        cand = self.candidate_actions(state)  # (S, n, A)
        s_rep = state.repeat_interleave(cand.shape[1], 0)  # (S*n, D)
        q1 = self.critic(s_rep, cand.reshape(-1, cand.shape[-1]))[0].reshape(cand.shape[:2])  # (S, n)
        best = q1.argmax(1)  # (S,)
        return cand[torch.arange(cand.shape[0], device=cand.device), best]

    # --- state ----------------------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae, "perturb": self.perturb, "critic": self.critic,
                "perturb_target": self.perturb_target, "critic_target": self.critic_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae_opt": self.vae_opt, "actor_opt": self.actor_opt, "critic_opt": self.critic_opt}


register(BCQ)
