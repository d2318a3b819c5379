"""Reading and validating logged data (``docs/design.md#logged-data``); writing is :mod:`rlmtf.data.writer`.

A dataset is a directory::

    out_dir/_meta.json                       DatasetMeta.to_json() + {"rows", "files", "days"}
    out_dir/day=0/part-00000.parquet         one row per shown user-item pair
    out_dir/day=0/part-00001.parquet
    out_dir/day=1/part-00002.parquet         (one running part counter across days)

The columns and their types come from :mod:`rlmtf.core.schema` (the one place that defines them). Each
file also stores the feature spec (``rlmtf.feature_spec``) and the list length (``rlmtf.list_len``)
in its Parquet schema metadata, so a single file can be read on its own. The ``day`` column is kept
inside each file as well as in the hive-style directory name; on read the two must agree.

Validation (on write and on read, per file, vectorised) raises :class:`LogDataError` naming the file,
the 0-based row within that file and the column. It never drops rows: a read returns every row of
every file or raises. Checked on every read:

- every required column is present and of the right *kind* (integer, float, bool, list of floats);
  any integer width is accepted for integer columns and any float width for float columns (cast to
  the schema's type; an integer that does not fit is an error), 0/1 feedback columns may be bool;
- no nulls (neither in a column nor inside a list);
- list columns have exactly the spec's length on every row (ragged or wrongly sized lists fail).

Checked unless ``validate=False`` (value checks):

- no NaN or inf in any float column (features, mtl_scores, action/mu_bp/bounds, reward, watch time);
- mtl_scores >= 0; action and mu_bp in [-1, 1]; lower_b <= upper_b per dimension;
- 0/1 feedback columns hold only 0 and 1; position in [0, list_len);
- the ``day`` column equals the ``day=N`` directory the file lies in.

Request structure (every request has ``list_len`` rows, t runs 0..T-1, ``done`` marks the last request)
is checked by :func:`rlmtf.data.transitions.group_requests`, which :func:`validate_logs` also runs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rlmtf.core.schema import (
    FEEDBACK_COLUMNS,
    OPTIONAL_COLUMNS,
    SCHEMA_VERSION,
    DatasetMeta,
    FeatureSpec,
    arrow_schema,
    list_columns,
)

__all__ = ["LogDataError", "LoggedData", "concat_logs", "open_parquet", "read_logs", "read_meta", "validate_logs"]

META_FILE = "_meta.json"
_SPEC_KEY = b"rlmtf.feature_spec"
_VERSION_KEY = b"rlmtf.schema_version"
_LIST_LEN_KEY = b"rlmtf.list_len"
DAY_DIR = re.compile(r"^day=(-?\d+)$")

#: Feedback columns that record a 0/1 event (the integer-typed ones).
BINARY_FEEDBACK: tuple[str, ...] = tuple(c for c, t in FEEDBACK_COLUMNS.items() if pa.types.is_integer(t))
#: Columns whose values must lie in [-1, 1] (normalised actions).
_UNIT_RANGE: tuple[str, ...] = ("action", "mu_bp", "candidate_mu_bp")


class LogDataError(ValueError):
    """Logged data that breaks the schema; the message names the file, the row and the column."""


# --- schema helpers --------------------------------------------------------------------------------


def file_schema(spec: FeatureSpec, list_len: int, with_optional: bool | Collection[str]) -> pa.Schema:
    """The schema of :mod:`rlmtf.core.schema` plus the list length in the metadata."""
    schema = arrow_schema(spec, with_optional=with_optional)
    return schema.with_metadata({**schema.metadata, _LIST_LEN_KEY: str(list_len).encode()})


def list_dims(spec: FeatureSpec) -> dict[str, int]:
    """Every fixed-size list column (optional ones included) and its length."""
    dims = list_columns(spec)
    opt = arrow_schema(spec, with_optional=True)
    for name in OPTIONAL_COLUMNS:
        if pa.types.is_fixed_size_list(opt.field(name).type):
            dims[name] = opt.field(name).type.list_size
    return dims


def describe_type(t: pa.DataType) -> str:
    """The kind of a schema type, in words (for error messages)."""
    if pa.types.is_integer(t):
        return "an integer"
    if pa.types.is_floating(t):
        return "a float"
    if pa.types.is_boolean(t):
        return "a bool"
    if pa.types.is_fixed_size_list(t):
        return f"a list of {t.list_size} floats"
    return str(t)


def _kind_ok(name: str, expected: pa.DataType, found: pa.DataType) -> bool:
    """Whether ``found`` is of the same kind as ``expected`` (widths may differ)."""
    if pa.types.is_integer(expected):
        return pa.types.is_integer(found) or (name in BINARY_FEEDBACK and pa.types.is_boolean(found))
    if pa.types.is_floating(expected):
        return pa.types.is_floating(found)
    if pa.types.is_boolean(expected):
        return pa.types.is_boolean(found)
    if pa.types.is_fixed_size_list(expected):
        is_list = pa.types.is_list(found) or pa.types.is_large_list(found) or pa.types.is_fixed_size_list(found)
        return is_list and pa.types.is_floating(found.value_type)
    raise AssertionError(f"unhandled schema type {expected}")


def cast_int(a: np.ndarray, target: np.dtype, where: str, name: str) -> np.ndarray:
    """Cast an integer/bool array to ``target``, refusing values that would wrap around."""
    if a.dtype == target:
        return a
    if a.dtype.kind in "iu":
        info = np.iinfo(target)
        bad = np.flatnonzero((a < info.min) | (a > info.max))
        if bad.size:
            r = int(bad[0])
            raise LogDataError(f"{where}: row {r}, column '{name}': value {a[r]!s} does not fit in {target}")
    return a.astype(target)


# --- value checks (shared by writer and reader) ----------------------------------------------------


def _first_bad(bad: np.ndarray) -> tuple[int, int | None]:
    """(row, dimension) of the first True in a (n,) or (n, d) mask; dimension is None for 1-D."""
    flat = int(np.argmax(bad.reshape(-1)))
    if bad.ndim == 1:
        return flat, None
    return divmod(flat, bad.shape[1])


def _at(r: int, d: int | None) -> str:
    return "" if d is None else f" (dimension {d})"


def check_values(cols: dict[str, np.ndarray], where: str, list_len: int) -> None:
    """Raise LogDataError for the first out-of-range value, column by column in schema order."""
    for name, a in cols.items():
        if a.size == 0:
            continue
        if a.dtype.kind == "f":
            bad = ~np.isfinite(a)
            if bad.any():
                r, d = _first_bad(bad)
                v = a[r] if d is None else a[r, d]
                raise LogDataError(f"{where}: row {r}, column '{name}': value {v!s} is not finite{_at(r, d)}")
        if name in ("mtl_scores", "candidate_mtl_scores"):
            bad = a < 0
            if bad.any():
                r, d = _first_bad(bad)
                raise LogDataError(f"{where}: row {r}, column '{name}': negative score {a[r, d]!s}{_at(r, d)}")
        elif name in _UNIT_RANGE:
            bad = (a < -1) | (a > 1)
            if bad.any():
                r, d = _first_bad(bad)
                raise LogDataError(
                    f"{where}: row {r}, column '{name}': value {a[r, d]!s} outside [-1, 1]{_at(r, d)}"
                )
        elif name in BINARY_FEEDBACK or name == "seen":
            bad = (a != 0) & (a != 1)
            if bad.any():
                r, _ = _first_bad(bad)
                raise LogDataError(f"{where}: row {r}, column '{name}': value {a[r]!s} is not 0 or 1")
        elif name == "position":
            bad = (a < 0) | (a >= list_len)
            if bad.any():
                r, _ = _first_bad(bad)
                raise LogDataError(
                    f"{where}: row {r}, column '{name}': value {a[r]!s} outside [0, {list_len}) "
                    f"(list_len={list_len})"
                )
    for lo_name, hi_name in (("lower_b", "upper_b"), ("candidate_lower_b", "candidate_upper_b")):
        if lo_name in cols and hi_name in cols and cols[lo_name].size:
            lo, hi = cols[lo_name], cols[hi_name]
            bad = lo > hi
            if bad.any():
                r, d = _first_bad(bad)
                raise LogDataError(f"{where}: row {r}, column '{lo_name}': {lo_name} {lo[r, d]!s} > {hi_name} "
                                   f"{hi[r, d]!s} at dimension {d}")


def check_day_dir(day: np.ndarray, rel: str) -> None:
    """The ``day`` column must equal the ``day=N`` directory the file lies in (if it lies in one)."""
    m = DAY_DIR.match(Path(rel).parent.name)
    if m is None or day.size == 0:
        return
    bad = np.flatnonzero(day != int(m.group(1)))
    if bad.size:
        r = int(bad[0])
        raise LogDataError(f"{rel}: row {r}, column 'day': value {day[r]!s} but the file lies in day={m.group(1)}")


# --- reader -----------------------------------------------------------------------------------------


@dataclass
class LoggedData:
    """Logged data in memory: one entry per shown user-item pair, in file order.

    ``columns`` holds 1-D arrays for scalar columns and C-contiguous float32 ``(rows, dim)`` arrays for
    list columns. ``file_index[i]`` and ``file_row[i]`` say where global row ``i`` came from.
    """

    meta: DatasetMeta
    columns: dict[str, np.ndarray]
    files: list[str]
    file_index: np.ndarray  # (N,) int32, index into files
    file_row: np.ndarray  # (N,) int64, 0-based row within that file

    def __len__(self) -> int:
        return len(self.file_row)

    def locate(self, i: int) -> str:
        """``"file: row r"`` for global row ``i`` (the prefix every error message uses)."""
        return f"{self.files[int(self.file_index[i])]}: row {int(self.file_row[i])}"

    def take(self, rows: np.ndarray) -> LoggedData:
        """The rows ``rows`` (global indices, in that order) as a new LoggedData."""
        rows = np.asarray(rows, dtype=np.int64)
        return LoggedData(meta=self.meta, columns={k: v[rows] for k, v in self.columns.items()}, files=self.files,
                          file_index=self.file_index[rows], file_row=self.file_row[rows])


def concat_logs(parts: list[LoggedData]) -> LoggedData:
    """Several datasets as one (e.g. the rounds of progressive exploration), rows in the given order.

    Raises :class:`LogDataError` if the parts disagree on the feature spec, the list length or the
    loaded columns, or if a session id occurs in more than one part (their requests would merge)."""
    if not parts:
        raise ValueError("concat_logs needs at least one dataset")
    first = parts[0]
    for i, p in enumerate(parts[1:], 1):
        if p.meta.feature_spec != first.meta.feature_spec or p.meta.list_len != first.meta.list_len:
            raise LogDataError(f"dataset {i} ({p.files[:1]}) has another feature spec or list length than dataset 0")
        if set(p.columns) != set(first.columns):
            raise LogDataError(f"dataset {i} loaded columns {sorted(set(p.columns) ^ set(first.columns))} "
                               "that dataset 0 did not (or the reverse)")
    if "session_id" in first.columns:
        seen: set[int] = set()
        for i, p in enumerate(parts):
            ids = set(np.unique(p.columns["session_id"]).tolist())
            clash = ids & seen
            if clash:
                raise LogDataError(f"dataset {i} repeats session_id {min(clash)} of an earlier dataset")
            seen |= ids
    offsets = np.cumsum([0] + [len(p.files) for p in parts[:-1]])
    return LoggedData(
        meta=first.meta,
        columns={k: np.concatenate([p.columns[k] for p in parts]) for k in first.columns},
        files=[f for p in parts for f in p.files],
        file_index=np.concatenate([p.file_index + o for p, o in zip(parts, offsets, strict=True)]).astype(np.int32),
        file_row=np.concatenate([p.file_row for p in parts]))


def read_meta(path: Path) -> DatasetMeta:
    """The meta of the dataset directory ``path`` (its ``_meta.json``); nothing else is read."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise LogDataError(f"{path}: no {META_FILE}; not a dataset directory, or an unfinished write")
    try:
        meta = DatasetMeta.from_json(json.loads(meta_path.read_text()))
    except (KeyError, TypeError, ValueError) as e:
        raise LogDataError(f"{meta_path}: unreadable dataset meta ({e!r})") from e
    return meta


