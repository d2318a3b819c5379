"""User response models fitted on KuaiRand-Pure: the environment's ground truth of what a user does.

One network reads the features of a user-item pair (every group of ``features.py``: static user and
item features, training-day user / item statistics, user-tag affinity, pre-period history) into a
shared trunk ``h`` and has three kinds of heads:

- **watch ratio** r = play_time / duration, a distribution to sample from: a point mass at r = 0
  (``p_zero``, 9.8% of the log) and, given r > 0, a mixture of K log-normals
  ``log r ~ sum_k pi_k N(mu_k, sigma_k^2)`` (the log ratio is bimodal: skips and engaged views).
  Trained by maximum likelihood; ratios are clipped to [min_ratio, max_ratio];
- **long_view**, a direct logistic head (best AUC). The official rule ``long_view = play_time >=
  min(duration, 18 s)`` agrees with 99.8% of the logged rows, so the environment derives long_view
  (and finish = r >= 1) from a *sampled* watch ratio; ``p_long_view_watch`` is the same probability
  read off the mixture's CDF;
- **like, follow, comment, forward**, conditioned on the realised watch: their logits are a one-hidden-
  layer net of ``[h, g(r)]`` with ``g = (standardised log r, r = 0, r >= 1, long_view)``, trained with
  the logged r (teacher forcing). Sampling r first and then the interactions keeps their correlation
  with watch time (like is 3.9x likelier on a long view). Marginal probabilities integrate over r
  deterministically: the zero mass, then for each component the three regions of log r split at the
  long-view threshold and at finish (where g's indicators jump), each by a midpoint rule in probability
  (``nodes_per_region`` nodes). p_long_view_watch, p_finish and the expected capped ratio are exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import ndtr
from torch import nn

from rlmtf.core.nets import mlp
from rlmtf.envs.kuairand.common import Standardise, masked_bce, normalisation, train_loop
from rlmtf.envs.kuairand.data import Interactions
from rlmtf.envs.kuairand.features import GROUPS, FeatureBuilder
from rlmtf.envs.kuairand.metrics import binary_report, calibration_bins, pit_histogram

BEHAVIOURS: tuple[str, ...] = ("like", "follow", "comment", "forward")
LONG_VIEW_S = 18.0
#: Fixed centring of log r inside g(r) (log-ratio median about -2.4, spread about 2.5).
_G_CENTRE, _G_SCALE = -2.5, 2.5
_PREDICT_CHUNK = 8192


@dataclass(frozen=True)
class ResponseConfig:
    """Architecture and training of the response model."""

    groups: tuple[str, ...] = GROUPS
    """Feature groups read (all of them: the truth should be the best model we can fit)."""
    hidden: tuple[int, ...] = (256, 128)
    """Widths of the shared trunk."""
    n_components: int = 4
    """K, the log-normal components of the watch ratio given r > 0."""
    behaviour_hidden: int = 32
    """Hidden width of each conditional interaction head."""
    nodes_per_region: int = 4
    """Integration nodes of the interaction heads over r, per component and per region of log r
    (below the long-view threshold, up to finish, beyond) where g's indicators are constant."""
    min_ratio: float = 1e-4
    """Positive watch ratios are clipped to [min_ratio, max_ratio] (sampling clips the same way)."""
    max_ratio: float = 10.0
    """Upper clip of the watch ratio (the log's p99.9 is 4.5, its maximum 63)."""
    epochs: int = 6
    """Passes over the training rows; chosen on a days 1-8 / 9-10 split (validation loss rises after ~6)."""
    batch_size: int = 1024
    lr: float = 2e-3
    """Adam learning rate, cosine-annealed to 0 over the epochs."""
    weight_decay: float = 1e-4
    behaviour_weight: float = 2.0
    """Weight of each interaction head's BCE (they are rare: 0.1-1.7% positives)."""
    seed: int = 0
    """Seeds the initialisation and the batch order: a refit on the same data gives the same model."""


