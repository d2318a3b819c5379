"""Tests for rlmtf.core.rng: counter-based random numbers (determinism and distributions)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from rlmtf.core import rng

N = 200_000


def _keys(n=N, seed=0):
    return rng.key(seed, np.arange(n))


def test_key_broadcast_shape_and_order():
    k = rng.key(3, np.arange(4)[:, None], np.arange(5))
    assert k.shape == (4, 5)
    assert k.dtype == np.uint64
    assert len(np.unique(k)) == 20  # all distinct
    # element (i, j) equals the scalar key of the same parts
    assert k[2, 3] == rng.key(3, 2, 3)
    assert rng.key(1, 2) != rng.key(2, 1)
    assert rng.key(1, 2) == rng.key(1, 2)
    assert rng.key(5).shape == ()
    assert rng.key(np.arange(3)[:, None, None], np.arange(2)[:, None], np.arange(7)).shape == (3, 2, 7)


def test_mix_is_bijective_on_sample():
    x = np.arange(100_000, dtype=np.uint64)
    with np.errstate(over="ignore"):
        assert len(np.unique(rng.mix(x))) == 100_000


def test_uniform_deterministic_range_and_streams():
    k = _keys()
    u = rng.uniform(k, 1)
    assert u.shape == (N,) and u.dtype == np.float64
    np.testing.assert_array_equal(u, rng.uniform(k.copy(), 1))
    assert (u >= 0).all() and (u < 1).all()
    # another stream and other keys give other numbers
    assert np.mean(u == rng.uniform(k, 2)) < 1e-4
    assert np.mean(u == rng.uniform(_keys(seed=1), 1)) < 1e-4
    # a single key gives the same value as inside the array
    assert rng.uniform(k[123], 1) == u[123]
    # streams are uncorrelated
    assert abs(np.corrcoef(u, rng.uniform(k, 2))[0, 1]) < 0.01


def test_uniform_moments():
    u = rng.uniform(_keys(), 7)
    # mean 1/2 (sd of the mean sqrt(1/12/N) ~ 0.00065), variance 1/12 = 0.08333
    assert abs(u.mean() - 0.5) < 0.004
    assert abs(u.var() - 1 / 12) < 0.002
    assert stats.kstest(u, "uniform").pvalue > 0.001
    # consecutive keys are not correlated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02


def test_normal_moments():
    z = rng.normal(_keys(), 9)
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z, rng.normal(_keys(), 9))
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1.0) < 0.01
    assert stats.kstest(z, "norm").pvalue > 0.001
    # P(|Z| <= 0.75) = 2 * Phi(0.75) - 1 = 0.5467
    assert abs(np.mean(np.abs(z) <= 0.75) - 0.5467) < 0.005


def test_normals5_columns():
    k = _keys()
    z = rng.normals5(k, 11)
    assert z.shape == (N, 5)
    np.testing.assert_array_equal(z, rng.normals5(k, 11))
    assert np.abs(z.mean(0)).max() < 0.01
    assert np.abs(z.std(0) - 1.0).max() < 0.01
    c = np.corrcoef(z.T)
    off = c[~np.eye(5, dtype=bool)]
    assert np.abs(off).max() < 0.02
    for j in range(5):
        assert stats.kstest(z[:, j], "norm").statistic < 0.01  # 12-bit quantisation: tiny, nonzero
    # broadcast shapes: keys (3, 4) -> (3, 4, 5)
    assert rng.normals5(rng.key(0, np.arange(3)[:, None], np.arange(4)), 1).shape == (3, 4, 5)


def test_uniform_pair():
    k = _keys()
    u1, u2 = rng.uniform_pair(k, 13)
    assert u1.shape == u2.shape == (N,)
    for u in (u1, u2):
        assert (u >= 0).all() and (u < 1).all()
        assert abs(u.mean() - 0.5) < 0.004
        assert abs(u.var() - 1 / 12) < 0.002
        assert stats.kstest(u, "uniform").pvalue > 0.001
    assert abs(np.corrcoef(u1, u2)[0, 1]) < 0.02
    v1, v2 = rng.uniform_pair(k, 13)
    np.testing.assert_array_equal(u1, v1)
    np.testing.assert_array_equal(u2, v2)
    w1, _ = rng.uniform_pair(k, 14)
    assert np.mean(u1 == w1) < 1e-3
