"""Synthetic, valid logged data with values the tests control (shared by the data tests).

Rows come in (session, t, position) order. Marker values make the layout checkable by hand:
``user_profile = [session_id, t, 0.5]``, user_history values in [2, 3), context in [3, 4),
item_features in [4, 5), and ``reward = 10 * t + position`` (so a request's reward is 50 t + 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlmtf.core.schema import DatasetMeta, FeatureGroup, FeatureSpec
from rlmtf.data import LogWriter

SPEC = FeatureSpec(
    user_profile=FeatureGroup((("session_code", 1), ("t_code", 1), ("age", 1))),
    user_history=FeatureGroup((("history", 4),)),
    context=FeatureGroup((("hour", 1), ("weekday", 1))),
    item_features=FeatureGroup((("duration", 1), ("category", 2))),
)
LIST_LEN = 5
FIRST_SESSION_ID = 100


def make_meta(list_len: int = LIST_LEN) -> DatasetMeta:
    return DatasetMeta(feature_spec=SPEC, list_len=list_len, info={"made_by": "tests/_logs.py"})


def make_columns(
    sessions: Sequence[int] = (3, 1),
    *,
    day: int = 0,
    first_session: int = FIRST_SESSION_ID,
    list_len: int = LIST_LEN,
    seed: int = 0,
    true_scores: bool = False,
) -> dict[str, np.ndarray]:
    """Columns (in schema order, schema dtypes) for sessions of the given lengths T."""
    rng = np.random.default_rng(seed)
    T = np.asarray(sessions)
    n_req = int(T.sum())
    req_session = np.repeat(np.arange(len(T)), T)  # (R,)
    req_t = np.concatenate([np.arange(k) for k in T]).astype(np.int32)  # (R,)
    req_done = np.concatenate([np.arange(k) == k - 1 for k in T])  # (R,)
    n = n_req * list_len

    def per_request(a: np.ndarray) -> np.ndarray:  # request-level value repeated over its l rows
        return np.repeat(a, list_len, axis=0)

    sid = per_request(first_session + req_session).astype(np.int64)
    t = per_request(req_t)
    position = np.tile(np.arange(list_len, dtype=np.int32), n_req)
    profile = np.stack([sid, t, np.full(n, 0.5)], axis=1).astype(np.float32)
    mu_bp = rng.uniform(-0.8, 0.8, (n, SPEC.action_dim)).astype(np.float32)
    lower_b = np.full((n, SPEC.action_dim), -0.15, np.float32)
    upper_b = np.full((n, SPEC.action_dim), 0.15, np.float32)
    action = np.clip(mu_bp + rng.uniform(lower_b, upper_b), -1, 1).astype(np.float32)

    def binary() -> np.ndarray:
        return rng.integers(0, 2, n).astype(np.int8)

    cols = {
        "day": np.full(n, day, np.int32),
        "session_id": sid,
        "user_id": (1000 + sid % 7).astype(np.int64),
        "t": t,
        "position": position,
        "item_id": rng.permutation(10 * n)[:n].astype(np.int64),
        "user_profile": profile,
        "user_history": per_request(2 + rng.random((n_req, 4))).astype(np.float32),
        "context": per_request(3 + rng.random((n_req, 2))).astype(np.float32),
        "item_features": (4 + rng.random((n, 3))).astype(np.float32),
        "mtl_scores": rng.random((n, len(SPEC.mtl_tasks))).astype(np.float32),
        "mu_bp": mu_bp,
        "lower_b": lower_b,
        "upper_b": upper_b,
        "action": action,
        "click": binary(),
        "watch_time": rng.exponential(10.0, n).astype(np.float32),
        "watch_ratio": rng.random(n).astype(np.float32),
        "valid": binary(),
        "finish": binary(),
        "like": binary(),
        "share": binary(),
        "collect": binary(),
        "follow": binary(),
        "comment": binary(),
        "reward": (10 * t + position).astype(np.float32),
        "done": per_request(req_done),
    }
    if true_scores:
        cols["true_scores"] = rng.random((n, len(SPEC.mtl_tasks))).astype(np.float32)
    return cols


def take_rows(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The rows ``idx`` of every column (a boolean mask or integer indices)."""
    return {k: v[idx] for k, v in cols.items()}


def write_dataset(
    out_dir: Path, parts: Sequence[tuple[int, dict[str, np.ndarray]]], meta: DatasetMeta | None = None
) -> Path:
    """Write ``(day, columns)`` parts with :class:`LogWriter`; return ``out_dir``."""
    with LogWriter(out_dir, meta or make_meta()) as w:
        for day, cols in parts:
            w.write(day, cols)
    return out_dir
