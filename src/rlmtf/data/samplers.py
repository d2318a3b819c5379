"""The in-memory batch sources the training loop draws from; all return a :class:`RequestBatch`.

Every source has ``sample(batch_size, rng)``, the signature of :meth:`Transitions.sample`, so training code
takes any of them:

- :class:`SliceSampler`: the transitions in memory (numpy); under ``torchrun`` every rank holds them all,
  draws the same global indices from the same seeded generator and takes its slice
  (:func:`rank_share`), so N processes reproduce one process's training on the same global batch (to
  float rounding: the gradient average is summed in another order);
- :class:`DeviceSampler`: the same draws, but the transitions live as float32 tensors on the training
  device (a GPU), so a batch is gathered there instead of in numpy and copied over;
- :class:`rlmtf.data.stream.StreamingSampler`: a dataset larger than memory, each rank streaming its own
  shards with bounded memory (resident shards may sit on the device as :class:`DeviceSampler`).
"""

from __future__ import annotations

import numpy as np
import torch

from rlmtf.data.transitions import RequestBatch, Transitions

__all__ = ["DeviceSampler", "SliceSampler", "rank_share"]


def rank_share(idx: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s equal part of the global batch indices ``idx`` (the remainder of an uneven split is
    dropped; the training loop refuses batch sizes that do not split evenly)."""
    per = len(idx) // world
    return idx[rank * per:(rank + 1) * per]


class SliceSampler:
    """This rank's share of a global batch drawn from in-memory transitions (see the module docstring).

    With one process it draws exactly what ``Transitions.sample`` draws."""

    def __init__(self, t: Transitions, rank: int = 0, world: int = 1):
        self.t, self.rank, self.world = t, rank, world

    def __len__(self) -> int:
        return len(self.t)

    def sample(self, batch_size: int, rng: np.random.Generator) -> RequestBatch:
        if len(self.t) == 0:
            raise ValueError("cannot sample from empty transitions")
        idx = rng.integers(0, len(self.t), size=batch_size)
        return self.t.batch(rank_share(idx, self.rank, self.world))


class DeviceSampler:
    """Like :class:`SliceSampler`, with the transitions resident on ``device`` as float32 tensors.

    The indices come from the same numpy generator, so the batches are the same numbers as the numpy
    path's (``RequestBatch.to_torch``); only where they are gathered differs."""

    def __init__(self, t: Transitions, device: str | torch.device, rank: int = 0, world: int = 1):
        self.rank, self.world, self.device, self.n = rank, world, torch.device(device), len(t)
        self.data = {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32).to(self.device)
                     for k, v in t.arrays().items()}
        self.next_index = torch.as_tensor(t.next_index, dtype=torch.long).to(self.device)

    def __len__(self) -> int:
        return self.n

    def sample(self, batch_size: int, rng: np.random.Generator) -> RequestBatch:
        if self.n == 0:
            raise ValueError("cannot sample from empty transitions")
        return self.gather(rank_share(rng.integers(0, self.n, size=batch_size), self.rank, self.world))

    def gather(self, idx_np: np.ndarray) -> RequestBatch:
        """The requests ``idx_np`` and their next requests, as tensors on the device."""
        idx = torch.from_numpy(np.asarray(idx_np, dtype=np.int64)).to(self.device, non_blocking=True)
        return RequestBatch.gather(self.data, self.next_index, idx)
