"""The training loop shared by the RL algorithms: data, steps, metrics, evaluation, checkpoints.

A run directory holds ``config.json`` (the resolved configuration, seed, data and commit),
``metrics.jsonl`` (one JSON object per logged step, keys like ``losses/critic``), ``checkpoint/``
(``state.safetensors`` with every network and optimizer tensor + ``state.json`` with the step,
the sampler's RNG state and the optimizers' scalars) and ``policy/`` (the actor as a loadable
policy). ``resume=True`` continues from the checkpoint and gives the same weights as an
uninterrupted run with the same seed: batches come from one seeded numpy generator whose state is
checkpointed, and nothing else is random after initialisation.

Scale: ``stream=True`` trains from a dataset larger than memory (:mod:`rlmtf.data.stream`); under
``torchrun`` the processes train one model with DistributedDataParallel (:mod:`rlmtf.train.distributed`),
rank 0 writing the run directory and each rank its own ``checkpoint/rank-R.json``; on CUDA the data
sit on the GPU and batches are gathered there, and ``compile`` applies ``torch.compile`` (CUDA graphs
with ``reduce-overhead``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlmtf.algos import ALGORITHMS, algorithm_class
from rlmtf.algos.base import Algorithm
from rlmtf.core.fusion import ActionSpace
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.io import LoggedData, read_logs
from rlmtf.data.stream import StreamingSampler
from rlmtf.data.transitions import build_transitions
from rlmtf.eval.offline import evaluate_gauc
from rlmtf.train.distributed import (
    DeviceSampler,
    DistInfo,
    SliceSampler,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    init_distributed,
)

if TYPE_CHECKING:
    from rlmtf.envs.sim.simulator import Simulator

__all__ = ["ALGORITHMS", "COMPILE_MODES", "TrainConfig", "compile_networks", "resolve_device", "train"]

@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    """Gradient steps (the paper: 300,000)."""
    seed: int = 0
    device: str = "cpu"
    """cpu, cuda or auto (cuda when available)."""
    val_fraction: float = 0.1
    """Share of sessions held out for the periodic weighted GAUC."""
    eval_every: int = 500
    """Steps between validation GAUCs (0: only at the end)."""
    log_every: int = 50
    """Steps between metrics.jsonl lines (averages over the interval)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (and one at the end)."""
    stream: bool = False
    """Stream the data in units of whole sessions with bounded memory (``rlmtf.data.stream``) instead of
    loading it all; under torchrun each rank streams its own units."""
    buffer_shards: int = 4
    """Streaming: units held in memory at once (one more loads in the background)."""
    reuse: float = 1.0
    """Streaming: requests drawn per request of a unit before it is replaced (expected draws of each)."""
    val_max_requests: int = 20_000
    """Streaming: cap on the validation requests (from the first units loaded)."""
    data_on_device: bool | None = None
    """Keep the training data (streaming: the resident shards) as tensors on the device and gather batches
    there (None: on CUDA)."""
    compile: str = "none"
    """torch.compile the networks: none, default, reduce-overhead (CUDA graphs) or max-autotune."""


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    return device


def _rank_file(run: Path, rank: int) -> Path:
    return run / "checkpoint" / f"rank-{rank}.json"


def _save_checkpoint(run: Path, algo: Algorithm, rng: np.random.Generator, info: DistInfo = DistInfo(),
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


def _load_checkpoint(run: Path, algo: Algorithm, rng: np.random.Generator, info: DistInfo = DistInfo(),
                     stream: StreamingSampler | None = None) -> None:
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


def _stream_normalisation(algo: Algorithm, stream: StreamingSampler, info: DistInfo) -> None:
    """Standardisation statistics from the units first in memory (of every rank): a random subset of sessions."""
    total, sq, n = stream.train_states_moments(algo.train_states)
    summed = all_reduce_sum(np.concatenate([total, sq, [n]]), info)
    d = len(total)
    total, sq, n = summed[:d], summed[d:2 * d], float(summed[-1])
    mean = total / n
    var = np.maximum(sq - n * mean * mean, 0.0) / max(n - 1.0, 1.0)
    algo.set_normalisation_stats(torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(np.sqrt(var),
                                                                                          dtype=torch.float32))


def compile_networks(algo: Algorithm, mode: str) -> None:
    """``torch.compile`` every module of ``algo`` in place (state dicts keep their keys); mode ``none``: nothing."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "none":
        return
    for mod in algo.modules().values():
        mod.compile(mode=None if mode == "default" else mode)


