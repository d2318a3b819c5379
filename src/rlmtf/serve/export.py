"""Serving log (SQLite, :mod:`rlmtf.serve.store`) -> logged-data Parquet (``docs/design.md#logged-data``).

Join and conventions (written down here because the paper is silent):

- **Sessions.** A session is a (user_id, session_id) pair of the client's strings; its requests are
  ordered by log time (then insertion order) and numbered t = 0..T-1. A feedback event with
  ``session_end: true`` closes the session at that request: later requests with the same session_id
  start a new session (segment). ``done`` is true on the last request of each session (the one
  whose feedback said session_end, or the last request logged for that session).
- **Ids.** user_id, session_id (user_id + session_id + segment) and item_id strings map to int64 with a
  stable hash (the first 8 bytes of blake2b, shifted right by one so that they are non-negative).
- **Days.** ``day`` is the UTC day of a session's first request counted from the UTC day of the
  earliest request in the log (0-based); every row of a session gets its session's day.
- **List length.** The dataset has one ``list_len`` (default 5, the paper's l). Requests that showed a
  different number of items (a client asking for another k) cannot be stored in it; they are left
  out and counted in the returned ``skipped_requests`` (never silently).
- **Feedback.** Items without feedback get 0 in every feedback column. Several events for one
  shown item are merged: watch_time is summed, watch_ratio and the 0/1 behaviours take the max.
  ``watch_ratio`` is the reported value when the client sends one, else 0: the simulator's
  ``log_duration`` item feature is standardised with the catalogue's (unknown here) duration
  parameters, so it cannot give the duration back.
- **Reward.** ``reward = rlmtf.core.reward.item_reward`` of the merged behaviours with ``reward_weights``.
- **Values the service would refuse today.** The service checks every feedback value at the door
  (finite, watch_time in [0, its cap], 0/1 behaviours exactly 0 or 1). A log written before those
  checks may hold others: such an event (or an item whose merged watch_time leaves float32's range) is
  left out and counted in ``skipped_feedback``, so one bad client never stops the export.
- **A damaged log** is refused (:class:`rlmtf.serve.store.LogStoreError`); ``salvage=True`` exports what
  SQLite can still read and counts the rest in ``lost_rows`` (:mod:`rlmtf.serve.logcheck`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from rlmtf.core.reward import REWARD_BEHAVIOURS, RewardWeights, item_reward
from rlmtf.core.schema import FEEDBACK_COLUMNS, DatasetMeta, FeatureSpec
from rlmtf.data.io import BINARY_FEEDBACK
from rlmtf.data.writer import LogWriter
from rlmtf.serve.logcheck import read_log_tables
from rlmtf.serve.store import DB_NAME, LogStoreError, corrupt_message, decode_vector, read_feature_spec

__all__ = ["export_logs", "stable_id"]

_DAY_S = 86400.0
_F32_MAX = float(np.finfo(np.float32).max)


def _usable(name: str, v: object) -> bool:
    """Whether a logged feedback value is one the export can store (what the service accepts today is)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return False
    if name in BINARY_FEEDBACK:
        return v in (0, 1)
    return 0 <= v <= _F32_MAX


def stable_id(*parts: str) -> int:
    """A stable non-negative int64 from strings."""
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


def _spec_dims(spec: FeatureSpec) -> dict[str, int]:
    return {g: getattr(spec, g).dim for g in ("user_profile", "user_history", "context", "item_features")}