#: what pyarrow raises for a file it cannot decode (a corrupt footer, page or compressed block)
_ARROW_ERRORS = (OSError, pa.ArrowException, EOFError)


def _arrow_message(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def open_parquet(path: str | os.PathLike[str], where: str | None = None) -> pq.ParquetFile:
    """``pq.ParquetFile(path)``; a file pyarrow cannot open (not Parquet, a corrupt footer) is a
    :class:`LogDataError` naming it, a missing one a ``FileNotFoundError``."""
    where = str(path) if where is None else where
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        return pq.ParquetFile(path)
    except _ARROW_ERRORS as e:
        raise LogDataError(f"{where}: not a readable Parquet file ({_arrow_message(e)})") from None


def _locate_corruption(pf: pq.ParquetFile, names: list[str]) -> str:
    """'row group G, column C' of the first unreadable column chunk ('' when each reads alone)."""
    for g in range(pf.metadata.num_row_groups):
        for name in names:
            try:
                pf.read_row_group(g, columns=[name])
            except _ARROW_ERRORS:
                return f"row group {g}, column '{name}': "
    return ""


def meta_from_file(pf: pq.ParquetFile, name: str) -> DatasetMeta:
    """Meta of a single file from its schema metadata (list_len inferred if the file lacks it)."""
    md = pf.schema_arrow.metadata or {}
    if _SPEC_KEY not in md:
        raise LogDataError(f"{name}: no {_SPEC_KEY.decode()} in the Parquet schema metadata")
    try:
        spec = FeatureSpec.from_json(json.loads(md[_SPEC_KEY]))
        version = int(md.get(_VERSION_KEY, SCHEMA_VERSION))
        list_len = int(md[_LIST_LEN_KEY]) if _LIST_LEN_KEY in md else None
    except (KeyError, TypeError, ValueError) as e:
        raise LogDataError(f"{name}: malformed rlmtf schema metadata ({e!r})") from None
    if list_len is None:  # a file from another writer: the longest list seen; transitions check every request
        try:
            pos = pf.read(columns=["position"]).column(0)
        except _ARROW_ERRORS as e:
            raise LogDataError(f"{name}: column 'position': unreadable ({_arrow_message(e)})") from None
        list_len = int(pc.max(pos).as_py() or 0) + 1
    return DatasetMeta(feature_spec=spec, list_len=list_len, schema_version=version)


def _column_to_numpy(arr: pa.Array, name: str, expected: pa.DataType, dim: int | None, where: str) -> np.ndarray:
    """Check kind, nulls and list lengths of one column and convert it to numpy."""
    if not _kind_ok(name, expected, arr.type):
        raise LogDataError(
            f"{where}: row 0, column '{name}': expected {describe_type(expected)}, found {arr.type} "
            "(the whole column has this type)"
        )
    if arr.null_count:
        r = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise LogDataError(f"{where}: row {r}, column '{name}': null value")
    if dim is not None:
        n = len(arr)
        if pa.types.is_fixed_size_list(arr.type):
            if arr.type.list_size != dim and n:
                raise LogDataError(
                    f"{where}: row 0, column '{name}': fixed-size list of length {arr.type.list_size}, "
                    f"expected {dim} (every row)"
                )
        else:
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(lengths != dim)
            if bad.size:
                r = int(bad[0])
                raise LogDataError(
                    f"{where}: row {r}, column '{name}': list of length {lengths[r]}, expected {dim} (ragged list)"
                )
        values = arr.flatten()  # respects offsets and slicing, unlike .values
        if values.null_count:
            k = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise LogDataError(f"{where}: row {k // dim}, column '{name}': null value (dimension {k % dim})")
        return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
    a = arr.to_numpy(zero_copy_only=False)
    if pa.types.is_integer(expected):
        return cast_int(a, np.dtype(expected.to_pandas_dtype()), where, name)
    if pa.types.is_floating(expected):
        return a.astype(np.float32, copy=False)
    return a.astype(bool, copy=False)


def read_file(
    path: Path, where: str, meta: DatasetMeta, names: list[str], validate: bool
) -> dict[str, np.ndarray]:
    """Read, check and convert one file; ``names`` are the columns to load, in output order. A file pyarrow
    cannot decode (a corrupt footer, page or compressed block) is a :class:`LogDataError` naming the file
    and, where one column chunk is at fault, its row group and column."""
    pf = open_parquet(path, where)
    present = set(pf.schema_arrow.names)
    for name in names:
        if name not in present:
            raise LogDataError(f"{where}: column '{name}' missing")
    md = pf.schema_arrow.metadata or {}
    if _SPEC_KEY in md and FeatureSpec.from_json(json.loads(md[_SPEC_KEY])) != meta.feature_spec:
        raise LogDataError(f"{where}: its {_SPEC_KEY.decode()} differs from the dataset's {META_FILE}")
    try:
        table = pf.read(columns=names)
    except _ARROW_ERRORS as e:
        raise LogDataError(f"{where}: {_locate_corruption(pf, names)}unreadable Parquet data "
                           f"({_arrow_message(e)})") from None
    schema = file_schema(meta.feature_spec, meta.list_len, with_optional=True)
    dims = list_dims(meta.feature_spec)
    cols = {
        name: _column_to_numpy(table.column(name).combine_chunks(), name, schema.field(name).type,
                               dims.get(name), where)
        for name in names
    }
    if validate:
        check_values(cols, where, meta.list_len)
        if "day" in cols:
            check_day_dir(cols["day"], where)
    return cols


def read_logs(
    path: str | os.PathLike[str], *, columns: list[str] | None = None, validate: bool = True
) -> LoggedData:
    """Read a dataset directory (with ``_meta.json``) or a single Parquet file into memory.

    Every ``*.parquet`` under a directory is read, sorted by relative path (deterministic row order).
    ``columns`` restricts what is loaded (default: every schema column, plus ``true_scores`` when the
    first file has it). ``validate=False`` skips the value checks but never the structural ones
    (missing columns, kinds, nulls, list lengths). Raises :class:`LogDataError` on the first problem.
    """
    root = Path(path)
    if root.is_dir():
        meta = read_meta(root)
        paths = sorted(root.rglob("*.parquet"), key=lambda p: p.relative_to(root).as_posix())
        names_ = [p.relative_to(root).as_posix() for p in paths]
    elif root.is_file():
        paths, names_ = [root], [str(root)]
        meta = meta_from_file(open_parquet(root), str(root))
    else:
        raise FileNotFoundError(f"{root}: no such file or directory")
    if meta.schema_version != SCHEMA_VERSION:
        raise LogDataError(f"{root}: schema version {meta.schema_version}, this code reads {SCHEMA_VERSION}")

    all_names = file_schema(meta.feature_spec, meta.list_len, with_optional=True).names
    if columns is None:
        optional = set(open_parquet(paths[0], names_[0]).schema_arrow.names) if paths else set()
        load = [n for n in all_names if n not in OPTIONAL_COLUMNS or n in optional]
    else:
        unknown = [c for c in columns if c not in all_names]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; known: {all_names}")
        load = [n for n in all_names if n in columns]  # schema order, whatever order was asked

    parts = [read_file(p, w, meta, load, validate) for p, w in zip(paths, names_, strict=True)]
    sizes = [len(next(iter(c.values()))) if c else open_parquet(p).metadata.num_rows
             for c, p in zip(parts, paths, strict=True)]
    if parts:
        cols = {n: np.concatenate([c[n] for c in parts]) for n in load}  # copies: owned, writable
    else:
        schema = file_schema(meta.feature_spec, meta.list_len, with_optional=True)
        dims = list_dims(meta.feature_spec)
        cols = {n: _empty(schema.field(n).type, dims.get(n)) for n in load}
    file_index = np.repeat(np.arange(len(paths), dtype=np.int32), sizes)
    file_row = np.concatenate([np.arange(s, dtype=np.int64) for s in sizes]) if sizes else np.zeros(0, np.int64)
    return LoggedData(meta=meta, columns=cols, files=names_, file_index=file_index, file_row=file_row)


def _empty(t: pa.DataType, dim: int | None) -> np.ndarray:
    if dim is not None:
        return np.zeros((0, dim), dtype=np.float32)
    if pa.types.is_boolean(t):
        return np.zeros(0, dtype=bool)
    return np.zeros(0, dtype=np.dtype(t.to_pandas_dtype()))


def validate_logs(path: str | os.PathLike[str]) -> dict[str, int]:
    """Fully validate a dataset (values and request structure) and summarise it.

    Returns ``{"rows", "files", "sessions", "requests", "users", "days"}`` (counts). Raises
    :class:`LogDataError` on the first problem. Used by ``rlmtf data validate``.
    """
    from rlmtf.data.transitions import group_requests  # transitions builds on this module

    data = read_logs(path, validate=True)
    rows = group_requests(data)  # (R, l) row indices; checks request structure
    c = data.columns
    return {
        "rows": len(data),
        "files": len(data.files),
        "sessions": int(np.unique(c["session_id"]).size),
        "requests": int(rows.shape[0]),
        "users": int(np.unique(c["user_id"]).size),
        "days": int(np.unique(c["day"]).size),
    }
