"""Reading, writing and validating logged data (SPEC section 11).

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
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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

__all__ = ["LogDataError", "LogWriter", "LoggedData", "concat_logs", "read_logs", "validate_logs"]

META_FILE = "_meta.json"
_SPEC_KEY = b"rlmtf.feature_spec"
_VERSION_KEY = b"rlmtf.schema_version"
_LIST_LEN_KEY = b"rlmtf.list_len"
_DAY_DIR = re.compile(r"^day=(-?\d+)$")

#: Feedback columns that record a 0/1 event (the integer-typed ones).
BINARY_FEEDBACK: tuple[str, ...] = tuple(c for c, t in FEEDBACK_COLUMNS.items() if pa.types.is_integer(t))
#: Columns whose values must lie in [-1, 1] (normalised actions).
_UNIT_RANGE: tuple[str, ...] = ("action", "mu_bp")


class LogDataError(ValueError):
    """Logged data that breaks the schema; the message names the file, the row and the column."""


# --- schema helpers --------------------------------------------------------------------------------


def _full_schema(spec: FeatureSpec, list_len: int, with_optional: bool) -> pa.Schema:
    """The schema of :mod:`rlmtf.core.schema` plus the list length in the metadata."""
    schema = arrow_schema(spec, with_optional=with_optional)
    return schema.with_metadata({**schema.metadata, _LIST_LEN_KEY: str(list_len).encode()})


def _list_dims(spec: FeatureSpec) -> dict[str, int]:
    """Every fixed-size list column (optional ones included) and its length."""
    dims = list_columns(spec)
    opt = arrow_schema(spec, with_optional=True)
    for name in OPTIONAL_COLUMNS:
        dims[name] = opt.field(name).type.list_size
    return dims


def _describe(t: pa.DataType) -> str:
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


def _numpy_kind_ok(name: str, expected: pa.DataType, dtype: np.dtype) -> bool:
    """The numpy counterpart of :func:`_kind_ok` (used by the writer)."""
    if pa.types.is_integer(expected):
        return dtype.kind in "iu" or (name in BINARY_FEEDBACK and dtype.kind == "b")
    if pa.types.is_boolean(expected):
        return dtype.kind == "b"
    return dtype.kind == "f"  # floats and lists of floats


def _cast_int(a: np.ndarray, target: np.dtype, where: str, name: str) -> np.ndarray:
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


def _check_values(cols: dict[str, np.ndarray], where: str, list_len: int) -> None:
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
        if name == "mtl_scores":
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
        elif name in BINARY_FEEDBACK:
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
    if "lower_b" in cols and "upper_b" in cols and cols["lower_b"].size:
        lo, hi = cols["lower_b"], cols["upper_b"]
        bad = lo > hi
        if bad.any():
            r, d = _first_bad(bad)
            raise LogDataError(
                f"{where}: row {r}, column 'lower_b': lower_b {lo[r, d]!s} > upper_b {hi[r, d]!s} at dimension {d}"
            )


def _check_day_dir(day: np.ndarray, rel: str) -> None:
    """The ``day`` column must equal the ``day=N`` directory the file lies in (if it lies in one)."""
    m = _DAY_DIR.match(Path(rel).parent.name)
    if m is None or day.size == 0:
        return
    bad = np.flatnonzero(day != int(m.group(1)))
    if bad.size:
        r = int(bad[0])
        raise LogDataError(f"{rel}: row {r}, column 'day': value {day[r]!s} but the file lies in day={m.group(1)}")


# --- writer -----------------------------------------------------------------------------------------


class LogWriter:
    """Writes a partitioned logged-data dataset, one Parquet file per :meth:`write` call.

    Every write is checked like a read (shapes, kinds, values), so invalid data never reaches disk.
    ``LogWriter(out_dir, meta)`` refuses an existing non-empty ``out_dir`` unless ``overwrite=True``,
    in which case the directory is deleted first (so old parts never mix with new ones); a directory
    holding anything but ``_meta.json`` and ``day=N`` folders is never deleted. Files are
    written to a temporary name and renamed into place, so a crash never leaves half a file, and
    ``_meta.json`` is written only by :meth:`close` (a directory without it is an unfinished dataset;
    a ``with`` block that raises does not write it). Output is deterministic: the same calls give
    byte-identical files. Several processes can write one dataset: each opens a *shard* writer
    (``shard=i``, files ``part-{i:03d}-{n:05d}.parquet``, no meta, the directory left as it is) and
    the dataset's own writer adds their counts and writes the meta.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        meta: DatasetMeta,
        compression: str = "zstd",
        *,
        overwrite: bool = False,
        shard: int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.meta = meta
        self.compression = compression
        self.shard = shard
        if shard is None and self.out_dir.exists():
            if not self.out_dir.is_dir():
                raise FileExistsError(f"{self.out_dir} exists and is not a directory")
            if any(self.out_dir.iterdir()):
                if not overwrite:
                    raise FileExistsError(
                        f"{self.out_dir} exists and is not empty; pass overwrite=True to replace it"
                    )
                foreign = [p.name for p in self.out_dir.iterdir()
                           if p.name != META_FILE and not _DAY_DIR.match(p.name) and not p.name.startswith(".")]
                if foreign:  # a mistyped path must not cost someone a directory
                    raise FileExistsError(
                        f"{self.out_dir} holds {foreign[:3]}, which is not a logged-data dataset; not deleting it"
                    )
                shutil.rmtree(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._dims = _list_dims(meta.feature_spec)
        self._with_optional: bool | None = None  # fixed by the first write: all files share one schema
        self._n_files = 0
        self._n_rows = 0
        self._days: set[int] = set()
        self._closed = False

    def write(self, day: int, columns: dict[str, np.ndarray]) -> Path:
        """Validate ``columns`` and write them as ``out_dir/day={day}/part-{n:05d}.parquet``.

        Key and feedback columns are 1-D, list columns 2-D ``(rows, dim)``. ``day`` may be omitted
        (it is filled from the argument) or given (then it must equal the argument). ``true_scores``
        is written when given; either every write of a dataset gives it or none does.
        """
        if self._closed:
            raise RuntimeError("LogWriter is closed")
        shard = "" if self.shard is None else f"{self.shard:03d}-"
        rel = f"day={int(day)}/part-{shard}{self._n_files:05d}.parquet"
        with_optional = any(c in columns for c in OPTIONAL_COLUMNS)
        if self._with_optional is not None and with_optional != self._with_optional:
            raise LogDataError(
                f"{rel}: column 'true_scores': given in some writes and not in others; "
                "every file of a dataset must have the same columns"
            )
        schema = _full_schema(self.meta.feature_spec, self.meta.list_len, with_optional)
        cols = self._prepare(int(day), columns, schema, rel)
        _check_values(cols, rel, self.meta.list_len)
        _check_day_dir(cols["day"], rel)
        table = pa.Table.from_arrays([self._to_arrow(n, a, schema) for n, a in cols.items()], schema=schema)

        path = self.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # not *.parquet, so readers never see it
        try:
            pq.write_table(table, tmp, compression=self.compression)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._with_optional = with_optional
        self._n_files += 1
        self._n_rows += table.num_rows
        self._days.add(int(day))
        return path

    def _prepare(self, day: int, columns: dict[str, Any], schema: pa.Schema, rel: str) -> dict[str, np.ndarray]:
        """Check names, shapes and kinds; cast to the schema's types; return columns in schema order."""
        unknown = sorted(set(columns) - set(schema.names))
        if unknown:
            raise LogDataError(f"{rel}: column '{unknown[0]}': not in the schema")
        missing = [n for n in schema.names if n not in columns and n != "day"]
        if missing:
            raise LogDataError(f"{rel}: column '{missing[0]}': missing")
        first = next(n for n in schema.names if n in columns)
        n_rows = len(np.asarray(columns[first]))
        out: dict[str, np.ndarray] = {}
        for field_ in schema:
            name = field_.name
            if name == "day" and name not in columns:
                out[name] = np.full(n_rows, day, dtype=np.int32)
                continue
            a = np.asarray(columns[name])
            dim = self._dims.get(name)
            expected_shape = (n_rows,) if dim is None else (n_rows, dim)
            if a.shape != expected_shape:
                raise LogDataError(
                    f"{rel}: column '{name}': shape {a.shape}, expected {expected_shape} "
                    f"(rows taken from column '{first}')"
                )
            if not _numpy_kind_ok(name, field_.type, a.dtype):
                raise LogDataError(
                    f"{rel}: column '{name}': expected {_describe(field_.type)}, found numpy {a.dtype}"
                )
            if dim is not None:
                a = np.ascontiguousarray(a, dtype=np.float32)
            elif pa.types.is_integer(field_.type):
                a = _cast_int(a, np.dtype(field_.type.to_pandas_dtype()), rel, name)
            elif pa.types.is_floating(field_.type):
                a = a.astype(np.float32, copy=False)
            out[name] = a
        return out

    @staticmethod
    def _to_arrow(name: str, a: np.ndarray, schema: pa.Schema) -> pa.Array:
        t = schema.field(name).type
        if pa.types.is_fixed_size_list(t):
            # one flat float32 buffer, no per-row Python objects
            return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), type=pa.float32()), t.list_size)
        return pa.array(a, type=t)

    def add_counts(self, rows: int, files: int, days: set[int] | list[int]) -> None:
        """Account for parts written by shard writers (``shard=i``) of this dataset in other processes."""
        self._n_rows += int(rows)
        self._n_files += int(files)
        self._days.update(int(d) for d in days)

    def counts(self) -> tuple[int, int, set[int]]:
        """(rows, files, days) written so far."""
        return self._n_rows, self._n_files, set(self._days)

    def close(self) -> None:
        """Write ``_meta.json`` (the dataset meta plus row, file and day counts). Idempotent. A shard
        writer (``shard=i``) writes no meta: the dataset's own writer does, after :meth:`add_counts`."""
        if self._closed:
            return
        if self.shard is not None:
            self._closed = True
            return
        d = self.meta.to_json()
        d.update({"rows": self._n_rows, "files": self._n_files, "days": sorted(self._days)})
        _atomic_write_text(self.out_dir / META_FILE, json.dumps(d, indent=2, sort_keys=True) + "\n")
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:  # an aborted run must not look like a finished dataset
            self.close()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise LogDataError(f"{path}: no {META_FILE}; not a dataset directory, or an unfinished write")
    try:
        meta = DatasetMeta.from_json(json.loads(meta_path.read_text()))
    except (KeyError, TypeError, ValueError) as e:
        raise LogDataError(f"{meta_path}: unreadable dataset meta ({e!r})") from e
    return meta


