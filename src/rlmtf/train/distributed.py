"""Data-parallel training under ``torchrun``: the process group and the collectives the training loop uses.

``torchrun --nproc_per_node N -m rlmtf train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables set; :func:`init_distributed` joins them into one process
group (NCCL on GPUs, gloo on CPUs) and every algorithm's trained modules are wrapped in
:class:`torch.nn.parallel.DistributedDataParallel` (``Algorithm.distribute``). A global batch of
``batch_size`` requests is split into ``world`` equal parts, one per rank (the samplers of
:mod:`rlmtf.data.samplers` and :mod:`rlmtf.data.stream` take the rank and the world size); DDP averages
the gradients, so every rank takes the step that one process would take on the whole batch. Multi-node
runs use torchrun's own flags (``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``): nothing here is
specific to one node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DistInfo", "all_reduce_mean", "all_reduce_sum", "barrier", "init_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group (one process: rank 0 of a world of 1)."""

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