def export_logs(log_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                feature_spec: FeatureSpec | None = None, reward_weights: RewardWeights = RewardWeights(), *,
                list_len: int = 5, overwrite: bool = False, salvage: bool = False) -> dict:
    """Join the serving log under ``log_dir`` into a logged-data dataset at ``out_dir``.

    ``feature_spec``: the dataset's; default the one the log records (what the service was started
    with). A given one must have the logged one's sizes. ``salvage``: export what a damaged log still
    holds. Returns a summary: rows, requests, sessions, days, skipped_requests (shown length !=
    list_len), skipped_feedback (values it cannot use) and, salvaging, lost_rows per table.
    """
    db = Path(log_dir) / DB_NAME
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no serving log")
    conn, tables, lost = read_log_tables(db, salvage=salvage)
    try:
        try:
            logged_spec = read_feature_spec(conn)
        except Exception as e:  # a damaged meta table, or a spec that is not one
            raise LogStoreError(corrupt_message(db, f"its feature spec is unreadable: {e}")) from None
    finally:
        conn.close()
    if feature_spec is None:
        if logged_spec is None:
            raise ValueError(f"{db}: the log records no feature spec; pass the one it was written with")
        feature_spec = logged_spec
    elif logged_spec is not None:
        logged, wanted = _spec_dims(logged_spec), _spec_dims(feature_spec)
        if logged != wanted:
            raise ValueError(f"{db}: the log was written with feature dims {logged}, not {wanted}")
    requests, shown_rows, fb_rows = tables["requests"], tables["shown"], tables["feedback"]

    shown: dict[str, list[tuple]] = defaultdict(list)
    for r in shown_rows:
        shown[r[0]].append(r)
    feedback: dict[tuple[str, str], dict[str, float]] = {}
    ended: set[str] = set()
    skipped_feedback = 0
    for request_id, item_id, beh_json, session_end in fb_rows:
        try:
            beh = json.loads(beh_json)
        except (TypeError, ValueError):
            beh = None
        if not isinstance(beh, dict) or not all(_usable(k, v) for k, v in beh.items() if k in FEEDBACK_COLUMNS):
            skipped_feedback += 1
            continue
        agg = feedback.setdefault((request_id, item_id), {})
        for name, v in beh.items():
            if name not in FEEDBACK_COLUMNS:
                continue
            agg[name] = agg.get(name, 0.0) + float(v) if name == "watch_time" else max(agg.get(name, 0.0), float(v))
        if session_end:
            ended.add(request_id)
    for key, agg in list(feedback.items()):  # a sum beyond float32: the item's feedback cannot be stored
        if any(v > _F32_MAX for v in agg.values()):
            del feedback[key]
            skipped_feedback += 1

    # sessions: (user, session) in time order, split after a session_end
    by_session: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    skipped = 0
    for r in requests:
        if r[4] != list_len or len(shown[r[0]]) != list_len:
            skipped += 1
            continue
        by_session[(r[1], r[2])].append(r)
    day0 = int(min(r[3] for r in requests) // _DAY_S) if requests else 0

    cols: dict[str, list] = defaultdict(list)
    n_sessions = n_requests = 0
    for (user, session), reqs in by_session.items():
        segments: list[list[tuple]] = [[]]
        for r in reqs:
            segments[-1].append(r)
            if r[0] in ended:
                segments.append([])
        for seg_i, seg in enumerate(s for s in segments if s):
            n_sessions += 1
            sid = stable_id(user, session, str(seg_i))
            day = int(seg[0][3] // _DAY_S) - day0
            for t, (request_id, _, _, _, _, up_js, uh_js, ctx_js) in enumerate(seg):
                n_requests += 1
                up, uh, ctx = decode_vector(up_js), decode_vector(uh_js), decode_vector(ctx_js)
                done = t == len(seg) - 1
                for _, pos, item_id, feats, scores, mu, lo, hi, act in shown[request_id]:
                    cols["day"].append(day)
                    cols["session_id"].append(sid)
                    cols["user_id"].append(stable_id(user))
                    cols["t"].append(t)
                    cols["position"].append(pos)
                    cols["item_id"].append(stable_id(item_id))
                    cols["user_profile"].append(up)
                    cols["user_history"].append(uh)
                    cols["context"].append(ctx)
                    cols["item_features"].append(decode_vector(feats))
                    cols["mtl_scores"].append(decode_vector(scores))
                    for name, v in (("mu_bp", mu), ("lower_b", lo), ("upper_b", hi), ("action", act)):
                        cols[name].append(decode_vector(v))
                    beh = feedback.get((request_id, item_id), {})
                    for name in FEEDBACK_COLUMNS:
                        cols[name].append(beh.get(name, 0.0))
                    cols["done"].append(done)

    spec = feature_spec
    dims = {"user_profile": spec.user_profile.dim, "user_history": spec.user_history.dim,
            "context": spec.context.dim, "item_features": spec.item_features.dim,
            "mtl_scores": len(spec.mtl_tasks), "mu_bp": spec.action_dim, "lower_b": spec.action_dim,
            "upper_b": spec.action_dim, "action": spec.action_dim}
    n = len(cols["day"])
    arrays: dict[str, np.ndarray] = {}
    for name in ("day", "session_id", "user_id", "t", "position", "item_id"):
        arrays[name] = np.asarray(cols[name], dtype=np.int64).reshape(n)
    for name, d in dims.items():
        arrays[name] = np.asarray(cols[name], dtype=np.float32).reshape(n, d)
    for name in FEEDBACK_COLUMNS:
        a = np.asarray(cols[name], dtype=np.float64).reshape(n)
        arrays[name] = a.astype(np.int8) if name in BINARY_FEEDBACK else a.astype(np.float32)
    arrays["reward"] = item_reward({b: arrays[b] for b in REWARD_BEHAVIOURS}, reward_weights).astype(np.float32)
    arrays["done"] = np.asarray(cols["done"], dtype=bool).reshape(n)

    meta = DatasetMeta(feature_spec=spec, list_len=list_len,
                       info={"env": "serving", "source": str(db), "reward_weights": reward_weights.as_dict()})
    days = sorted(set(arrays["day"].tolist()))
    with LogWriter(out_dir, meta, overwrite=overwrite) as w:
        for day in days:
            m = arrays["day"] == day
            w.write(day, {k: v[m] for k, v in arrays.items() if k != "day"})
    out = {"rows": n, "requests": n_requests, "sessions": n_sessions, "days": days, "skipped_requests": skipped,
           "skipped_feedback": skipped_feedback, "out_dir": str(out_dir)}
    if salvage:
        out["lost_rows"] = lost
    return out
