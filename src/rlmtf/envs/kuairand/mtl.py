"""The platform's multi-task (MTL) model on KuaiRand-Pure: the 5 scores the fusion policy ranks with.

A shared-bottom network, trained on the first 10 days, predicts for any user-item pair the tasks of
``rlmtf.core.fusion.MTL_TASKS``:

=============  ==============================================================  ============
task           label                                                           held-out AUC vs
=============  ==============================================================  ============
valid          long_view                                                       long_view
watch_time     min(play seconds / watch_time_cap_s, 1), soft-label BCE, as     play time above the
               the simulator's watch_time score (expected seconds / cap)       training median
finish         play_time >= duration (rows of unknown duration left out)       finish
like           is_like                                                         is_like
share          is_forward                                                      is_forward
=============  ==============================================================  ============

It is deliberately a *different, imperfect* estimate of the response model (the users' truth): it
reads fewer features (static user and item features and the user / item training statistics, but no
user-tag affinity and no pre-period history, so it cannot personalise by interest), has a smaller
shared bottom, and has no watch-ratio distribution (each task is an independent sigmoid).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rlmtf.core.fusion import MTL_TASKS
from rlmtf.core.nets import mlp
from rlmtf.envs.kuairand.common import Standardise, masked_bce, normalisation, train_loop
from rlmtf.envs.kuairand.data import Interactions
from rlmtf.envs.kuairand.features import FeatureBuilder
from rlmtf.envs.kuairand.metrics import auc, binary_report

_PREDICT_CHUNK = 16384


@dataclass(frozen=True)
class MTLConfig:
    """Architecture and training of the platform's MTL model."""

    groups: tuple[str, ...] = ("user", "item", "user_stats", "item_stats")
    """Feature groups read: no ``cross`` (user-tag affinity) and no ``pre`` (pre-period history)."""
    hidden: tuple[int, ...] = (64, 32)
    """Widths of the shared bottom; each task is one linear head on top."""
    watch_time_cap_s: float = 120.0
    """watch_time = expected play seconds / cap, clipped to [0, 1] (the simulator's definition)."""
    epochs: int = 3
    """Passes over the training rows (fewer than the response model's)."""
    batch_size: int = 1024
    lr: float = 2e-3
    """Adam learning rate, cosine-annealed to 0 over the epochs."""
    weight_decay: float = 1e-4
    seed: int = 1
    """A seed different from the response model's, so the two never share an initialisation."""


def task_labels(rows: Interactions, cap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, 5) float32 targets in MTL_TASKS order and the (n, 5) mask of rows where each is known."""
    y = np.stack([rows.long_view, np.minimum(rows.play_s / cap_s, 1.0), np.nan_to_num(rows.finish), rows.like,
                  rows.forward], 1).astype(np.float32)
    mask = np.ones_like(y)
    mask[:, MTL_TASKS.index("finish")] = rows.ratio_known
    return y, mask


class MTLNet(nn.Module):
    def __init__(self, in_dim: int, cfg: MTLConfig):
        super().__init__()
        self.norm = Standardise(in_dim)
        self.bottom = nn.Sequential(mlp([in_dim, *cfg.hidden]), nn.ReLU())
        self.heads = nn.Linear(cfg.hidden[-1], len(MTL_TASKS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, 5) logits in MTL_TASKS order."""
        return self.heads(self.bottom(self.norm(x)))


