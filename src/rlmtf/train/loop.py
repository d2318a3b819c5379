"""The training loop shared by the RL algorithms: data, steps, metrics, evaluation, checkpoints.

A run directory holds ``config.json`` (the resolved configuration, seed, data and commit),
``metrics.jsonl`` (one JSON object per logged step, keys like ``losses/critic``), ``checkpoint/``
(``state.safetensors`` with every network and optimizer tensor + ``state.json`` with the step,
the sampler's RNG state and the optimizers' scalars: :mod:`rlmtf.train.checkpoint`) and ``policy/``
(the actor as a loadable policy). ``resume=True`` continues from the checkpoint and gives the same
weights as an uninterrupted run with the same seed: batches come from one seeded numpy generator whose
state is checkpointed, and nothing else is random after initialisation. A resumed run must have the
configuration in ``config.json`` (refused by name otherwise) and records its new training config there.
Ctrl-C (one process) ends the current step, saves a checkpoint and raises :class:`TrainingInterrupted`.

Scale: ``stream=True`` trains from a dataset larger than memory (:mod:`rlmtf.data.stream`); under
``torchrun`` the processes train one model with DistributedDataParallel (:mod:`rlmtf.train.distributed`),
rank 0 writing the run directory and each rank its own ``checkpoint/rank-R.json``; on CUDA the data
sit on the GPU and batches are gathered there (:mod:`rlmtf.data.samplers`), and ``compile`` applies
``torch.compile`` (CUDA graphs with ``reduce-overhead``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlmtf.algos import ALGORITHMS, algorithm_class
from rlmtf.algos.base import Algorithm
from rlmtf.core.fusion import ActionSpace
from rlmtf.core.objective import EPISODES
from rlmtf.core.schema import FeatureSpec, logged_action_space
from rlmtf.data.io import LoggedData, read_logs, read_meta
from rlmtf.data.samplers import DeviceSampler, SliceSampler
from rlmtf.data.stream import StreamingSampler
from rlmtf.data.transitions import Transitions, build_transitions
from rlmtf.eval.offline import evaluate_gauc
from rlmtf.train.checkpoint import load_checkpoint, save_checkpoint
from rlmtf.train.distributed import DistInfo, all_reduce_mean, all_reduce_sum, barrier, init_distributed

if TYPE_CHECKING:
    from rlmtf.envs.engine import Environment

__all__ = ["ALGORITHMS", "COMPILE_MODES", "TrainConfig", "TrainingInterrupted", "compile_networks", "horizon_steps",
           "resolve_device", "train"]

#: Called on rank 0 after every step with the step and, at logged steps, its metrics (else ``{}``).
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the algorithm's own hyper-parameters are its config); saved in ``config.json``."""

    steps: int = 2000
    """Gradient steps (the paper: 300,000)."""
    seed: int = 0
    """Seeds the networks' initialisation, the algorithm's noise stream, the validation split and the batches."""
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
    episode: str = "session"
    """What an episode is (``rlmtf.core.objective``): "session" (the paper) or "day" (a session's last request
    continues into the user's next session that day; the algorithm's ``session_gamma`` discounts the step)."""
    return_bonus: float = 0.0
    """Day episodes: reward added to a session's last request when the user opens another session that day."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: the loop finished its step, saved a checkpoint that ``resume=True``
    continues from, and stopped."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint in {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    return device


@dataclass(frozen=True)
class RunContext:
    """One call of :func:`train`, its arguments resolved: what to train, on what, where and how."""

    algo_name: str
    algo_cls: type[Algorithm]
    data: str | Path | LoggedData
    dir: Path
    """The run directory."""
    cfg: TrainConfig
    algo_cfg: Any
    """The algorithm's config (None: its defaults)."""
    info: DistInfo
    device: str
    """The device this rank trains on."""
    resume: bool
    space: ActionSpace | None
    """The actions' space (None until the data is open: then the logs' own)."""
    warm_start_from: Algorithm | None
    sim: Environment | None
    on_step: StepCallback | None

    @property
    def online(self) -> bool:
        """The algorithm learns in the simulator (ES), not from the logged batches."""
        return bool(getattr(self.algo_cls, "online", False))


@dataclass
class TrainingData:
    """Where a run's batches come from, and what it holds out for validation."""

    source: SliceSampler | DeviceSampler | StreamingSampler
    rng: np.random.Generator
    """The batch generator (checkpointed)."""
    val_logs: LoggedData | None
    """The held-out sessions (rank 0 only)."""
    info: dict
    """The dataset's own description (``DatasetMeta.info``)."""
    n_train: int | None
    """Training requests (None when streaming: not known without reading everything)."""
    n_val: int
    stream: StreamingSampler | None = None
    train: Transitions | None = None
    """The training transitions, when they are in memory."""