@dataclass
class ResponseOutput:
    """Per-pair response probabilities and the watch-ratio distribution, arrays of shape (B,) or (B, K)."""

    p_long_view: np.ndarray
    p_long_view_watch: np.ndarray
    p_finish: np.ndarray
    p_zero: np.ndarray
    expected_ratio: np.ndarray
    behaviours: dict[str, np.ndarray]
    mix_weight: np.ndarray  # (B, K) pi_k
    mix_mu: np.ndarray  # (B, K) mean of log r
    mix_sigma: np.ndarray  # (B, K)


def watch_inputs(ratio: torch.Tensor, long_view: torch.Tensor, min_ratio: float) -> torch.Tensor:
    """g(r): (...,) ratio and long_view -> (..., 4) inputs of the interaction heads."""
    lr = torch.log(ratio.clamp(min=min_ratio))
    return torch.stack([(lr - _G_CENTRE) / _G_SCALE, (ratio <= 0).float(), (ratio >= 1).float(), long_view], -1)


def long_view_rule(ratio, duration_s):
    """The official long_view: play_time >= min(duration, 18 s), i.e. r >= min(1, 18 s / duration)
    (numpy arrays or torch tensors)."""
    return ratio >= (LONG_VIEW_S / duration_s).clip(max=1.0)


def watch_nll(zero_logit: torch.Tensor, mix_logit: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
              ratio: torch.Tensor, min_ratio: float, max_ratio: float) -> torch.Tensor:
    """Per-row negative log-likelihood of r: Bernoulli(r = 0) + log-normal mixture density of log r (nats)."""
    is_zero = ratio <= 0
    nll = F.binary_cross_entropy_with_logits(zero_logit, is_zero.float(), reduction="none")  # (B,)
    y = torch.log(ratio.clamp(min_ratio, max_ratio))[:, None]  # (B, 1)
    logp = torch.logsumexp(F.log_softmax(mix_logit, -1) - torch.log(sigma) - 0.5 * ((y - mu) / sigma) ** 2
                           - 0.5 * np.log(2 * np.pi), -1)  # (B,)
    return nll - torch.where(is_zero, torch.zeros_like(logp), logp)