def _meta_from_file(pf: pq.ParquetFile, name: str) -> DatasetMeta:
    """Meta of a single file from its schema metadata (list_len inferred if the file lacks it)."""
    md = pf.schema_arrow.metadata or {}
    if _SPEC_KEY not in md:
        raise LogDataError(f"{name}: no {_SPEC_KEY.decode()} in the Parquet schema metadata")
    spec = FeatureSpec.from_json(json.loads(md[_SPEC_KEY]))
    version = int(md.get(_VERSION_KEY, SCHEMA_VERSION))
    if _LIST_LEN_KEY in md:
        list_len = int(md[_LIST_LEN_KEY])
    else:  # a file from another writer: the longest list seen; transitions check every request
        pos = pf.read(columns=["position"]).column(0)
        list_len = int(pc.max(pos).as_py() or 0) + 1
    return DatasetMeta(feature_spec=spec, list_len=list_len, schema_version=version)


def _column_to_numpy(arr: pa.Array, name: str, expected: pa.DataType, dim: int | None, where: str) -> np.ndarray:
    """Check kind, nulls and list lengths of one column and convert it to numpy."""
    if not _kind_ok(name, expected, arr.type):
        raise LogDataError(
            f"{where}: row 0, column '{name}': expected {_describe(expected)}, found {arr.type} "
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
        return _cast_int(a, np.dtype(expected.to_pandas_dtype()), where, name)
    if pa.types.is_floating(expected):
        return a.astype(np.float32, copy=False)
    return a.astype(bool, copy=False)


def _read_file(
    path: Path, where: str, meta: DatasetMeta, names: list[str], validate: bool
) -> dict[str, np.ndarray]:
    """Read, check and convert one file; ``names`` are the columns to load, in output order."""
    pf = pq.ParquetFile(path)
    present = set(pf.schema_arrow.names)
    for name in names:
        if name not in present:
            raise LogDataError(f"{where}: column '{name}' missing")
    md = pf.schema_arrow.metadata or {}
    if _SPEC_KEY in md and FeatureSpec.from_json(json.loads(md[_SPEC_KEY])) != meta.feature_spec:
        raise LogDataError(f"{where}: its {_SPEC_KEY.decode()} differs from the dataset's {META_FILE}")
    table = pf.read(columns=names)
    schema = _full_schema(meta.feature_spec, meta.list_len, with_optional=True)
    dims = _list_dims(meta.feature_spec)
    cols = {
        name: _column_to_numpy(table.column(name).combine_chunks(), name, schema.field(name).type,
                               dims.get(name), where)
        for name in names
    }
    if validate:
        _check_values(cols, where, meta.list_len)
        if "day" in cols:
            _check_day_dir(cols["day"], where)
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
        meta = _meta_from_file(pq.ParquetFile(root), str(root))
    else:
        raise FileNotFoundError(f"{root}: no such file or directory")
    if meta.schema_version != SCHEMA_VERSION:
        raise LogDataError(f"{root}: schema version {meta.schema_version}, this code reads {SCHEMA_VERSION}")

    all_names = _full_schema(meta.feature_spec, meta.list_len, with_optional=True).names
    if columns is None:
        optional = set(pq.ParquetFile(paths[0]).schema_arrow.names) if paths else set()
        load = [n for n in all_names if n not in OPTIONAL_COLUMNS or n in optional]
    else:
        unknown = [c for c in columns if c not in all_names]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; known: {all_names}")
        load = [n for n in all_names if n in columns]  # schema order, whatever order was asked

    parts = [_read_file(p, w, meta, load, validate) for p, w in zip(paths, names_, strict=True)]
    sizes = [len(next(iter(c.values()))) if c else pq.ParquetFile(p).metadata.num_rows
             for c, p in zip(parts, paths, strict=True)]
    if parts:
        cols = {n: np.concatenate([c[n] for c in parts]) for n in load}  # copies: owned, writable
    else:
        schema = _full_schema(meta.feature_spec, meta.list_len, with_optional=True)
        dims = _list_dims(meta.feature_spec)
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
