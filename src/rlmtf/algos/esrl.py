"""Enhanced-State RL for multi-task fusion (the paper's section 3.3; ``docs/design.md#enhanced-state-rl``).

Paper: P. Liu, C. Xu, M. Zhao, J. Zhu, B. Wang, Y. Ren, "An Enhanced-State Reinforcement Learning
Algorithm for Multi-Task Fusion in Large-Scale Recommender Systems", Tencent, 2024.

The actor sees the *enhanced state* of each user-item pair (user profile, behaviour history,
context, item features, MTL scores) and emits one fusion action per pair. An ensemble of m = 10
critics, independently initialised and vectorised as one network, is trained on a *list-level* TD
target: the sum of the l shown items' values regresses on the sum of their rewards plus the
discounted sum over the next request's items (Formula 7). The actor maximises the ensemble's mean
value minus eta times the exploration-box penalty d() and lambda times the critics' disagreement
(Formula 5). Targets of the actor and of every critic move by w = 0.08 every L = 15 steps.

Differences from the paper, all where it is silent or self-contradictory: the delta * d() term of
Formula 7 sits inside the TD target (see ``losses.td_target``); inputs are standardised with
training-set statistics; each feature group gets its own embedding before the MLP trunk; the actor
starts from the behaviour policy (``warmup_steps`` of regression on mu_bp).

Variants (``ESRLConfig.variant``, ``docs/design.md#enhanced-state-rl-variants``): ``"paper"`` is the paper's
actor, one free action per user-item pair. ``"residual"``: the action of a pair is a shared user-level action
plus a per-item correction bounded by ``residual_scale`` (:class:`rlmtf.core.nets.ResidualActor`), so that
per-item actions adjust the fusion of the request instead of replacing it (a free per-item power re-ranks the
list by itself); its serving cost is one user-level trunk per request plus a small head per candidate.

IntegratedRL-MTF (``integrated.py``) is the same algorithm on the user state with one action per
request. Both build on :class:`EnsembleActorCritic`, which holds everything but the level: the networks,
the warm start, the update and the state. It reads a batch through the hooks of
:class:`rlmtf.algos.base.Algorithm` (``group_dims``, ``view``, ``obs_states``, ``train_states``), whose
defaults are the user level; :class:`EnhancedStateRL` gives them the item level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from rlmtf.algos.base import ActorCriticConfig, Algorithm, register
from rlmtf.algos.losses import (
    actor_loss,
    bound_penalty,
    critic_loss,
    frozen,
    soft_update,
    target_copy,
    td_target,
)
from rlmtf.core.bellman import discounts
from rlmtf.core.fusion import ActionSpace, fused_log_score
from rlmtf.core.nets import Actor, CriticEnsemble, ResidualActor
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.transitions import RequestBatch, Transitions
from rlmtf.policy.base import RequestObs


@dataclass(frozen=True)
class ESRLConfig(ActorCriticConfig):
    """Hyper-parameters; defaults from the paper where it gives them (``docs/design.md#hyper-parameters``)."""

    beta: float = 0.3
    """Width of the exponential in the bound penalty d() (Formula 6)."""
    eta: float = 1.2
    """Weight of d() in the actor loss (Formula 5)."""
    lam: float = 0.2
    """Weight of the critics' standard deviation in the actor loss (Formula 5)."""
    delta: float = 1.0
    """Weight of d() on the next action inside the TD target (Formula 7)."""
    ensemble_size: int = 10
    """m, the number of critics."""
    target_rate: float = 0.08
    """w: soft update rate of the target networks."""
    target_every: int = 15
    """L: the targets move every L steps."""
    warmup_steps: int = 300
    """Before RL, the actor regresses on mu_bp for this many batches (and the target actor copies it),
    so that training starts from the behaviour policy inside the exploration box. Without it a random
    actor sits far outside the box, where d() = exp(distance / (beta * width)) is astronomically large
    and swamps both losses."""
    variant: Literal["paper", "residual"] = "paper"
    """Enhanced-State RL's actor: "paper" (a free action per user-item pair) or "residual" (a shared
    user-level action plus a per-item correction of at most ``residual_scale``; module docstring)."""
    residual_scale: float = 0.05
    """"residual": the bound of the per-item correction per action dimension."""
    item_hidden: tuple[int, ...] = (64,)
    """"residual": hidden layers of the per-item correction head."""
    list_aware: bool = False
    """The critics also see where each item stands in its list under the actions they value
    (:func:`list_features`: its soft rank and its score's standing), so that position and selection effects
    are visible to them and the TD target evaluates the order the target actor would give the next list."""
    rank_temperature: float = 0.1
    """``list_aware``: the soft rank's temperature, in units of the list's own spread of fused log scores."""
    candidate_penalty: bool = False
    """Add eta times the bound penalty of the actor's actions on the logs' candidate sample
    (``docs/design.md#the-candidate-sample``: candidates drawn uniformly from all a request ranked) to the actor
    loss, so that the actor stays in the behaviour policy's box on the candidates it scores at serving time,
    not only on the ones it was shown. Needs logs with the sample (``rlmtf simulate --log-candidates``)."""
    candidate_stats: bool = False
    """Standardise the inputs on the candidate sample instead of the shown items (the same logs needed). Off by
    default: measured, it clips 4-11% of the shown items' MTL scores at +5 sd, where the critics must tell the
    best items apart (the design doc's section)."""

    @property
    def candidate_sample(self) -> bool:
        """Whether training reads the logs' candidate sample."""
        return self.candidate_penalty or self.candidate_stats

    @property
    def polyak_rate(self) -> float:
        """The targets' mean rate per step (w / L)."""
        return self.target_rate / self.target_every


#: Features per item that ``list_aware`` critics read beside the action: soft rank, score standing.
LIST_FEATURES = 2


def list_features(scores: torch.Tensor, action: torch.Tensor, space: ActionSpace, temperature: float) -> torch.Tensor:
    """Where each item of a list stands under ``action``: (B, l, K) MTL scores and (B, l, A) actions ->
    (B, l, 2), differentiable in the actions.

    With f_j the fused log score of item j and sd the list's spread of them, the features are the soft rank
    sum_(k != j) sigmoid((f_k - f_j) / (temperature * sd)) / (l - 1) (0: first, 1: last; the exact rank as the
    temperature goes to 0) and tanh((f_j - mean f) / sd). Scale-free: a fusion that multiplies every log score
    by a constant keeps both."""
    f = fused_log_score(scores, action, space)  # (B, l)
    l = f.shape[-1]
    sd = f.std(-1, keepdim=True, unbiased=False) + 1e-6  # (B, 1)
    above = torch.sigmoid((f[:, None, :] - f[:, :, None]) / (temperature * sd[..., None]))  # (B, j, k)
    rank = (above.sum(-1) - 0.5) / max(l - 1, 1)  # the diagonal adds sigmoid(0) = 0.5
    standing = torch.tanh((f - f.mean(-1, keepdim=True)) / sd)
    return torch.stack([rank, standing], -1)


class EnsembleActorCritic(Algorithm):
    """What Enhanced-State RL and IntegratedRL-MTF share: the config (:class:`ESRLConfig`), networks,
    optimizers, warm start on mu_bp, ``update(batch)`` (Formulas 5-7) and state. It is written for
    (B, l, .) views, l = 1 at the user level; the subclass's view hooks set the level."""

    config_cls: ClassVar[type] = ESRLConfig
    cfg: ESRLConfig

    def __init__(self, spec: FeatureSpec, cfg: ESRLConfig | None = None, device: str = "cpu", seed: int = 0):
        super().__init__(spec, cfg, device, seed)
        cfg = self.cfg
        dims = self.group_dims(spec)
        a = spec.action_dim
        self.actor = self.make_actor(dims, a).to(self.device)
        if cfg.list_aware and self.level != "item":
            raise ValueError(f"{self.kind}: list_aware critics need a list of items per request; this algorithm "
                             "acts per request")
        if not cfg.rank_temperature > 0:
            raise ValueError(f"rank_temperature must be > 0, got {cfg.rank_temperature}")
        if cfg.candidate_sample and self.level != "item":
            raise ValueError(f"{self.kind}: candidate_penalty and candidate_stats are for per-item actions on unshown "
                             "candidates; this algorithm acts per request, with one action for every candidate")
        extra = LIST_FEATURES if cfg.list_aware else 0
        self.critic = CriticEnsemble(dims, a + extra, cfg.ensemble_size, cfg.hidden, cfg.embed_dim).to(self.device)
        self.actor_target = target_copy(self.actor)
        self.critic_target = target_copy(self.critic)
        self.actor_opt = self.adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = self.adam(self.critic.parameters(), cfg.critic_lr)

    def make_actor(self, dims: list[int], action_dim: int) -> torch.nn.Module:
        """The actor network (the paper's: one MLP from the state to the action)."""
        if self.cfg.variant != "paper":
            raise ValueError(f"{self.kind}: variant {self.cfg.variant!r} is an item-level actor; this algorithm "
                             "acts per request (variant 'paper')")
        return Actor(dims, action_dim, self.cfg.hidden, self.cfg.embed_dim)

    def critic_action(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """What the critics read beside the state for (B, l, D) states and their flat (B*l, A) actions: the
        actions themselves, and with ``list_aware`` each item's :func:`list_features` under them too
        (B*l, A + 2)."""
        if not self.cfg.list_aware:
            return a
        bsz, l, _ = s.shape
        space = self.action_space or ActionSpace.for_dim(a.shape[-1])
        lists = a.reshape(bsz, l, -1)
        feats = list_features(s[..., -space.n_tasks:], lists, space, self.cfg.rank_temperature)
        return torch.cat([lists, feats], -1).reshape(bsz * l, -1)

    # --- evaluation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def behaviour_advantage(self, t: Transitions, batch_requests: int = 2048) -> np.ndarray:
        """Per critic (m,): the mean over the requests of ``t`` of sum_j [Q_i(s_j, mu(s_j)) - Q_i(s_j, mu_bp_j)],
        how much better the critics think the actor's actions are than the behaviour policy's."""
        total, n = None, 0
        for lo in range(0, len(t), batch_requests):
            v = self.view(t.batch(np.arange(lo, min(lo + batch_requests, len(t)))).to_torch(self.device))
            s, mu_bp = v["s"], v["mu_bp"]  # (B, l, D), (B, l, A)
            bsz, l, d = s.shape
            s_flat = s.reshape(-1, d)
            mu_bp_flat = mu_bp.reshape(-1, mu_bp.shape[-1])
            dq = (self.critic(s_flat, self.critic_action(s, self.actor(s_flat)))
                  - self.critic(s_flat, self.critic_action(s, mu_bp_flat)))
            part = dq.reshape(-1, bsz, l).sum(-1).sum(1)  # (m,)
            total = part if total is None else total + part
            n += bsz
        if total is None:
            raise ValueError("no requests to estimate the advantage on")
        return (total / n).cpu().numpy()

    # --- training -------------------------------------------------------------------------------------

    def warm_start(self, t: Transitions, rng: np.random.Generator) -> float:
        """Regress the actor on mu_bp (``warmup_steps`` batches); copy it into the target actor.
        Returns the final mean squared error."""
        loss = torch.zeros(())
        for _ in range(self.cfg.warmup_steps):
            v = self.view(t.sample(self.cfg.batch_size, rng).to_torch(self.device))
            s, mu_bp = v["s"], v["mu_bp"]
            loss = ((self.net("actor")(s.reshape(-1, s.shape[-1])) - mu_bp.reshape(-1, mu_bp.shape[-1])) ** 2).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.actor_opt.step()
        self.actor_target.load_state_dict(self.actor.state_dict())
        return float(loss.detach())

    def update(self, batch: RequestBatch) -> dict[str, float]:
        """One gradient step of the critics and the actor on a batch of requests."""
        cfg = self.cfg
        v = self.view(batch.to_torch(self.device))
        s, a = v["s"], v["a"]  # (B, l, D), (B, l, A)
        bsz, l, d = s.shape
        s2 = v["s2"]
        l2 = s2.shape[1]

        with torch.no_grad():
            s2_flat = s2.reshape(-1, d)
            a2 = self.actor_target(s2_flat)  # (B*l', A)
            q2 = self.critic_target(s2_flat, self.critic_action(s2, a2)).reshape(-1, bsz, l2)  # (m, B, l')
            pen2 = bound_penalty(a2, v["mu_bp2"].reshape(-1, a2.shape[-1]), v["lower_b2"].reshape(a2.shape),
                                 v["upper_b2"].reshape(a2.shape), cfg.beta).reshape(bsz, l2)  # (B, l')
            y = td_target(v["r"], v["done"], q2, pen2, discounts(v["gap"], cfg.gamma, cfg.session_gamma),
                          cfg.delta)  # (m, B)

        s_flat, a_flat = s.reshape(-1, d), a.reshape(-1, a.shape[-1])
        q = self.net("critic")(s_flat, self.critic_action(s, a_flat)).reshape(-1, bsz, l)  # (m, B, l)
        loss_c = critic_loss(q, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_c.backward()
        self.critic_opt.step()

        with frozen(self.critic):  # the actor loss leaves no gradient on the critics
            mu = self.net("actor")(s_flat)  # (B*l, A)
            q_pi = self.critic(s_flat, self.critic_action(s, mu))  # (m, B*l)
            pen = bound_penalty(mu, v["mu_bp"].reshape(mu.shape), v["lower_b"].reshape(mu.shape),
                                v["upper_b"].reshape(mu.shape), cfg.beta)  # (B*l,)
            loss_a = actor_loss(q_pi, pen, cfg.eta, cfg.lam)
            extra = {}
            if cfg.candidate_penalty:  # the box holds on the candidates too, shown or not
                pen_c = self.candidate_box_penalty(v)
                loss_a = loss_a + cfg.eta * pen_c.mean()
                extra = {"actor/candidate_penalty": pen_c.mean(),
                         "actor/candidate_outside_box": (pen_c > 0).float().mean()}
            self.actor_opt.zero_grad(set_to_none=True)
            loss_a.backward()
            self.actor_opt.step()

        self.step += 1
        if self.step % cfg.target_every == 0:
            soft_update(self.actor_target, self.actor, cfg.target_rate)
            soft_update(self.critic_target, self.critic, cfg.target_rate)
        with torch.no_grad():
            q_req = q.sum(-1)  # (m, B)
            return self.metrics({"losses/critic": loss_c, "losses/actor": loss_a, "q/mean": q_req.mean(),
                                 "q/std_critics": q_req.std(0, unbiased=False).mean(), "q/target_mean": y.mean(),
                                 "actor/bound_penalty": pen.mean(), "actor/outside_box": (pen > 0).float().mean(),
                                 **extra})

    def candidate_box_penalty(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """d() of the actor's actions on the batch's candidate sample (B*l,), differentiable in the actor."""
        if "cs" not in v:
            raise ValueError(f"{self.kind}: candidate_penalty is set but the batch has no candidate sample; log the "
                             "data with it (rlmtf simulate --log-candidates) or unset candidate_penalty")
        cs = v["cs"]
        mu_c = self.net("actor")(cs.reshape(-1, cs.shape[-1]))  # (B*l, A)
        return bound_penalty(mu_c, v["mu_bp_c"].reshape(mu_c.shape), v["lower_b_c"].reshape(mu_c.shape),
                             v["upper_b_c"].reshape(mu_c.shape), self.cfg.beta)

    # --- state ----------------------------------------------------------------------------------------

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}


class EnhancedStateRL(EnsembleActorCritic):
    """Enhanced-State RL: the ensemble actor-critic on the enhanced state of every user-item pair."""

    kind: ClassVar[str] = "esrl"
    level: ClassVar[Literal["user", "item"]] = "item"

    @classmethod
    def group_dims(cls, spec: FeatureSpec) -> list[int]:
        """Feature groups of the state the networks read: the enhanced state."""
        return [spec.user_profile.dim, spec.user_history.dim, spec.context.dim, spec.item_features.dim,
                len(spec.mtl_tasks)]

    def make_actor(self, dims: list[int], action_dim: int) -> torch.nn.Module:
        """The paper's actor, or the residual one (its first three groups are the user state)."""
        cfg = self.cfg
        if cfg.variant == "residual":
            return ResidualActor(dims, 3, action_dim, cfg.residual_scale, cfg.hidden, cfg.item_hidden, cfg.embed_dim)
        return Actor(dims, action_dim, cfg.hidden, cfg.embed_dim)

    @torch.no_grad()
    def act_states(self, states: np.ndarray) -> np.ndarray:
        """Actions (B, N, A) for a request's candidates (B, N, D); the residual actor runs its user trunk once
        per request (any other shape: per state, as every algorithm)."""
        if self.cfg.variant != "residual" or states.ndim != 3:
            return super().act_states(states)
        x = torch.as_tensor(np.ascontiguousarray(states), dtype=torch.float32, device=self.device)
        return self.actor.forward_list(x).cpu().numpy()

    @torch.no_grad()
    def act_obs(self, obs: RequestObs) -> np.ndarray:
        """The residual actor straight from the request (its user state once, the candidates' own groups),
        without the (B, N, D) enhanced states; the paper's actor on the enhanced states."""
        if self.cfg.variant != "residual":
            return super().act_obs(obs)
        f32 = torch.float32
        user = torch.as_tensor(obs.user_state(), dtype=f32, device=self.device)
        items = torch.as_tensor(np.concatenate([obs.item_features, obs.mtl_scores.astype(np.float32)], -1),
                                dtype=f32, device=self.device)
        return self.actor.forward_user_items(user, items).cpu().numpy()

    @staticmethod
    def view(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch as (B, l, .) tensors: one state, action and reward per shown item; with the candidate
        sample also its states and boxes (cs, mu_bp_c, lower_b_c, upper_b_c)."""
        v = {"s": b["enhanced_state"], "a": b["action"], "mu_bp": b["mu_bp"], "lower_b": b["lower_b"],
             "upper_b": b["upper_b"], "r": b["item_reward"], "done": b["done"], "gap": b["gap"],
             "s2": b["next_enhanced_state"], "mu_bp2": b["next_mu_bp"], "lower_b2": b["next_lower_b"],
             "upper_b2": b["next_upper_b"]}
        if "candidate_state" in b:
            v.update(cs=b["candidate_state"], mu_bp_c=b["candidate_mu_bp"], lower_b_c=b["candidate_lower_b"],
                     upper_b_c=b["candidate_upper_b"])
        return v

    @staticmethod
    def obs_states(obs: RequestObs) -> np.ndarray:
        """States the actor acts on for a request batch: (B, N, D) enhanced states."""
        return obs.enhanced_state()

    def train_states(self, t: Transitions) -> np.ndarray:
        """All training states, for the normalisation statistics: (R * l, D), the shown items' enhanced states
        or, with ``candidate_stats``, the candidate sample's (what the actor scores at serving time)."""
        if self.cfg.candidate_stats:
            if not t.has_candidates:
                raise ValueError(f"{self.kind}: candidate_stats is set but these logs have no candidate sample; "
                                 "log them with it (rlmtf simulate --log-candidates) or unset candidate_stats")
            assert t.candidate_state is not None
            return t.candidate_state.reshape(-1, t.candidate_state.shape[-1])
        return t.enhanced_state.reshape(-1, t.enhanced_state.shape[-1])


register(EnhancedStateRL)
