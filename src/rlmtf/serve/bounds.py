"""Per-user exploration bounds (``docs/design.md#per-user-exploration-bounds``: "bounds may be personalised per user").

A bounds file maps a user id (the client's string, as in ``/v1/rank``) to that user's exploration
box ``eps ~ U(lower_b, upper_b)`` per action dimension. Two formats, chosen by the file's suffix:

- JSON (any suffix but ``.parquet``)::

      {"users": {"u1": {"lower_b": [10 numbers], "upper_b": [10 numbers]},
                 "u2": {"lower_b": -0.05, "upper_b": 0.05}}}

  a single number stands for the same bound in every dimension;
- Parquet (``.parquet``): columns ``user_id`` (string), ``lower_b`` and ``upper_b`` (a list of 10
  floats, or a float per row).

Every bound must be finite and ``lower_b <= upper_b`` in every dimension; a bad file is refused at
start-up with the file, user and field named. Users not in the file get the service's default box
(``--lower-b``/``--upper-b``). The file only shapes the box: *whether* a user explores is still
decided by ``explore_fraction`` (a stable hash of the user id), so an explored user listed in the
file is served ``clip(mu_bp + U(lower_b_user, upper_b_user), -1, 1)`` and logged with their own
lower_b/upper_b; a user listed with an empty box (0, 0) is explored with no noise. The file is read
when the service starts (each uvicorn worker reads it); change it by restarting.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from rlmtf.core.fusion import ACTION_DIM

__all__ = ["UserBounds", "load_user_bounds"]


class UserBounds:
    """User id -> (lower_b, upper_b), each (A,) float32; the default box for anyone else."""

    def __init__(self, default_lower: np.ndarray, default_upper: np.ndarray, users: list[str] | None = None,
                 lower: np.ndarray | None = None, upper: np.ndarray | None = None, source: str = ""):
        a = default_lower.shape[-1]
        self.default = (np.asarray(default_lower, np.float32), np.asarray(default_upper, np.float32))
        self.index = {u: i for i, u in enumerate(users or [])}
        self.lower = np.zeros((0, a), np.float32) if lower is None else np.asarray(lower, np.float32)
        self.upper = np.zeros((0, a), np.float32) if upper is None else np.asarray(upper, np.float32)
        self.source = source

    def __len__(self) -> int:
        return len(self.index)

    def get(self, user_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The user's own box, or None for a user who is not in the file (the default applies)."""
        i = self.index.get(user_id)
        return None if i is None else (self.lower[i], self.upper[i])


def _vec(value, where: str, action_dim: int) -> np.ndarray:
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a number or a list of {action_dim} numbers, got {value!r}")
    if isinstance(value, int | float):
        value = [value] * action_dim
    if not isinstance(value, list | tuple | np.ndarray) or len(value) != action_dim:
        raise ValueError(f"{where}: expected a number or a list of {action_dim} numbers, got {value!r}")
    out = []
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int | float | np.floating | np.integer) or not math.isfinite(x):
            raise ValueError(f"{where}[{i}]: expected a finite number, got {x!r}")
        out.append(float(x))
    return np.asarray(out, np.float32)


def _rows_json(path: Path) -> list[tuple[str, object, object]]:
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("users"), dict) or set(doc) - {"users"}:
        raise ValueError(f'{path}: expected {{"users": {{"<user_id>": {{"lower_b": ..., "upper_b": ...}}}}}}')
    rows = []
    for user, b in doc["users"].items():
        if not isinstance(b, dict) or set(b) != {"lower_b", "upper_b"}:
            got = sorted(b) if isinstance(b, dict) else type(b).__name__
            raise ValueError(f"{path}: users[{user!r}]: expected exactly lower_b and upper_b, got {got}")
        rows.append((user, b["lower_b"], b["upper_b"]))
    return rows


def _rows_parquet(path: Path) -> list[tuple[str, object, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow's own error types for a truncated or foreign file
        raise ValueError(f"{path}: cannot read Parquet ({e})") from e
    missing = [c for c in ("user_id", "lower_b", "upper_b") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (need user_id, lower_b, upper_b)")
    cols = {c: table.column(c).to_pylist() for c in ("user_id", "lower_b", "upper_b")}
    rows = []
    for i, (user, lo, hi) in enumerate(zip(cols["user_id"], cols["lower_b"], cols["upper_b"], strict=True)):
        if not isinstance(user, str) or not user:
            raise ValueError(f"{path}: row {i}: user_id must be a non-empty string, got {user!r}")
        rows.append((user, lo, hi))
    return rows


def load_user_bounds(path: str | os.PathLike[str] | None, default_lower: float | np.ndarray = -0.15,
                     default_upper: float | np.ndarray = 0.15, action_dim: int = ACTION_DIM) -> UserBounds:
    """Read and check a bounds file (see the module docstring); ``None`` gives the default box for all."""
    d_lo = _vec(np.broadcast_to(np.asarray(default_lower, float), (action_dim,)).tolist(), "lower_b", action_dim)
    d_hi = _vec(np.broadcast_to(np.asarray(default_upper, float), (action_dim,)).tolist(), "upper_b", action_dim)
    if path is None or str(path) == "":
        return UserBounds(d_lo, d_hi)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such bounds file")
    rows = _rows_parquet(path) if path.suffix == ".parquet" else _rows_json(path)
    users, lows, highs = [], [], []
    seen: set[str] = set()
    for user, lo, hi in rows:
        where = f"{path}: users[{user!r}]"
        if user in seen:
            raise ValueError(f"{where}: listed twice")
        seen.add(user)
        lo_v, hi_v = _vec(lo, f"{where}.lower_b", action_dim), _vec(hi, f"{where}.upper_b", action_dim)
        bad = np.flatnonzero(lo_v > hi_v)
        if bad.size:
            j = int(bad[0])
            raise ValueError(f"{where}: lower_b > upper_b in dimension {j} ({lo_v[j]} > {hi_v[j]})")
        users.append(user)
        lows.append(lo_v)
        highs.append(hi_v)
    shape = (len(users), action_dim)
    return UserBounds(d_lo, d_hi, users, np.asarray(lows, np.float32).reshape(shape),
                      np.asarray(highs, np.float32).reshape(shape), source=str(path))
