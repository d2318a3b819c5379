"""A training run's checkpoint: everything needed to continue it as if it had never stopped.

``run/checkpoint/`` holds ``state.safetensors`` (every network, target and optimizer tensor and the
algorithm's noise stream) and ``state.json`` (the step, the config, the optimizers' scalars, the batch
generator's state and, when streaming, the position in the data stream), both written by rank 0. Under
``torchrun`` every other rank R writes what is its own to ``rank-R.json``: its batch generator, its noise
stream and its position in its own data stream.

A process killed at any point of a save leaves a checkpoint that loads: the new files are written under
temporary names, the current pair is renamed to ``state.prev.*``, the new pair renamed into place, and only
then the previous pair removed. The tensors file records the step it belongs to in its safetensors
metadata (``rlmtf.step``), so :func:`load_checkpoint` takes the newest ``state*.json`` whose step a
``state*.safetensors`` matches: the new checkpoint when the save got through, else the previous one.
(A checkpoint from before the step tag: ``state.json`` with ``state.safetensors``.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rlmtf.algos.base import Algorithm
from rlmtf.train.distributed import DistInfo

if TYPE_CHECKING:
    from rlmtf.data.stream import StreamingSampler

__all__ = ["load_checkpoint", "save_checkpoint"]


_TENSORS, _META = "state.safetensors", "state.json"
_PREV_TENSORS, _PREV_META = "state.prev.safetensors", "state.prev.json"
_STEP_TAG = "rlmtf.step"


def _rank_file(run: Path, rank: int) -> Path:
    return run / "checkpoint" / f"rank-{rank}.json"


def _tensor_step(path: Path) -> str | None:
    """The step a tensors file records ("" for one without the tag), None when it cannot be read."""
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get(_STEP_TAG, "")
    except Exception:  # safetensors raises its own error types for truncated/corrupt files
        return None


def _readable_pair(ck: Path) -> tuple[Path, dict] | None:
    """The newest (tensors file, meta) pair that belongs together (see the module docstring)."""
    tensors = {name: _tensor_step(ck / name) for name in (_TENSORS, _PREV_TENSORS) if (ck / name).is_file()}
    best: tuple[int, Path, dict] | None = None
    for jname in (_META, _PREV_META):
        try:
            meta = json.loads((ck / jname).read_text())
            step = int(meta["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for tname, tstep in tensors.items():
            legacy = tstep == "" and jname == _META and tname == _TENSORS
            if (tstep == str(step) or legacy) and (best is None or step > best[0]):
                best = (step, ck / tname, meta)
    return None if best is None else (best[1], best[2])


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
    tmp, tmpj = ck / (_TENSORS + ".tmp"), ck / (_META + ".tmp")
    save_file(tensors, str(tmp), metadata={_STEP_TAG: str(int(meta["step"]))})
    tmpj.write_text(json.dumps(meta, default=int))
    for cur, prev in ((_TENSORS, _PREV_TENSORS), (_META, _PREV_META)):  # keep the current pair until the new one
        if (ck / cur).is_file():
            os.replace(ck / cur, ck / prev)
    os.replace(tmp, ck / _TENSORS)
    os.replace(tmpj, ck / _META)
    for prev in (_PREV_TENSORS, _PREV_META):
        (ck / prev).unlink(missing_ok=True)


def load_checkpoint(run: Path, algo: Algorithm, rng: np.random.Generator, info: DistInfo = DistInfo(),
                    stream: StreamingSampler | None = None) -> None:
    """Restore what :func:`save_checkpoint` wrote into ``algo``, ``rng`` and ``stream``; refuses a checkpoint
    written by another number of processes."""
    ck = run / "checkpoint"
    if not any((ck / n).is_file() for n in (_TENSORS, _PREV_TENSORS)) \
            or not any((ck / n).is_file() for n in (_META, _PREV_META)):
        raise FileNotFoundError(f"no checkpoint to resume in {ck}")
    pair = _readable_pair(ck)
    if pair is None:
        raise ValueError(f"{ck}: unreadable checkpoint (no state*.json with the state*.safetensors of its step)")
    try:
        tensors = load_file(str(pair[0]), device=str(algo.device))
    except Exception as e:
        raise ValueError(f"{ck}: unreadable checkpoint ({e})") from e
    meta = pair[1]
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
