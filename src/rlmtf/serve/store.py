"""The serving log: every served request, every shown item and every feedback event, in SQLite.

Durability: the HTTP layer answers a request only after the commit holding its record has
returned. What a commit guarantees is the ``durability`` setting (``rlmtf serve --durability``):

- ``fsync`` (the default): WAL with ``synchronous=FULL``. A commit returns after the WAL is
  fsync'ed: an acknowledged record survives a killed process, an OS crash and a power loss. Its
  cost is the disk's fsync latency (0.2 ms to 10 ms on the shared test machine, depending on what
  else writes to the disk), paid once per group of concurrent writes.
- ``process``: WAL with ``synchronous=NORMAL``. A commit returns after the WAL write (no fsync):
  an acknowledged record survives a killed or crashed server process (the OS has the pages), not an
  OS crash or a power loss, which may lose the last commits (the database stays consistent).

Group commit: writes go through one writer thread per process (:meth:`ServeStore.submit`). It takes
every write waiting in its queue, runs each in its own savepoint inside one ``BEGIN IMMEDIATE``
transaction, commits once (one fsync for the whole group) and only then resolves each write's
future. Under light load a group is one write; under heavy load the fsync is shared, and it never
runs on the event loop (``await`` :meth:`ServeStore.log_request_async`). A write that fails (a
constraint) rolls back to its savepoint and fails alone; a failed commit fails the whole group.
(Committing on the caller's thread instead, for ``process`` durability where a commit is cheap,
measured worse: p50 16-21 ms against 6.6 ms at 100 requests/s with two workers.)
Automatic WAL checkpoints are off on the writer connection (one would stall the commit that
triggers it); a checkpointer thread runs a passive checkpoint every ``checkpoint_interval_s``
(1 s) after writes, which copies committed pages into the database file without blocking the
writer. Several processes (uvicorn workers) share one database file; SQLite serialises their
transactions, and a writer waiting for the other's transaction retries ``BEGIN IMMEDIATE`` in steps
of 0.1 ms to 2 ms (for up to ``busy_timeout_s``, 10 s).

Reads (``request_exists``, ``item_shown``, ``shown_status``) use a second connection under a lock;
in WAL mode they never wait for the writer.

Vectors are stored as little-endian float32 BLOBs (``np.float32`` bytes; :func:`decode_vector`
reads them): encoding ~370 floats per request as JSON text cost more CPU than the rest of the write.
Logs written before this change hold JSON arrays (TEXT) in the same columns; ``decode_vector`` and
the export read both. Ids are the client's strings.

Tables:

- ``requests``: seq (insertion order), request_id, user_id, session_id, ts (unix seconds),
  policy_version, explored, k, user_profile, user_history, context
- ``shown``: request_id, position (0-based rank), item_id, item_features, mtl_scores, mu_bp,
  lower_b, upper_b, action, score
- ``feedback``: seq, event_id (unique: a repeated event is stored once), request_id, item_id,
  behaviours (JSON object), session_end, ts
Idempotent retries: a request may carry a client ``request_key`` (unique); a retry with a logged key is
answered from the log (:meth:`ServeStore.logged_response`), never logged twice. Logs from before the
key have the column added on open.

A corrupt store (not a database, truncated, a damaged page) is refused when a :class:`ServeStore` opens
it (``PRAGMA quick_check`` read-only first, so nothing is written to it): :class:`LogStoreError` names the
file. :mod:`rlmtf.serve.logcheck` reports its integrity and salvages what can be read.

- ``meta``: key/value (the feature spec the log was written with, ``feature_spec``: one per log, so a
  service with other features refuses to open it; :func:`read_feature_spec`)
"""

from __future__ import annotations

import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlmtf.core.schema import FeatureSpec
from rlmtf.serve.wire import spec_difference

DB_NAME = "serve.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    ts REAL NOT NULL,
    policy_version TEXT NOT NULL,
    explored INTEGER NOT NULL,
    k INTEGER NOT NULL,
    user_profile TEXT NOT NULL,
    user_history TEXT NOT NULL,
    context TEXT NOT NULL,
    request_key TEXT
);
CREATE INDEX IF NOT EXISTS requests_session ON requests (session_id, ts, seq);
CREATE TABLE IF NOT EXISTS shown (
    request_id TEXT NOT NULL REFERENCES requests (request_id),
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    item_features TEXT NOT NULL,
    mtl_scores TEXT NOT NULL,
    mu_bp TEXT NOT NULL,
    lower_b TEXT NOT NULL,
    upper_b TEXT NOT NULL,
    action TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (request_id, position),
    UNIQUE (request_id, item_id)
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    request_id TEXT NOT NULL REFERENCES requests (request_id),
    item_id TEXT NOT NULL,
    behaviours TEXT NOT NULL,
    session_end INTEGER NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id, item_id);
