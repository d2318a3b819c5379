"""Request-level transitions (``docs/design.md#request-level-transitions``): layout, TD pointers,
structure checks, splits, batches."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from _logs import make_columns, make_meta, take_rows, write_dataset

from rlmtf.core.schema import DatasetMeta
from rlmtf.data import LogDataError, LogWriter, Transitions, build_transitions, read_logs
from rlmtf.data.transitions import CANDIDATE_FIELDS, RequestBatch


def _transitions(tmp_path: Path, *parts: tuple[int, dict[str, np.ndarray]]) -> Transitions:
    return build_transitions(read_logs(write_dataset(tmp_path / "ds", list(parts))))


def test_hand_checked_tiny_dataset(tmp_path: Path) -> None:
    cols = make_columns((3, 1))  # session 100 with t = 0, 1, 2; session 101 with t = 0
    tr = _transitions(tmp_path, (0, cols))

    assert len(tr) == 4
    np.testing.assert_array_equal(tr.session_id, [100, 100, 100, 101])
    np.testing.assert_array_equal(tr.t, [0, 1, 2, 0])
    np.testing.assert_array_equal(tr.next_index, [1, 2, 2, 3])
    np.testing.assert_array_equal(tr.done, np.array([0, 0, 1, 1], np.float32))
    # reward = 10 t + position, so a request earns 0+1+2+3+4 + 50 t
    np.testing.assert_array_equal(tr.reward, np.array([10, 60, 110, 10], np.float32))
    np.testing.assert_array_equal(tr.item_reward[1], np.array([10, 11, 12, 13, 14], np.float32))
    np.testing.assert_array_equal(tr.user_id, cols["user_id"][[0, 5, 10, 15]])
    np.testing.assert_array_equal(tr.day, [0, 0, 0, 0])
    for name in ("done", "reward", "item_reward", "user_state", "enhanced_state", "action"):
        assert getattr(tr, name).dtype == np.float32, name

    # user_state = profile (3) ++ history (4) ++ context (2) of the request's position-0 row
    assert tr.user_state.shape == (4, 9)
    np.testing.assert_array_equal(tr.user_state[2, :3], [100, 2, 0.5])
    for r in range(4):
        i = 5 * r
        want = np.concatenate([cols["user_profile"][i], cols["user_history"][i], cols["context"][i]])
        np.testing.assert_array_equal(tr.user_state[r], want)

    # enhanced_state = user_state ++ item_features (3) ++ mtl_scores (5), one per shown item
    assert tr.enhanced_state.shape == (4, 5, 17)
    for r in range(4):
        for j in range(5):
            i = 5 * r + j
            want = np.concatenate([cols[g][i] for g in
                                   ("user_profile", "user_history", "context", "item_features", "mtl_scores")])
            np.testing.assert_array_equal(tr.enhanced_state[r, j], want)
    np.testing.assert_array_equal(tr.enhanced_state[3, 4, 9:12], cols["item_features"][19])
    np.testing.assert_array_equal(tr.enhanced_state[3, 4, 12:], cols["mtl_scores"][19])

    for name in ("action", "mu_bp", "lower_b", "upper_b"):
        got = getattr(tr, name)
        assert got.shape == (4, 5, 10)
        np.testing.assert_array_equal(got, cols[name].reshape(4, 5, 10))
    np.testing.assert_array_equal(tr.row_index, np.arange(20).reshape(4, 5))

    b = tr.batch(np.array([0, 2, 3]))
    np.testing.assert_array_equal(b.next_user_state, tr.user_state[[1, 2, 3]])
    np.testing.assert_array_equal(b.next_enhanced_state, tr.enhanced_state[[1, 2, 3]])
    np.testing.assert_array_equal(b.next_mu_bp, tr.mu_bp[[1, 2, 3]])
    np.testing.assert_array_equal(b.done, [0, 1, 1])


def test_shuffled_rows_on_disk_give_the_same_transitions(tmp_path: Path) -> None:
    cols = make_columns((3, 1, 4, 2, 5), seed=3)
    ordered = _transitions(tmp_path / "a", (0, cols))
    perm = np.random.default_rng(1).permutation(len(cols["t"]))
    half = len(perm) // 2
    shuffled = _transitions(tmp_path / "b", (0, take_rows(cols, perm[:half])), (0, take_rows(cols, perm[half:])))
    for f in fields(Transitions):
        if f.name != "row_index":  # where the rows lie on disk differs, nothing else
            np.testing.assert_array_equal(getattr(shuffled, f.name), getattr(ordered, f.name), err_msg=f.name)
    np.testing.assert_array_equal(perm[shuffled.row_index], ordered.row_index)


def test_sessions_across_files_and_days(tmp_path: Path) -> None:
    tr = _transitions(tmp_path, (0, make_columns((2,), first_session=5)),
                      (1, make_columns((1, 3), day=1, first_session=1)))
    np.testing.assert_array_equal(tr.session_id, [1, 2, 2, 2, 5, 5])
    np.testing.assert_array_equal(tr.day, [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(tr.next_index, [0, 2, 3, 3, 5, 5])


# --- structure errors --------------------------------------------------------------------------------


def _build(tmp_path: Path, cols: dict[str, np.ndarray]) -> Transitions:
    return _transitions(tmp_path, (0, cols))


def test_request_with_four_items(tmp_path: Path) -> None:
    cols = make_columns((3, 1))
    keep = np.ones(20, bool)
    keep[7] = False  # session 100, t = 1, position 2
    with pytest.raises(LogDataError) as e:
        _build(tmp_path, take_rows(cols, keep))
    assert str(e.value) == ("day=0/part-00000.parquet: row 5, column 'position': request (session_id=100, t=1) "
                            "has 4 rows, expected list_len=5")


def test_duplicate_position(tmp_path: Path) -> None:
    cols = make_columns((2,))
    cols["position"][8] = 2  # t = 1 shows positions 0, 1, 2, 2, 4
    with pytest.raises(LogDataError) as e:
        _build(tmp_path, cols)
    assert str(e.value) == ("day=0/part-00000.parquet: row 8, column 'position': request (session_id=100, t=1) "
                            "has positions [0, 1, 2, 2, 4], expected 0..4")


def test_gap_in_t(tmp_path: Path) -> None:
    cols = make_columns((1, 4))  # session 101 with t = 0..3
    gap = take_rows(cols, cols["t"] != 1)  # ... without t = 1; t = 2 now lies at rows 10..14
    with pytest.raises(LogDataError) as e:
        _build(tmp_path, gap)
    assert str(e.value) == ("day=0/part-00000.parquet: row 10, column 't': session_id=101 has t=2 after t=0; "
                            "t must run 0..T-1 without gaps")


def test_session_not_starting_at_zero(tmp_path: Path) -> None:
    cols = make_columns((3,))
    with pytest.raises(LogDataError, match=r"row 0, column 't': session_id=100 has t=1 as its first request"):
        _build(tmp_path, take_rows(cols, cols["t"] != 0))


def test_done_inconsistent_within_a_request(tmp_path: Path) -> None:
    cols = make_columns((2, 1))
    cols["done"][8] = False  # the last request of session 100 (rows 5..9)
    with pytest.raises(LogDataError) as e:
        _build(tmp_path, cols)
    assert str(e.value) == ("day=0/part-00000.parquet: row 8, column 'done': request (session_id=100, t=1) "
                            "has done=True on some rows and done=False on others")


def test_done_before_the_end_of_a_session(tmp_path: Path) -> None:
    cols = make_columns((3,))
    cols["done"][5:10] = True
    with pytest.raises(LogDataError, match=r"row 5, column 'done': done=True but session_id=100 continues at t=2"):
        _build(tmp_path, cols)


def test_missing_done_at_the_end_of_a_session(tmp_path: Path) -> None:
    cols = make_columns((1, 2))
    cols["done"][10:15] = False
    with pytest.raises(LogDataError, match=r"row 10, column 'done': done=False on the last request "
                                           r"\(session_id=101 has T=2\)"):
        _build(tmp_path, cols)


def test_session_with_two_users(tmp_path: Path) -> None:
    cols = make_columns((2,))
    cols["user_id"][6] += 1
    with pytest.raises(LogDataError, match=r"row 6, column 'user_id': session_id=100"):
        _build(tmp_path, cols)


def test_other_list_len(tmp_path: Path) -> None:
    meta = DatasetMeta(feature_spec=make_meta().feature_spec, list_len=3)
    with LogWriter(tmp_path / "ds", meta) as w:
        w.write(0, make_columns((2, 2), list_len=3))
    tr = build_transitions(read_logs(tmp_path / "ds"))
    assert tr.enhanced_state.shape == (4, 3, 17)
    np.testing.assert_array_equal(tr.reward, np.array([3, 33, 3, 33], np.float32))


# --- split, batches, sampling --------------------------------------------------------------------------


@pytest.fixture
def many(tmp_path: Path) -> Transitions:
    """120 sessions of 1..5 requests: 360 requests."""
    lengths = np.tile([1, 2, 3, 4, 5], 24)
    return _transitions(tmp_path, (0, make_columns(tuple(lengths), seed=7)))


def _request_keys(b: RequestBatch) -> list[tuple[int, int]]:
    """(session_id, t), which the test data encode in user_profile."""
    return [(int(s), int(t)) for s, t in b.user_state[:, :2]]


def test_split_by_session(many: Transitions) -> None:
    a, b = many.split(0.8, seed=3)
    assert len(a) + len(b) == len(many)
    sa, sb = set(a.session_id.tolist()), set(b.session_id.tolist())
    assert not sa & sb and sa | sb == set(many.session_id.tolist())
    assert len(sa) == 96
    for part in (a, b):
        assert part.next_index.min() >= 0 and part.next_index.max() < len(part)
        nxt = part.next_index
        np.testing.assert_array_equal(part.session_id[nxt], part.session_id)
        cont = part.done == 0
        np.testing.assert_array_equal(part.t[nxt][cont], part.t[cont] + 1)
        np.testing.assert_array_equal(nxt[~cont], np.flatnonzero(~cont))
        np.testing.assert_array_equal(part.user_state[:, :2], np.stack([part.session_id, part.t], 1))
    a2, _ = many.split(0.8, seed=3)
    np.testing.assert_array_equal(a2.session_id, a.session_id)
    a3, _ = many.split(0.8, seed=4)
    assert set(a3.session_id.tolist()) != sa


def test_batches_cover_each_request_once(many: Transitions) -> None:
    batches = list(many.batches())
    assert [len(b) for b in batches] == [256, 104]  # 256 requests by default
    keys = [k for b in batches for k in _request_keys(b)]
    assert len(keys) == len(set(keys)) == len(many)
    assert set(keys) == set(zip(many.session_id.tolist(), many.t.tolist(), strict=True))

    again = [k for b in many.batches(seed=0) for k in _request_keys(b)]
    other = [k for b in many.batches(seed=1) for k in _request_keys(b)]
    assert again == keys and other != keys
    assert [len(b) for b in many.batches(100, drop_last=True)] == [100, 100, 100]
    ordered = [k for b in many.batches(50, shuffle=False) for k in _request_keys(b)]
    assert ordered == list(zip(many.session_id.tolist(), many.t.tolist(), strict=True))


def test_batch_next_fields_point_at_the_next_request(many: Transitions) -> None:
    b = next(many.batches(64, seed=5))
    sid, t = b.user_state[:, 0], b.user_state[:, 1]
    nsid, nt = b.next_user_state[:, 0], b.next_user_state[:, 1]
    np.testing.assert_array_equal(nsid, sid)
    np.testing.assert_array_equal(nt, np.where(b.done == 1, t, t + 1))
    np.testing.assert_array_equal(b.next_enhanced_state[:, :, :2], b.next_user_state[:, None, :2].repeat(5, 1))
    np.testing.assert_array_equal(b.reward, b.item_reward.sum(1))


def test_sample_is_uniform_with_replacement_and_seeded(many: Transitions) -> None:
    b1 = many.sample(1000, np.random.default_rng(0))
    b2 = many.sample(1000, np.random.default_rng(0))
    assert len(b1) == 1000
    assert _request_keys(b1) == _request_keys(b2)
    assert len(set(_request_keys(b1))) < 1000  # with replacement: 1000 draws from 360


def test_to_torch(many: Transitions) -> None:
    b = many.batch(np.arange(8))
    tensors = b.to_torch()
    # every field but the candidate sample's, which these logs do not carry
    assert set(tensors) == {f.name for f in fields(RequestBatch)} - set(CANDIDATE_FIELDS)
    for name, x in tensors.items():
        assert x.dtype == torch.float32, name
        assert x.device.type == "cpu"
        assert tuple(x.shape) == getattr(b, name).shape, name
    assert tensors["enhanced_state"].shape == (8, 5, 17)
    assert tensors["user_state"].shape == (8, 9)
    assert tensors["action"].shape == (8, 5, 10)
    assert tensors["done"].shape == (8,)


def test_one_batch_type_for_numpy_and_tensor_fields(many: Transitions) -> None:
    """Gathered in numpy or from tensors, in parts and concatenated: the same numbers from to_torch."""
    idx = np.array([3, 0, 17, 3, 200])
    ref = many.batch(idx).to_torch()
    data = {k: torch.as_tensor(v) for k, v in many.arrays().items()}

    def on_tensors(i: np.ndarray) -> RequestBatch:
        return RequestBatch.gather(data, torch.as_tensor(many.next_index), torch.as_tensor(i))

    assert isinstance(on_tensors(idx).reward, torch.Tensor) and len(on_tensors(idx)) == 5
    for parts in ([many.batch(idx[:2]), many.batch(idx[2:])], [on_tensors(idx)],
                  [on_tensors(idx[:1]), on_tensors(idx[1:])]):
        got = RequestBatch.concat(parts).to_torch()
        assert got.keys() == ref.keys()
        for k in ref:
            assert torch.equal(got[k], ref[k]), k
