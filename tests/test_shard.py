"""Repartitioning logged data into shards of whole sessions (rlmtf.data.shard)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _logs import make_columns, write_dataset

from rlmtf.data import LogDataError, LoggedData, LogWriter, build_transitions, read_logs
from rlmtf.data.shard import ShardInfo, is_sharded, list_shards, session_hash, session_shard, shard_dataset
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import baseline_policy

MASK = 0xFFFFFFFFFFFFFFFF
N_SHARDS = 4


def splitmix64_first(seed: int) -> int:
    """First output of splitmix64 seeded with ``seed``, in plain Python integers (independent of numpy)."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    """A small simulated dataset: two days, one file per day, whole sessions in each file."""
    out = tmp_path_factory.mktemp("shard") / "sim"
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=40, n_items=300))
    simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", "request", seed=1), out, seed=1, days=2)
    return out


def _mid_session_cuts(sid: np.ndarray, t: np.ndarray, n_cuts: int) -> list[int]:
    """Row indices (rows sorted by session, t, position) where a request with t >= 1 starts, i.e. cuts
    that split a session, spread over the rows."""
    starts = np.flatnonzero((t > 0) & np.r_[True, (t[1:] != t[:-1]) | (sid[1:] != sid[:-1])])
    assert starts.size >= n_cuts
    return [int(starts[round((i + 1) * (starts.size - 1) / (n_cuts + 1))]) for i in range(n_cuts)]


@pytest.fixture(scope="module")
def split_dir(sim_dir, tmp_path_factory) -> Path:
    """The simulated rows rewritten so that sessions are cut across files (3 files per day, rows of
    each file in reverse order): no single file holds whole sessions."""
    data = read_logs(sim_dir)
    c = data.columns
    out = tmp_path_factory.mktemp("shard") / "split"
    with LogWriter(out, data.meta) as w:
        for day in np.unique(c["day"]).tolist():
            rows = np.flatnonzero(c["day"] == day)
            rows = rows[np.lexsort((c["position"][rows], c["t"][rows], c["session_id"][rows]))]
            cuts = _mid_session_cuts(c["session_id"][rows], c["t"][rows], 2)
            for chunk in np.split(rows, cuts):
                w.write(day, {k: v[chunk[::-1]] for k, v in c.items()})
    return out


def _keys(data: LoggedData) -> np.ndarray:
    """(session_id, t, position) of every row, sorted: (N, 3) int64."""
    c = data.columns
    k = np.stack([c["session_id"], c["t"], c["position"]], axis=1).astype(np.int64)
    return k[np.lexsort(k.T[::-1])]


def _sorted_cols(data: LoggedData) -> dict[str, np.ndarray]:
    c = data.columns
    order = np.lexsort((c["position"], c["t"], c["session_id"]))
    return {k: v[order] for k, v in c.items()}


def _assert_same_rows(a: LoggedData, b: LoggedData) -> None:
    assert len(a) == len(b)
    assert set(a.columns) == set(b.columns)
    np.testing.assert_array_equal(_keys(a), _keys(b))
    ca, cb = _sorted_cols(a), _sorted_cols(b)  # keys are unique, so this pairs rows up
    for name in ca:
        np.testing.assert_array_equal(ca[name], cb[name], err_msg=name)


@pytest.fixture(scope="module")
def sharded(split_dir, tmp_path_factory) -> tuple[Path, ShardInfo, list[int]]:
    out = tmp_path_factory.mktemp("shard") / "sharded"
    ticks: list[int] = []
    info = shard_dataset(split_dir, out, N_SHARDS, progress=ticks.append)
    return out, info, ticks


# --- the hash ----------------------------------------------------------------------------------------


def test_session_hash_is_splitmix64():
    assert splitmix64_first(0) == 0xE220A8397B1DCDAF  # published first output of splitmix64, seed 0
    ids = [0, 1, 2, 7, 12345, 2**40 + 3, 2**63 - 1, -1, -(2**63)]
    h = session_hash(np.array(ids, dtype=np.int64))
    assert h.dtype == np.uint64 and h.shape == (len(ids),)
    assert [int(x) for x in h] == [splitmix64_first(i & MASK) for i in ids]
    assert int(session_hash(0)) == 0xE220A8397B1DCDAF  # scalars work too
    assert session_hash(np.zeros((2, 3), np.int32)).shape == (2, 3)
    with pytest.raises(TypeError, match="integers"):
        session_hash(np.array([1.0, 2.0]))


def test_session_shard_fixed_values():
    ids = np.array([0, 1, 2, 7, 12345, -1], dtype=np.int64)
    # by hand: splitmix64_first(id mod 2**64) % n (frozen: changing them moves every session to another shard)
    assert session_shard(ids, 7).tolist() == [2, 2, 4, 2, 5, 0]
    assert session_shard(ids, 4).tolist() == [3, 1, 2, 3, 0, 0]
    assert session_shard(ids, 1000).tolist() == [535, 465, 110, 487, 944, 936]
    for n in (1, 4, 7, 1000):
        assert session_shard(ids, n).tolist() == [splitmix64_first(int(i) & MASK) % n for i in ids]
    assert session_shard(ids, 7).dtype == np.int64
    assert session_shard(ids, 1).tolist() == [0] * len(ids)


def test_session_shard_spreads_ids():
    counts = np.bincount(session_shard(np.arange(40_000), 8), minlength=8)
    assert counts.min() > 4_700 and counts.max() < 5_300  # consecutive ids spread evenly


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", None])
def test_bad_n_shards(bad, tmp_path, split_dir):
    with pytest.raises(ValueError, match="n_shards"):
        session_shard(np.arange(3), bad)
    with pytest.raises(ValueError, match="n_shards"):
        shard_dataset(split_dir, tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()


# --- shard_dataset -----------------------------------------------------------------------------------


def test_source_files_cut_sessions(split_dir, sim_dir):
    """The fixture does what the other tests rely on: whole dataset valid, no single file valid."""
    build_transitions(read_logs(split_dir))
    files = sorted(split_dir.rglob("*.parquet"))
    assert len(files) == 6
    for f in files:
        with pytest.raises(LogDataError):
            build_transitions(read_logs(f))
    _assert_same_rows(read_logs(split_dir), read_logs(sim_dir))


def test_shards_hold_whole_sessions(sharded, split_dir):
    out, info, _ = sharded
    shards = list_shards(out)
    assert [p.name for p in shards] == [f"shard={k:05d}" for k in range(N_SHARDS)]
    seen: dict[int, int] = {}
    for k, p in enumerate(shards):
        data = read_logs(p)
        assert len(data) == info.rows_per_shard[k]
        if len(data):
            build_transitions(data)  # whole sessions: every request complete, t = 0..T-1, done at the end
        sid = np.unique(data.columns["session_id"])
        assert (session_shard(sid, N_SHARDS) == k).all()
        for s in sid.tolist():
            assert s not in seen, f"session {s} in shards {seen[s]} and {k}"
            seen[s] = k
    assert set(seen) == set(np.unique(read_logs(split_dir).columns["session_id"]).tolist())
    assert sum(1 for r in info.rows_per_shard if r) >= 2  # the data really was split


def test_union_equals_source(sharded, split_dir):
    out, info, ticks = sharded
    src, dst = read_logs(split_dir), read_logs(out)
    _assert_same_rows(dst, src)
    assert sum(info.rows_per_shard) == len(src)
    assert info.n_shards == N_SHARDS
    assert info.files == len(list(out.rglob("*.parquet"))) == len(dst.files)
    assert ticks == [pq.ParquetFile(f).metadata.num_rows for f in sorted(split_dir.rglob("*.parquet"))]
    build_transitions(dst)


def test_layout_and_meta(sharded, split_dir):
    out, info, _ = sharded
    src_meta = json.loads((split_dir / "_meta.json").read_text())
    top = json.loads((out / "_meta.json").read_text())
    assert top["info"]["sharded"] == {"n_shards": N_SHARDS, "by": "session_hash", "source": str(split_dir)}
    assert {k: v for k, v in top["info"].items() if k != "sharded"} == src_meta["info"]
    for key in ("feature_spec", "list_len", "schema_version", "days"):
        assert top[key] == src_meta[key], key
    assert top["rows"] == src_meta["rows"] == sum(info.rows_per_shard)
    assert top["files"] == info.files
    assert sorted(p.name for p in out.iterdir()) == ["_meta.json"] + [f"shard={k:05d}" for k in range(N_SHARDS)]
    for k, p in enumerate(list_shards(out)):
        m = json.loads((p / "_meta.json").read_text())
        assert m["info"]["sharded"] == {**top["info"]["sharded"], "shard": k}
        assert m["rows"] == info.rows_per_shard[k]
        names = sorted(f.relative_to(p).as_posix() for f in p.rglob("*.parquet"))
        assert len(names) == m["files"]
        assert sorted(int(n.rsplit("-", 1)[1].split(".")[0]) for n in names) == list(range(m["files"]))
        for f in p.rglob("*.parquet"):
            assert f.parent.name.startswith("day=") and f.parent.parent == p
            t = pq.read_table(f, columns=["session_id", "t", "position", "day"])
            key = [t.column(c).to_numpy() for c in ("session_id", "t", "position")]
            order = np.lexsort(key[::-1])
            assert (order == np.arange(len(order))).all(), f"{f} not in (session_id, t, position) order"
            assert (t.column("day").to_numpy() == int(f.parent.name[4:])).all()
    assert is_sharded(out) and not is_sharded(split_dir) and not is_sharded(out / "nope")


def test_deterministic_and_overwrite(sharded, split_dir, tmp_path):
    out, info, _ = sharded
    again = tmp_path / "again"
    assert shard_dataset(split_dir, again, N_SHARDS) == info
    files = sorted(f.relative_to(out) for f in out.rglob("*.parquet"))
    assert files == sorted(f.relative_to(again) for f in again.rglob("*.parquet"))
    for f in files:
        assert (out / f).read_bytes() == (again / f).read_bytes(), f

    with pytest.raises(FileExistsError, match="overwrite"):
        shard_dataset(split_dir, again, 2)
    assert len(list_shards(again)) == N_SHARDS  # untouched
    info2 = shard_dataset(split_dir, again, 2, overwrite=True)  # old shards are gone, not mixed in
    assert [p.name for p in list_shards(again)] == ["shard=00000", "shard=00001"]
    assert info2.n_shards == 2 and sum(info2.rows_per_shard) == sum(info.rows_per_shard)
    _assert_same_rows(read_logs(again), read_logs(split_dir))

    plain = tmp_path / "plain"  # an ordinary (unsharded) dataset may be overwritten too
    write_dataset(plain, [(0, make_columns((2, 1)))])
    shard_dataset(split_dir, plain, 3, overwrite=True)
    assert len(list_shards(plain)) == 3


def test_never_deletes_foreign_directory(split_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a logged-data dataset"):
        shard_dataset(split_dir, mine, 2, overwrite=True)
    assert (mine / "notes.txt").read_text() == "precious"

    # a foreign file inside a shard directory protects the whole tree
    out = tmp_path / "out"
    shard_dataset(split_dir, out, 2)
    (out / "shard=00001" / "model.pt").write_text("weights")
    with pytest.raises(FileExistsError, match="shard=00001/model.pt"):
        shard_dataset(split_dir, out, 2, overwrite=True)
    assert (out / "shard=00001" / "model.pt").read_text() == "weights"

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        shard_dataset(split_dir, afile, 2, overwrite=True)
    assert afile.read_text() == "x"


def test_dst_and_src_must_not_overlap(tmp_path):
    src = write_dataset(tmp_path / "src", [(0, make_columns((2, 1)))])
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for dst in (src, src / "shards", src / "day=0" / "x"):
        with pytest.raises(ValueError, match="source"):
            shard_dataset(src, dst, 2, overwrite=True)
    inner = tmp_path / "outer" / "shard=00000"  # the source inside the destination
    write_dataset(inner, [(0, make_columns((2, 1)))])
    with pytest.raises(ValueError, match="inside the destination"):
        shard_dataset(inner, tmp_path / "outer", 2, overwrite=True)
    assert (inner / "_meta.json").is_file()
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_one_shard_and_empty_shards(tmp_path):
    cols = make_columns((3, 1, 2), first_session=100)
    src = write_dataset(tmp_path / "src", [(0, cols), (1, make_columns((2,), day=1, first_session=200))])
    info = shard_dataset(src, tmp_path / "one", 1)
    assert info.n_shards == 1 and info.rows_per_shard == [len(read_logs(src))]
    assert [p.name for p in list_shards(tmp_path / "one")] == ["shard=00000"]
    _assert_same_rows(read_logs(tmp_path / "one" / "shard=00000"), read_logs(src))

    n = 16  # 4 sessions: at least 12 shards are empty but still present, with a meta saying 0 rows
    info = shard_dataset(src, tmp_path / "many", n)
    shards = list_shards(tmp_path / "many")
    assert len(shards) == n == len(info.rows_per_shard)
    expected = np.bincount(session_shard(read_logs(src).columns["session_id"], n), minlength=n)
    assert info.rows_per_shard == expected.tolist()
    empty = [p for p, r in zip(shards, info.rows_per_shard, strict=True) if r == 0]
    assert len(empty) >= n - 4
    for p in empty:
        assert len(read_logs(p)) == 0 and json.loads((p / "_meta.json").read_text())["rows"] == 0
    _assert_same_rows(read_logs(tmp_path / "many"), read_logs(src))


def test_reshard_a_sharded_dataset_and_a_single_file(sharded, split_dir, tmp_path):
    out, _, _ = sharded
    info = shard_dataset(out, tmp_path / "re", 3)
    assert info.n_shards == 3
    _assert_same_rows(read_logs(tmp_path / "re"), read_logs(split_dir))
    for p in list_shards(tmp_path / "re"):
        build_transitions(read_logs(p))

    one = next(iter(sorted(split_dir.rglob("*.parquet"))))  # a single file is a source too
    shard_dataset(one, tmp_path / "single", 2)
    _assert_same_rows(read_logs(tmp_path / "single"), read_logs(one))


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        shard_dataset(tmp_path / "missing", tmp_path / "out", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogDataError, match="_meta.json"):
        shard_dataset(tmp_path / "empty", tmp_path / "out", 2)
    assert not (tmp_path / "out").exists()

    src = write_dataset(tmp_path / "src", [(0, make_columns((2,))), (1, make_columns((1,), day=1))])
    bad = src / "day=1" / "part-00001.parquet"  # the day column disagrees with the directory
    bad.rename(src / "day=0" / "part-00001.parquet")
    with pytest.raises(LogDataError, match=r"day=0/part-00001\.parquet: row 0, column 'day'"):
        shard_dataset(src, tmp_path / "out", 2)
    assert not (tmp_path / "out" / "_meta.json").exists()  # an aborted run does not look finished


def test_list_shards_errors(tmp_path, split_dir):
    with pytest.raises(ValueError, match=str(split_dir)):
        list_shards(split_dir)
    with pytest.raises(FileNotFoundError):
        list_shards(tmp_path / "nope")
    out = tmp_path / "out"
    shard_dataset(split_dir, out, 3)
    (out / "shard=00001").rename(tmp_path / "moved")
    with pytest.raises(ValueError, match=r"n_shards=3.*missing K=\[1\]"):
        list_shards(out)