def compile_networks(algo: Algorithm, mode: str) -> None:
    """``torch.compile`` every module of ``algo`` in place (state dicts keep their keys); mode ``none``: nothing."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "none":
        return
    for mod in algo.modules().values():
        mod.compile(mode=None if mode == "default" else mode)


def train(algo_name: str, data: str | Path | LoggedData, out: str | Path, *, cfg: TrainConfig = TrainConfig(),
          algo_cfg: Any = None, resume: bool = False, space: ActionSpace | None = None,
          warm_start_from: Algorithm | None = None, sim: Environment | None = None,
          on_step: StepCallback | None = None) -> Algorithm:
    """Train ``algo_name`` on logged data; write the run directory; return the trained algorithm.

    ``algo_cfg`` is the algorithm's own config (default: its defaults). Online algorithms (ES) also
    need ``sim``, the simulator they evaluate candidates in; for them a step is one generation and the
    logged data only provides the input standardisation and the validation set. ``space``: the action space
    of the logged actions (default: the one the logs record, else the default of their dimension); the saved
    policy carries it.

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
    if cfg.episode not in EPISODES:
        raise ValueError(f"episode must be one of {', '.join(EPISODES)}, got {cfg.episode!r}")
    if cfg.episode == "session" and cfg.return_bonus:
        raise ValueError("return_bonus belongs to day episodes (episode='day')")
    if cfg.episode == "day" and cfg.stream:
        raise ValueError("day episodes link the sessions of a user-day in memory; streamed shards cut user-days, "
                         "so train them without --stream")
    if cfg.episode == "day" and online:
        raise ValueError(f"{algo_name} is an online method with its own fitness: day episodes do not apply")
    info, device = init_distributed(resolve_device(cfg.device))
    ctx = RunContext(algo_name=algo_name, algo_cls=cls, data=data, dir=Path(out), cfg=cfg, algo_cfg=algo_cfg,
                     info=info, device=device, resume=resume, space=space, warm_start_from=warm_start_from, sim=sim,
                     on_step=on_step)
    algo = None
    try:
        algo = _train(ctx)
        return algo
    finally:
        if info.active:
            # release the process group while the interpreter is fully alive: Gloo's worker threads can abort
            # the process if their last references go at interpreter shutdown
            import gc

            import torch.distributed as dist

            if algo is not None:
                algo.undistribute()
            gc.collect()
            if dist.is_initialized():
                dist.destroy_process_group()


def _train(ctx: RunContext) -> Algorithm:
    """The run, once :func:`train` has checked its arguments and joined the process group."""
    info, cfg = ctx.info, ctx.cfg
    if info.active and (ctx.online or ctx.warm_start_from is not None):
        raise ValueError(f"{ctx.algo_name if ctx.online else 'progressive training'} does not run under torchrun: "
                         "start it as one process")
    algo = ctx.algo_cls(_feature_spec(ctx.data), ctx.algo_cfg, device=ctx.device, seed=cfg.seed)
    bsz = getattr(algo.cfg, "batch_size", 0)
    if info.active and bsz % info.world:
        raise ValueError(f"batch_size {bsz} does not split evenly over {info.world} processes")
    if info.rank:  # an own noise stream per rank (rank 0 keeps the single-process one)
        algo.gen.manual_seed(cfg.seed + 1_000_003 * info.rank)
    if info.is_main:
        ctx.dir.mkdir(parents=True, exist_ok=True)
    else:
        (ctx.dir / "checkpoint").mkdir(parents=True, exist_ok=True)

    data = _open_data(ctx, algo)
    ctx = dataclasses.replace(ctx, space=ctx.space or (ctx.sim.cfg.action_space if ctx.online  # type: ignore[union-attr]
                                                       else logged_action_space(data.info, algo.spec.action_dim)))
    if ctx.space.dim != algo.spec.action_dim:
        raise ValueError(f"the {ctx.space.parameterisation!r} action space has {ctx.space.dim} dimensions, the logged "
                         f"actions {algo.spec.action_dim}")
    algo.action_space = ctx.space
    if ctx.online:
        algo.attach(ctx.sim)  # type: ignore[attr-defined]
    try:
        with _interrupt_flag(not info.active) as interrupted:
            if ctx.resume:
                _check_resumed_config(ctx, algo)
            _initialise(ctx, algo, data)
            if info.is_main and not ctx.resume:
                (ctx.dir / "metrics.jsonl").write_text("")
            if info.is_main:
                _write_config(ctx, algo, data)
            _loop(ctx, algo, data, interrupted)
        if info.is_main:
            algo.save_policy(ctx.dir / "policy", extra={"name": f"{ctx.algo_name}"})
        barrier(info)
    finally:
        if data.stream is not None:
            data.stream.close()
    return algo


