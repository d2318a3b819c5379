"""Tests for the policy interface, hand-set fusions and exploration (``docs/design.md#exploration``, Formula 4)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from rlmtf.core.fusion import ACTION_DIM, ActionSpace
from rlmtf.policy import (
    ActionNoiseExploration,
    Decision,
    FixedPolicy,
    RandomPolicy,
    RequestObs,
    UniformExploration,
    baseline_policy,
)
from rlmtf.policy.base import check_actions
from rlmtf.policy.fixed import BASELINE_BIAS, BASELINE_POWER

B, N, A = 64, 20, ACTION_DIM
ATOL = 1e-6  # float32 rounding of mu + eps - mu


# RequestObs takes item features as ``item_features`` or (lazily gathered variant) ``item_features_``
_FEATURES_KW = ("item_features" if "item_features" in {f.name for f in dataclasses.fields(RequestObs)}
                else "item_features_")


def make_obs(b: int = B, n: int = N, seed: int = 0, key_offset: int = 0) -> RequestObs:
    rng = np.random.default_rng(seed)
    return RequestObs(
        user_id=rng.integers(0, 1000, size=b).astype(np.int64),
        request_key=np.arange(key_offset, key_offset + b, dtype=np.uint64),
        user_profile=rng.normal(size=(b, 4)).astype(np.float32),
        user_history=rng.normal(size=(b, 6)).astype(np.float32),
        context=rng.normal(size=(b, 2)).astype(np.float32),
        item_id=rng.integers(0, 10_000, size=(b, n)).astype(np.int64),
        mtl_scores=rng.uniform(0, 1, size=(b, n, 5)).astype(np.float32),
        **{_FEATURES_KW: rng.normal(size=(b, n, 3)).astype(np.float32)},
    )


# baseline action: power p -> a = p - 1; bias b -> a = 2 (b - 0.01) / 0.99 - 1
# (0.1 -> 0.18 / 0.99 - 1 = -0.818182; 0.05 -> 0.08 / 0.99 - 1 = -0.919192)
BASELINE_ACTION = np.array([0.0, -0.2, -0.4, -0.6, -0.7, -0.818182, -0.818182, -0.818182, -0.919192, -0.919192])


def zero_policy() -> FixedPolicy:
    return FixedPolicy(np.zeros(A), name="zero")


def test_obs_helpers():
    obs = make_obs()
    assert obs.batch_size == B and obs.n_candidates == N
    assert obs.user_state().shape == (B, 12)
    assert obs.enhanced_state().shape == (B, N, 12 + 3 + 5)


# --- hand-set policies -----------------------------------------------------------------------------


def test_baseline_action_values():
    a = baseline_policy().act(make_obs())
    assert a.shape == (B, A) and a.dtype == np.float32
    np.testing.assert_allclose(a, np.broadcast_to(BASELINE_ACTION, (B, A)), atol=1e-6)


def test_baseline_to_json_matches_constants():
    j = baseline_policy().to_json()
    assert j["kind"] == "fixed" and j["name"] == "baseline"
    np.testing.assert_allclose(list(j["power"].values()), BASELINE_POWER, atol=1e-6)
    np.testing.assert_allclose(list(j["bias"].values()), BASELINE_BIAS, atol=1e-6)
    assert list(j["power"]) == ["valid", "watch_time", "finish", "like", "share"]


def test_baseline_to_json_custom_space():
    space = ActionSpace(power_range=(0.0, 4.0), bias_range=(0.01, 0.5))
    j = baseline_policy(space).to_json(space)
    np.testing.assert_allclose(list(j["power"].values()), BASELINE_POWER, atol=1e-6)
    np.testing.assert_allclose(list(j["bias"].values()), BASELINE_BIAS, atol=1e-6)
    # power 1.0 in [0, 4] -> a = 2 * 1 / 4 - 1 = -0.5
    assert j["action"][0] == pytest.approx(-0.5, abs=1e-6)


@pytest.mark.parametrize("bad", [np.zeros(8), np.zeros((1, 10)), np.zeros(11)])
def test_fixed_rejects_wrong_shape(bad):
    with pytest.raises(ValueError, match="shape"):
        FixedPolicy(bad)


@pytest.mark.parametrize("value", [1.01, -1.5, np.nan, np.inf])
def test_fixed_rejects_out_of_range(value):
    a = np.zeros(10)
    a[3] = value
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        FixedPolicy(a)


def test_fixed_accepts_range_ends():
    a = np.array([-1.0, 1.0] * 5)
    np.testing.assert_array_equal(FixedPolicy(a).act(make_obs(b=3))[2], a)


@pytest.mark.parametrize(
    "power, bias",
    [
        ((2.5, 1.0, 1.0, 1.0, 1.0), BASELINE_BIAS),  # power above 2
        ((-0.1, 1.0, 1.0, 1.0, 1.0), BASELINE_BIAS),  # power below 0
        (BASELINE_POWER, (0.1, 0.1, 0.005, 0.1, 0.1)),  # bias below 0.01
        (BASELINE_POWER, (0.1, 0.1, 0.1, 0.1, 1.2)),  # bias above 1
    ],
)
def test_fixed_from_params_rejects_outside_space(power, bias):
    with pytest.raises(ValueError, match="outside the 'paper' action space"):
        FixedPolicy.from_params(power, bias)


def test_fixed_from_params_range_ends():
    p = FixedPolicy.from_params((0.0, 2.0, 1.0, 1.0, 1.0), (0.01, 1.0, 0.505, 0.505, 0.505))
    np.testing.assert_allclose(p.action, [-1, 1, 0, 0, 0, -1, 1, 0, 0, 0], atol=1e-6)


def test_fixed_decide_has_empty_box():
    d = baseline_policy().decide(make_obs())
    assert isinstance(d, Decision) and d.level == "user"
    np.testing.assert_array_equal(d.action, d.mu_bp)
    np.testing.assert_array_equal(d.lower_b, 0.0)
    np.testing.assert_array_equal(d.upper_b, 0.0)


def test_random_policy_range_and_determinism():
    obs = make_obs(b=500)
    a = RandomPolicy(seed=1).act(obs)
    assert a.shape == (500, A)
    assert (a >= -1).all() and (a <= 1).all()
    assert a.std() > 0.5  # U(-1, 1) has sd 1/sqrt(3) = 0.577
    np.testing.assert_array_equal(a, RandomPolicy(seed=1).act(obs))
    # a pure function of the request key: permuting the batch permutes the actions
    perm = np.random.default_rng(0).permutation(500)
    obs_p = make_obs(b=500)
    obs_p.request_key = obs.request_key[perm]
    np.testing.assert_array_equal(RandomPolicy(seed=1).act(obs_p), a[perm])
    # another seed, other actions
    assert not np.allclose(RandomPolicy(seed=2).act(obs), a)


# --- check_actions -------------------------------------------------------------------------------


def test_check_actions():
    obs = make_obs(b=4, n=3)
    out = check_actions(np.zeros((4, A), dtype=np.float64), obs, "user", "p")
    assert out.dtype == np.float32
    assert check_actions(np.zeros((4, 3, A)), obs, "item", "p").shape == (4, 3, A)
    with pytest.raises(ValueError, match="shape"):
        check_actions(np.zeros((4, 3, A)), obs, "user", "p")
    with pytest.raises(ValueError, match="shape"):
        check_actions(np.zeros((4, A)), obs, "item", "p")
    with pytest.raises(ValueError, match="shape"):
        check_actions(np.zeros((4, A - 1)), obs, "user", "p")
    bad = np.zeros((4, A))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        check_actions(bad, obs, "user", "mypolicy")
    bad[1, 2] = 1.2
    with pytest.raises(ValueError, match="outside"):
        check_actions(bad, obs, "user", "mypolicy")
    # 1 + 1e-7 is tolerated (float rounding)
    ok = np.zeros((4, A))
    ok[0, 0] = 1 + 1e-7
    check_actions(ok, obs, "user", "p")


# --- UniformExploration ----------------------------------------------------------------------------


def _assert_box(d: Decision, lo, hi):
    """action = clip(mu + eps) with eps in [lo, hi]: check unclipped and clipped elements."""
    lo = np.broadcast_to(lo, d.mu_bp.shape)
    hi = np.broadcast_to(hi, d.mu_bp.shape)
    eps = d.action.astype(np.float64) - d.mu_bp.astype(np.float64)
    free = np.abs(d.action) < 1
    assert ((eps >= lo - ATOL) & (eps <= hi + ATOL))[free].all()
    # where clipped at +1 the box reached past +1; at -1 it reached past -1
    top, bottom = d.action >= 1, d.action <= -1
    assert (d.mu_bp + hi >= 1 - ATOL)[top].all()
    assert (d.mu_bp + lo <= -1 + ATOL)[bottom].all()
    assert (np.abs(d.action) <= 1).all()


def test_uniform_per_request_around_baseline():
    obs = make_obs()
    pol = UniformExploration(baseline_policy(), per="request", seed=3)
    assert pol.level == "user"
    d = pol.decide(obs)
    assert d.action.shape == (B, A) and d.mu_bp.shape == (B, A)
    assert d.level == "user"
    np.testing.assert_allclose(d.mu_bp, np.broadcast_to(BASELINE_ACTION, (B, A)), atol=1e-6)
    np.testing.assert_allclose(d.lower_b, -0.15)
    np.testing.assert_allclose(d.upper_b, 0.15)
    _assert_box(d, -0.15, 0.15)
    # the bias dims 8, 9 sit at -0.919 and clip below -1 when eps < -0.081: some must clip
    assert (d.action[:, 8:] == -1).any()
    # the noise is not degenerate: some eps near each end of the box in the free dims
    eps = (d.action - d.mu_bp)[:, :5]
    assert eps.min() < -0.12 and eps.max() > 0.12
    # act returns the same actions
    np.testing.assert_array_equal(pol.act(obs), d.action)


def test_uniform_per_item():
    obs = make_obs()
    pol = UniformExploration(baseline_policy(), per="item", seed=3)
    assert pol.level == "item"
    d = pol.decide(obs)
    assert d.action.shape == (B, N, A) and d.mu_bp.shape == (B, N, A)
    assert d.level == "item"
    np.testing.assert_allclose(d.mu_bp, np.broadcast_to(BASELINE_ACTION, (B, N, A)), atol=1e-6)
    _assert_box(d, -0.15, 0.15)
    # candidates of one request get different actions (dimension 0 is never clipped)
    for b in range(B):
        assert len(np.unique(d.action[b, :, 0])) == N


def test_uniform_same_seed_same_actions():
    obs = make_obs()
    for per in ("request", "item"):
        a1 = UniformExploration(baseline_policy(), per=per, seed=5).act(obs)
        a2 = UniformExploration(baseline_policy(), per=per, seed=5).act(obs)
        a3 = UniformExploration(baseline_policy(), per=per, seed=6).act(obs)
        np.testing.assert_array_equal(a1, a2)
        # dimension 0 is never clipped, so it differs almost everywhere
        assert np.mean(a1[..., 0] == a3[..., 0]) < 0.01


def test_uniform_different_requests_differ():
    a = UniformExploration(zero_policy(), per="request", seed=0).act(make_obs())
    assert len(np.unique(a[:, 0])) == B


def test_uniform_custom_bounds_per_dimension():
    lo = np.linspace(-0.3, 0.0, A)
    hi = lo + np.linspace(0.01, 0.2, A)
    obs = make_obs(b=500)
    d = UniformExploration(zero_policy(), lower_b=lo, upper_b=hi, per="request", seed=1).decide(obs)
    np.testing.assert_allclose(d.lower_b, lo, atol=1e-7)
    np.testing.assert_allclose(d.upper_b, hi, atol=1e-7)
    eps = d.action.astype(np.float64)  # mu = 0, never clipped (|eps| <= 0.3)
    assert (eps >= lo - ATOL).all() and (eps <= hi + ATOL).all()
    # each dimension fills its own box: min near lo, max near hi (width >= 0.01, 500 draws)
    width = hi - lo
    assert (eps.min(0) - lo < 0.02 * width).all()
    assert (hi - eps.max(0) < 0.02 * width).all()
    np.testing.assert_allclose(eps.mean(0), (lo + hi) / 2, atol=0.06 * width.max())


def test_uniform_scalar_asymmetric_bounds():
    d = UniformExploration(zero_policy(), lower_b=0.0, upper_b=0.1, seed=2).decide(make_obs(b=300))
    assert (d.action >= 0).all() and (d.action <= 0.1 + ATOL).all()
    assert d.action.mean() == pytest.approx(0.05, abs=0.005)


def test_uniform_lower_above_upper_raises_naming_dimension():
    lo = np.full(A, -0.15)
    hi = np.full(A, 0.15)
    lo[7] = 0.2
    with pytest.raises(ValueError, match="dimension 7"):
        UniformExploration(zero_policy(), lower_b=lo, upper_b=hi)
    with pytest.raises(ValueError, match="dimension 0"):
        UniformExploration(zero_policy(), lower_b=0.1, upper_b=-0.1)
    with pytest.raises(ValueError):
        UniformExploration(zero_policy(), lower_b=np.nan)
    with pytest.raises(ValueError, match="per"):
        UniformExploration(zero_policy(), per="user")  # type: ignore[arg-type]


def test_uniform_zero_width_box_is_the_base_action():
    d = UniformExploration(baseline_policy(), lower_b=0.0, upper_b=0.0, per="item").decide(make_obs())
    np.testing.assert_array_equal(d.action, d.mu_bp)


def test_uniform_noise_distribution():
    # mu = 0, never clipped: eps = action. 64 * 20 * 10 = 12800 draws per call, 10 seeds -> 128k
    obs = make_obs()
    eps = np.concatenate([UniformExploration(zero_policy(), per="item", seed=s).act(obs).ravel()
                          for s in range(10)]).astype(np.float64)
    assert eps.size == 128_000
    assert eps.min() >= -0.15 - ATOL and eps.max() <= 0.15 + ATOL
    # mean (lo + hi) / 2 = 0, sd of the mean 0.3 / sqrt(12 * 128000) = 0.00024
    assert abs(eps.mean()) < 0.0015
    # variance (hi - lo)^2 / 12 = 0.09 / 12 = 0.0075
    assert eps.var() == pytest.approx(0.0075, rel=0.02)
    assert stats.kstest(eps, "uniform", args=(-0.15, 0.3)).pvalue > 0.001
    # per dimension, too
    per_dim = eps.reshape(10, B, N, A)
    for j in range(A):
        assert stats.kstest(per_dim[..., j].ravel(), "uniform", args=(-0.15, 0.3)).pvalue > 0.001


def test_uniform_asymmetric_mean():
    obs = make_obs(b=2000)
    eps = UniformExploration(zero_policy(), lower_b=-0.05, upper_b=0.25, seed=4).act(obs).astype(np.float64)
    # (lo + hi) / 2 = 0.1; 20000 draws, sd of mean 0.3 / sqrt(12 * 20000) = 0.0006
    assert eps.mean() == pytest.approx(0.1, abs=0.003)
    assert stats.kstest(eps.ravel(), "uniform", args=(-0.05, 0.3)).pvalue > 0.001


@pytest.mark.parametrize("value", [0.95, -0.95])
def test_uniform_clipping_near_edges(value):
    obs = make_obs(b=1000)
    base = FixedPolicy(np.full(A, value))
    d = UniformExploration(base, per="request", seed=0).decide(obs)
    assert (np.abs(d.action) <= 1).all()
    # mu + eps lies past the edge when eps beyond +-0.05: P = 0.1 / 0.3 = 1/3 of draws clip
    at_edge = np.isclose(d.action, np.sign(value))
    assert at_edge.mean() == pytest.approx(1 / 3, abs=0.03)
    _assert_box(d, -0.15, 0.15)
    np.testing.assert_allclose(d.mu_bp, value, atol=1e-6)


class _ItemLevelFixed(FixedPolicy):
    """An item-level policy: the same action for every user-item pair."""

    level = "item"

    def act(self, obs):
        return np.broadcast_to(self.action, (obs.batch_size, obs.n_candidates, A)).copy()


@pytest.mark.parametrize("cls", [UniformExploration, ActionNoiseExploration])
def test_per_request_exploration_over_item_level_base(cls):
    obs = make_obs(b=8, n=5)
    pol = cls(_ItemLevelFixed(np.zeros(A), name="item"), per="request", seed=0)
    assert pol.level == "item"  # the constructor accepts this combination
    d = pol.decide(obs)
    assert d.action.shape == (8, 5, A)
    # per="request" noise: the same eps for every candidate of a request, different across requests
    np.testing.assert_array_equal(d.action, np.broadcast_to(d.action[:, :1], d.action.shape))
    assert len(np.unique(d.action[:, 0, 0])) == 8


def test_exploration_rejects_bad_base_output():
    class Bad(FixedPolicy):
        def act(self, obs):
            return np.full((obs.batch_size, A), 2.0, dtype=np.float32)

    with pytest.raises(ValueError, match="outside"):
        UniformExploration(Bad(np.zeros(A), name="bad")).act(make_obs())


# --- ActionNoiseExploration ------------------------------------------------------------------------


def test_action_noise_distribution_and_box():
    obs = make_obs(b=2000)  # 2000 * 20 * 10 = 400k draws
    pol = ActionNoiseExploration(zero_policy(), per="item", seed=0)
    assert pol.level == "item"
    d = pol.decide(obs)
    assert d.action.shape == (2000, N, A)
    # logs the nominal box [-0.15, 0.15] though the noise is Gaussian
    np.testing.assert_allclose(d.lower_b, -0.15)
    np.testing.assert_allclose(d.upper_b, 0.15)
    np.testing.assert_array_equal(d.mu_bp, 0.0)
    eps = (d.action - d.mu_bp).astype(np.float64).ravel()  # |eps| > 1 is a 5-sigma event: no clipping
    assert abs(eps.mean()) < 0.002
    assert eps.std() == pytest.approx(0.2, rel=0.01)
    # P(|N(0, 0.2)| <= 0.15) = 2 * Phi(0.75) - 1 = 2 * 0.773373 - 1 = 0.546746
    p_in = 2 * stats.norm.cdf(0.75) - 1
    assert p_in == pytest.approx(0.5467, abs=1e-4)
    inside = np.abs(eps) <= 0.15
    assert inside.mean() == pytest.approx(p_in, abs=0.01)
    # per dimension as well
    per_dim = (np.abs(d.action - d.mu_bp) <= 0.15).reshape(-1, A).mean(0)
    np.testing.assert_allclose(per_dim, p_in, atol=0.01)
    # and the samples outside the box exist on both sides
    assert (eps > 0.15).mean() == pytest.approx((1 - p_in) / 2, abs=0.01)
    assert (eps < -0.15).mean() == pytest.approx((1 - p_in) / 2, abs=0.01)


def test_action_noise_box_efficiency_ratio():
    # all 10 dimensions inside the box at once: P = 0.5467^10 = 0.00239; uniform puts every sample
    # inside, so action noise needs 1 / 0.00239 = 419x the samples (``docs/design.md#exploration-efficiency``)
    p_in = 2 * stats.norm.cdf(0.75) - 1
    assert 1 / p_in**10 == pytest.approx(419, abs=1)
    obs = make_obs(b=20_000, n=1)
    d = ActionNoiseExploration(zero_policy(), per="request", seed=1).decide(obs)
    all_in = (np.abs(d.action - d.mu_bp) <= 0.15).all(-1).mean()
    # 20000 draws at p = 0.00239: mean 47.8, sd sqrt(47.7) = 6.9 -> about +- 4 sd
    assert 0.00239 - 0.0014 < all_in < 0.00239 + 0.0014
    du = UniformExploration(zero_policy(), per="request", seed=1).decide(obs)
    assert (np.abs(du.action - du.mu_bp) <= 0.15 + ATOL).all()


def test_action_noise_determinism_and_seed():
    obs = make_obs()
    a1 = ActionNoiseExploration(baseline_policy(), seed=3).act(obs)
    a2 = ActionNoiseExploration(baseline_policy(), seed=3).act(obs)
    a3 = ActionNoiseExploration(baseline_policy(), seed=4).act(obs)
    assert a1.shape == (B, A)
    np.testing.assert_array_equal(a1, a2)
    assert not np.allclose(a1, a3)
    assert (np.abs(a1) <= 1).all()


def test_action_noise_custom_sigma_and_validation():
    eps = ActionNoiseExploration(zero_policy(), sigma=0.05, per="item", seed=0).act(make_obs()).ravel()
    assert eps.std() == pytest.approx(0.05, rel=0.03)
    with pytest.raises(ValueError, match="sigma"):
        ActionNoiseExploration(zero_policy(), sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        ActionNoiseExploration(zero_policy(), sigma=-0.1)


def test_action_noise_clips_near_edges():
    d = ActionNoiseExploration(FixedPolicy(np.full(A, 0.95)), seed=0).decide(make_obs(b=1000))
    assert (np.abs(d.action) <= 1).all()
    # clipped at +1 when eps > 0.05: P = 1 - Phi(0.25) = 1 - 0.598706 = 0.4013
    assert np.isclose(d.action, 1.0).mean() == pytest.approx(1 - stats.norm.cdf(0.25), abs=0.03)
    assert math.isclose(stats.norm.cdf(0.25), 0.598706, abs_tol=1e-6)


def test_exploration_cost_counts_the_top_list_kept():
    """Without noise the behaviour policy's own top l is always shown (100%, no lift); per-item noise
    re-ranks far more of it than per-request noise of the same box (each item moves alone)."""
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.eval.exploration import exploration_cost
    from rlmtf.policy.fixed import baseline_policy

    sim = Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=2000))
    rows = exploration_cost(sim, baseline_policy(), (("request", 0.0), ("request", 0.15), ("item", 0.15)),
                            users=200, seed=1)
    none, req, item = rows
    assert none["top_l_kept"] == 1.0 and none["requests"] > 100
    assert none["uvc"]["lift"] == 0.0 and none["reward"]["lift"] == 0.0  # common random numbers, same actions
    assert 0.7 < req["top_l_kept"] < 1.0 and item["top_l_kept"] < req["top_l_kept"] - 0.2
    assert item["reward"]["ci_high"] < 0  # re-ranking the baseline's list at random costs reward


def test_the_item_box_is_the_widest_that_keeps_the_top_list():
    """item_box_for finds the widest per-item box keeping the target share: it keeps it, a slightly wider box
    (beyond the bisection's resolution) does not, and a target the upper bound already meets returns it."""
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.eval.exploration import RequestSampler, item_box_for, top_l_kept_per_item
    from rlmtf.policy.fixed import baseline_policy

    sim = Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=2000))
    base = baseline_policy()
    got = item_box_for(sim, base, keep=0.8, upper=0.15, users=200, seed=2)
    assert 0 < got["box"] < 0.15 and got["top_l_kept"] >= 0.8 and got["requests"] > 100
    sampler = RequestSampler(base, sim.cfg.action_space, sim.cfg.list_len, limit=4000)
    sim.run(sampler, seed=2, days=1, users=np.arange(200), log_true_scores=False)
    at = top_l_kept_per_item(sampler.obs, base, sim.cfg.action_space, sim.cfg.list_len, got["box"], seed=3)
    wider = top_l_kept_per_item(sampler.obs, base, sim.cfg.action_space, sim.cfg.list_len, got["box"] + 0.002, seed=3)
    assert at == pytest.approx(got["top_l_kept"]) and wider < 0.8 <= at
    assert item_box_for(sim, base, keep=0.3, upper=0.15, users=200, seed=2)["box"] == 0.15
    with pytest.raises(ValueError, match="keep"):
        item_box_for(sim, base, keep=1.0)


