"""Repartitioning logged data into shards of whole sessions (for streaming data larger than memory).

A sharded dataset is a directory of ``n_shards`` ordinary datasets (see :mod:`rlmtf.data.io`)::

    dst/_meta.json                                 source DatasetMeta + {"rows", "files", "days"};
                                                   info["sharded"] = {"n_shards", "by", "source"}
    dst/shard=00000/_meta.json                     source DatasetMeta + this shard's counts;
                                                   info["sharded"] = {..., "shard": 0}
    dst/shard=00000/day=0/part-00000.parquet       one running part counter per shard, across days
    dst/shard=00000/day=1/part-00001.parquet
    dst/shard=00001/_meta.json                     every shard has a directory and a _meta.json,
    ...                                            even an empty one (0 rows)

Every shard directory is a complete dataset (``read_logs(dst / "shard=00003")``), and ``read_logs(dst)``
reads all shards at once (it reads every ``*.parquet`` below the top-level ``_meta.json``). A session
lies in exactly one shard, the one :func:`session_shard` gives its ``session_id``, so a shard read on
its own holds whole sessions even when the source split sessions across files. Within each written
part, rows are in (session_id, t, position) order.

:func:`shard_dataset` reads one input file at a time (memory is bounded by the largest input file),
so the output has up to one part per (input file, shard, day); a session cut across input files ends
up in several parts of its shard, which :func:`rlmtf.data.transitions.group_requests` puts together.
"""

from __future__ import annotations

import copy
import json
import operator
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlmtf.core.schema import OPTIONAL_COLUMNS, SCHEMA_VERSION, DatasetMeta, arrow_schema
from rlmtf.data.io import DAY_DIR, META_FILE, LogDataError, meta_from_file, open_parquet, read_file, read_meta
from rlmtf.data.writer import LogWriter

__all__ = ["ShardInfo", "is_sharded", "list_shards", "session_hash", "session_shard", "shard_dataset"]

_SHARD_DIR = re.compile(r"^shard=(\d+)$")