"""


class LogStoreError(ValueError):
    """A serving log that cannot be used: not a SQLite database, truncated or damaged; the message names it."""


def corrupt_message(path: Path, e: BaseException | str) -> str:
    return (f"{path}: the serving log is corrupt or not a serving log ({e}); it was left as it is: "
            f"`rlmtf logs check --log-dir {path.parent}` reports it, `rlmtf logs export --salvage` exports "
            "what can be read")


def quick_check(path: Path) -> None:
    """Read-only ``PRAGMA quick_check`` of an existing log; :class:`LogStoreError` when it is not sound."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise LogStoreError(corrupt_message(path, e)) from None
    if rows != ["ok"]:
        raise LogStoreError(corrupt_message(path, "; ".join(map(str, rows[:3]))))


def _migrate(c: sqlite3.Connection) -> None:
    """Add what later versions of the log hold (the ``request_key`` column) to an older log."""
    cols = {r[1] for r in c.execute("PRAGMA table_info(requests)")}
    if "request_key" not in cols:
        c.execute("ALTER TABLE requests ADD COLUMN request_key TEXT")
    c.execute("CREATE UNIQUE INDEX IF NOT EXISTS requests_key ON requests (request_key)")


@dataclass
class ShownItem:
    """One shown item of a request, as logged."""

    position: int
    item_id: str
    item_features: Sequence[float] | np.ndarray
    mtl_scores: Sequence[float] | np.ndarray
    mu_bp: Sequence[float] | np.ndarray
    lower_b: Sequence[float] | np.ndarray
    upper_b: Sequence[float] | np.ndarray
    action: Sequence[float] | np.ndarray
    score: float


def encode_vector(v: Sequence[float] | np.ndarray) -> bytes:
    """A vector as a little-endian float32 BLOB (:meth:`ServeStore.log_request_async` checks that
    what it logs is finite)."""
    return np.asarray(v, dtype="<f4").tobytes()


def decode_vector(v: bytes | str) -> list[float]:
    """A logged vector back as floats: a float32 BLOB, or a JSON array (logs before the BLOB format)."""
    if isinstance(v, str):
        return [float(x) for x in json.loads(v)]
    return np.frombuffer(v, dtype="<f4").tolist()


#: ``durability`` -> SQLite's ``synchronous`` in WAL mode (see the module docstring).
SYNCHRONOUS = {"fsync": "FULL", "process": "NORMAL"}


def read_feature_spec(conn: sqlite3.Connection) -> FeatureSpec | None:
    """The feature spec a log was written with (None for a log without one)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'feature_spec'").fetchone()
    return None if row is None else FeatureSpec.from_json(json.loads(row[0]))


def open_db(path: str | os.PathLike[str], synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class _Stop:
    """The writer queue's end marker."""