class KuaiRandMTL:
    """The fitted MTL model with its feature builder: ``scores(user_rows, item_rows) -> (B, 5)`` in [0, 1]."""

    kind = "kuairand_mtl"
    tasks = MTL_TASKS

    def __init__(self, builder: FeatureBuilder, cfg: MTLConfig = MTLConfig()):
        self.builder, self.cfg = builder, cfg
        self.feature_names = builder.feature_names(cfg.groups)
        self.net = MTLNet(len(self.feature_names), cfg)
        self.train_loss: list[float] = []
        self.watch_time_median_s: float = float("nan")

    @classmethod
    def fit(cls, builder: FeatureBuilder, x: np.ndarray, rows: Interactions, cfg: MTLConfig = MTLConfig(),
            log: Callable[[str], None] = print) -> KuaiRandMTL:
        """Fit on a training matrix ``x`` (columns = ``builder.feature_names(cfg.groups)``) and its rows."""
        torch.manual_seed(cfg.seed)
        m = cls(builder, cfg)
        if x.shape[1] != len(m.feature_names):
            raise ValueError(f"x has {x.shape[1]} columns, the MTL model reads {len(m.feature_names)}")
        m.net.norm.set(*normalisation(x))
        m.watch_time_median_s = float(np.median(rows.play_s))
        xt = torch.as_tensor(x)
        y, mask = (torch.as_tensor(a) for a in task_labels(rows, cfg.watch_time_cap_s))
        net = m.net

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            return len(MTL_TASKS) * masked_bce(net(xt[idx]), y[idx], mask[idx])

        log(f"MTL model: {len(rows):,} rows x {x.shape[1]} features")
        net.train()
        m.train_loss = train_loop(net.parameters(), loss_fn, len(rows), epochs=cfg.epochs, batch_size=cfg.batch_size,
                                  lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, name="mtl", log=log)
        net.eval()
        return m

    @torch.no_grad()
    def scores_features(self, x: np.ndarray) -> np.ndarray:
        """(B, 5) float32 scores in [0, 1] for a feature matrix (columns = ``feature_names``)."""
        out = [torch.sigmoid(self.net(torch.as_tensor(x[s:s + _PREDICT_CHUNK]))).numpy()
               for s in range(0, len(x), _PREDICT_CHUNK)]
        return np.concatenate(out) if out else np.zeros((0, len(MTL_TASKS)), np.float32)

    def scores(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """(B, 5) MTL scores (order ``MTL_TASKS``) of user-item pairs at serving time."""
        return self.scores_features(self.builder.matrix(user_rows, item_rows, self.cfg.groups))

    def evaluate(self, x: np.ndarray, rows: Interactions) -> dict:
        """Per-task AUC / calibration on held-out rows. watch_time: AUC against play time above the training
        median, calibration (ECE, deciles, rate) against its soft label min(play s / cap, 1)."""
        s = self.scores_features(x)
        y, mask = task_labels(rows, self.cfg.watch_time_cap_s)
        rep = {}
        for k, task in enumerate(MTL_TASKS):
            ok = mask[:, k] > 0
            if task == "watch_time":  # calibration against the soft label it estimates, AUC against a binary one
                r = binary_report(y[ok, k], s[ok, k])
                above = rows.play_s[ok] > self.watch_time_median_s
                r |= {"auc": auc(above, s[ok, k]), "positives": int(above.sum()),
                      "auc_label": f"play time > {self.watch_time_median_s:.2f} s (training median)",
                      "rate": float(y[ok, k].mean())}
            else:
                r = binary_report(y[ok, k], s[ok, k])
            rep[task] = r
        rep["rows"] = len(rows)
        return rep

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        meta = {"kind": self.kind, "tasks": list(MTL_TASKS), "config": asdict(self.cfg),
                "feature_names": self.feature_names, "watch_time_median_s": self.watch_time_median_s,
                "normalisation": {"mean": self.net.norm.mean.tolist(), "std": self.net.norm.std.tolist()},
                "train_loss": self.train_loss}
        return {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, meta

    @classmethod
    def from_state(cls, builder: FeatureBuilder, tensors: dict[str, torch.Tensor], meta: dict) -> KuaiRandMTL:
        from rlmtf.core.config_io import config_from_json

        if list(meta.get("tasks", [])) != list(MTL_TASKS):
            raise ValueError(f"MTL tasks {meta.get('tasks')} differ from rlmtf.core.fusion.MTL_TASKS {list(MTL_TASKS)}")
        m = cls(builder, config_from_json(MTLConfig, dict(meta["config"])))
        if m.feature_names != list(meta["feature_names"]):
            raise ValueError("the feature tables do not produce the features this MTL model was fitted on")
        m.net.load_state_dict(tensors)
        m.net.norm.set(np.asarray(meta["normalisation"]["mean"]), np.asarray(meta["normalisation"]["std"]))
        m.watch_time_median_s = float(meta["watch_time_median_s"])
        m.train_loss = list(meta.get("train_loss", []))
        m.net.eval()
        return m
