"""The training loop shared by the RL algorithms: data, steps, metrics, evaluation, checkpoints.

A run directory holds ``config.json`` (the resolved configuration, seed, data and commit),
``metrics.jsonl`` (one JSON object per logged step, keys like ``losses/critic``), ``checkpoint/``
(``state.safetensors`` with every network and optimizer tensor + ``state.json`` with the step,
the sampler's RNG state and the optimizers' scalars) and ``policy/`` (the actor as a loadable
policy). ``resume=True`` continues from the checkpoint and gives the same weights as an
uninterrupted run with the same seed: batches come from one seeded numpy generator whose state is
checkpointed, and nothing else is random after initialisation.
"""

from __future__ import annotations

import dataclasses
import json
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
from rlmtf.data.io import LoggedData, read_logs
from rlmtf.data.transitions import build_transitions
from rlmtf.eval.offline import evaluate_gauc
from rlmtf.fusion import ActionSpace

if TYPE_CHECKING:
    from rlmtf.sim.simulator import Simulator

__all__ = ["ALGORITHMS", "TrainConfig", "resolve_device", "train"]

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


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    return device


def _save_checkpoint(run: Path, algo: Algorithm, rng: np.random.Generator) -> None:
    ck = run / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    tensors, meta = algo.state_tensors()
    meta["rng"] = rng.bit_generator.state
    tmp = ck / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(ck / "state.safetensors")
    tmpj = ck / "state.json.tmp"
    tmpj.write_text(json.dumps(meta, default=int))
    tmpj.replace(ck / "state.json")


def _load_checkpoint(run: Path, algo: Algorithm, rng: np.random.Generator) -> None:
    ck = run / "checkpoint"
    if not (ck / "state.safetensors").is_file() or not (ck / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint to resume in {ck}")
    try:
        tensors = load_file(str(ck / "state.safetensors"), device=str(algo.device))
        meta = json.loads((ck / "state.json").read_text())
    except Exception as e:
        raise ValueError(f"{ck}: unreadable checkpoint ({e})") from e
    algo.load_state_tensors(tensors, meta)
    rng.bit_generator.state = meta["rng"]


def train(algo_name: str, data: str | Path | LoggedData, out: str | Path, *, cfg: TrainConfig = TrainConfig(),
          algo_cfg: Any = None, resume: bool = False, space: ActionSpace = ActionSpace(),
          warm_start_from: Algorithm | None = None, sim: Simulator | None = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> Algorithm:
    """Train ``algo_name`` on logged data; write the run directory; return the trained algorithm.

    ``algo_cfg`` is the algorithm's own config (default: its defaults). Online algorithms (ES) also
    need ``sim``, the simulator they evaluate candidates in; for them a step is one generation and the
    logged data only provides the input standardisation and the validation set.
    """
    cls = algorithm_class(algo_name)
    online = bool(getattr(cls, "online", False))
    if online and sim is None:
        raise ValueError(f"{algo_name} is an online method: it needs the simulator (sim=...)")
    if cfg.steps < 0:
        raise ValueError(f"steps must be >= 0, got {cfg.steps}")
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    logs = data if isinstance(data, LoggedData) else read_logs(data)
    trans = build_transitions(logs)
    val_t, train_t = trans.split(cfg.val_fraction, seed=cfg.seed)
    if len(train_t) == 0:
        raise ValueError("no training requests left after the validation split")
    val_logs = logs.take(val_t.row_index.reshape(-1)) if len(val_t) else None
    device = resolve_device(cfg.device)
    algo = cls(logs.meta.feature_spec, algo_cfg, device=device, seed=cfg.seed)
    algo_cfg = algo.cfg
    if online:
        algo.attach(sim)
    rng = np.random.default_rng(cfg.seed)
    metrics_path = run / "metrics.jsonl"
    if resume:
        _load_checkpoint(run, algo, rng)
    elif warm_start_from is not None:
        # PTM: continue from the previous round's networks, optimizers and input standardisation. The
        # standardisation must not be refitted: the new data's mu_bp is the previous actor's output *with
        # the old statistics*, and new statistics would make the warm-started actor a different policy.
        tensors, meta = warm_start_from.state_tensors()
        algo.load_state_tensors({k: v.to(algo.device) for k, v in tensors.items()}, meta)
        algo.step = 0
    else:
        algo.set_normalisation(train_t)
        algo.warm_start(train_t, rng)
    if not resume:
        metrics_path.write_text("")
        (run / "config.json").write_text(json.dumps({
            "algo": algo_name, "algo_config": dataclasses.asdict(algo_cfg), "train_config": dataclasses.asdict(cfg),
            "device": device, "data": str(data) if not isinstance(data, LoggedData) else "<in memory>",
            "data_info": logs.meta.info, "train_requests": len(train_t), "val_requests": len(val_t),
            "warm_start": warm_start_from is not None, "commit": _commit()}, indent=2, default=str))
    acc: dict[str, float] = {}
    n_acc = 0
    t_last = time.perf_counter()
    with metrics_path.open("a") as mf:
        while algo.step < cfg.steps:
            m = algo.update(None if online else train_t.sample(algo_cfg.batch_size, rng))
            for k, v in m.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            step = algo.step
            record: dict[str, float] = {}
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                record = {k: v / n_acc for k, v in acc.items()}
                record["charts/steps_per_s"] = n_acc / max(now - t_last, 1e-9)
                acc, n_acc, t_last = {}, 0, now
            if val_logs is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                record["eval/val_weighted_gauc"] = evaluate_gauc(algo.policy(), val_logs, space).gauc
            if record:
                record["step"] = step
                mf.write(json.dumps(record) + "\n")
                mf.flush()
            if on_step:
                on_step(step, {**m, **record})
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save_checkpoint(run, algo, rng)
    if cfg.steps == 0:
        _save_checkpoint(run, algo, rng)
    algo.save_policy(run / "policy", extra={"name": f"{algo_name}"})
    return algo


def _commit() -> str | None:
    from rlmtf.sim.collect import git_commit

    return git_commit()
