"""Writing logged data: :class:`LogWriter`, which checks every file as a read would before it reaches disk.

The layout of a dataset and the checks are described in :mod:`rlmtf.data.io`, which reads it back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rlmtf.core.schema import CANDIDATE_COLUMNS, OPTIONAL_COLUMNS, DatasetMeta
from rlmtf.data.io import (
    BINARY_FEEDBACK,
    DAY_DIR,
    META_FILE,
    LogDataError,
    cast_int,
    check_day_dir,
    check_values,
    describe_type,
    file_schema,
    list_dims,
)

__all__ = ["LogWriter"]


def _numpy_kind_ok(name: str, expected: pa.DataType, dtype: np.dtype) -> bool:
    """Whether a numpy column is of the kind the schema type ``expected`` wants (widths may differ): the
    writer's counterpart of the reader's check on Arrow types."""
    if pa.types.is_integer(expected):
        return dtype.kind in "iu" or (name in BINARY_FEEDBACK and dtype.kind == "b")
    if pa.types.is_boolean(expected):
        return dtype.kind == "b"
    return dtype.kind == "f"  # floats and lists of floats


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
                           if p.name != META_FILE and not DAY_DIR.match(p.name) and not p.name.startswith(".")]
                if foreign:  # a mistyped path must not cost someone a directory
                    raise FileExistsError(
                        f"{self.out_dir} holds {foreign[:3]}, which is not a logged-data dataset; not deleting it"
                    )
                shutil.rmtree(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._dims = list_dims(meta.feature_spec)
        self._with_optional: tuple[str, ...] | None = None  # fixed by the first write: all files share one schema
        self._n_files = 0
        self._n_rows = 0
        self._days: set[int] = set()
        self._closed = False

    def write(self, day: int, columns: dict[str, np.ndarray]) -> Path:
        """Validate ``columns`` and write them as ``out_dir/day={day}/part-{n:05d}.parquet``.

        Key and feedback columns are 1-D, list columns 2-D ``(rows, dim)``. ``day`` may be omitted
        (it is filled from the argument) or given (then it must equal the argument). The optional columns
        (``true_scores``, ``seen``, the candidate sample) are written when given; either every write of a dataset
        gives one or none does, and the candidate sample's columns come all together.
        """
        if self._closed:
            raise RuntimeError("LogWriter is closed")
        shard = "" if self.shard is None else f"{self.shard:03d}-"
        rel = f"day={int(day)}/part-{shard}{self._n_files:05d}.parquet"
        with_optional = tuple(c for c in OPTIONAL_COLUMNS if c in columns)
        partial = [c for c in CANDIDATE_COLUMNS if c not in columns]
        if len(partial) not in (0, len(CANDIDATE_COLUMNS)):
            raise LogDataError(f"{rel}: column '{partial[0]}' missing: the candidate sample's columns "
                               f"({', '.join(CANDIDATE_COLUMNS)}) are written all together or not at all")
        if self._with_optional is not None and with_optional != self._with_optional:
            differ = sorted(set(with_optional) ^ set(self._with_optional))
            raise LogDataError(
                f"{rel}: column(s) {', '.join(repr(c) for c in differ)}: given in some writes and not in others; "
                "every file of a dataset must have the same columns"
            )
        schema = file_schema(self.meta.feature_spec, self.meta.list_len, with_optional)
        cols = self._prepare(int(day), columns, schema, rel)
        check_values(cols, rel, self.meta.list_len)
        check_day_dir(cols["day"], rel)
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
                    f"{rel}: column '{name}': expected {describe_type(field_.type)}, found numpy {a.dtype}"
                )
            if dim is not None:
                a = np.ascontiguousarray(a, dtype=np.float32)
            elif pa.types.is_integer(field_.type):
                a = cast_int(a, np.dtype(field_.type.to_pandas_dtype()), rel, name)
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
