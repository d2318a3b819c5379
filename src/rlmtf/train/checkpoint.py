"""A training run's checkpoint: everything needed to continue it as if it had never stopped.

``run/checkpoint/`` holds ``state.safetensors`` (every network, target and optimizer tensor and the
algorithm's noise stream) and ``state.json`` (the step, the config, the optimizers' scalars, the batch
generator's state and, when streaming, the position in the data stream), both written by rank 0. Under
``torchrun`` every other rank R writes what is its own to ``rank-R.json``: its batch generator, its noise
stream and its position in its own data stream. Files are written under a temporary name and renamed
into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlmtf.algos.base import Algorithm
from rlmtf.train.distributed import DistInfo

if TYPE_CHECKING:
    from rlmtf.data.stream import StreamingSampler

__all__ = ["load_checkpoint", "save_checkpoint"]


def _rank_file(run: Path, rank: int) -> Path:
    return run / "checkpoint" / f"rank-{rank}.json"


def save_checkpoint(run: Path, algo: Algorithm, rng: np.random.Generator, info: DistInfo = DistInfo(),
                    stream: StreamingSampler | None = None) -> None:
    """Rank 0 writes the networks and optimizers (identical on every rank); every rank writes what is its
    own: the batch generator, the algorithm's noise stream and its position in the data stream."""
    ck = run / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    own = {"rng": rng.bit_generator.state, "stream": stream.state() if stream is not None else None}
    if not info.is_main:
        own["gen"] = algo.gen.get_state().tolist()
        tmp = _rank_file(run, info.rank).with_suffix(".tmp")
        tmp.write_text(json.dumps(own, default=int))
        tmp.replace(_rank_file(run, info.rank))
        return
    tensors, meta = algo.state_tensors()
    meta.update(own)
    meta["world"] = info.world
    tmp = ck / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(ck / "state.safetensors")
    tmpj = ck / "state.json.tmp"
    tmpj.write_text(json.dumps(meta, default=int))
    tmpj.replace(ck / "state.json")


def load_checkpoint(run: Path, algo: Algorithm, rng: np.random.Generator, info: DistInfo = DistInfo(),
                    stream: StreamingSampler | None = None) -> None:
    """Restore what :func:`save_checkpoint` wrote into ``algo``, ``rng`` and ``stream``; refuses a checkpoint
    written by another number of processes."""
    ck = run / "checkpoint"
    if not (ck / "state.safetensors").is_file() or not (ck / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint to resume in {ck}")
    try:
        tensors = load_file(str(ck / "state.safetensors"), device=str(algo.device))
        meta = json.loads((ck / "state.json").read_text())
    except Exception as e:
        raise ValueError(f"{ck}: unreadable checkpoint ({e})") from e
    if int(meta.get("world", 1)) != info.world:
        raise ValueError(f"{ck}: written by {meta.get('world', 1)} process(es), resumed by {info.world}; resume with "
                         "the same number of processes (the batches of each rank are part of the state)")
    algo.load_state_tensors(tensors, meta)
    own = meta
    if not info.is_main:
        own = json.loads(_rank_file(run, info.rank).read_text())
        algo.gen.set_state(torch.tensor(own["gen"], dtype=torch.uint8))
    rng.bit_generator.state = own["rng"]
    if stream is not None:
        if own.get("stream") is None:
            raise ValueError(f"{ck}: the run was not streamed; resume it without --stream")
        stream.load_state(own["stream"])
