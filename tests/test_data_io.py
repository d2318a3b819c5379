"""Logged-data I/O: round trips, determinism, and one test per kind of bad input (``docs/design.md#logged-data``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _logs import SPEC, make_columns, make_meta, take_rows, write_dataset

from rlmtf.core.schema import arrow_schema
from rlmtf.data import LogDataError, LogWriter, read_logs, validate_logs

FILE = "day=0/part-00000.parquet"


def _concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assert_columns_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)  # same columns, same (schema) order
    for k, w in want.items():
        assert got[k].dtype == w.dtype, k
        assert got[k].shape == w.shape, k
        np.testing.assert_array_equal(got[k], w, err_msg=k)


# --- round trips -----------------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path: Path) -> None:
    a = make_columns((3, 1, 2), day=0, seed=1)
    b = make_columns((2, 2), day=1, first_session=10, seed=2)
    c = make_columns((1,), day=1, first_session=20, seed=3)
    write_dataset(tmp_path / "ds", [(0, a), (1, b), (1, c)])

    data = read_logs(tmp_path / "ds")
    _assert_columns_equal(data.columns, _concat(a, b, c))
    assert list(data.columns) == arrow_schema(SPEC).names
    for k, v in data.columns.items():
        assert v.flags.c_contiguous and v.flags.writeable, k
    assert data.meta.feature_spec == SPEC
    assert data.meta.list_len == 5
    assert data.meta.info == {"made_by": "tests/_logs.py"}
    assert data.files == [FILE, "day=1/part-00001.parquet", "day=1/part-00002.parquet"]
    assert len(data) == 55
    assert data.file_index.dtype == np.int32 and data.file_row.dtype == np.int64
    np.testing.assert_array_equal(data.file_index, np.repeat([0, 1, 2], [30, 20, 5]))
    np.testing.assert_array_equal(data.file_row, np.r_[np.arange(30), np.arange(20), np.arange(5)])
    assert data.locate(33) == "day=1/part-00001.parquet: row 3"

    meta = json.loads((tmp_path / "ds" / "_meta.json").read_text())
    assert meta["rows"] == 55 and meta["files"] == 3 and meta["days"] == [0, 1]
    assert meta["list_len"] == 5 and meta["feature_spec"] == SPEC.to_json()


def test_true_scores_round_trip(tmp_path: Path) -> None:
    a = make_columns((2, 1), true_scores=True)
    write_dataset(tmp_path / "ds", [(0, a)])
    data = read_logs(tmp_path / "ds")
    assert "true_scores" in data.columns
    _assert_columns_equal(data.columns, a)


def test_optional_column_must_be_given_always_or_never(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "ds", make_meta()) as w:
        w.write(0, make_columns((1,), true_scores=True))
        with pytest.raises(LogDataError, match=r"column\(s\) 'true_scores'"):
            w.write(0, make_columns((1,)))


def test_writer_casts_integer_and_float_widths(tmp_path: Path) -> None:
    a = make_columns((2, 1))
    wide = dict(a)
    wide["t"] = a["t"].astype(np.int64)
    wide["position"] = a["position"].astype(np.uint8)
    wide["click"] = a["click"].astype(bool)
    wide["mtl_scores"] = a["mtl_scores"].astype(np.float64)
    wide["reward"] = a["reward"].astype(np.float64)
    del wide["day"]  # filled from write(day, ...)
    write_dataset(tmp_path / "ds", [(0, wide)])
    _assert_columns_equal(read_logs(tmp_path / "ds").columns, a)


def test_reader_casts_integer_and_float_widths(tmp_path: Path) -> None:
    a = make_columns((2, 1))
    write_dataset(tmp_path / "ds", [(0, a)])
    path = tmp_path / "ds" / FILE
    table = pq.read_table(path)
    table = _replace(table, "position", pa.array(a["position"].astype(np.int16)))
    table = _replace(table, "reward", pa.array(a["reward"].astype(np.float64)))
    flat = pa.array(a["action"].astype(np.float64).reshape(-1))
    table = _replace(table, "action", pa.FixedSizeListArray.from_arrays(flat, 10))
    pq.write_table(table, path)
    _assert_columns_equal(read_logs(tmp_path / "ds").columns, a)


def test_same_input_gives_byte_identical_files(tmp_path: Path) -> None:
    parts = [(0, make_columns((3, 1))), (1, make_columns((2,), day=1, first_session=7))]
    write_dataset(tmp_path / "one", parts)
    write_dataset(tmp_path / "two", parts)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["_meta.json", FILE, "day=1/part-00001.parquet"]
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", [(0, make_columns((2,))), (3, make_columns((1,), day=3))])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        LogWriter(tmp_path / "ds", make_meta())
    with LogWriter(tmp_path / "ds", make_meta(), overwrite=True) as w:
        w.write(1, make_columns((1,), day=1))
    data = read_logs(tmp_path / "ds")
    assert data.files == ["day=1/part-00000.parquet"]  # old parts are gone, counter restarts
    LogWriter(tmp_path / "empty", make_meta())  # an empty or missing directory is fine
    LogWriter(tmp_path / "empty", make_meta())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a logged-data dataset"):
        LogWriter(tmp_path / "other", make_meta(), overwrite=True)
    assert (tmp_path / "other" / "notes.txt").exists()


def test_aborted_writer_leaves_no_meta_and_no_temp_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), LogWriter(tmp_path / "ds", make_meta()) as w:
        w.write(0, make_columns((1,)))
        raise RuntimeError("simulator crashed")
    assert not (tmp_path / "ds" / "_meta.json").exists()
    assert [p.name for p in (tmp_path / "ds").rglob("*") if p.is_file()] == ["part-00000.parquet"]
    with pytest.raises(LogDataError, match="_meta.json"):
        read_logs(tmp_path / "ds")


def test_single_file_read_takes_spec_from_parquet_metadata(tmp_path: Path) -> None:
    a, b = make_columns((2, 1)), make_columns((1,), day=1, first_session=9)
    write_dataset(tmp_path / "ds", [(0, a), (1, b)])
    path = tmp_path / "ds" / "day=1" / "part-00001.parquet"
    data = read_logs(path)
    assert data.meta.feature_spec == SPEC and data.meta.list_len == 5
    assert data.files == [str(path)]
    _assert_columns_equal(data.columns, b)
    assert data.locate(2) == f"{path}: row 2"


def test_single_file_without_list_len_infers_it(tmp_path: Path) -> None:
    a = make_columns((2,))
    write_dataset(tmp_path / "ds", [(0, a)])
    table = pq.read_table(tmp_path / "ds" / FILE)
    path = tmp_path / "plain.parquet"
    pq.write_table(table.replace_schema_metadata(arrow_schema(SPEC).metadata), path)
    assert read_logs(path).meta.list_len == 5


def test_column_subset(tmp_path: Path) -> None:
    a = make_columns((2, 1))
    write_dataset(tmp_path / "ds", [(0, a)])
    data = read_logs(tmp_path / "ds", columns=["reward", "session_id", "action"])
    assert list(data.columns) == ["session_id", "action", "reward"]  # schema order
    np.testing.assert_array_equal(data.columns["action"], a["action"])
    with pytest.raises(ValueError, match="unknown column"):
        read_logs(tmp_path / "ds", columns=["nope"])


def test_validate_logs_summary(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", [(0, make_columns((3, 1))), (1, make_columns((2, 2, 1), day=1, first_session=7))])
    assert validate_logs(tmp_path / "ds") == {
        "rows": 45, "files": 2, "sessions": 5, "requests": 9, "users": 4, "days": 2,
    }


# --- the writer refuses bad input -----------------------------------------------------------------


def test_writer_refuses_wrong_shape_naming_the_column(tmp_path: Path) -> None:
    a = make_columns((2,))
    a["mtl_scores"] = a["mtl_scores"][:, :4]
    with LogWriter(tmp_path / "ds", make_meta()) as w, pytest.raises(LogDataError) as e:
        w.write(0, a)
    assert "column 'mtl_scores'" in str(e.value) and "(10, 4)" in str(e.value) and "(10, 5)" in str(e.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("reward"), "column 'reward': missing"),
        (lambda c: c.update(extra=np.zeros(10)), "column 'extra': not in the schema"),
        (lambda c: c.update(t=c["t"].astype(np.float32)), "column 't': expected an integer, found numpy float32"),
        (lambda c: c.update(done=c["done"].astype(np.int8)), "column 'done': expected a bool"),
        (lambda c: c.update(session_id=c["session_id"][:-1]), "column 'session_id': shape (9,)"),
        (lambda c: c["action"].__setitem__((3, 4), 1.5), "row 3, column 'action': value 1.5 outside [-1, 1]"),
        (lambda c: c.update(t=c["t"].astype(np.int64) + 2**40), "row 0, column 't': value 1099511627776"),
    ],
)
def test_writer_refuses_bad_columns(tmp_path: Path, edit: Callable[[dict], object], message: str) -> None:
    a = make_columns((2,))
    edit(a)
    w = LogWriter(tmp_path / "ds", make_meta())
    with pytest.raises(LogDataError) as e:
        w.write(0, a)
    assert str(e.value).startswith(FILE + ": ")
    assert message in str(e.value)
    assert not list((tmp_path / "ds").rglob("*.parquet"))  # nothing half-written


# --- the reader refuses bad files ------------------------------------------------------------------

N_ROWS = 30  # make_columns((3, 2, 1)): 6 requests of 5 items
BAD_ROW = 17


def _replace(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, pa.field(name, array.type), array)


def _bad_dataset(tmp_path: Path, corrupt: Callable[[pa.Table, dict[str, np.ndarray]], pa.Table]) -> Path:
    """A valid one-file dataset whose file is then rewritten, corrupted, with plain pyarrow."""
    cols = make_columns((3, 2, 1))
    write_dataset(tmp_path / "ds", [(0, cols)])
    path = tmp_path / "ds" / FILE
    pq.write_table(corrupt(pq.read_table(path), cols), path)
    return tmp_path / "ds"


def _list_with(cols: dict[str, np.ndarray], name: str, row: int, dim: int, value: float) -> pa.Array:
    a = cols[name].copy()
    a[row, dim] = value
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def _scalar_with(cols: dict[str, np.ndarray], name: str, row: int, value: float) -> pa.Array:
    a = cols[name].copy()
    a[row] = value
    return pa.array(a)


VALUE_CASES = {
    "nan_score": ("mtl_scores", lambda c: _list_with(c, "mtl_scores", BAD_ROW, 2, np.nan),
                  "value nan is not finite (dimension 2)"),
    "negative_score": ("mtl_scores", lambda c: _list_with(c, "mtl_scores", BAD_ROW, 1, -0.25),
                       "negative score -0.25 (dimension 1)"),
    "inf_feature": ("item_features", lambda c: _list_with(c, "item_features", BAD_ROW, 0, np.inf),
                    "value inf is not finite (dimension 0)"),
    "action_outside": ("action", lambda c: _list_with(c, "action", BAD_ROW, 4, 1.3),
                       "value 1.3 outside [-1, 1] (dimension 4)"),
    "mu_bp_outside": ("mu_bp", lambda c: _list_with(c, "mu_bp", BAD_ROW, 0, -1.5),
                      "value -1.5 outside [-1, 1] (dimension 0)"),
    "lower_above_upper": ("lower_b", lambda c: _list_with(c, "lower_b", BAD_ROW, 3, 0.2),
                          "lower_b 0.2 > upper_b 0.15 at dimension 3"),
    "nan_reward": ("reward", lambda c: _scalar_with(c, "reward", BAD_ROW, np.nan), "value nan is not finite"),
    "inf_watch_time": ("watch_time", lambda c: _scalar_with(c, "watch_time", BAD_ROW, -np.inf),
                       "value -inf is not finite"),
    "feedback_not_binary": ("click", lambda c: _scalar_with(c, "click", BAD_ROW, 2), "value 2 is not 0 or 1"),
    "position_out_of_range": ("position", lambda c: _scalar_with(c, "position", BAD_ROW, 5),
                              "value 5 outside [0, 5) (list_len=5)"),
    "negative_position": ("position", lambda c: _scalar_with(c, "position", BAD_ROW, -1),
                          "value -1 outside [0, 5) (list_len=5)"),
    "day_differs_from_directory": ("day", lambda c: _scalar_with(c, "day", BAD_ROW, 4),
                                   "value 4 but the file lies in day=0"),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_bad_values_name_file_row_and_column(tmp_path: Path, case: str) -> None:
    column, make_array, message = VALUE_CASES[case]
    ds = _bad_dataset(tmp_path, lambda t, c: _replace(t, column, make_array(c)))
    with pytest.raises(LogDataError) as e:
        read_logs(ds)
    assert str(e.value) == f"{FILE}: row {BAD_ROW}, column '{column}': {message}"
    # nothing is dropped: without value checks every row comes back, the bad value included
    data = read_logs(ds, validate=False)
    assert len(data) == N_ROWS
    assert not np.array_equal(data.columns[column], make_columns((3, 2, 1))[column], equal_nan=True)


def test_action_message_matches_the_documented_format(tmp_path: Path) -> None:
    ds = _bad_dataset(tmp_path, lambda t, c: _replace(t, "action", _list_with(c, "action", BAD_ROW, 4, 1.3)))
    with pytest.raises(LogDataError, match=r"^day=0/part-00000\.parquet: row 17, column 'action': value 1\.3 outside"):
        read_logs(ds)


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    ds = _bad_dataset(tmp_path, lambda t, c: t.drop_columns(["mtl_scores"]))
    with pytest.raises(LogDataError) as e:
        read_logs(ds)
    assert str(e.value) == f"{FILE}: column 'mtl_scores' missing"
    with pytest.raises(LogDataError, match="column 'mtl_scores' missing"):
        read_logs(ds, validate=False)  # structural checks always run


def test_ragged_list_names_first_bad_row_and_length(tmp_path: Path) -> None:
    def ragged(table: pa.Table, cols: dict[str, np.ndarray]) -> pa.Table:
        rows = cols["item_features"]
        lengths = np.full(len(rows), 3)
        lengths[BAD_ROW] = 2  # one short row in a variable-size list
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
        values = np.concatenate([r[:k] for r, k in zip(rows, lengths, strict=True)])
        return _replace(table, "item_features", pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))

    ds = _bad_dataset(tmp_path, ragged)
    with pytest.raises(LogDataError) as e:
        read_logs(ds, validate=False)
    assert str(e.value) == (
        f"{FILE}: row {BAD_ROW}, column 'item_features': list of length 2, expected 3 (ragged list)"
    )


def test_variable_size_list_of_the_right_length_is_read(tmp_path: Path) -> None:
    def as_list(table: pa.Table, cols: dict[str, np.ndarray]) -> pa.Table:
        a = cols["mtl_scores"]
        offsets = pa.array(np.arange(0, a.size + 1, a.shape[1], dtype=np.int32))
        return _replace(table, "mtl_scores", pa.ListArray.from_arrays(offsets, pa.array(a.reshape(-1))))

    ds = _bad_dataset(tmp_path, as_list)
    np.testing.assert_array_equal(read_logs(ds).columns["mtl_scores"], make_columns((3, 2, 1))["mtl_scores"])


def test_fixed_size_list_of_wrong_size(tmp_path: Path) -> None:
    def short(table: pa.Table, cols: dict[str, np.ndarray]) -> pa.Table:
        a = np.ascontiguousarray(cols["action"][:, :9])
        return _replace(table, "action", pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 9))

    ds = _bad_dataset(tmp_path, short)
    with pytest.raises(LogDataError, match=r"^day=0/part-00000\.parquet: row 0, column 'action': .*length 9, "
                                           r"expected 10"):
        read_logs(ds)


@pytest.mark.parametrize(
    ("column", "make_array", "found"),
    [
        ("action", lambda c: pa.array([[str(v) for v in r] for r in c["action"]]), "string>"),
        ("action", lambda c: pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(N_ROWS * 10, np.int32)), 10),
         "int32>[10]"),
        ("session_id", lambda c: pa.array(c["session_id"].astype(np.float64)), "double"),
        ("reward", lambda c: pa.array(c["reward"].astype(np.int64)), "int64"),
        ("done", lambda c: pa.array(c["done"].astype(np.int8)), "int8"),
        ("click", lambda c: pa.array(c["click"].astype(str)), "string"),
    ],
)
def test_wrong_dtype_says_expected_and_found(
    tmp_path: Path, column: str, make_array: Callable[[dict], pa.Array], found: str
) -> None:
    ds = _bad_dataset(tmp_path, lambda t, c: _replace(t, column, make_array(c)))
    with pytest.raises(LogDataError) as e:
        read_logs(ds, validate=False)
    msg = str(e.value)
    assert msg.startswith(f"{FILE}: row 0, column '{column}': expected ")
    assert "found " in msg and found in msg


def test_null_in_a_column(tmp_path: Path) -> None:
    def with_null(table: pa.Table, cols: dict[str, np.ndarray]) -> pa.Table:
        mask = np.arange(N_ROWS) == BAD_ROW
        return _replace(table, "watch_time", pa.array(cols["watch_time"], mask=mask))

    with pytest.raises(LogDataError) as e:
        read_logs(_bad_dataset(tmp_path, with_null), validate=False)
    assert str(e.value) == f"{FILE}: row {BAD_ROW}, column 'watch_time': null value"


def test_null_inside_a_list(tmp_path: Path) -> None:
    def with_null(table: pa.Table, cols: dict[str, np.ndarray]) -> pa.Table:
        flat = cols["context"].reshape(-1)
        mask = np.arange(flat.size) == BAD_ROW * 2 + 1
        return _replace(table, "context", pa.FixedSizeListArray.from_arrays(pa.array(flat, mask=mask), 2))

    with pytest.raises(LogDataError) as e:
        read_logs(_bad_dataset(tmp_path, with_null))
    assert str(e.value) == f"{FILE}: row {BAD_ROW}, column 'context': null value (dimension 1)"


def test_null_list(tmp_path: Path) -> None:
    def with_null(table: pa.Table, cols: dict[str, np.ndarray]) -> pa.Table:
        rows = [None if i == BAD_ROW else r.tolist() for i, r in enumerate(cols["upper_b"])]
        return _replace(table, "upper_b", pa.array(rows, type=pa.list_(pa.float32(), 10)))

    with pytest.raises(LogDataError, match=rf"^{FILE}: row {BAD_ROW}, column 'upper_b': null value$"):
        read_logs(_bad_dataset(tmp_path, with_null))


def test_error_names_the_right_file_among_several(tmp_path: Path) -> None:
    a, b = make_columns((2,)), make_columns((3,), first_session=5)
    write_dataset(tmp_path / "ds", [(0, a), (0, b)])
    path = tmp_path / "ds" / "day=0" / "part-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(_replace(table, "mtl_scores", _list_with(b, "mtl_scores", 12, 0, np.nan)), path)
    with pytest.raises(LogDataError, match=r"^day=0/part-00001\.parquet: row 12, column 'mtl_scores'"):
        read_logs(tmp_path / "ds")


def test_shuffled_file_rows_keep_row_numbers(tmp_path: Path) -> None:
    cols = make_columns((2, 2))
    perm = np.random.default_rng(0).permutation(20)
    shuffled = take_rows(cols, perm)
    write_dataset(tmp_path / "ds", [(0, shuffled)])
    data = read_logs(tmp_path / "ds")
    _assert_columns_equal(data.columns, shuffled)


def test_concat_logs_keeps_rows_and_locations(tmp_path: Path) -> None:
    from rlmtf.data import build_transitions, concat_logs

    a = make_columns((3, 1), day=0, seed=1)
    b = make_columns((2,), day=1, first_session=10, seed=2)
    write_dataset(tmp_path / "a", [(0, a)])
    write_dataset(tmp_path / "b", [(1, b)])
    da, db = read_logs(tmp_path / "a"), read_logs(tmp_path / "b")
    both = concat_logs([da, db])
    assert len(both) == len(da) + len(db) == 30
    _assert_columns_equal(both.columns, _concat(a, b))
    assert both.files == da.files + db.files
    # a row of the second part is located in the second part's file
    assert both.locate(len(da) + 3) == db.locate(3)
    assert len(build_transitions(both)) == 6  # requests of both parts
    # the same sessions twice would merge their requests: refused, naming the session
    with pytest.raises(LogDataError, match="repeats session_id 100"):
        concat_logs([da, da])
    with pytest.raises(LogDataError, match="columns"):
        concat_logs([da, read_logs(tmp_path / "b", columns=["session_id", "t"])])
