"""Training batches from logged data larger than memory: a bounded buffer of shards, loaded ahead.

A dataset is streamed in *units* that each hold whole sessions: the ``shard=K`` directories of a
dataset repartitioned by :func:`rlmtf.data.shard.shard_dataset` (``rlmtf data shard``), or else its
Parquet files one by one (every file our simulator writes holds whole sessions; logs whose sessions
span files must be repartitioned first, and a unit that cuts a session is refused with that advice).

:class:`StreamingSampler` keeps ``buffer_shards`` units in memory as request-level
:class:`~rlmtf.data.transitions.Transitions` and draws each batch uniformly from the union of them.
Once it has drawn ``reuse`` times as many requests as the oldest resident unit holds, it evicts that
unit and puts in the next one, which a background thread has already read and grouped while the
previous batches trained. Units are visited in a seeded random order per pass (epoch). So memory
holds at most ``buffer_shards + 1`` units at a time (plus, while one loads, that unit's raw columns),
whatever the size of the dataset; the peak is measured in BENCHMARKS.md.

Everything is a function of the seed, the rank and the number of requests drawn, not of timing: the
same seed gives the same batches whether loading keeps up or not, and :meth:`StreamingSampler.state`
/ :meth:`StreamingSampler.load_state` resume mid-pass exactly.

Validation: sessions whose :func:`~rlmtf.data.shard.session_hash` (mixed with the seed) falls in the
lowest ``val_fraction`` are never trained on; the held-out sessions of the first units loaded, up to
``val_max_requests`` requests, form the validation set.

Under ``torchrun`` (``world > 1``) rank r streams units r, r + world, ...: every rank reads its own
units, none reads all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlmtf.core.schema import DatasetMeta
from rlmtf.data.io import META_FILE, LogDataError, LoggedData, concat_logs, open_parquet, read_logs, read_meta
from rlmtf.data.samplers import DeviceSampler
from rlmtf.data.shard import is_sharded, list_shards, session_hash
from rlmtf.data.transitions import RequestBatch, Transitions, build_transitions

__all__ = ["StreamUnit", "StreamingSampler", "discover_units", "validation_mask"]

_VAL_SALT = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class StreamUnit:
    """One unit of whole sessions: a shard directory or a single Parquet file."""

    name: str
    path: Path
    rows: int


def discover_units(path: str | Path) -> tuple[DatasetMeta, list[StreamUnit]]:
    """The dataset's meta and its units, in a fixed order, with their row counts (from Parquet footers:
    nothing is loaded)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset directory")
    meta = read_meta(root)
    if is_sharded(root):
        units = []
        for d in list_shards(root):
            files = sorted(d.rglob("*.parquet"))
            units.append(StreamUnit(d.name, d, sum(open_parquet(f).metadata.num_rows for f in files)))
    else:
        files = sorted(root.rglob("*.parquet"), key=lambda p: p.relative_to(root).as_posix())
        units = [StreamUnit(f.relative_to(root).as_posix(), f, open_parquet(f).metadata.num_rows) for f in files]
    units = [u for u in units if u.rows > 0]
    if not units:
        raise LogDataError(f"{root}: the dataset holds no rows")
    return meta, units


