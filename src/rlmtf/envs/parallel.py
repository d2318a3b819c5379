"""Run a simulation over several processes: users are independent, so each worker plays a block of
them and the results are concatenated. Counter-based randomness makes every user's history the same
as in a single process (except which sessions fill a capped ``max_sessions`` budget, which is split
across workers in proportion to their users).

Workers are forked (the world is shared copy-on-write, nothing is re-built) and use one torch thread
each. Parquet logs are written by each worker as its own shard of the dataset.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rlmtf.envs.engine import Environment, RunResult
from rlmtf.policy.base import Policy

_STATE: dict = {}  # what forked workers inherit: the simulator, the policy, the job


def split_users(user_ids: np.ndarray, workers: int) -> list[np.ndarray]:
    return [b for b in np.array_split(user_ids, workers) if b.size]


def split_budget(total: int | None, blocks: list[np.ndarray]) -> list[int | None]:
    if total is None:
        return [None] * len(blocks)
    sizes = np.array([b.size for b in blocks], dtype=np.float64)
    share = np.floor(total * sizes / sizes.sum()).astype(np.int64)
    share[: total - int(share.sum())] += 1
    return [int(s) for s in share]


def _worker(i: int) -> tuple[RunResult, tuple | None]:
    import torch

    torch.set_num_threads(1)
    st = _STATE
    sim: Environment = st["sim"]
    counter = st["counter"]

    def progress(sessions: int, rows: int) -> None:
        with counter.get_lock():
            counter[0] += sessions
            counter[1] += rows

    writer = None
    if st["out"] is not None:
        from rlmtf.data.writer import LogWriter

        writer = LogWriter(st["out"], st["meta"], shard=i)
    r = sim.run(st["policy"], seed=st["seed"], days=st["days"], users=st["blocks"][i], max_sessions=st["budgets"][i],
                start_day=st["start_day"], sink=writer.write if writer else None, progress=progress,
                log_true_scores=st["log_true"], log_candidates=st["log_candidates"])
    counts = None
    if writer is not None:
        writer.close()
        counts = writer.counts()
    return r, counts


def merge(results: list[RunResult]) -> RunResult:
    first = results[0]
    out = RunResult(user_ids=np.concatenate([r.user_ids for r in results]), days=first.days,
                    **{k: np.concatenate([getattr(r, k) for r in results]) for k in
                       ("valid", "watch_time", "sessions", "requests", "reward", "items", "clickbait_shown")})
    out.n_sessions = sum(r.n_sessions for r in results)
    out.n_rows = sum(r.n_rows for r in results)
    out.session_lengths = [x for r in results for x in r.session_lengths]
    return out


def run_parallel(sim: Environment, policy: Policy, *, workers: int, seed: int, days: int | None,
                 users: np.ndarray | None, max_sessions: int | None, start_day: int = 0,
                 out: Path | None = None, meta=None, log_true_scores: bool = True,
                 log_candidates: bool = False, progress: Callable[[int, int], None] | None = None
                 ) -> tuple[RunResult, list[tuple]]:
    """``Environment.run`` over ``workers`` forked processes; with ``out``, each writes a Parquet shard.
    Returns the merged result and each shard's (rows, files, days) counts."""
    if "fork" not in mp.get_all_start_methods():
        raise RuntimeError("parallel simulation needs the 'fork' start method (Linux, macOS)")
    user_ids = np.arange(sim.cfg.n_users, dtype=np.int64) if users is None else np.asarray(users, np.int64)
    blocks = split_users(user_ids, workers)
    ctx = mp.get_context("fork")
    counter = ctx.Array("q", 2)
    _STATE.update(sim=sim, policy=policy, seed=seed, days=days, blocks=blocks,
                  budgets=split_budget(max_sessions, blocks), start_day=start_day, out=out, meta=meta,
                  log_true=log_true_scores, log_candidates=log_candidates, counter=counter)
    stop = threading.Event()

    def poll() -> None:  # forward the workers' progress to the caller's callback
        seen = [0, 0]
        while True:
            done = stop.wait(0.2)
            with counter.get_lock():
                now = [counter[0], counter[1]]
            if progress is not None and now != seen:
                progress(now[0] - seen[0], now[1] - seen[1])
                seen = now
            if done:
                return

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with ctx.Pool(len(blocks)) as pool:
            outs = pool.map(_worker, range(len(blocks)))
    finally:
        stop.set()
        poller.join()
        _STATE.clear()
    time.sleep(0)  # let the poller's last callback land before returning
    return merge([r for r, _ in outs]), [c for _, c in outs if c is not None]
