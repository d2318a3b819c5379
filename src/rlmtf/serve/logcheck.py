"""The serving log's integrity (``rlmtf logs check``) and the reading of its tables for the export, whole
or salvaged (``rlmtf logs export --salvage``).

Everything here opens the database read-only (``mode=ro``): a damaged log is never written to, so what
can still be read stays readable. A salvaging read walks each table in rowid order in chunks; a chunk
SQLite cannot read is read again row by row, and every row that still fails is counted as lost
(``lost``: per table). What a damaged page took away entirely cannot be counted row by row; ``rlmtf
logs check`` reports SQLite's own findings (``PRAGMA integrity_check``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from rlmtf.serve.store import DB_NAME, LogStoreError, corrupt_message

__all__ = ["check_log", "read_log_tables"]

_CHUNK = 1000
#: the columns the export reads, per table, in its order
_COLUMNS = {
    "requests": "request_id, user_id, session_id, ts, k, user_profile, user_history, context",
    "shown": "request_id, position, item_id, item_features, mtl_scores, mu_bp, lower_b, upper_b, action",
    "feedback": "request_id, item_id, behaviours, session_end",
}


def _connect(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no serving log")
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)


def check_log(log_dir: str | os.PathLike[str], max_problems: int = 20) -> dict:
    """SQLite's ``integrity_check`` of the log under ``log_dir`` and its row counts (those it can read):
    ``{"path", "ok", "problems": [...], "requests", "shown", "feedback"}``; never writes."""
    db = Path(log_dir) / DB_NAME
    out: dict = {"path": str(db), "ok": False, "problems": []}
    try:
        conn = _connect(db)
    except sqlite3.DatabaseError as e:
        out["problems"].append(str(e))
        return out
    try:
        try:
            rows = [str(r[0]) for r in conn.execute(f"PRAGMA integrity_check({int(max_problems)})").fetchall()]
        except sqlite3.DatabaseError as e:
            rows = [str(e)]
        out["ok"] = rows == ["ok"]
        out["problems"] = [] if out["ok"] else rows
        for table in _COLUMNS:
            try:
                out[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            except sqlite3.DatabaseError:
                out[table] = None  # unreadable
    finally:
        conn.close()
    return out


def _salvage(conn: sqlite3.Connection, table: str) -> tuple[list[tuple], int]:
    """Every row of ``table`` SQLite can still read (rowid order) and the number of rowids that failed."""
    cols = _COLUMNS[table]
    rows: list[tuple] = []
    lost = 0
    try:
        top = conn.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = None
    last = 0
    while True:
        try:
            chunk = conn.execute(f"SELECT rowid, {cols} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                                 (last, _CHUNK)).fetchall()
        except sqlite3.DatabaseError:
            chunk = None
        if chunk is not None:
            if not chunk:
                break
            rows += [r[1:] for r in chunk]
            last = chunk[-1][0]
            continue
        # this stretch is damaged: row by row up to the next chunk boundary
        end = last + _CHUNK
        for rowid in range(last + 1, end + 1):
            try:
                r = conn.execute(f"SELECT {cols} FROM {table} WHERE rowid = ?", (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                lost += 1
                continue
            if r is not None:
                rows.append(r)
        last = end
        if top is not None and last >= top:
            break
        if top is None and last > 10_000_000:  # no idea where the table ends: stop somewhere finite
            break
    return rows, lost


def read_log_tables(db: Path, salvage: bool = False) -> tuple[sqlite3.Connection, dict[str, list[tuple]],
                                                                  dict[str, int]]:
    """The export's rows of every table (requests by log time, shown by request and position, feedback
    in insertion order) and the rows lost per table (all 0 without ``salvage``: a damaged log is then a
    :class:`LogStoreError`). Returns the open read-only connection too (the caller reads the meta table
    with it and closes it)."""
    try:
        conn = _connect(db)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise LogStoreError(corrupt_message(db, e)) from None
    lost = dict.fromkeys(_COLUMNS, 0)
    tables: dict[str, list[tuple]] = {}
    try:
        if not salvage:
            tables["requests"] = conn.execute(f"SELECT {_COLUMNS['requests']} FROM requests "
                                              "ORDER BY ts, seq").fetchall()
            tables["shown"] = conn.execute(f"SELECT {_COLUMNS['shown']} FROM shown "
                                           "ORDER BY request_id, position").fetchall()
            tables["feedback"] = conn.execute(f"SELECT {_COLUMNS['feedback']} FROM feedback ORDER BY seq").fetchall()
        else:
            for table in _COLUMNS:
                tables[table], lost[table] = _salvage(conn, table)
            # the order the whole read gives (feedback is in rowid = seq order already)
            tables["requests"].sort(key=lambda r: r[3])
            tables["shown"].sort(key=lambda r: (r[0], r[1]))
    except sqlite3.DatabaseError as e:
        conn.close()
        raise LogStoreError(corrupt_message(db, e)) from None
    return conn, tables, lost