# splitmix64 (Steele, Lea & Flood 2014; Vigna's reference C code): the state increment and the mixer.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def session_hash(session_id: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash of each session id: the first output of splitmix64 seeded with the id.

    With ``x`` the id's 64-bit two's-complement bit pattern and all arithmetic modulo 2**64::

        z = x + 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        hash = z ^ (z >> 31)

    Pure integer arithmetic in numpy ``uint64`` (wrapping, no warnings): the same on every platform,
    in every process and with every numpy version (unlike Python's per-process randomised ``hash``).
    Returns a ``uint64`` array of the input's shape. Raises ``TypeError`` for non-integer input.
    """
    a = np.asarray(session_id)
    if a.dtype.kind not in "iu":
        raise TypeError(f"session ids must be integers, got dtype {a.dtype}")
    x = np.ascontiguousarray(a, dtype=np.uint64 if a.dtype.kind == "u" else np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return z.reshape(a.shape)


def _check_n_shards(n_shards: int) -> int:
    if isinstance(n_shards, bool):
        raise ValueError(f"n_shards must be an integer >= 1, got {n_shards!r}")
    try:
        n = operator.index(n_shards)
    except TypeError:
        raise ValueError(f"n_shards must be an integer >= 1, got {n_shards!r}") from None
    if n < 1:
        raise ValueError(f"n_shards must be an integer >= 1, got {n}")
    return n


def session_shard(session_id: np.ndarray | int, n_shards: int) -> np.ndarray:
    """The shard of each session id: ``session_hash(session_id) % n_shards`` as int64 in [0, n_shards).

    Deterministic and platform-independent (see :func:`session_hash`); a session's shard depends only
    on its id and ``n_shards``. Raises ``ValueError`` if ``n_shards`` is not an integer >= 1.
    """
    n = _check_n_shards(n_shards)
    return (session_hash(session_id) % np.uint64(n)).astype(np.int64)


@dataclass(frozen=True)
class ShardInfo:
    """What :func:`shard_dataset` wrote: the number of shards, rows in each (index = K) and files in all."""

    n_shards: int
    rows_per_shard: list[int]
    files: int


def _shard_dirs(path: Path) -> list[tuple[int, Path]]:
    out = [(int(m.group(1)), p) for p in path.iterdir() if (m := _SHARD_DIR.match(p.name)) and p.is_dir()]
    return sorted(out, key=lambda kp: kp[0])


def is_sharded(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding at least one ``shard=K`` directory."""
    p = Path(path)
    return p.is_dir() and bool(_shard_dirs(p))


def list_shards(path: str | os.PathLike[str]) -> list[Path]:
    """The ``shard=K`` directories of a sharded dataset, sorted by K.

    Raises ``FileNotFoundError`` if ``path`` is not a directory and ``ValueError`` (naming ``path``) if
    it holds no ``shard=K`` directory, or if its ``_meta.json`` records ``n_shards`` and the shard
    directories are not exactly ``shard=0 .. shard=n_shards-1`` (an incomplete copy would silently
    lose sessions).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    shards = _shard_dirs(root)
    if not shards:
        raise ValueError(f"{root}: no shard=K directories; not a sharded dataset (see `rlmtf.data.shard`)")
    meta_path = root / META_FILE
    if meta_path.is_file():
        try:
            n = json.loads(meta_path.read_text())["info"]["sharded"]["n_shards"]
        except (KeyError, TypeError, ValueError):
            n = None
        if n is not None:
            found = [k for k, _ in shards]
            if found != list(range(int(n))):
                missing = sorted(set(range(int(n))) - set(found))
                extra = sorted(set(found) - set(range(int(n))))
                raise ValueError(
                    f"{root}: {META_FILE} says n_shards={n} but the shard directories are "
                    f"{len(found)} (missing K={missing[:5]}, unexpected K={extra[:5]})"
                )
    return [p for _, p in shards]


# --- repartitioning ---------------------------------------------------------------------------------


def _is_tmp(name: str) -> bool:
    """A temporary file LogWriter leaves only if killed mid-write (``.part-00000.parquet.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def _foreign_entries(path: Path, shards: bool = True) -> list[str]:
    """Entries of ``path`` that a dataset does not have: anything but ``_meta.json``, ``day=N``
    directories, LogWriter's temporary files and (if ``shards``) ``shard=K`` directories, which are
    checked the same way (without nested shards)."""
    foreign: list[str] = []
    for p in path.iterdir():
        if p.name == META_FILE or _is_tmp(p.name) or (DAY_DIR.match(p.name) and p.is_dir()):
            continue
        if shards and _SHARD_DIR.match(p.name) and p.is_dir():
            foreign += [f"{p.name}/{name}" for name in _foreign_entries(p, shards=False)]
            continue
        foreign.append(p.name)
    return sorted(foreign)


def _prepare_dst(dst: Path, overwrite: bool) -> None:
    """Make sure ``dst`` is absent or empty: delete an old (sharded) dataset there if ``overwrite``."""
    if not dst.exists():
        return
    if not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is not a directory")
    if not any(dst.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; pass overwrite=True to replace it")
    foreign = _foreign_entries(dst)
    if foreign:  # a mistyped path must not cost someone a directory
        raise FileExistsError(f"{dst} holds {foreign[:3]}, which is not a logged-data dataset; not deleting it")
    shutil.rmtree(dst)


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies below it (paths already resolved)."""
    return a == b or b in a.parents


def shard_dataset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    n_shards: int,
    *,
    overwrite: bool = False,
    compression: str = "zstd",
    progress: Callable[[int], None] | None = None,
) -> ShardInfo:
    """Repartition dataset ``src`` into ``n_shards`` shards of whole sessions under ``dst``.

    ``src`` is a dataset directory (a sharded one too: its ``shard=K`` files are read like any others)
    or a single Parquet file. Its files are read one at a time, in sorted path order, and validated like
    :func:`rlmtf.data.io.read_logs` does (errors name the file, row and column); each file's rows are
    split by :func:`session_shard` of their ``session_id`` and by ``day``, sorted by (session_id, t,
    position), and each non-empty (shard, day) part is written as one file of ``dst/shard=KKKKK`` (see
    the module docstring for the layout). ``read_logs(dst)`` returns the same rows as ``read_logs(src)``
    (as a multiset; the order differs). Output is deterministic: the same input gives identical files.

    ``dst`` must not exist or be empty, unless ``overwrite=True``: then an old dataset or sharded
    dataset there is deleted first; a directory holding anything else is never deleted
    (``FileExistsError``). ``dst`` may not be ``src``, lie inside it or contain it. ``progress``, if
    given, is called after each input file with the number of rows it held. The shard directories'
    and the top-level ``_meta.json`` are written last, so an interrupted run leaves no top-level meta.
    """
    n = _check_n_shards(n_shards)
    src_p, dst_p = Path(src), Path(dst)
    if src_p.is_dir():
        meta = read_meta(src_p)
        paths = sorted(src_p.rglob("*.parquet"), key=lambda p: p.relative_to(src_p).as_posix())
    elif src_p.is_file():
        meta = meta_from_file(open_parquet(src_p), str(src_p))
        paths = [src_p]
    else:
        raise FileNotFoundError(f"{src_p}: no such file or directory")
    if meta.schema_version != SCHEMA_VERSION:
        raise LogDataError(f"{src_p}: schema version {meta.schema_version}, this code reads {SCHEMA_VERSION}")
    src_r, dst_r = src_p.resolve(), dst_p.resolve()
    if _inside(dst_r, src_r):
        raise ValueError(f"destination {dst_p} is the source {src_p} or lies inside it")
    if _inside(src_r, dst_r):
        raise ValueError(f"source {src_p} lies inside the destination {dst_p}")

    # the columns read_logs would load: every schema column, plus the optional ones the first file has
    all_names = arrow_schema(meta.feature_spec, with_optional=True).names
    optional = set(open_parquet(paths[0]).schema_arrow.names) if paths else set()
    load = [c for c in all_names if c not in OPTIONAL_COLUMNS or c in optional]

    _prepare_dst(dst_p, overwrite)
    sharded = {"n_shards": n, "by": "session_hash", "source": str(src_p)}
    top = LogWriter(dst_p, _with_info(meta, sharded))  # dst is absent or empty now
    writers = [
        LogWriter(dst_p / f"shard={k:05d}", _with_info(meta, {**sharded, "shard": k}), compression)
        for k in range(n)
    ]
    for path in paths:
        cols = read_file(path, str(path), meta, load, validate=True)
        n_rows = len(cols["session_id"])
        if n_rows:
            shard = session_shard(cols["session_id"], n)
            day = cols["day"]
            order = np.lexsort((cols["position"], cols["t"], cols["session_id"], day, shard))
            s_o, d_o = shard[order], day[order]
            starts = np.flatnonzero(np.r_[True, (s_o[1:] != s_o[:-1]) | (d_o[1:] != d_o[:-1])])
            ends = np.r_[starts[1:], n_rows]
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                rows = order[a:b]
                writers[int(s_o[a])].write(int(d_o[a]), {c: v[rows] for c, v in cols.items()})
        del cols
        if progress is not None:
            progress(n_rows)

    rows_per_shard: list[int] = []
    for w in writers:
        w.close()
        rows, files, days = w.counts()
        rows_per_shard.append(rows)
        top.add_counts(rows, files, days)
    top.close()
    return ShardInfo(n_shards=n, rows_per_shard=rows_per_shard, files=top.counts()[1])


def _with_info(meta: DatasetMeta, sharded: dict) -> DatasetMeta:
    """A copy of ``meta`` whose info also says how the data was sharded."""
    return DatasetMeta(feature_spec=meta.feature_spec, list_len=meta.list_len, schema_version=meta.schema_version,
                       info={**copy.deepcopy(meta.info), "sharded": sharded})
