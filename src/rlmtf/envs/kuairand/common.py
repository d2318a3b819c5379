"""Plumbing shared by the response and MTL models: input normalisation, mini-batches, masked BCE."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlmtf.core.nets import STD_FLOOR, standardise


class Standardise(nn.Module):
    """(x - mean) / std clipped to +-5; mean and std live in the model's JSON, not in its weights."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim), persistent=False)
        self.register_buffer("std", torch.ones(dim), persistent=False)

    def set(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(np.asarray(mean, np.float32)))
        self.std.copy_(torch.as_tensor(np.maximum(np.asarray(std, np.float32), STD_FLOOR)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return standardise(x, self.mean, self.std)


def normalisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation (float32, std floored) of a training matrix."""
    mean = x.mean(0, dtype=np.float64)
    std = np.sqrt(np.maximum((x.astype(np.float64) ** 2).mean(0) - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32)


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    for s in range(0, n, batch_size):
        yield perm[s:s + batch_size]


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the rows where ``mask`` (soft targets allowed)."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def train_loop(params, loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int, *, epochs: int, batch_size: int,
               lr: float, weight_decay: float, seed: int, name: str, log: Callable[[str], None]) -> list[float]:
    """Adam over shuffled mini-batches of row indices; returns the mean loss of each epoch."""
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    history = []
    for ep in range(epochs):
        t0, total, count = time.perf_counter(), 0.0, 0
        for idx in batches(n, batch_size, gen):
            loss = loss_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        sched.step()
        history.append(total / max(count, 1))
        log(f"  {name} epoch {ep + 1}/{epochs}: loss {history[-1]:.4f} ({time.perf_counter() - t0:.1f}s)")
    return history