def validation_mask(session_id: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the sessions held out for validation: a fixed ``fraction`` of session ids, chosen by hash."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    with np.errstate(over="ignore"):
        mixed = session_hash(np.asarray(session_id, dtype=np.int64) ^ np.int64(seed)) ^ _VAL_SALT
    return (mixed >> np.uint64(40)).astype(np.float64) < fraction * float(1 << 24)


@dataclass
class _Loaded:
    unit: int
    train: Transitions
    val: LoggedData | None
    on_device: DeviceSampler | None = None  # ``train`` on the training device, if asked for


class StreamingSampler:
    """Batches of requests from a dataset too large for memory (see the module docstring).

    ``sample(n, rng)`` has the signature of :meth:`Transitions.sample`, so training code takes either.
    """

    def __init__(self, path: str | Path, *, seed: int = 0, rank: int = 0, world: int = 1, buffer_shards: int = 4,
                 reuse: float = 1.0, val_fraction: float = 0.1, val_max_requests: int = 20_000,
                 validate: bool = True, device: str | None = None) -> None:
        if buffer_shards < 1:
            raise ValueError(f"buffer_shards must be >= 1, got {buffer_shards}")
        if reuse <= 0:
            raise ValueError(f"reuse must be > 0, got {reuse}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world={world})")
        self.path = Path(path)
        self.meta, all_units = discover_units(self.path)
        self.units = all_units[rank::world]
        if len(all_units) < world:  # checked on every rank: one rank failing alone would leave the others waiting
            raise ValueError(f"{self.path}: {len(all_units)} unit(s) of whole sessions for {world} ranks; every rank "
                             "needs at least one: repartition with `rlmtf data shard --shards N` (N >= ranks)")
        self.seed, self.rank, self.world = seed, rank, world
        self.buffer_shards = min(buffer_shards, len(self.units))
        self.reuse, self.val_fraction, self.val_max_requests = reuse, val_fraction, val_max_requests
        self.validate = validate
        self.device = device  # resident units also live there as tensors; batches are gathered there
        self.epoch, self.pos = 0, 0
        self.order = self._order(0)
        self.resident: list[_Loaded] = []
        self.drawn = 0  # requests drawn since the last rotation
        self.val_parts: list[LoggedData] = []
        self.val_requests = 0
        self.loads = 0  # units loaded so far (for tests and the run's log)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlmtf-prefetch")
        self._next: Future[_Loaded] | None = None
        self._lock = threading.Lock()
        for _ in range(self.buffer_shards):
            self.resident.append(self._load(self._advance()))
        self._prefetch()

    # --- the order of units ----------------------------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.seed, self.rank, epoch]).permutation(len(self.units)).tolist()

    def _advance(self) -> int:
        """The next unit of the pass (starting a new pass at the end of one)."""
        if self.pos == len(self.order):
            self.epoch += 1
            self.order, self.pos = self._order(self.epoch), 0
        u = self.order[self.pos]
        self.pos += 1
        return u

    def _peek(self) -> int:
        return self._order(self.epoch + 1)[0] if self.pos == len(self.order) else self.order[self.pos]

    # --- loading ---------------------------------------------------------------------------------------

    def _load(self, u: int, keep_val: bool = True) -> _Loaded:
        unit = self.units[u]
        logs = read_logs(unit.path, validate=self.validate)
        if logs.meta.feature_spec != self.meta.feature_spec or logs.meta.list_len != self.meta.list_len:
            raise LogDataError(f"{unit.path}: its feature spec or list length differs from {self.path / META_FILE}")
        try:
            t = build_transitions(logs)
        except LogDataError as e:
            raise LogDataError(f"{e} (streaming reads {unit.name} on its own, so it must hold whole sessions; "
                               "repartition the dataset with `rlmtf data shard`)") from e
        held = validation_mask(t.session_id, self.val_fraction, self.seed)
        val = None
        with self._lock:
            room = self.val_max_requests - self.val_requests
            if keep_val and room > 0 and held.any():
                idx = np.flatnonzero(held)[:room]
                if len(idx) == room:  # the cap fell inside a session: leave that session out whole
                    idx = idx[t.session_id[idx] != t.session_id[idx[-1]]]
                if len(idx):
                    val = logs.take(t.row_index[idx].reshape(-1))
                    self.val_parts.append(val)
                    self.val_requests += len(idx)
            self.loads += 1
        train = t.select(~held)
        if len(train) == 0:
            raise LogDataError(f"{unit.path}: no training sessions left after holding out validation sessions")
        # copied to the device in this (background) thread, not in the training step
        on_device = DeviceSampler(train, self.device) if self.device is not None else None
        return _Loaded(u, train, val, on_device)

    def _prefetch(self) -> None:
        if len(self.units) > self.buffer_shards:
            self._next = self._pool.submit(self._load, self._peek(), False)

    def _rotate(self) -> None:
        """Evict the oldest resident unit; put in the prefetched next one."""
        assert self._next is not None
        loaded = self._next.result()  # blocks only if loading fell behind training
        nxt = self._advance()
        assert loaded.unit == nxt
        self.resident = [*self.resident[1:], loaded]
        self.drawn = 0
        self._prefetch()

    # --- sampling --------------------------------------------------------------------------------------

    @property
    def resident_requests(self) -> int:
        return sum(len(r.train) for r in self.resident)

    def __len__(self) -> int:
        """Requests in memory now (the whole dataset's size is not known without reading it)."""
        return self.resident_requests

    def sample(self, batch_size: int, rng: np.random.Generator) -> RequestBatch:
        """``batch_size`` requests drawn uniformly with replacement from the resident units (with ``device``,
        the same numbers as tensors there)."""
        if self._next is not None and self.drawn >= self.reuse * len(self.resident[0].train):
            self._rotate()
        sizes = np.array([len(r.train) for r in self.resident])
        idx = rng.integers(0, int(sizes.sum()), size=batch_size)
        self.drawn += batch_size
        which = np.searchsorted(np.cumsum(sizes), idx, side="right")
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        present = [k for k in range(len(sizes)) if (which == k).any()]
        return RequestBatch.concat([self._gather(k, idx[which == k] - starts[k]) for k in present])

    def _gather(self, k: int, idx: np.ndarray) -> RequestBatch:
        """The requests ``idx`` of resident unit ``k`` (on the device when there is one)."""
        r = self.resident[k]
        return r.on_device.gather(idx) if r.on_device is not None else r.train.batch(idx)

    def train_states_moments(self, states_of: Callable[[Transitions], np.ndarray]
                             ) -> tuple[np.ndarray, np.ndarray, int]:
        """(sum, sum of squares, count) in float64 of ``states_of(transitions)`` over the resident units,
        for the input standardisation (the first units are a random subset of sessions)."""
        total = sq = None
        n = 0
        for r in self.resident:
            s = np.asarray(states_of(r.train), dtype=np.float64)
            total = s.sum(0) if total is None else total + s.sum(0)
            sq = (s * s).sum(0) if sq is None else sq + (s * s).sum(0)
            n += len(s)
        assert total is not None and sq is not None
        return total, sq, n

    def validation_logs(self) -> LoggedData | None:
        """The held-out sessions gathered so far (from the first units loaded)."""
        with self._lock:
            parts = list(self.val_parts)
        return concat_logs(parts) if parts else None

    # --- resuming --------------------------------------------------------------------------------------

    def state(self) -> dict:
        """JSON-able position in the stream."""
        return {"units": [u.name for u in self.units], "epoch": self.epoch, "pos": self.pos,
                "resident": [r.unit for r in self.resident], "drawn": self.drawn}

    def load_state(self, st: dict) -> None:
        """Continue where ``state()`` was taken: reload the resident units, prefetch the next."""
        if st["units"] != [u.name for u in self.units]:
            raise ValueError(f"{self.path}: the dataset's units differ from the checkpoint's; cannot resume the stream")
        if self._next is not None:
            self._next.cancel()
            self._next = None
        self.epoch, self.pos, self.drawn = int(st["epoch"]), int(st["pos"]), int(st["drawn"])
        self.order = self._order(self.epoch)
        self.resident = [self._load(int(u), keep_val=False) for u in st["resident"]]
        self._prefetch()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        rows = sum(u.rows for u in self.units)
        return (f"{len(self.units)} unit(s), {rows:,} rows on rank {self.rank}/{self.world}; "
                f"{self.buffer_shards} in memory at a time")