def test_day_item_exploration_adds_a_daily_and_a_per_item_draw():
    """The residual variant's data: every candidate of a user's day shares the day's draw, each candidate adds
    its own within +-item_box; the logged box is the sum of the two and holds every action."""
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.policy import SharedItemExploration
    from rlmtf.policy.fixed import baseline_policy

    sim = Simulator(dataclasses.replace(SimConfig(), n_users=200, n_items=2000))
    pol = SharedItemExploration(baseline_policy(), -0.15, 0.15, -0.05, 0.05, seed=3)
    assert pol.level == "item"
    got = []

    class Spy(baseline_policy().__class__):
        level = "item"

        def decide(self, obs):
            d = pol.decide(obs)
            got.append((obs.user_day_key.copy(), d))
            return d

        def act(self, obs):
            return self.decide(obs).action

    sim.run(Spy(baseline_policy().action), seed=2, days=1, users=np.arange(100))
    day_keys = np.concatenate([k for k, _ in got])
    acts = np.concatenate([d.action for _, d in got])  # (R, N, A)
    mu = np.concatenate([d.mu_bp for _, d in got])
    lo, hi = np.concatenate([d.lower_b for _, d in got]), np.concatenate([d.upper_b for _, d in got])
    assert np.allclose(hi[..., :8] - lo[..., :8], 0.4)  # 0.3 day + 0.1 item where no edge clips the box
    assert ((acts >= mu + lo - 1e-6) & (acts <= mu + hi + 1e-6)).all()
    eps = acts - mu
    # within a user-day the candidates' noise differs by at most the item box; across days by up to the day box
    same = day_keys == day_keys[0]
    spread_within = np.ptp(eps[same][..., :8].reshape(-1, 8), axis=0)
    assert (spread_within <= 0.1 + 1e-5).all() and (spread_within > 0.05).all()
    assert np.ptp(eps[..., :8].mean(1), axis=0).max() > 0.2
