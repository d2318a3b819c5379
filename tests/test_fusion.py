"""Tests for rlmtf.core.fusion (``docs/design.md#fusion``, the paper's Formula 1) and the action <-> parameter map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlmtf.core.fusion import (
    ACTION_DIM,
    MTL_TASKS,
    N_TASKS,
    ActionSpace,
    check_scores,
    final_score,
    fused_log_score,
    rank_top_l,
)


def test_constants():
    assert MTL_TASKS == ("valid", "watch_time", "finish", "like", "share")
    assert N_TASKS == 5
    assert ACTION_DIM == 10
    assert ActionSpace().dim == 10
    assert ActionSpace(n_tasks=3).dim == 6


# --- ActionSpace ---------------------------------------------------------------------------------


def test_to_params_default_range_ends_and_middle():
    space = ActionSpace()
    a = np.array([[-1.0] * 10, [0.0] * 10, [1.0] * 10])
    power, bias = space.to_params(a)
    assert power.shape == (3, 5) and bias.shape == (3, 5)
    # power in [0, 2]: -1 -> 0, 0 -> 1, +1 -> 2
    np.testing.assert_allclose(power[0], 0.0)
    np.testing.assert_allclose(power[1], 1.0)
    np.testing.assert_allclose(power[2], 2.0)
    # bias in [0.01, 1]: -1 -> 0.01, 0 -> 0.01 + 0.99 / 2 = 0.505, +1 -> 1
    np.testing.assert_allclose(bias[0], 0.01)
    np.testing.assert_allclose(bias[1], 0.505)
    np.testing.assert_allclose(bias[2], 1.0)


def test_to_params_splits_power_then_bias():
    # power dims first: action (0.5, 0, 0, 0, 0 | -0.5, 0, 0, 0, 0)
    a = np.zeros(10)
    a[0], a[5] = 0.5, -0.5
    power, bias = ActionSpace().to_params(a)
    # power_1 = 0 + 2 * (0.5 + 1) / 2 = 1.5 ; bias_1 = 0.01 + 0.99 * (-0.5 + 1) / 2 = 0.01 + 0.2475 = 0.2575
    np.testing.assert_allclose(power, [1.5, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(bias, [0.2575, 0.505, 0.505, 0.505, 0.505])


def test_to_params_custom_range():
    space = ActionSpace(power_range=(-1.0, 3.0), bias_range=(0.1, 0.5))
    a = np.array([[-1.0] * 10, [0.0] * 10, [1.0] * 10])
    power, bias = space.to_params(a)
    # power: -1 -> -1, 0 -> (-1 + 3) / 2 = 1, +1 -> 3 ; bias: -1 -> 0.1, 0 -> 0.3, +1 -> 0.5
    np.testing.assert_allclose(power[:, 0], [-1.0, 1.0, 3.0])
    np.testing.assert_allclose(bias[:, 0], [0.1, 0.3, 0.5])
    # a = 0.5 -> power = -1 + 4 * 0.75 = 2.0; bias = 0.1 + 0.4 * 0.75 = 0.4
    p, b = space.to_params(np.full(10, 0.5))
    np.testing.assert_allclose(p, 2.0)
    np.testing.assert_allclose(b, 0.4)


def test_to_params_custom_task_count():
    space = ActionSpace(n_tasks=2)
    power, bias = space.to_params(np.array([-1.0, 1.0, 0.0, 1.0]))
    np.testing.assert_allclose(power, [0.0, 2.0])
    np.testing.assert_allclose(bias, [0.505, 1.0])
    with pytest.raises(ValueError, match="4"):
        space.to_params(np.zeros(10))


@pytest.mark.parametrize("space", [ActionSpace(), ActionSpace(power_range=(-1.0, 3.0), bias_range=(0.1, 0.5))])
def test_from_params_inverts_to_params_numpy(space):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, size=(7, 3, 10))
    power, bias = space.to_params(a)
    back = space.from_params(power, bias)
    assert back.shape == a.shape
    np.testing.assert_allclose(back, a, atol=1e-12)
    # and the other way round: params -> action -> params
    p2, b2 = space.to_params(space.from_params(power, bias))
    np.testing.assert_allclose(p2, power, atol=1e-12)
    np.testing.assert_allclose(b2, bias, atol=1e-12)


def test_from_params_hand_values():
    # default: power 1.5 -> 2 * 1.5 / 2 - 1 = 0.5; bias 0.01 -> -1, bias 1 -> +1, bias 0.505 -> 0
    a = ActionSpace().from_params(np.array([1.5, 0.0, 2.0, 1.0, 1.0]), np.array([0.01, 1.0, 0.505, 0.505, 0.505]))
    np.testing.assert_allclose(a, [0.5, -1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0], atol=1e-12)


def test_from_params_inverts_to_params_torch():
    space = ActionSpace()
    g = torch.Generator().manual_seed(0)
    a = torch.rand((4, 6, 10), generator=g, dtype=torch.float64) * 2 - 1
    power, bias = space.to_params(a)
    assert isinstance(power, torch.Tensor) and isinstance(bias, torch.Tensor)
    back = space.from_params(power, bias)
    assert isinstance(back, torch.Tensor)
    assert back.shape == a.shape
    torch.testing.assert_close(back, a, atol=1e-12, rtol=0)
    # torch and numpy agree
    p_np, b_np = space.to_params(a.numpy())
    np.testing.assert_allclose(power.numpy(), p_np, atol=1e-12)
    np.testing.assert_allclose(bias.numpy(), b_np, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"power_range": (2.0, 2.0)},
        {"power_range": (2.0, 0.0)},
        {"bias_range": (0.0, 1.0)},  # low end must be > 0 (log(0 + 0) = -inf)
        {"bias_range": (-0.1, 1.0)},
        {"bias_range": (0.5, 0.1)},
        {"bias_range": (0.5, 0.5)},
    ],
)
def test_invalid_ranges_raise(kwargs):
    with pytest.raises(ValueError, match="range"):
        ActionSpace(**kwargs)


# --- fused score ---------------------------------------------------------------------------------


HAND_SCORES = np.array([0.5, 0.2, 0.1, 0.0, 0.3])
# power action (0, 1, -1, 0, 0) -> power (1, 2, 0, 1, 1)
# bias action (1, 1, 1, -1, 1)  -> bias (1, 1, 1, 0.01, 1)
HAND_ACTION = np.array([0.0, 1.0, -1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 1.0])
# log score = 1*log(1.5) + 2*log(1.2) + 0*log(1.1) + 1*log(0.01) + 1*log(1.3)
#           = 0.405465 + 0.364643 + 0 - 4.605170 + 0.262364 = -3.572698
# product   = 1.5 * 1.44 * 1 * 0.01 * 1.3 = 0.02808
HAND_LOG = math.log(1.5) + 2 * math.log(1.2) + math.log(0.01) + math.log(1.3)
HAND_PRODUCT = 1.5 * 1.2**2 * 1.1**0 * 0.01 * 1.3


def test_fused_log_score_hand_example():
    assert HAND_PRODUCT == pytest.approx(0.02808)
    assert HAND_LOG == pytest.approx(-3.572698, abs=1e-6)
    got = fused_log_score(HAND_SCORES, HAND_ACTION)
    assert np.ndim(got) == 0
    assert float(got) == pytest.approx(HAND_LOG, abs=1e-12)
    assert float(got) == pytest.approx(math.log(HAND_PRODUCT), abs=1e-12)
    assert float(final_score(HAND_SCORES, HAND_ACTION)) == pytest.approx(HAND_PRODUCT, rel=1e-12)


def test_fused_log_score_custom_space_hand_example():
    space = ActionSpace(power_range=(0.0, 4.0), bias_range=(0.5, 1.5))
    # all zeros: power = 2, bias = 1 for every task -> log score = 2 * sum(log(1 + s))
    s = np.array([0.0, 0.5, 1.0, 0.25, 0.1])
    expected = 2 * (math.log(1.0) + math.log(1.5) + math.log(2.0) + math.log(1.25) + math.log(1.1))
    assert float(fused_log_score(s, np.zeros(10), space)) == pytest.approx(expected, abs=1e-12)


def test_final_score_equals_direct_product_random():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, size=(32, 50, 5))
    action = rng.uniform(-1, 1, size=(32, 50, 10))
    power, bias = ActionSpace().to_params(action)
    direct = np.prod((scores + bias) ** power, axis=-1)
    got = final_score(scores, action)
    assert got.shape == (32, 50)
    np.testing.assert_allclose(got, direct, rtol=1e-6)
    np.testing.assert_allclose(fused_log_score(scores, action), np.log(got), rtol=1e-9, atol=1e-12)


def test_ranking_by_log_equals_ranking_by_product():
    rng = np.random.default_rng(2)
    scores = rng.uniform(0, 1, size=(40, 30, 5))
    action = rng.uniform(-1, 1, size=(40, 1, 10))
    power, bias = ActionSpace().to_params(action)
    direct = np.prod((scores + bias) ** power, axis=-1)  # (40, 30)
    log_s = fused_log_score(scores, action)
    np.testing.assert_array_equal(np.argsort(-log_s, axis=-1), np.argsort(-direct, axis=-1))
    np.testing.assert_array_equal(rank_top_l(log_s, 5), np.argsort(-direct, axis=-1)[:, :5])


def test_user_level_action_broadcasts_like_tiled_item_action():
    rng = np.random.default_rng(3)
    b, n = 6, 9
    scores = rng.uniform(0, 1, size=(b, n, 5))
    user_action = rng.uniform(-1, 1, size=(b, 1, 10))
    tiled = np.tile(user_action, (1, n, 1))
    assert tiled.shape == (b, n, 10)
    got = fused_log_score(scores, user_action)
    assert got.shape == (b, n)
    np.testing.assert_allclose(got, fused_log_score(scores, tiled), rtol=1e-12)  # matmul vs sum rounding
    # and different requests really use different actions: row 0 with row 1's action differs
    other = fused_log_score(scores[:1], user_action[1:2])
    assert not np.allclose(other, got[:1])


def test_torch_matches_numpy():
    rng = np.random.default_rng(4)
    scores = rng.uniform(0, 1, size=(5, 8, 5))
    action = rng.uniform(-1, 1, size=(5, 1, 10))
    ls_np = fused_log_score(scores, action)
    fs_np = final_score(scores, action)
    ls_t = fused_log_score(torch.from_numpy(scores), torch.from_numpy(action))
    fs_t = final_score(torch.from_numpy(scores), torch.from_numpy(action))
    assert isinstance(ls_t, torch.Tensor) and isinstance(fs_t, torch.Tensor)
    np.testing.assert_allclose(ls_t.numpy(), ls_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fs_t.numpy(), fs_np, rtol=1e-12)
    # the hand example in torch
    got = fused_log_score(torch.tensor(HAND_SCORES), torch.tensor(HAND_ACTION))
    assert float(got) == pytest.approx(HAND_LOG, abs=1e-12)


def test_torch_gradients_flow_through_action():
    scores = torch.tensor(HAND_SCORES)
    action = torch.tensor(HAND_ACTION, requires_grad=True)
    fused_log_score(scores, action).backward()
    # d/d a_power_i = d power_i / d a * log(s_i + b_i) = 1 * log(s_i + b_i); task 1: log(1.5)
    assert float(action.grad[0]) == pytest.approx(math.log(1.5), abs=1e-12)


def test_wrong_task_count_raises():
    with pytest.raises(ValueError, match="4 tasks, expected 5"):
        fused_log_score(np.full((2, 3, 4), 0.5), np.zeros((2, 1, 10)))
    with pytest.raises(ValueError, match="8 dimensions, expected 10"):
        fused_log_score(np.full((2, 3, 5), 0.5), np.zeros((2, 1, 8)))
    with pytest.raises(ValueError):
        final_score(np.full((3, 6), 0.5), np.zeros(10))


# --- check_scores / rank_top_l --------------------------------------------------------------------


def test_check_scores_accepts_valid():
    check_scores(np.array([[0.0, 0.5, 1.0, 0.2, 0.3]]))


@pytest.mark.parametrize("bad, idx", [(np.nan, (1, 3)), (-0.1, (2, 0)), (np.inf, (0, 4))])
def test_check_scores_names_index(bad, idx):
    s = np.full((3, 5), 0.5)
    s[idx] = bad
    with pytest.raises(ValueError, match=rf"index \({idx[0]}, {idx[1]}\)") as e:
        check_scores(s, what="my_scores")
    assert "my_scores" in str(e.value)


def test_check_scores_names_first_bad_index():
    s = np.full((2, 4, 5), 0.5)
    s[1, 2, 3] = -1.0
    s[0, 3, 1] = np.nan  # first in C order
    with pytest.raises(ValueError, match=r"index \(0, 3, 1\)"):
        check_scores(s)


def test_rank_top_l_hand():
    log_scores = np.array([[0.1, 0.9, 0.5, 0.7, 0.3], [5.0, -1.0, 2.0, 4.0, 3.0]])
    np.testing.assert_array_equal(rank_top_l(log_scores, 3), [[1, 3, 2], [0, 3, 4]])
    np.testing.assert_array_equal(rank_top_l(log_scores, 1), [[1], [0]])
    np.testing.assert_array_equal(rank_top_l(log_scores, 5), [[1, 3, 2, 4, 0], [0, 3, 4, 2, 1]])


def test_rank_top_l_random_matches_argsort():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 40))
    got = rank_top_l(x, 5)
    assert got.shape == (100, 5)
    np.testing.assert_array_equal(got, np.argsort(-x, axis=-1)[:, :5])
    # best first: the scores along each row are strictly decreasing
    assert (np.diff(np.take_along_axis(x, got, -1), axis=-1) < 0).all()


def test_rank_top_l_too_many_raises():
    with pytest.raises(ValueError, match="6 items from 5"):
        rank_top_l(np.zeros((2, 5)), 6)
