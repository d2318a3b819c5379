"""Exploration efficiency (``docs/design.md#exploration-efficiency``) and the paper's Figure 2 (action distributions).

Uniform exploration draws every action inside the box [mu_bp + lower_b, mu_bp + upper_b]^A;
action-noise exploration (eps ~ N(0, sigma)) lands inside with probability
prod_d [Phi(upper_b/sigma) - Phi(lower_b/sigma)] per sample, about 0.547^10 = 1/419 for sigma 0.2,
bounds +-0.15 and 10 dimensions. The *exploration efficiency* is how many action-noise samples buy
as many in-box samples as the uniform policy gets: the ratio of the in-box fractions.

The figure is computed three ways: analytically (the 419x above, and again accounting for the
clipping of actions to [-1, 1], which puts every draw beyond an edge that the box reaches onto the
edge, inside the box); empirically from the logged actions (the in-box fraction of whatever policy
logged them); and, for the comparator that was not logged, by drawing its noise around the logged
mu_bp (Monte Carlo, seeded). Near the edges of the action space clipping roughly halves the
figure: around the default baseline it is about 210x rather than 419x, which is the number the
paper prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from rlmtf.data.io import LoggedData
from rlmtf.policy.base import Policy, space_of


@dataclass
class ExplorationReport:
    rows: int
    sigma: float
    in_box_per_dim_logged: list[float]
    in_box_all_logged: float
    in_box_per_dim_noise_analytic: list[float]
    in_box_all_noise_analytic: float
    in_box_all_noise_analytic_clipped: float
    in_box_all_noise_monte_carlo: float
    efficiency_analytic: float
    efficiency_analytic_clipped: float
    efficiency_from_logs: float
    logged_by: str

    def to_dict(self) -> dict:
        return asdict(self)


def in_box(action: np.ndarray, mu_bp: np.ndarray, lower_b: np.ndarray, upper_b: np.ndarray,
           tol: float = 1e-5) -> np.ndarray:
    """(N, A) bool: each dimension inside its box. An action clipped at +-1 counts as inside when the
    box reaches past the edge (clipping maps such a draw onto the edge, which lies in the box)."""
    lo = np.maximum(mu_bp + lower_b, -1.0)
    hi = np.minimum(mu_bp + upper_b, 1.0)
    return (action >= lo - tol) & (action <= hi + tol)


def analyse(data: LoggedData, sigma: float = 0.2, seed: int = 0, max_rows: int = 1_000_000) -> ExplorationReport:
    c = data.columns
    n = len(data)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, max_rows, replace=False)) if n > max_rows else np.arange(n)
    a, mu, lo, hi = (c[k][idx].astype(np.float64) for k in ("action", "mu_bp", "lower_b", "upper_b"))
    if np.all(hi - lo <= 0):
        raise ValueError("the logged exploration box is empty (lower_b == upper_b): the data was logged without "
                         "exploration, so there is nothing to analyse")
    inside = in_box(a, mu, lo, hi)
    per_dim_logged = inside.mean(0)
    all_logged = float(inside.all(1).mean())
    # analytic in-box probability of N(0, sigma) noise for each logged box, averaged over samples
    p_dim = ndtr(hi / sigma) - ndtr(lo / sigma)  # (N, A), ignoring clipping at +-1
    per_dim_analytic = p_dim.mean(0)
    all_analytic = float(np.prod(p_dim, 1).mean())
    # with clipping to [-1, 1]: a box that reaches past an edge also catches every draw beyond it
    lo_z = np.where(mu + lo <= -1.0, -np.inf, lo / sigma)
    hi_z = np.where(mu + hi >= 1.0, np.inf, hi / sigma)
    all_clipped = float(np.prod(ndtr(hi_z) - ndtr(lo_z), 1).mean())
    noise = np.clip(mu + sigma * rng.standard_normal(mu.shape), -1, 1)
    all_mc = float(in_box(noise, mu, lo, hi).all(1).mean())
    logged_by = str(data.meta.info.get("explore", "unknown"))
    return ExplorationReport(
        rows=int(idx.size), sigma=sigma, in_box_per_dim_logged=per_dim_logged.tolist(),
        in_box_all_logged=all_logged, in_box_per_dim_noise_analytic=per_dim_analytic.tolist(),
        in_box_all_noise_analytic=all_analytic, in_box_all_noise_analytic_clipped=all_clipped,
        in_box_all_noise_monte_carlo=all_mc,
        efficiency_analytic=1.0 / all_analytic if all_analytic > 0 else float("inf"),
        efficiency_analytic_clipped=1.0 / all_clipped if all_clipped > 0 else float("inf"),
        efficiency_from_logs=all_logged / all_mc if all_mc > 0 else float("inf"), logged_by=logged_by)


def plot_action_distributions(data: LoggedData, path: str | Path, sigma: float = 0.2, seed: int = 0,
                              dims: tuple[int, int] = (0, 1), max_points: int = 5000) -> Path:
    """The paper's Figure 2: the logged (uniform) exploration and action-noise exploration around the
    same mu_bp, as histograms of action - mu_bp and as a scatter of two dimensions with the box."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    c = data.columns
    rng = np.random.default_rng(seed)
    n = len(data)
    idx = rng.choice(n, min(n, max_points), replace=False)
    a, mu = c["action"][idx].astype(np.float64), c["mu_bp"][idx].astype(np.float64)
    lo, hi = c["lower_b"][idx].astype(np.float64), c["upper_b"][idx].astype(np.float64)
    noise = np.clip(mu + sigma * rng.standard_normal(mu.shape), -1, 1)
    d0, d1 = dims
    fig, (h, s) = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(-0.8, 0.8, 81)
    h.hist((a - mu)[:, d0], bins=bins, alpha=0.6, density=True, label=f"logged ({data.meta.info.get('explore', '?')})")
    h.hist((noise - mu)[:, d0], bins=bins, alpha=0.6, density=True, label=f"action noise N(0, {sigma})")
    h.axvline(float(np.median(lo[:, d0])), color="k", ls="--", lw=0.8)
    h.axvline(float(np.median(hi[:, d0])), color="k", ls="--", lw=0.8)
    h.set_xlabel(f"action - mu_bp, dimension {d0}")
    h.set_ylabel("density")
    h.legend(fontsize=8)
    s.scatter((noise - mu)[:, d0], (noise - mu)[:, d1], s=3, alpha=0.3, label="action noise", color="C1")
    s.scatter((a - mu)[:, d0], (a - mu)[:, d1], s=3, alpha=0.5, label="logged", color="C0")
    l0, l1 = float(np.median(lo[:, d0])), float(np.median(lo[:, d1]))
    w0, w1 = float(np.median(hi[:, d0])) - l0, float(np.median(hi[:, d1])) - l1
    s.add_patch(Rectangle((l0, l1), w0, w1, fill=False, color="k", lw=1.2, label="exploration box"))
    s.set_xlim(-0.8, 0.8)
    s.set_ylim(-0.8, 0.8)
    s.set_xlabel(f"dimension {d0}")
    s.set_ylabel(f"dimension {d1}")
    s.legend(fontsize=8, loc="upper right")
    fig.suptitle("Action distributions around mu_bp: uniform exploration vs action noise (cf. the paper's Figure 2)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- what exploring costs the list ------------------------------------------------------------------------

#: The exploration settings the cost table compares by default: (granularity, box half-width).
COST_SETTINGS: tuple[tuple[str, float], ...] = (("request", 0.15), ("day", 0.15), ("item", 0.15), ("item", 0.05))


class TopListRecorder(Policy):
    """Wraps an exploring policy and counts, at every request, how much of the behaviour policy's own top l
    (ranked by its mu_bp, without noise) the explored action still shows. Acts exactly as the wrapped policy
    (its level, score source, name and action space too)."""

    def __init__(self, inner: Policy, space, list_len: int):
        self.inner, self.space, self.l = inner, space, list_len
        self.kept, self.requests = 0.0, 0
        for name in ("level", "score_source", "name", "action_space"):
            setattr(self, name, getattr(inner, name))

    def decide(self, obs):
        from rlmtf.core.fusion import fused_log_score, rank_top_l

        dec = self.inner.decide(obs)

        def top(a: np.ndarray) -> np.ndarray:
            a = np.broadcast_to(a, (*obs.mtl_scores.shape[:2], a.shape[-1])) if a.ndim == 3 else a[:, None, :]
            return rank_top_l(fused_log_score(obs.mtl_scores, a, self.space), self.l)

        mu = np.broadcast_to(dec.mu_bp, dec.action.shape) if dec.mu_bp.ndim < dec.action.ndim else dec.mu_bp
        ref, shown = top(mu), top(dec.action)  # (B, l) candidate positions
        self.kept += float((ref[:, :, None] == shown[:, None, :]).any(-1).sum())
        self.requests += ref.shape[0]
        return dec

    def act(self, obs):
        return self.inner.act(obs)

    def rank(self, obs, l):
        return self.inner.rank(obs, l)

    def observe(self, *args):
        return self.inner.observe(*args)

    @property
    def top_l_kept(self) -> float:
        return self.kept / max(self.requests * self.l, 1)


def exploration_cost(env, base, settings=COST_SETTINGS, users: int = 3000, days: int = 1, seed: int = 0,
                     log=lambda s: None) -> list[dict]:
    """For each (granularity, box) of uniform exploration around ``base``: the share of ``base``'s top l that
    stays shown, and what exploring costs online (UVC, UDT and reward per user-day of the exploring policy
    against ``base`` itself, common random numbers, 95% CIs)."""
    from rlmtf.envs.collect import behaviour_policy
    from rlmtf.eval.online import online_ab

    rows = []
    space = space_of(base, env.cfg.action_space)
    for per, box in settings:
        rec = TopListRecorder(behaviour_policy(base, "uniform", per, lower_b=-box, upper_b=box, seed=seed + 1),
                              space, env.cfg.list_len)
        rec.name = f"uniform per {per} +-{box:g}"
        ab = online_ab([base, rec], env, users=users, days=days, seed=seed)
        lifts = ab.arms[1].lifts
        row = {"per": per, "box": box, "top_l_kept": rec.top_l_kept, "requests": rec.requests}
        for m in ("uvc", "udt", "reward"):
            row[m] = {k: float(lifts[m][k]) for k in ("lift", "ci_low", "ci_high")}
        log(f"{rec.name}: {row['top_l_kept']:.1%} of the top {env.cfg.list_len} kept, reward per user-day "
            f"{row['reward']['lift']:+.2%}")
        rows.append(row)
    return rows


class RequestSampler(TopListRecorder):
    """Acts as the wrapped policy and keeps the first ``limit`` request observations it decides."""

    def __init__(self, inner, space, list_len: int, limit: int):
        super().__init__(inner, space, list_len)
        self.obs: list = []
        self.left = limit

    def decide(self, obs):
        if self.left > 0:
            self.obs.append(obs)
            self.left -= obs.batch_size
        return self.inner.decide(obs)


def top_l_kept_per_item(requests, base, space, list_len: int, box: float, seed: int = 0) -> float:
    """The share of ``base``'s top l that per-item uniform noise of half-width ``box`` around it still shows,
    on recorded request observations (common draws: the same keys for every width)."""
    from rlmtf.envs.collect import behaviour_policy

    rec = TopListRecorder(behaviour_policy(base, "uniform", "item", lower_b=-box, upper_b=box, seed=seed),
                          space, list_len)
    for obs in requests:
        rec.decide(obs)
    return rec.top_l_kept


def item_box_for(env, base, keep: float = 0.8, upper: float = 0.15, users: int = 300, seed: int = 0,
                 steps: int = 8) -> dict:
    """The widest per-item exploration box, at most ``upper``, whose noise keeps at least ``keep`` of
    ``base``'s top l shown (``docs/design.md#what-exploring-costs-the-list``): requests of ``users`` users for
    one day under ``base``, then bisection on the half-width over those requests (the kept share falls with
    the width; each width sees the same draws). Returns ``{"box", "top_l_kept", "requests"}``."""

    if not 0 < keep < 1 or not upper > 0 or users < 1:
        raise ValueError(f"keep must be in (0, 1), upper > 0 and users >= 1, got {keep}, {upper}, {users}")
    space = space_of(base, env.cfg.action_space)
    sampler = RequestSampler(base, space, env.cfg.list_len, limit=4000)
    env.run(sampler, seed=seed, days=1, users=np.arange(min(users, env.cfg.n_users)), log_true_scores=False)

    def kept(w: float) -> float:
        return top_l_kept_per_item(sampler.obs, base, space, env.cfg.list_len, w, seed=seed + 1)

    lo, hi, lo_kept = 0.0, float(upper), 1.0
    at_upper = kept(upper)
    if at_upper >= keep:
        lo, lo_kept, steps = hi, at_upper, 0
    for _ in range(steps):
        mid = (lo + hi) / 2
        k = kept(mid)
        lo, hi, lo_kept = (mid, hi, k) if k >= keep else (lo, mid, lo_kept)
    return {"box": lo, "top_l_kept": lo_kept, "requests": sum(o.batch_size for o in sampler.obs)}