class ServeStore:
    """Durable, thread-safe log of served requests and feedback under ``log_dir/serve.sqlite3``
    (see the module docstring for durability and group commit)."""

    def __init__(self, log_dir: str | os.PathLike[str], feature_spec_json: dict | None = None, *,
                 durability: str = "fsync", max_group: int = 256, checkpoint_interval_s: float = 1.0,
                 busy_timeout_s: float = 10.0):
        if durability not in SYNCHRONOUS:
            raise ValueError(f"durability must be one of {', '.join(SYNCHRONOUS)}, got {durability!r}")
        self.durability = durability
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.log_dir / DB_NAME
        self.max_group, self.checkpoint_interval_s = max_group, checkpoint_interval_s
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()  # the read connection
        self._start_lock = threading.Lock()
        quick_check(self.path)  # a damaged log is refused before anything writes to it
        try:
            self._conn = open_db(self.path)
            self._wconn = open_db(self.path, SYNCHRONOUS[durability])
            self._wconn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run off the commit path
            self._wconn.executescript(_SCHEMA)
            self._tx(self._wconn, _migrate)
        except sqlite3.DatabaseError as e:
            raise LogStoreError(corrupt_message(self.path, e)) from None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._closed = threading.Event()
        self._closing = False
        self._dirty = False
        self.groups = 0  # committed groups (for tests and metrics)
        self.writes = 0  # committed writes
        if feature_spec_json is not None:
            wanted = FeatureSpec.from_json(feature_spec_json)

            def record(c: sqlite3.Connection) -> FeatureSpec | None:
                logged = read_feature_spec(c)
                if logged is not None and logged != wanted:
                    return logged
                c.execute("INSERT OR REPLACE INTO meta VALUES ('feature_spec', ?)", (json.dumps(feature_spec_json),))
                return None

            clash = self._tx(self._wconn, record)
            if clash is not None:  # one log, one spec: the export writes one dataset from it
                self._conn.close()
                self._wconn.close()
                raise ValueError(f"{self.path}: this log was written with other features than this service's "
                                 f"(service vs log: {spec_difference(wanted, clash)}); give the service another "
                                 "log directory")

    @staticmethod
    def _tx(c: sqlite3.Connection, fn):
        """Run ``fn(conn)`` in one committed transaction (only before the writer thread starts)."""
        c.execute("BEGIN IMMEDIATE")
        try:
            out = fn(c)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        return out

    # --- the writer ---------------------------------------------------------------------------------

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Future:
        """Queue ``fn(conn)`` for the next group commit; the future resolves to its result once the
        group is committed (on disk), or to its exception."""
        if self._closing:
            raise RuntimeError(f"{self.path}: the store is closed")
        if self._writer is None:
            with self._start_lock:
                if self._writer is None:
                    self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="rlmtf-serve-ckpt",
                                                          daemon=True)
                    self._checkpointer.start()
                    self._writer = threading.Thread(target=self._write_loop, name="rlmtf-serve-writer", daemon=True)
                    self._writer.start()
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut

    def _write_loop(self) -> None:
        c, q = self._wconn, self._queue
        while True:
            item = q.get()
            if isinstance(item, _Stop):
                return
            group, stop = [item], False
            while len(group) < self.max_group:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Stop):
                    stop = True
                    break
                group.append(nxt)
            self._commit_group(c, group)
            if stop:
                return

    def _begin(self, c: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting for another process's write transaction in short steps (0.1 ms
        doubling to 2 ms, up to ``busy_timeout_s``): SQLite's own busy handler sleeps 1, 2, 5, 10 ms...,
        which made two uvicorn workers sharing the log wait far longer than the other's commit took."""
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 1e-4
        c.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    c.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                        raise
                time.sleep(delay)
                delay = min(2 * delay, 2e-3)
        finally:
            c.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")

    def _commit_group(self, c: sqlite3.Connection, group: list[tuple[Callable, Future]]) -> None:
        done: list[tuple[Future, Any, BaseException | None]] = []
        try:
            self._begin(c)
            try:
                for fn, fut in group:
                    c.execute("SAVEPOINT w")
                    try:
                        out = fn(c)
                    except Exception as e:  # this write alone fails
                        c.execute("ROLLBACK TO w")
                        c.execute("RELEASE w")
                        done.append((fut, None, e))
                        continue
                    c.execute("RELEASE w")
                    done.append((fut, out, None))
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        except Exception as e:  # BEGIN or COMMIT failed: nothing of the group is on disk
            for _, fut in group:
                fut.set_exception(e)
            return
        self.groups += 1
        self.writes += len(group)
        self._dirty = True
        for fut, out, err in done:
            if err is None:
                fut.set_result(out)
            else:
                fut.set_exception(err)

    def _checkpoint_loop(self) -> None:
        """Passive WAL checkpoints every ``checkpoint_interval_s`` after writes: they copy committed pages
        into the database file without blocking the writer (the WAL restarts once it is all copied)."""
        conn = open_db(self.path, SYNCHRONOUS[self.durability])
        try:
            while not self._closed.wait(self.checkpoint_interval_s):
                if self._dirty:
                    self._dirty = False
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:
                        pass  # a busy database: the next round tries again
        finally:
            conn.close()

    # --- writes -------------------------------------------------------------------------------------

    def log_request_async(self, *, request_id: str, user_id: str, session_id: str, policy_version: str,
                          explored: bool, user_profile: Sequence[float] | np.ndarray,
                          user_history: Sequence[float] | np.ndarray, context: Sequence[float] | np.ndarray,
                          shown: Sequence[ShownItem], ts: float | None = None,
                          request_key: str | None = None) -> Future:
        """Queue a request and its shown items (one savepoint); the future resolves once committed (to an
        ``sqlite3.IntegrityError`` when ``request_key`` was already logged: then nothing is written)."""
        ts = time.time() if ts is None else ts
        # encode here, in the caller's thread: the writer thread then only runs SQLite (which releases the GIL)
        enc = encode_vector
        req_row = (request_id, user_id, session_id, ts, policy_version, int(explored), len(shown),
                   enc(user_profile), enc(user_history), enc(context))
        shown_rows = [(request_id, s.position, s.item_id, enc(s.item_features), enc(s.mtl_scores), enc(s.mu_bp),
                       enc(s.lower_b), enc(s.upper_b), enc(s.action), float(s.score)) for s in shown]
        every = np.frombuffer(b"".join([*req_row[7:], *(b for r in shown_rows for b in r[3:9])]), dtype="<f4")
        if not (np.isfinite(every).all() and all(math.isfinite(r[9]) for r in shown_rows)):
            raise ValueError(f"request {request_id}: a logged vector or score is not finite")

        def write(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO requests (request_id, user_id, session_id, ts, policy_version, explored, k, "
                      "user_profile, user_history, context, request_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (*req_row, request_key))
            c.executemany("INSERT INTO shown VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", shown_rows)

        return self.submit(write)

    def log_request(self, **kw) -> None:
        """:meth:`log_request_async` and wait: committed on return."""
        self.log_request_async(**kw).result()

    def log_feedback_async(self, *, event_id: str, request_id: str, item_id: str, behaviours: dict[str, float],
                           session_end: bool, ts: float | None = None) -> Future:
        """Queue a feedback event; the future resolves to False if ``event_id`` was already stored
        (then nothing changes), True otherwise, once committed."""
        ts = time.time() if ts is None else ts
        beh = json.dumps(behaviours, allow_nan=False)

        def write(c: sqlite3.Connection) -> bool:
            cur = c.execute("INSERT OR IGNORE INTO feedback (event_id, request_id, item_id, behaviours, session_end, "
                            "ts) VALUES (?, ?, ?, ?, ?, ?)", (event_id, request_id, item_id, beh, int(session_end), ts))
            return cur.rowcount == 1

        return self.submit(write)

    def log_feedback(self, **kw) -> bool:
        """:meth:`log_feedback_async` and wait: committed on return."""
        return self.log_feedback_async(**kw).result()

    # --- reads --------------------------------------------------------------------------------------

    def request_exists(self, request_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() \
                is not None

    def item_shown(self, request_id: str, item_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM shown WHERE request_id = ? AND item_id = ?",
                                      (request_id, item_id)).fetchone() is not None

    def shown_status(self, request_id: str, item_id: str) -> tuple[bool, bool]:
        """(request logged, item shown in it) in one read."""
        with self._lock:
            row = self._conn.execute("SELECT EXISTS (SELECT 1 FROM requests WHERE request_id = ?), "
                                     "EXISTS (SELECT 1 FROM shown WHERE request_id = ? AND item_id = ?)",
                                     (request_id, request_id, item_id)).fetchone()
        return bool(row[0]), bool(row[1])

    def logged_response(self, request_key: str) -> dict | None:
        """The answer given to the request logged with ``request_key`` (None if there is none): its id, policy
        version, exploration flag and shown items with their scores and actions, as ``/v1/rank`` sent them."""
        with self._lock:
            row = self._conn.execute("SELECT request_id, policy_version, explored FROM requests WHERE request_key = ?",
                                     (request_key,)).fetchone()
            if row is None:
                return None
            shown = self._conn.execute("SELECT item_id, score, action FROM shown WHERE request_id = ? "
                                       "ORDER BY position", (row[0],)).fetchall()
        return {"request_id": row[0], "policy_version": row[1], "explored": bool(row[2]),
                "items": [{"item_id": i, "score": sc, "action": decode_vector(a)} for i, sc, a in shown]}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {t: self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("requests", "shown", "feedback")}

    def close(self) -> None:
        """Commit what is queued, stop the threads, close the connections."""
        if self._closing:
            return
        self._closing = True
        if self._writer is not None:
            self._queue.put(_Stop())
            self._writer.join()
        while True:  # a write that raced with close: refuse it rather than leave its caller waiting
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _Stop):
                item[1].set_exception(RuntimeError(f"{self.path}: the store is closed"))
        self._closed.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._lock:
            self._conn.close()
        self._wconn.close()