class ResponseNet(nn.Module):
    def __init__(self, in_dim: int, cfg: ResponseConfig):
        super().__init__()
        k, nb, hb = cfg.n_components, len(BEHAVIOURS), cfg.behaviour_hidden
        self.k, self.nb, self.hb = k, nb, hb
        self.norm = Standardise(in_dim)
        self.trunk = nn.Sequential(mlp([in_dim, *cfg.hidden]), nn.ReLU())
        h = cfg.hidden[-1]
        self.long_view = nn.Linear(h, 1)
        self.watch = nn.Linear(h, 1 + 3 * k)
        with torch.no_grad():  # spread the components over the log-ratio range at the start
            self.watch.bias[1 + k:1 + 2 * k] = torch.linspace(-5.0, 0.0, k)
        self.beh_h = nn.Linear(h, nb * hb)
        self.beh_g = nn.Linear(4, nb * hb, bias=False)
        self.beh_w = nn.Parameter(torch.randn(nb, hb) / np.sqrt(hb))
        self.beh_b = nn.Parameter(torch.full((nb,), -4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.norm(x))  # (B, H)

    def mixture(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """zero logit (B,), mixture logits, mu, sigma (B, K)."""
        o = self.watch(h)
        k = self.k
        return o[:, 0], o[:, 1:1 + k], o[:, 1 + k:1 + 2 * k], torch.exp(o[:, 1 + 2 * k:]).clamp(0.05, 5.0)

    def behaviour_logits(self, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """h (B, H), g (B, N, 4) -> (B, N, nb) interaction logits at N watch outcomes."""
        b, n = g.shape[:2]
        a = self.beh_h(h).view(b, 1, self.nb, self.hb)
        z = torch.relu(a + self.beh_g(g).view(b, n, self.nb, self.hb))  # (B, N, nb, hb)
        return (z * self.beh_w).sum(-1) + self.beh_b


class ResponseModel:
    """The fitted response model with its feature builder: predict, sample, evaluate, save."""

    kind = "kuairand_response"

    def __init__(self, builder: FeatureBuilder, cfg: ResponseConfig = ResponseConfig()):
        self.builder, self.cfg = builder, cfg
        self.feature_names = builder.feature_names(cfg.groups)
        self.net = ResponseNet(len(self.feature_names), cfg)
        self.train_loss: list[float] = []

    # --- fitting --------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, builder: FeatureBuilder, x: np.ndarray, rows: Interactions, cfg: ResponseConfig = ResponseConfig(),
            log: Callable[[str], None] = print) -> ResponseModel:
        """Fit on a training matrix ``x`` (columns = ``builder.feature_names(cfg.groups)``) and its rows."""
        torch.manual_seed(cfg.seed)
        m = cls(builder, cfg)
        if x.shape[1] != len(m.feature_names):
            raise ValueError(f"x has {x.shape[1]} columns, the response model reads {len(m.feature_names)}")
        m.net.norm.set(*normalisation(x))
        xt = torch.as_tensor(x)
        dur = builder.item_duration_s(rows.item)
        ratio_known = torch.as_tensor(rows.ratio_known)
        ratio = torch.as_tensor(np.where(rows.ratio_known, np.nan_to_num(rows.watch_ratio), 0.0), dtype=torch.float32)
        imputed = torch.as_tensor(rows.play_time_ms / (1000.0 * dur), dtype=torch.float32)  # unknown durations
        lv = torch.as_tensor(rows.long_view, dtype=torch.float32)
        g = watch_inputs(torch.where(ratio_known, ratio, imputed), lv, cfg.min_ratio)  # (n, 4)
        beh = torch.as_tensor(np.stack([getattr(rows, b) for b in BEHAVIOURS], 1), dtype=torch.float32)
        net = m.net

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            h = net(xt[idx])
            z, ml, mu, sd = net.mixture(h)
            known = ratio_known[idx]
            l_watch = watch_nll(z[known], ml[known], mu[known], sd[known], ratio[idx][known], cfg.min_ratio,
                                cfg.max_ratio).mean() if known.any() else torch.zeros(())
            l_lv = masked_bce(net.long_view(h).squeeze(-1), lv[idx])
            l_beh = masked_bce(net.behaviour_logits(h, g[idx][:, None])[:, 0], beh[idx])
            return l_watch + l_lv + cfg.behaviour_weight * len(BEHAVIOURS) * l_beh

        log(f"response model: {len(rows):,} rows x {x.shape[1]} features")
        m.net.train()
        m.train_loss = train_loop(net.parameters(), loss_fn, len(rows), epochs=cfg.epochs, batch_size=cfg.batch_size,
                                  lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, name="response", log=log)
        m.net.eval()
        return m

    # --- prediction -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _predict_chunk(self, x: torch.Tensor, dur: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.outputs_from_trunk(self.net(x), dur)

    @torch.no_grad()
    def outputs_from_trunk(self, h: torch.Tensor, dur: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of :class:`ResponseOutput` (as tensors) from the trunk's activations ``h = net(x)``
        (B, H) and the items' durations (B,) in seconds; for callers that compute the trunk themselves."""
        cfg, net, j = self.cfg, self.net, self.cfg.nodes_per_region
        z, ml, mu, sd = net.mixture(h)
        p0, pi = torch.sigmoid(z), torch.softmax(ml, -1)  # (B,), (B, K)
        lo, hi = np.log(cfg.min_ratio), np.log(cfg.max_ratio)
        thr = torch.log(torch.clamp(LONG_VIEW_S / dur, max=1.0))[:, None]  # (B, 1) log r of a long view
        # CDF of each component at the region edges -inf | thr | 0 | +inf: g's indicators are constant inside
        c = torch.stack([torch.zeros_like(mu), torch.special.ndtr((thr - mu) / sd), torch.special.ndtr(-mu / sd),
                         torch.ones_like(mu)], -1)  # (B, K, 4)
        q = (torch.arange(j, dtype=torch.float32) + 0.5) / j  # (J,) midpoints in probability
        cq = c[..., :-1, None] + (c[..., 1:] - c[..., :-1])[..., None] * q  # (B, K, 3, J)
        y = (mu[..., None, None] + sd[..., None, None] * torch.special.ndtri(cq)).clamp(lo, hi)
        w = (pi[..., None] * (c[..., 1:] - c[..., :-1]) / j)[..., None].expand(cq.shape)  # (B, K, 3, J), sums to 1
        r = torch.cat([torch.zeros_like(p0)[:, None], torch.exp(y).flatten(1)], 1)  # (B, N) node 0 = zero play
        w = torch.cat([p0[:, None], (1 - p0)[:, None] * w.flatten(1)], 1)  # (B, N)
        lv = long_view_rule(r, dur[:, None]).float()
        pb = torch.sigmoid(net.behaviour_logits(h, watch_inputs(r, lv, cfg.min_ratio)))  # (B, N, nb)
        # E[clip(r, m, M) | r > 0] of each log-normal component, exactly
        a, b = (lo - mu) / sd, (hi - mu) / sd
        ndtr = torch.special.ndtr
        mean_pos = (cfg.min_ratio * ndtr(a) + torch.exp(mu + sd**2 / 2) * (ndtr(b - sd) - ndtr(a - sd))
                    + cfg.max_ratio * (1 - ndtr(b)))  # (B, K)
        return {"p_long_view": torch.sigmoid(net.long_view(h)).squeeze(-1),
                "p_long_view_watch": (1 - p0) * (pi * (1 - c[..., 1])).sum(-1),
                "p_finish": (1 - p0) * (pi * (1 - c[..., 2])).sum(-1),
                "p_zero": p0, "expected_ratio": (1 - p0) * (pi * mean_pos).sum(-1),
                "behaviours": (w[..., None] * pb).sum(1), "mix_weight": pi, "mix_mu": mu, "mix_sigma": sd}

    def predict_features(self, x: np.ndarray, duration_s: np.ndarray) -> ResponseOutput:
        """Responses for a feature matrix (columns = ``feature_names``) and the items' durations."""
        outs = [self._predict_chunk(torch.as_tensor(x[s:s + _PREDICT_CHUNK]),
                                    torch.as_tensor(duration_s[s:s + _PREDICT_CHUNK], dtype=torch.float32))
                for s in range(0, len(x), _PREDICT_CHUNK)]
        cat = {k: torch.cat([o[k] for o in outs]).numpy() for k in outs[0]} if outs else {}
        beh = cat.pop("behaviours")
        return ResponseOutput(**cat, behaviours={b: beh[:, j] for j, b in enumerate(BEHAVIOURS)})

    def predict(self, user_rows: np.ndarray, item_rows: np.ndarray) -> ResponseOutput:
        """Responses of user-item pairs at serving time (statistics of all training days)."""
        x = self.builder.matrix(user_rows, item_rows, self.cfg.groups)
        return self.predict_features(x, self.builder.item_duration_s(np.asarray(item_rows)))

    @torch.no_grad()
    def sample(self, user_rows: np.ndarray, item_rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw one response per pair: watch ratio, play seconds, long_view, finish, like, follow, comment, forward."""
        cfg = self.cfg
        u, i = np.asarray(user_rows).ravel(), np.asarray(item_rows).ravel()
        dur = self.builder.item_duration_s(i).astype(np.float64)
        h = self.net(torch.as_tensor(self.builder.matrix(u, i, cfg.groups)))
        z, ml, mu, sd = (t.double().numpy() for t in self.net.mixture(h))
        pi = np.exp(ml - ml.max(1, keepdims=True))
        pi /= pi.sum(1, keepdims=True)
        k = (rng.random(len(u))[:, None] > np.cumsum(pi, 1)).sum(1).clip(max=pi.shape[1] - 1)
        rows = np.arange(len(u))
        y = mu[rows, k] + sd[rows, k] * rng.standard_normal(len(u))
        zero = rng.random(len(u)) < 1 / (1 + np.exp(-z))
        ratio = np.where(zero, 0.0, np.clip(np.exp(y), cfg.min_ratio, cfg.max_ratio))
        lv = long_view_rule(ratio, dur)
        g = watch_inputs(torch.as_tensor(ratio, dtype=torch.float32), torch.as_tensor(lv, dtype=torch.float32),
                         cfg.min_ratio)
        p = torch.sigmoid(self.net.behaviour_logits(h, g[:, None]))[:, 0].double().numpy()  # (B, nb)
        hit = rng.random(p.shape) < p
        return {"watch_ratio": ratio.astype(np.float32), "play_s": (ratio * dur).astype(np.float32),
                "long_view": lv.astype(np.int8), "finish": (ratio >= 1).astype(np.int8),
                **{b: hit[:, j].astype(np.int8) for j, b in enumerate(BEHAVIOURS)}}

    # --- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, rows: Interactions, seed: int = 0) -> dict:
        """AUC and calibration of every head, watch-ratio NLL / PIT / quantiles on held-out rows."""
        t0 = time.perf_counter()
        dur = self.builder.item_duration_s(rows.item)
        out = self.predict_features(x, dur)
        known = rows.ratio_known
        rep = {"long_view": binary_report(rows.long_view, out.p_long_view),
               "long_view_from_watch": binary_report(rows.long_view, out.p_long_view_watch),
               "finish_from_watch": binary_report(rows.finish[known], out.p_finish[known]),
               **{b: binary_report(getattr(rows, b), out.behaviours[b]) for b in BEHAVIOURS}}
        ratio = rows.watch_ratio[known].astype(np.float64)
        cfg = self.cfg
        p0, pi, mu, sd = out.p_zero[known], out.mix_weight[known], out.mix_mu[known], out.mix_sigma[known]
        d = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in
             (("p0", p0), ("pi", pi), ("mu", mu), ("sd", sd), ("ratio", ratio))}
        nll = watch_nll(torch.logit(d["p0"].clamp(1e-7, 1 - 1e-7)), torch.log(d["pi"].clamp(min=1e-30)), d["mu"],
                        d["sd"], d["ratio"], cfg.min_ratio, cfg.max_ratio)
        rng = np.random.default_rng(seed)
        y = np.log(np.clip(ratio, cfg.min_ratio, cfg.max_ratio))
        cdf = (pi * ndtr((y[:, None] - mu) / sd)).sum(1)
        pit = np.where(ratio <= 0, rng.random(len(ratio)) * p0, p0 + (1 - p0) * cdf)
        k = (rng.random(len(ratio))[:, None] > np.cumsum(pi, 1)).sum(1).clip(max=pi.shape[1] - 1)
        rr = np.arange(len(ratio))
        drawn = np.where(rng.random(len(ratio)) < p0, 0.0,
                         np.clip(np.exp(mu[rr, k] + sd[rr, k] * rng.standard_normal(len(ratio))),
                                 cfg.min_ratio, cfg.max_ratio))
        qs = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
        rep["watch_ratio"] = {
            "nll_nats": float(nll.mean()), "pit": pit_histogram(pit),
            "zero_rate": {"observed": float((ratio <= 0).mean()), "predicted": float(p0.mean())},
            "quantiles": {str(q): {"observed": float(np.quantile(ratio, q)), "sampled": float(np.quantile(drawn, q))}
                          for q in qs},
            "mean_capped": {"observed": float(np.minimum(ratio, cfg.max_ratio).mean()),
                            "predicted": float(out.expected_ratio[known].mean())},
            "expected_ratio_deciles": calibration_bins(np.minimum(ratio, cfg.max_ratio), out.expected_ratio[known]),
        }
        rep["rows"] = len(rows)
        rep["seconds"] = time.perf_counter() - t0
        return rep

    # --- persistence ----------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        meta = {"kind": self.kind, "config": asdict(self.cfg), "feature_names": self.feature_names,
                "normalisation": {"mean": self.net.norm.mean.tolist(), "std": self.net.norm.std.tolist()},
                "behaviours": list(BEHAVIOURS), "train_loss": self.train_loss}
        return {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, meta

    @classmethod
    def from_state(cls, builder: FeatureBuilder, tensors: dict[str, torch.Tensor], meta: dict) -> ResponseModel:
        from rlmtf.core.config_io import config_from_json

        m = cls(builder, config_from_json(ResponseConfig, dict(meta["config"])))
        if m.feature_names != list(meta["feature_names"]):
            raise ValueError("the feature tables do not produce the features this response model was fitted on")
        m.net.load_state_dict(tensors)
        m.net.norm.set(np.asarray(meta["normalisation"]["mean"]), np.asarray(meta["normalisation"]["std"]))
        m.train_loss = list(meta.get("train_loss", []))
        m.net.eval()
        return m