def _open_data(ctx: RunContext, algo: Algorithm) -> TrainingData:
    """The batch source (streamed, or in memory: on the device or in numpy), the batch generator and the
    validation sessions."""
    cfg, info = ctx.cfg, ctx.info
    on_device = cfg.data_on_device if cfg.data_on_device is not None else algo.device.type == "cuda"
    if cfg.stream:
        stream = StreamingSampler(ctx.data, seed=cfg.seed, rank=info.rank, world=info.world,  # type: ignore[arg-type]
                                  buffer_shards=cfg.buffer_shards, reuse=cfg.reuse, val_fraction=cfg.val_fraction,
                                  val_max_requests=cfg.val_max_requests,
                                  device=str(algo.device) if on_device else None)
        return TrainingData(source=stream, rng=np.random.default_rng([cfg.seed, info.rank]),
                            val_logs=stream.validation_logs() if info.is_main else None, info=stream.meta.info,
                            n_train=None, n_val=stream.val_requests, stream=stream)
    logs = ctx.data if isinstance(ctx.data, LoggedData) else read_logs(ctx.data)
    trans = build_transitions(logs)
    if cfg.episode == "day":
        trans = trans.day_episodes(cfg.return_bonus)
    val_t, train_t = trans.split(cfg.val_fraction, seed=cfg.seed)
    if len(train_t) == 0:
        raise ValueError("no training requests left after the validation split")
    source = (DeviceSampler(train_t, algo.device, rank=info.rank, world=info.world) if on_device
              else SliceSampler(train_t, rank=info.rank, world=info.world))
    return TrainingData(
        source=source,
        rng=np.random.default_rng(cfg.seed),  # the same on every rank: each takes its slice of one global batch
        val_logs=logs.take(val_t.row_index.reshape(-1)) if len(val_t) and info.is_main else None,
        info=logs.meta.info, n_train=len(train_t), n_val=len(val_t), train=train_t)


def _initialise(ctx: RunContext, algo: Algorithm, data: TrainingData) -> None:
    """The algorithm's state before the first step: resumed from the checkpoint, warm-started from the
    previous round's algorithm (PTM), or fresh (input standardisation, then the algorithm's own warm start);
    then compiled and, under torchrun, wrapped for data-parallel training."""
    cfg, info = ctx.cfg, ctx.info
    if ctx.resume:
        load_checkpoint(ctx.dir, algo, data.rng, info, data.stream)
        compile_networks(algo, cfg.compile)
        if info.active:
            algo.distribute()
    elif ctx.warm_start_from is not None:
        # PTM: continue from the previous round's networks, optimizers and input standardisation. The
        # standardisation must not be refitted: the new data's mu_bp is the previous actor's output *with
        # the old statistics*, and new statistics would make the warm-started actor a different policy.
        tensors, meta = ctx.warm_start_from.state_tensors()
        algo.load_state_tensors({k: v.to(algo.device) for k, v in tensors.items()}, meta)
        algo.step = 0
        compile_networks(algo, cfg.compile)
    else:
        if data.stream is not None:
            _stream_normalisation(algo, data.stream, info)
        else:
            assert data.train is not None
            algo.set_normalisation(data.train)
        compile_networks(algo, cfg.compile)
        if info.active:
            algo.distribute()
        algo.warm_start(data.source, data.rng)  # type: ignore[arg-type]


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


class _Flag:
    """Set by the first Ctrl-C while training runs (the second one interrupts at once)."""

    def __init__(self) -> None:
        self.set = False


@contextmanager
def _interrupt_flag(enabled: bool) -> Iterator[_Flag]:
    """While training runs, the first SIGINT only sets a flag, so that the loop ends its step and saves a
    checkpoint (a step cut in the middle could not be resumed exactly); the default handler comes back
    after it. Only in the main thread of a single process: under torchrun the ranks would stop at
    different steps."""
    flag = _Flag()
    if not enabled or threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield flag
        return

    def handler(signum, frame) -> None:
        flag.set = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


#: Fields of a run's saved configuration that a resumed run must share (the rest may change: steps, device,
#: evaluation and checkpoint intervals, compile mode).
RESUME_FIXED = ("seed", "val_fraction", "stream", "buffer_shards", "reuse", "val_max_requests", "episode",
                "return_bonus")


def _check_resumed_config(ctx: RunContext, algo: Algorithm) -> None:
    """A resumed run must be the run in its directory: the same algorithm and algorithm config (else the
    checkpoint's tensors do not fit) and the same data-defining training settings; refused by name."""
    path = ctx.dir / "config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    diffs = []
    if saved.get("algo") != ctx.algo_name:
        diffs.append(f"algo {ctx.algo_name} (the run: {saved.get('algo')})")
    mine = json.loads(json.dumps(dataclasses.asdict(algo.cfg), default=str))
    theirs = saved.get("algo_config", {})
    diffs += [f"{k} {mine[k]} (the run: {theirs.get(k)})" for k in mine if k in theirs and mine[k] != theirs[k]]
    mine_t, theirs_t = dataclasses.asdict(ctx.cfg), saved.get("train_config", {})
    diffs += [f"{k} {mine_t[k]} (the run: {theirs_t[k]})" for k in RESUME_FIXED
              if k in theirs_t and mine_t[k] != theirs_t[k]]
    if diffs:
        raise ValueError(f"resume: the run in {ctx.dir} was trained with another configuration ({path}): "
                         + "; ".join(diffs))