def train(algo_name: str, data: str | Path | LoggedData, out: str | Path, *, cfg: TrainConfig = TrainConfig(),
          algo_cfg: Any = None, resume: bool = False, space: ActionSpace = ActionSpace(),
          warm_start_from: Algorithm | None = None, sim: Simulator | None = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> Algorithm:
    """Train ``algo_name`` on logged data; write the run directory; return the trained algorithm.

    ``algo_cfg`` is the algorithm's own config (default: its defaults). Online algorithms (ES) also
    need ``sim``, the simulator they evaluate candidates in; for them a step is one generation and the
    logged data only provides the input standardisation and the validation set.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; they train one model together
    (:mod:`rlmtf.train.distributed`) and rank 0 writes the run directory.
    """
    cls = algorithm_class(algo_name)
    online = bool(getattr(cls, "online", False))
    if online and sim is None:
        raise ValueError(f"{algo_name} is an online method: it needs the simulator (sim=...)")
    if cfg.steps < 0:
        raise ValueError(f"steps must be >= 0, got {cfg.steps}")
    if cfg.stream and isinstance(data, LoggedData):
        raise ValueError("stream=True reads a dataset directory, not data already in memory")
    info, device = init_distributed(resolve_device(cfg.device))
    try:
        return _train(cls, algo_name, online, info, device, data, Path(out), cfg, algo_cfg, resume, space,
                      warm_start_from, sim, on_step)
    finally:
        if info.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(cls: type[Algorithm], algo_name: str, online: bool, info: DistInfo, device: str,
           data: str | Path | LoggedData, run: Path, cfg: TrainConfig, algo_cfg: Any, resume: bool,
           space: ActionSpace, warm_start_from: Algorithm | None, sim: Simulator | None,
           on_step: Callable[[int, dict[str, float]], None] | None) -> Algorithm:
    if info.active and (online or warm_start_from is not None):
        raise ValueError(f"{algo_name if online else 'progressive training'} does not run under torchrun: "
                         "start it as one process")
    algo = cls(_feature_spec(data), algo_cfg, device=device, seed=cfg.seed)
    algo_cfg = algo.cfg
    bsz = getattr(algo_cfg, "batch_size", 0)
    if info.active and bsz % info.world:
        raise ValueError(f"batch_size {bsz} does not split evenly over {info.world} processes")
    if info.rank:  # an own noise stream per rank (rank 0 keeps the single-process one)
        algo.gen.manual_seed(cfg.seed + 1_000_003 * info.rank)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
    else:
        (run / "checkpoint").mkdir(parents=True, exist_ok=True)

    stream: StreamingSampler | None = None
    on_device = cfg.data_on_device if cfg.data_on_device is not None else algo.device.type == "cuda"
    if cfg.stream:
        stream = StreamingSampler(data, seed=cfg.seed, rank=info.rank, world=info.world,  # type: ignore[arg-type]
                                  buffer_shards=cfg.buffer_shards, reuse=cfg.reuse, val_fraction=cfg.val_fraction,
                                  val_max_requests=cfg.val_max_requests,
                                  device=str(algo.device) if on_device else None)
        source: Any = stream
        val_logs = stream.validation_logs() if info.is_main else None
        n_train, n_val, data_info = None, stream.val_requests, stream.meta.info
        rng = np.random.default_rng([cfg.seed, info.rank])
    else:
        logs = data if isinstance(data, LoggedData) else read_logs(data)
        trans = build_transitions(logs)
        val_t, train_t = trans.split(cfg.val_fraction, seed=cfg.seed)
        if len(train_t) == 0:
            raise ValueError("no training requests left after the validation split")
        val_logs = logs.take(val_t.row_index.reshape(-1)) if len(val_t) and info.is_main else None
        source = DeviceSampler(train_t, algo.device, info) if on_device else SliceSampler(train_t, info)
        n_train, n_val, data_info = len(train_t), len(val_t), logs.meta.info
        del logs, trans
        rng = np.random.default_rng(cfg.seed)  # the same on every rank: each takes its slice of one global batch
    if online:
        algo.attach(sim)  # type: ignore[attr-defined]
    metrics_path = run / "metrics.jsonl"
    try:
        if resume:
            _load_checkpoint(run, algo, rng, info, stream)
            compile_networks(algo, cfg.compile)
            if info.active:
                algo.distribute()
        elif warm_start_from is not None:
            # PTM: continue from the previous round's networks, optimizers and input standardisation. The
            # standardisation must not be refitted: the new data's mu_bp is the previous actor's output *with
            # the old statistics*, and new statistics would make the warm-started actor a different policy.
            tensors, meta = warm_start_from.state_tensors()
            algo.load_state_tensors({k: v.to(algo.device) for k, v in tensors.items()}, meta)
            algo.step = 0
            compile_networks(algo, cfg.compile)
        else:
            if stream is not None:
                _stream_normalisation(algo, stream, info)
            else:
                algo.set_normalisation(train_t)
            compile_networks(algo, cfg.compile)
            if info.active:
                algo.distribute()
            algo.warm_start(source, rng)
        if info.is_main and not resume:
            metrics_path.write_text("")
            (run / "config.json").write_text(json.dumps({
                "algo": algo_name, "algo_config": dataclasses.asdict(algo_cfg), "train_config": dataclasses.asdict(cfg),
                "device": device, "world_size": info.world,
                "data": str(data) if not isinstance(data, LoggedData) else "<in memory>",
                "data_info": data_info, "train_requests": n_train, "val_requests": n_val,
                "stream": stream.describe() if stream is not None else None,
                "warm_start": warm_start_from is not None, "commit": _commit()}, indent=2, default=str))
        _loop(algo, source, rng, run, metrics_path, cfg, info, val_logs, space, online, on_step, stream)
        if info.is_main:
            algo.save_policy(run / "policy", extra={"name": f"{algo_name}"})
        barrier(info)
    finally:
        if stream is not None:
            stream.close()
    return algo


def _loop(algo: Algorithm, source: Any, rng: np.random.Generator, run: Path, metrics_path: Path, cfg: TrainConfig,
          info: DistInfo, val_logs: LoggedData | None, space: ActionSpace, online: bool,
          on_step: Callable[[int, dict[str, float]], None] | None, stream: StreamingSampler | None) -> None:
    bsz = getattr(algo.cfg, "batch_size", 0)
    algo.lazy_metrics = algo.device.type == "cuda"
    acc: dict[str, Any] = {}
    n_acc = 0
    t_last = time.perf_counter()
    with open(metrics_path, "a") if info.is_main else open(os.devnull, "w") as mf:
        while algo.step < cfg.steps:
            m = algo.update(None if online else source.sample(bsz, rng))
            for k, v in m.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            step = algo.step
            record: dict[str, float] = {}
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                record = all_reduce_mean({k: float(v) / n_acc for k, v in acc.items()}, info)
                record["charts/steps_per_s"] = n_acc / max(now - t_last, 1e-9)
                acc, n_acc, t_last = {}, 0, now
            if val_logs is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                record["eval/val_weighted_gauc"] = evaluate_gauc(algo.policy(), val_logs, space).gauc
            if record and info.is_main:
                record["step"] = step
                mf.write(json.dumps(record) + "\n")
                mf.flush()
            if on_step and info.is_main:  # the step's own metrics only when logging (a float() waits for a GPU)
                on_step(step, {**{k: float(v) for k, v in m.items()}, **record} if record else {})
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save_checkpoint(run, algo, rng, info, stream)
    if cfg.steps == 0:
        _save_checkpoint(run, algo, rng, info, stream)


def _feature_spec(data: str | Path | LoggedData) -> FeatureSpec:
    if isinstance(data, LoggedData):
        return data.meta.feature_spec
    from rlmtf.data.io import read_meta

    root = Path(data)
    if root.is_dir():
        return read_meta(root).feature_spec
    return read_logs(root, columns=["session_id"]).meta.feature_spec


def _commit() -> str | None:
    from rlmtf.core.provenance import git_commit

    return git_commit()
