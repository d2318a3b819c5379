"""Data-parallel training under ``torchrun`` and the batch sources the training loop draws from.

``torchrun --nproc_per_node N -m rlmtf train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables set; :func:`init_distributed` joins them into one process
group (NCCL on GPUs, gloo on CPUs) and every algorithm's trained modules are wrapped in
:class:`torch.nn.parallel.DistributedDataParallel` (``Algorithm.distribute``). A global batch of
``batch_size`` requests is split into ``world`` equal parts, one per rank; DDP averages the gradients,
so every rank takes the step that one process would take on the whole batch. Multi-node runs use
torchrun's own flags (``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``): nothing here is specific to one node.

Batch sources (all with ``sample(batch_size, rng)``, the signature of ``Transitions.sample``):

- :class:`SliceSampler`: data in memory on every rank; all ranks draw the same global indices from
  the same seeded generator and each takes its slice, so N processes reproduce one process's training
  on the same global batch (to float rounding: the gradient average is summed in another order);
- :class:`DeviceSampler`: the same draws, but the data live as tensors on the training device (a GPU),
  so a batch is gathered there instead of in numpy and copied over;
- :class:`rlmtf.data.stream.StreamingSampler`: each rank streams its own shards with bounded memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from rlmtf.data.transitions import RequestBatch, Transitions

__all__ = ["DeviceSampler", "DistInfo", "SliceSampler", "TensorBatch", "all_reduce_mean", "all_reduce_sum",
           "barrier", "init_distributed"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistInfo, str]:
    """Join the process group torchrun describes in the environment (no-op outside torchrun).

    Returns the rank information and the device this rank trains on (``cuda:LOCAL_RANK`` for CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    import torch.distributed as dist

    info = DistInfo(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
        device = f"cuda:{info.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return info, device


def all_reduce_sum(x: np.ndarray, info: DistInfo) -> np.ndarray:
    """The element-wise sum of ``x`` over ranks (float64)."""
    if not info.active:
        return np.asarray(x, dtype=np.float64)
    import torch.distributed as dist

    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().numpy()


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Each value averaged over ranks (every rank must pass the same keys)."""
    if not info.active:
        return values
    keys = sorted(values)
    summed = all_reduce_sum(np.array([values[k] for k in keys], dtype=np.float64), info)
    return {k: float(v) / info.world for k, v in zip(keys, summed, strict=True)}


def barrier(info: DistInfo) -> None:
    if info.active:
        import torch.distributed as dist

        dist.barrier()


def _rank_slice(batch_size: int, info: DistInfo) -> slice:
    per = batch_size // info.world
    return slice(info.rank * per, (info.rank + 1) * per)


class SliceSampler:
    """This rank's share of a global batch drawn from in-memory transitions (see the module docstring).

    With one process it draws exactly what ``Transitions.sample`` draws."""

    def __init__(self, t: Transitions, info: DistInfo = DistInfo()):
        self.t, self.info = t, info

    def __len__(self) -> int:
        return len(self.t)

    def sample(self, batch_size: int, rng: np.random.Generator) -> RequestBatch:
        if len(self.t) == 0:
            raise ValueError("cannot sample from empty transitions")
        idx = rng.integers(0, len(self.t), size=batch_size)
        return self.t.batch(idx[_rank_slice(batch_size, self.info)])


class TensorBatch:
    """A batch already on the device: ``to_torch`` hands its tensors over without a copy."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["reward"])

    def to_torch(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.tensors.items()}


class DeviceSampler:
    """Like :class:`SliceSampler`, with the transitions resident on ``device`` as float32 tensors.

    The indices come from the same numpy generator, so the batches are the same numbers as the numpy
    path's (``RequestBatch.to_torch``); only where they are gathered differs."""

    _PER_REQUEST = ("user_state", "enhanced_state", "action", "mu_bp", "lower_b", "upper_b", "item_reward", "reward",
                    "done")

    def __init__(self, t: Transitions, device: str | torch.device, info: DistInfo = DistInfo()):
        self.info, self.device, self.n = info, torch.device(device), len(t)
        self.data = {k: torch.as_tensor(np.ascontiguousarray(getattr(t, k)), dtype=torch.float32).to(self.device)
                     for k in self._PER_REQUEST}
        self.next_index = torch.as_tensor(t.next_index, dtype=torch.long).to(self.device)

    def __len__(self) -> int:
        return self.n

    def sample(self, batch_size: int, rng: np.random.Generator) -> TensorBatch:
        if self.n == 0:
            raise ValueError("cannot sample from empty transitions")
        return TensorBatch(self.gather(rng.integers(0, self.n, size=batch_size)[_rank_slice(batch_size, self.info)]))

    def gather(self, idx_np: np.ndarray) -> dict[str, torch.Tensor]:
        """The requests ``idx_np`` and their next requests, as ``RequestBatch.to_torch`` keys them."""
        idx = torch.from_numpy(np.asarray(idx_np, dtype=np.int64)).to(self.device, non_blocking=True)
        nxt = self.next_index[idx]
        d = self.data
        out = {k: d[k][idx] for k in self._PER_REQUEST}
        out.update(next_user_state=d["user_state"][nxt], next_enhanced_state=d["enhanced_state"][nxt],
                   next_mu_bp=d["mu_bp"][nxt], next_lower_b=d["lower_b"][nxt], next_upper_b=d["upper_b"][nxt])
        return out
