"""Tests for rlmtf.core.reward (``docs/design.md#reward``, the paper's Formulas 2 and 3)."""

from __future__ import annotations

import numpy as np
import pytest

from rlmtf.core.reward import REWARD_BEHAVIOURS, RewardWeights, item_reward, request_reward


def _behaviours():
    """Two requests x three shown items."""
    return {
        "watch_time": np.array([[120.0, 30.0, 0.0], [6.0, 90.0, 600.0]]),  # seconds
        "valid": np.array([[1, 1, 0], [0, 1, 1]]),
        "like": np.array([[1, 0, 0], [0, 0, 1]]),
        "share": np.array([[0, 1, 0], [0, 0, 1]]),
        "collect": np.array([[0, 0, 0], [0, 1, 0]]),
        "follow": np.array([[1, 0, 0], [0, 0, 0]]),
        "comment": np.array([[0, 0, 1], [0, 0, 1]]),
    }


# Default weights: watch 1.0/min, valid 1, like 2, share 3, collect 2, follow 3, comment 2.
# [0,0]: 120/60 = 2.0 + valid 1 + like 2 + follow 3           = 8.0
# [0,1]: 30/60 = 0.5 + valid 1 + share 3                      = 4.5
# [0,2]: 0 + comment 2                                         = 2.0
# [1,0]: 6/60 = 0.1                                            = 0.1
# [1,1]: 90/60 = 1.5 + valid 1 + collect 2                    = 4.5
# [1,2]: 600/60 = 10 + valid 1 + like 2 + share 3 + comment 2 = 18.0
DEFAULT_EXPECTED = np.array([[8.0, 4.5, 2.0], [0.1, 4.5, 18.0]])


def test_behaviour_names_and_default_weights():
    assert REWARD_BEHAVIOURS == ("watch_time", "valid", "like", "share", "collect", "follow", "comment")
    assert RewardWeights().as_dict() == {"watch_time": 1.0, "valid": 1.0, "like": 2.0, "share": 3.0,
                                         "collect": 2.0, "follow": 3.0, "comment": 2.0}


def test_item_reward_default_weights_hand_example():
    r = item_reward(_behaviours())
    assert r.shape == (2, 3)
    assert r.dtype == np.float64
    np.testing.assert_allclose(r, DEFAULT_EXPECTED, atol=1e-12)


def test_item_reward_custom_weights():
    w = RewardWeights(watch_time=0.5, valid=0.0, like=10.0, share=0.0, collect=1.0, follow=0.0, comment=-1.0)
    # [0,0]: 0.5 * 2.0 + like 10            = 11.0
    # [0,1]: 0.5 * 0.5                      = 0.25
    # [0,2]: comment -1                     = -1.0
    # [1,0]: 0.5 * 0.1                      = 0.05
    # [1,1]: 0.5 * 1.5 + collect 1          = 1.75
    # [1,2]: 0.5 * 10 + like 10 - comment 1 = 14.0
    r = item_reward(_behaviours(), w)
    np.testing.assert_allclose(r, [[11.0, 0.25, -1.0], [0.05, 1.75, 14.0]], atol=1e-12)


def test_item_reward_only_one_weight():
    w = RewardWeights(watch_time=0.0, valid=0.0, like=0.0, share=1.0, collect=0.0, follow=0.0, comment=0.0)
    np.testing.assert_allclose(item_reward(_behaviours(), w), _behaviours()["share"].astype(float))


def test_item_reward_ignores_extra_keys():
    b = _behaviours()
    b["click"] = np.ones((2, 3))
    np.testing.assert_allclose(item_reward(b), DEFAULT_EXPECTED, atol=1e-12)


def test_request_reward_sums_list_axis():
    r = request_reward(DEFAULT_EXPECTED)
    # 8 + 4.5 + 2 = 14.5 ; 0.1 + 4.5 + 18 = 22.6
    assert r.shape == (2,)
    np.testing.assert_allclose(r, [14.5, 22.6], atol=1e-12)
    # works on a (sessions, t, l) array too: sums only the last axis
    x = np.arange(24, dtype=float).reshape(2, 3, 4)
    np.testing.assert_allclose(request_reward(x), x.sum(-1))
    assert request_reward(x).shape == (2, 3)
    # and on plain lists
    assert request_reward([1.0, 2.0, 3.5]) == pytest.approx(6.5)


@pytest.mark.parametrize("missing", REWARD_BEHAVIOURS)
def test_missing_behaviour_raises_keyerror_naming_it(missing):
    b = _behaviours()
    del b[missing]
    with pytest.raises(KeyError, match=missing):
        item_reward(b)
