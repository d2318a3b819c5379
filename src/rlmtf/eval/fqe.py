"""Fitted Q evaluation (FQE; Le, Voloshin and Yue 2019): the value of a policy estimated from logs it did
not write (``docs/design.md#off-policy-evaluation``).

A critic ensemble (the networks the algorithms train, ``rlmtf.core.nets.CriticEnsemble``) is regressed on
the one-step Bellman target of the *evaluated* policy::

    Q(s_t, a_t) <- r_t + gamma_t * (1 - done_t) * Q'(s_(t+1), pi(s_(t+1)))

on the logged transitions (the logged action a_t, the evaluated policy's action at the next state). The
estimate is the mean over the logged episodes' first states of ``Q(s_0, pi(s_0))``. The episode is the
session or the user-day (``rlmtf.core.objective``; default: the undiscounted user-day), and the reward
is any per-request count: the logged reward and, so that the estimates are in the units of the online
metrics, the valid views (``uvc``), the watch minutes (``udt``) and the sessions opened (``sessions``: 1 on
each session's first request) per episode.

User-level policies are evaluated with a critic on the user state (it integrates over which items the
action would show); item-level ones with the list-level critic of Enhanced-State RL (the sum over the shown
items of Q(s_tj, a_tj)), which sees only the lists the logging policy showed.

The targets are clipped to the range of the logged episodes' returns (per metric: from the most negative
to the most positive sum of one episode's rewards), the values any return-to-go of the logs can take. On
few episodes, an evaluated policy's actions at the edge of the logged boxes otherwise let the bootstrapped
targets feed on their own extrapolation and diverge (``clip_targets``).

The ensemble is a bootstrap: each member weights the logged episodes with its own Poisson(1) counts, so the
members' spread carries both the sampling noise of the logs and the noise of the fit. Two policies
estimated with the same ``seed`` share the members' weights: their difference per member is a paired
bootstrap of the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rlmtf.core.bellman import bellman_target, discounts
from rlmtf.core.nets import CriticEnsemble
from rlmtf.data.io import LoggedData
from rlmtf.data.transitions import Transitions
from rlmtf.eval.offline import logged_requests_obs
from rlmtf.policy.base import Policy, check_actions

__all__ = ["FQEConfig", "FQEResult", "OPE_METRICS", "episode_starts", "fit_fqe", "metric_rewards", "policy_actions"]

#: The per-request counts an estimate can be in: the logged reward, valid views, watch minutes, sessions.
OPE_METRICS = ("reward", "uvc", "udt", "sessions")


@dataclass(frozen=True)
class FQEConfig:
    steps: int = 4000
    """Gradient steps of the critic ensemble (an undiscounted day is ~15 requests: the value needs a few
    thousand steps of target updates to propagate from the day's end to its start)."""
    batch_size: int = 512
    hidden: tuple[int, ...] = (64, 64)
    embed_dim: int = 16
    members: int = 5
    """Bootstrap members per metric."""
    lr: float = 1e-3
    target_rate: float = 0.05
    gamma: float = 1.0
    """Discount per request."""
    session_gamma: float = 1.0
    """Discount into the user's next session of the day (day episodes)."""
    seed: int = 0
    clip_targets: bool = True
    """Clip the TD targets to the logged episodes' return range (module docstring)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.members < 2:
            raise ValueError("steps and batch_size must be >= 1 and members >= 2")
        if not (0 < self.gamma <= 1 and 0 < self.session_gamma <= 1):
            raise ValueError(f"gamma and session_gamma must be in (0, 1], got {self.gamma}, {self.session_gamma}")


@dataclass
class FQEResult:
    """Per metric, the bootstrap members' estimated value per episode (members,)."""

    members: dict[str, np.ndarray]
    episodes: int
    level: str
    losses: list[float] = field(default_factory=list)
    q_logged: dict[str, np.ndarray] = field(default_factory=dict)
    """Per metric, the members' mean Q(s_t, a_t) at every request (R,) (the control variate of DR)."""
    v_policy: dict[str, np.ndarray] = field(default_factory=dict)
    """Per metric, the members' mean Q(s_t, pi(s_t)) at every request (R,)."""

    def summary(self, metric: str) -> dict:
        """mean, the members' sd, and mean +- 1.96 sd (the bootstrap-ensemble interval)."""
        v = self.members[metric]
        sd = float(v.std(ddof=1))
        return {"mean": float(v.mean()), "sd": sd, "ci_low": float(v.mean() - 1.96 * sd),
                "ci_high": float(v.mean() + 1.96 * sd), "interval": "bootstrap ensemble (mean +- 1.96 sd)"}


def episode_starts(t: Transitions) -> np.ndarray:
    """Indices of the requests no other request leads to: each episode's first."""
    start = np.ones(len(t), dtype=bool)
    start[t.next_index[t.done == 0]] = False
    return np.flatnonzero(start)


def metric_rewards(t: Transitions, logs: LoggedData) -> dict[str, np.ndarray]:
    """Per request (R,) the counts of :data:`OPE_METRICS` (valid views, watch minutes, session opened)."""
    c = logs.columns
    rows = t.row_index
    return {"reward": c["reward"][rows].sum(1, dtype=np.float64),
            "uvc": c["valid"][rows].astype(np.float64).sum(1),
            "udt": c["watch_time"][rows].astype(np.float64).sum(1) / 60.0,
            "sessions": (t.t == 0).astype(np.float64)}


def policy_actions(policy: Policy, logs: LoggedData, t: Transitions, dim: int,
                   batch_requests: int = 8192) -> np.ndarray:
    """The policy's actions at every request of ``t``: (R, 1, A) user-level, (R, l, A) item-level (on the
    logged items)."""
    out = []
    for lo in range(0, len(t), batch_requests):
        rows = t.row_index[lo: lo + batch_requests]
        obs = logged_requests_obs(logs, rows)
        a = check_actions(np.asarray(policy.act(obs)), obs, policy.level, policy.name, dim)
        out.append(a[:, None, :] if a.ndim == 2 else a)
    return np.concatenate(out).astype(np.float32)


def fit_fqe(t: Transitions, logs: LoggedData, actions: np.ndarray, cfg: FQEConfig = FQEConfig(),
            metrics: tuple[str, ...] = OPE_METRICS, device: str = "cpu") -> FQEResult:
    """Fit the bootstrap critic ensemble of one policy, given its actions at every request of ``t``
    (:func:`policy_actions`, or any (R, L, A) array: ``t.mu_bp[:, :1]`` evaluates the logging policy's mean
    action); return its estimated value per episode for every metric."""
    unknown = [m for m in metrics if m not in OPE_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(OPE_METRICS)}")
    if actions.shape[0] != len(t) or actions.ndim != 3:
        raise ValueError(f"actions must have shape ({len(t)}, L, A), got {actions.shape}")
    level = "user" if actions.shape[1] == 1 else "item"
    states = t.user_state[:, None, :] if level == "user" else t.enhanced_state  # (R, L, D)
    logged = t.action[:, :1] if level == "user" else t.action  # (R, L, A)
    if logged.shape != actions.shape:
        raise ValueError(f"actions {actions.shape} do not match the logged actions {logged.shape}")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rewards = metric_rewards(t, logs)
    r = np.stack([rewards[m] for m in metrics], 1)  # (R, K)
    scale = np.maximum(r.std(0), 1e-8)  # per-metric scale, so that every metric weighs alike in the loss
    ep_ids, ep_of = np.unique(t.episode_id, return_inverse=True)
    lo_ret = np.stack([np.bincount(ep_of, np.minimum(r[:, j], 0)).min() for j in range(r.shape[1])]) / scale
    hi_ret = np.stack([np.bincount(ep_of, np.maximum(r[:, j], 0)).max() for j in range(r.shape[1])]) / scale
    k, m = len(metrics), cfg.members
    rng = np.random.default_rng(cfg.seed)
    boot = rng.poisson(1.0, size=(m, ep_ids.size)).astype(np.float32)  # (m, E) per-member episode weights
    w = torch.from_numpy(np.tile(boot[:, ep_of], (k, 1)))  # (K*m, R): member i of metric j is row j*m + i

    dev = torch.device(device)
    s_all = torch.from_numpy(states).to(dev)
    a_log = torch.from_numpy(np.ascontiguousarray(logged)).to(dev)
    a_pi = torch.from_numpy(np.ascontiguousarray(actions)).to(dev)
    r_all = torch.from_numpy((r / scale).T.astype(np.float32)).to(dev)  # (K, R)
    done = torch.from_numpy(t.done).to(dev)
    disc = discounts(torch.from_numpy(t.gap).to(dev), cfg.gamma, cfg.session_gamma)
    nxt = torch.from_numpy(t.next_index).to(dev)
    w = w.to(dev)
    # (K*m, 1): the bounds of metric j for its m members (rows j*m .. j*m + m - 1)
    y_lo, y_hi = (torch.from_numpy(np.repeat(x, m).astype(np.float32)).to(dev)[:, None] for x in (lo_ret, hi_ret))

    d, a_dim, n_l = states.shape[-1], actions.shape[-1], states.shape[1]
    critic = CriticEnsemble([d], a_dim, k * m, cfg.hidden, cfg.embed_dim).to(dev)
    flat = s_all.reshape(-1, d)
    critic.set_normalisation(flat.mean(0), flat.std(0))
    target = CriticEnsemble([d], a_dim, k * m, cfg.hidden, cfg.embed_dim).to(dev)
    target.load_state_dict(critic.state_dict())
    target.requires_grad_(False)
    opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr)

    def q_of(net: CriticEnsemble, idx: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:  # (K*m, B)
        b = idx.shape[0]
        return net(s_all[idx].reshape(-1, d), acts[idx].reshape(-1, a_dim)).reshape(-1, b, n_l).sum(-1)

    losses = []
    for step in range(cfg.steps):
        idx = torch.randint(len(t), (cfg.batch_size,), generator=gen).to(dev)
        with torch.no_grad():
            q2 = q_of(target, nxt[idx], a_pi)  # (K*m, B)
            y = bellman_target(r_all[:, idx].repeat_interleave(m, 0), done[idx], q2, disc[idx])
            if cfg.clip_targets:
                y = torch.minimum(torch.maximum(y, y_lo), y_hi)
        q = q_of(critic, idx, a_log)
        loss = (w[:, idx] * (q - y) ** 2).mean(-1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_t, p in zip(target.parameters(), critic.parameters(), strict=True):
                p_t.lerp_(p, cfg.target_rate)
        if step % 100 == 0 or step == cfg.steps - 1:
            losses.append(float(loss.detach()) / (k * m))

    starts = torch.from_numpy(episode_starts(t)).to(dev)
    with torch.no_grad():
        v0 = q_of(critic, starts, a_pi)  # (K*m, E0)
        wb = w[:, starts]
        per_member = ((v0 * wb).sum(-1) / wb.sum(-1).clamp_min(1e-8)).cpu().numpy()  # bootstrap-weighted mean
        q_all, v_all = [], []
        for lo in range(0, len(t), 8192):
            idx = torch.arange(lo, min(lo + 8192, len(t)), device=dev)
            q_all.append(q_of(critic, idx, a_log).reshape(k, m, -1).mean(1))
            v_all.append(q_of(critic, idx, a_pi).reshape(k, m, -1).mean(1))
        q_np = torch.cat(q_all, 1).cpu().numpy() * scale[:, None]  # (K, R)
        v_np = torch.cat(v_all, 1).cpu().numpy() * scale[:, None]
    values = per_member.reshape(k, m) * scale[:, None]
    return FQEResult(members={name: values[j] for j, name in enumerate(metrics)}, episodes=int(starts.numel()),
                     level=level, losses=losses, q_logged={name: q_np[j] for j, name in enumerate(metrics)},
                     v_policy={name: v_np[j] for j, name in enumerate(metrics)})
