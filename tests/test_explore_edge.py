"""Exploration at the action space's edge: clipping piles draws on the edge; shifting keeps the box's width
inside [-1, 1] and logs the box it used."""

import numpy as np
import pytest

from rlmtf.core.fusion import ACTION_DIM
from rlmtf.policy.base import RequestObs
from rlmtf.policy.explore import UniformExploration
from rlmtf.policy.fixed import FixedPolicy


def _obs(b: int) -> RequestObs:
    z = np.zeros((b, 1), np.float32)
    return RequestObs(user_id=np.arange(b), request_key=np.arange(b, dtype=np.uint64), user_profile=z, user_history=z,
                      context=z, item_id=np.zeros((b, 3), np.int64), mtl_scores=np.full((b, 3, 5), 0.5, np.float32))


def test_shift_keeps_the_box_inside_and_logs_it():
    mu = np.zeros(ACTION_DIM, np.float32)
    mu[0], mu[1] = -1.0, 0.95  # at the lower edge; close to the upper one
    base = FixedPolicy(mu)
    clip = UniformExploration(base, -0.15, 0.15, seed=1).decide(_obs(4000))
    shift = UniformExploration(base, -0.15, 0.15, seed=1, edge="shift").decide(_obs(4000))
    # clip: half of dimension 0's draws sit exactly on -1; shift: none, spread over [-1, -0.7]
    assert (clip.action[:, 0] == -1).mean() == pytest.approx(0.5, abs=0.03)
    assert (shift.action[:, 0] == -1).mean() < 0.01
    assert shift.action[:, 0].min() >= -1 and shift.action[:, 0].max() <= -0.7 + 1e-6
    assert shift.action[:, 0].mean() == pytest.approx(-0.85, abs=0.01)
    np.testing.assert_allclose(shift.lower_b[:, 0], 0.0, atol=1e-6)  # box [mu + 0, mu + 0.3]
    np.testing.assert_allclose(shift.upper_b[:, 0], 0.3, atol=1e-6)
    np.testing.assert_allclose(shift.lower_b[:, 1], -0.25, atol=1e-6)  # box [0.65, 0.95 + 0.05]
    np.testing.assert_allclose(shift.upper_b[:, 1], 0.05, atol=1e-6)
    # away from the edges the two are the same draws
    np.testing.assert_array_equal(shift.action[:, 2:], clip.action[:, 2:])
    assert ((shift.action >= mu + shift.lower_b - 1e-6) & (shift.action <= mu + shift.upper_b + 1e-6)).all()


def test_an_unknown_edge_rule_is_refused():
    with pytest.raises(ValueError, match="edge"):
        UniformExploration(FixedPolicy(np.zeros(ACTION_DIM, np.float32)), edge="wrap")
