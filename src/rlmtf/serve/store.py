"""The serving log: every served request, every shown item and every feedback event, in SQLite.

Durability: the database runs in WAL mode with ``synchronous=FULL``, and every write is one
transaction committed before the method returns, so whatever the HTTP layer acknowledges is on disk.
Thread safety: one connection guarded by a lock (SQLite serialises writers anyway).

Tables (JSON arrays for vectors; ids are the client's strings):

- ``requests``: seq (insertion order), request_id, user_id, session_id, ts (unix seconds),
  policy_version, explored, k, user_profile, user_history, context
- ``shown``: request_id, position (0-based rank), item_id, item_features, mtl_scores, mu_bp,
  lower_b, upper_b, action, score
- ``feedback``: seq, event_id (unique: a repeated event is stored once), request_id, item_id,
  behaviours (JSON object), session_end, ts
- ``meta``: key/value (the feature spec the log was written with)
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    context TEXT NOT NULL
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


@dataclass
class ShownItem:
    """One shown item of a request, as logged."""

    position: int
    item_id: str
    item_features: Sequence[float]
    mtl_scores: Sequence[float]
    mu_bp: Sequence[float]
    lower_b: Sequence[float]
    upper_b: Sequence[float]
    action: Sequence[float]
    score: float


def _js(v: Sequence[float]) -> str:
    return json.dumps([float(x) for x in v], allow_nan=False)


def open_db(path: str | os.PathLike[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class ServeStore:
    """Durable, thread-safe log of served requests and feedback under ``log_dir/serve.sqlite3``."""

    def __init__(self, log_dir: str | os.PathLike[str], feature_spec_json: dict | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.log_dir / DB_NAME
        self._lock = threading.Lock()
        self._conn = open_db(self.path)
        with self._lock:
            self._conn.executescript(_SCHEMA)
            if feature_spec_json is not None:
                self._tx(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES ('feature_spec', ?)",
                                             (json.dumps(feature_spec_json),)))

    def _tx(self, fn):
        """Run ``fn(conn)`` in one committed transaction (caller holds the lock)."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            out = fn(c)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        return out

    def log_request(self, *, request_id: str, user_id: str, session_id: str, policy_version: str, explored: bool,
                    user_profile: Sequence[float], user_history: Sequence[float], context: Sequence[float],
                    shown: Sequence[ShownItem], ts: float | None = None) -> None:
        """Write a request and its shown items in one transaction (committed on return)."""
        ts = time.time() if ts is None else ts

        def write(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO requests (request_id, user_id, session_id, ts, policy_version, explored, k, "
                      "user_profile, user_history, context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (request_id, user_id, session_id, ts, policy_version, int(explored), len(shown),
                       _js(user_profile), _js(user_history), _js(context)))
            c.executemany("INSERT INTO shown VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          [(request_id, s.position, s.item_id, _js(s.item_features), _js(s.mtl_scores),
                            _js(s.mu_bp), _js(s.lower_b), _js(s.upper_b), _js(s.action), float(s.score))
                           for s in shown])

        with self._lock:
            self._tx(write)

    def request_exists(self, request_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() \
                is not None

    def item_shown(self, request_id: str, item_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM shown WHERE request_id = ? AND item_id = ?",
                                      (request_id, item_id)).fetchone() is not None

    def log_feedback(self, *, event_id: str, request_id: str, item_id: str, behaviours: dict[str, float],
                     session_end: bool, ts: float | None = None) -> bool:
        """Store a feedback event; False if ``event_id`` was already stored (then nothing changes)."""
        ts = time.time() if ts is None else ts

        def write(c: sqlite3.Connection) -> bool:
            cur = c.execute("INSERT OR IGNORE INTO feedback (event_id, request_id, item_id, behaviours, session_end, "
                            "ts) VALUES (?, ?, ?, ?, ?, ?)",
                            (event_id, request_id, item_id, json.dumps(behaviours, allow_nan=False),
                             int(session_end), ts))
            return cur.rowcount == 1

        with self._lock:
            return self._tx(write)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {t: self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("requests", "shown", "feedback")}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