def _write_config(ctx: RunContext, algo: Algorithm, data: TrainingData) -> None:
    """``config.json``: the resolved configuration, the data, the world size and the commit; a resumed run
    updates it (its training config, e.g. the total steps) and appends to its ``resumed`` list."""
    path = ctx.dir / "config.json"
    doc = {
        "algo": ctx.algo_name, "algo_config": dataclasses.asdict(algo.cfg),
        "train_config": dataclasses.asdict(ctx.cfg), "device": ctx.device, "world_size": ctx.info.world,
        "data": str(ctx.data) if not isinstance(ctx.data, LoggedData) else "<in memory>",
        "data_info": data.info, "train_requests": data.n_train, "val_requests": data.n_val,
        "stream": data.stream.describe() if data.stream is not None else None,
        "warm_start": ctx.warm_start_from is not None, "commit": _commit()}
    if ctx.resume and path.is_file():
        old = json.loads(path.read_text())
        resumed = [*old.get("resumed", []), {"from_step": algo.step, "steps": ctx.cfg.steps, "device": ctx.device,
                                             "commit": doc["commit"]}]
        doc = {**old, "train_config": doc["train_config"], "device": ctx.device, "resumed": resumed}
    path.write_text(json.dumps(doc, indent=2, default=str))


def _loop(ctx: RunContext, algo: Algorithm, data: TrainingData, interrupted: _Flag) -> None:
    """Steps until ``cfg.steps``: metrics averaged over each logging interval into ``metrics.jsonl``, the
    validation weighted GAUC every ``eval_every`` steps, a checkpoint every ``checkpoint_every`` steps; after
    a Ctrl-C, a checkpoint at the end of the step and :class:`TrainingInterrupted`."""
    cfg, info = ctx.cfg, ctx.info
    bsz = getattr(algo.cfg, "batch_size", 0)
    algo.lazy_metrics = algo.device.type == "cuda"
    acc: dict[str, Any] = {}
    n_acc = 0
    t_last = time.perf_counter()
    with open(ctx.dir / "metrics.jsonl", "a") if info.is_main else open(os.devnull, "w") as mf:
        while algo.step < cfg.steps:
            if interrupted.set:
                save_checkpoint(ctx.dir, algo, data.rng, info, data.stream)
                raise TrainingInterrupted(algo.step, ctx.dir / "checkpoint")
            m = algo.update(None if ctx.online else data.source.sample(bsz, data.rng))
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
            if data.val_logs is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                record["eval/val_weighted_gauc"] = evaluate_gauc(algo.policy(), data.val_logs, ctx.space).gauc
            if record and info.is_main:
                record["step"] = step
                mf.write(json.dumps(record) + "\n")
                mf.flush()
            if ctx.on_step and info.is_main:  # the step's own metrics only when logging (a float() waits for a GPU)
                ctx.on_step(step, {**{k: float(v) for k, v in m.items()}, **record} if record else {})
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(ctx.dir, algo, data.rng, info, data.stream)
    if cfg.steps == 0:
        save_checkpoint(ctx.dir, algo, data.rng, info, data.stream)


def horizon_steps(data: LoggedData, episode: str, algo_cfg: Any) -> int:
    """The steps a critic trained from scratch on ``data`` needs for its episode (``episode``, the discount of
    ``algo_cfg``) to propagate (``rlmtf.core.objective.propagation_steps`` at the config's ``polyak_rate``;
    0 for a config without target networks, e.g. ES)."""
    from rlmtf.core.objective import propagation_steps

    tau = getattr(algo_cfg, "polyak_rate", None)
    if tau is None:
        return 0
    t = build_transitions(data)
    if episode == "day":
        t = t.day_episodes()
    lengths = np.unique(t.episode_id, return_counts=True)[1]
    return propagation_steps(lengths, tau, getattr(algo_cfg, "gamma", 1.0))


def _feature_spec(data: str | Path | LoggedData) -> FeatureSpec:
    if isinstance(data, LoggedData):
        return data.meta.feature_spec
    root = Path(data)
    if root.is_dir():
        return read_meta(root).feature_spec
    return read_logs(root, columns=["session_id"]).meta.feature_spec


def _commit() -> str | None:
    from rlmtf.core.provenance import git_commit

    return git_commit()
