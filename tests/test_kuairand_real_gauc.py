"""Weighted GAUC of fusion policies on the real KuaiRand-Pure interactions (``rlmtf.eval.real_gauc``).

Small response / MTL models are fitted once for the module on a 15,000-row sample (about 5 s); the tests
skip when the KuaiRand-Pure data are not found.
"""

import dataclasses

import numpy as np
import pytest
import torch

from rlmtf.algos.esrl import EnhancedStateRL, ESRLConfig
from rlmtf.algos.integrated import IntegratedRL
from rlmtf.core.fusion import ACTION_DIM, MTL_TASKS, ActionSpace, fused_log_score
from rlmtf.envs.kuairand.data import FeatureTable, load_kuairand
from rlmtf.envs.kuairand.fit import FitConfig, fit_all, load_fitted
from rlmtf.envs.kuairand.mtl import MTLConfig
from rlmtf.envs.kuairand.paths import LOG_FILE, KuaiRandDataError, default_kuairand_dir
from rlmtf.envs.kuairand.response import ResponseConfig
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.world import feature_spec
from rlmtf.eval.gauc import min_max_normalise, weighted_gauc
from rlmtf.eval.real_gauc import (
    RealGAUCEvaluator,
    fixed_gauc,
    policy_feature_spec,
    real_gauc,
    score_gauc,
)
from rlmtf.pipelines.fixed_search import FixedSearchConfig, fixed_search
from rlmtf.policy.base import Policy, RequestObs
from rlmtf.policy.explore import UniformExploration
from rlmtf.policy.fixed import FixedPolicy, RandomPolicy, baseline_policy, oracle_policy

SMALL_FIT = FitConfig(response=ResponseConfig(hidden=(32, 16), epochs=2, batch_size=1024),
                      mtl=MTLConfig(hidden=(16,), epochs=1, batch_size=1024), max_train_rows=15_000,
                      max_test_rows=2_000)
SMALL_ALGO = ESRLConfig(hidden=(16,), embed_dim=4, ensemble_size=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def kuairand_dir():
    d = default_kuairand_dir()
    if d is None or not (d / LOG_FILE).is_file():
        pytest.skip("KuaiRand-Pure not found (shared/data/kuairand_pure or $RLMTF_KUAIRAND_DIR)")
    return d


@pytest.fixture(scope="module")
def models_path(kuairand_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kuairand_real_gauc_models")
    fit_all(kuairand_dir, out, SMALL_FIT, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def fitted(models_path):
    return load_fitted(models_path)


@pytest.fixture(scope="module")
def data(kuairand_dir):
    return load_kuairand(kuairand_dir)


@pytest.fixture(scope="module")
def ev(fitted, data) -> RealGAUCEvaluator:
    return RealGAUCEvaluator(fitted, data, split="test")


@pytest.fixture(scope="module")
def tiny(data):
    """The test rows of the first 40 users (in id order) that have both a long view and a miss."""
    x = data.test
    lv = np.bincount(x.user, weights=x.long_view, minlength=len(data.users.ids))
    n = np.bincount(x.user, minlength=len(data.users.ids))
    users = np.flatnonzero((lv > 0) & (lv < n))[:40]
    idx = np.flatnonzero(np.isin(x.user, users))
    return dataclasses.replace(data, test=x.take(idx))


def hand_weights(x) -> np.ndarray:
    """1 + the default reward (``docs/design.md#reward``) written out: watch 1/min, valid 1, like 2, share 3,
    follow 3, comment 2."""
    return (1.0 + x.play_time_ms / 60_000.0 + x.long_view + 2.0 * x.like + 3.0 * x.forward + 3.0 * x.follow
            + 2.0 * x.comment)


def hand_hour_angle(time_ms: np.ndarray) -> np.ndarray:
    hours = (time_ms / 3_600_000.0 + 8.0) % 24.0  # Beijing time
    return hours / 24.0 * 2.0 * np.pi


class ItemPolicy(Policy):
    """An item-level policy of the enhanced state: a fixed linear map of the MTL scores, the item's first
    feature and the context's hour, squashed to [-1, 1]."""

    level = "item"
    name = "item-linear"

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(len(MTL_TASKS), ACTION_DIM))
        self.v = rng.normal(size=ACTION_DIM)
        self.c = rng.normal(size=ACTION_DIM)

    def act(self, obs: RequestObs) -> np.ndarray:
        z = (obs.mtl_scores.astype(np.float64) @ self.w + obs.item_features[..., :1] * self.v
             + obs.context[:, None, :1] * self.c)
        return np.tanh(z).astype(np.float32)

    def by_hand(self, scores, item_first_feature, hour_angle) -> np.ndarray:
        return np.tanh(scores.astype(np.float64) @ self.w + item_first_feature[:, None] * self.v
                       + np.sin(hour_angle).astype(np.float32)[:, None] * self.c)


class UserPolicy(Policy):
    """A user-level policy of the user state: tanh of a linear map of profile, history and context."""

    level = "user"
    name = "user-linear"

    def __init__(self, dim: int, seed: int = 0):
        self.w = np.random.default_rng(seed).normal(scale=0.1, size=(dim, ACTION_DIM))

    def act(self, obs: RequestObs) -> np.ndarray:
        return np.tanh(obs.user_state().astype(np.float64) @ self.w).astype(np.float32)


class ConstantItemPolicy(Policy):
    """Item level, the same action for every user-item pair."""

    level = "item"
    name = "constant-item"

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)

    def act(self, obs: RequestObs) -> np.ndarray:
        return np.broadcast_to(self.action, (*obs.item_id.shape, ACTION_DIM)).copy()


class Recorder(Policy):
    """The baseline fusion, keeping every observation it is shown."""

    def __init__(self):
        self.base, self.seen = baseline_policy(), []
        self.name = "recorder"

    def act(self, obs: RequestObs) -> np.ndarray:
        self.seen.append(obs)
        return self.base.act(obs)


# --- against hand computations ----------------------------------------------------------------------------

def test_fixed_fusion_equals_a_hand_computation(fitted, tiny):
    x = tiny.test
    pol = baseline_policy()
    res = real_gauc(pol, fitted, tiny)
    scores = fitted.mtl.scores(x.user, x.item).astype(np.float64)
    pred = min_max_normalise(fused_log_score(scores, pol.action.astype(np.float64)))
    want = weighted_gauc(x.user, x.long_view, pred, hand_weights(x))
    assert res.gauc == pytest.approx(want.gauc, abs=1e-12)
    assert (res.n_users, res.n_users_skipped, res.rows) == (want.n_users, want.n_users_skipped, len(x))
    assert res.n_users == 40 and res.split == "test" and res.policy == "baseline"
    want10 = weighted_gauc(x.user, (x.play_time_ms > 10_000).astype(int), pred, hand_weights(x))
    assert res.gauc_play10s == pytest.approx(want10.gauc, abs=1e-12)
    assert res.n_users_play10s == want10.n_users
    assert 0.0 < res.gauc < 1.0


def test_item_level_policy_equals_a_hand_computation(fitted, tiny):
    x = tiny.test
    pol = ItemPolicy()
    ev = RealGAUCEvaluator(fitted, tiny, split="test")
    res = ev.policy_gauc(pol)
    scores = fitted.mtl.scores(x.user, x.item)
    a = pol.by_hand(scores, ev.env.item_table[x.item, 0], hand_hour_angle(x.time_ms))
    np.testing.assert_allclose(ev.actions(pol), a, atol=1e-6)
    pred = min_max_normalise(fused_log_score(scores.astype(np.float64), a.astype(np.float32).astype(np.float64)))
    want = weighted_gauc(x.user, x.long_view, pred, hand_weights(x))
    assert res.gauc == pytest.approx(want.gauc, abs=1e-9)
    assert res.level == "item" and res.n_users == want.n_users


def test_the_observation_is_the_environments_first_request_of_a_day(ev):
    """What a policy sees for a real row is what the KuaiRand environment shows the same user at the first
    request of the first session of a day (profile, history, item features), at the row's hour."""
    env = ev.env
    rec = Recorder()
    users = np.unique(ev.rows.user)[:300]
    env.run(rec, seed=0, days=1, users=users)
    first = [(o, np.flatnonzero((o.context[:, 2] == 0) & (o.context[:, 3] == 0))) for o in rec.seen]
    u = np.concatenate([o.user_id[j] for o, j in first])
    hist = np.concatenate([o.user_history[j] for o, j in first])
    prof = np.concatenate([o.user_profile[j] for o, j in first])
    assert len(u) > 20
    rows = np.array([np.flatnonzero(ev.rows.user == uu)[0] for uu in u])
    obs = ev.observe(rows)
    np.testing.assert_array_equal(obs.user_id, u)
    np.testing.assert_array_equal(obs.user_profile, prof)
    np.testing.assert_allclose(obs.user_history, hist, atol=1e-7)
    np.testing.assert_array_equal(obs.item_features[:, 0], env.item_table[ev.rows.item[rows]])
    np.testing.assert_allclose(obs.context[:, 0], np.sin(hand_hour_angle(ev.rows.time_ms[rows])), atol=1e-6)
    np.testing.assert_allclose(obs.context[:, 1], np.cos(hand_hour_angle(ev.rows.time_ms[rows])), atol=1e-6)
    assert (obs.context[:, 2:] == 0).all()
    np.testing.assert_array_equal(obs.mtl_scores[:, 0], ev.rows.mtl_scores[rows])
    assert obs.user_state().shape[1] == env.spec.user_state_dim
    assert obs.enhanced_state().shape[-1] == env.spec.enhanced_state_dim


def test_real_rewards_and_labels(ev, data):
    x = data.test
    np.testing.assert_allclose(ev.rows.weight, hand_weights(x), rtol=1e-12)
    np.testing.assert_array_equal(ev.rows.long_view, x.long_view)
    np.testing.assert_array_equal(ev.rows.play10s, x.play_time_ms > 10_000)


# --- single scores, fixed actions, levels -----------------------------------------------------------------

@pytest.mark.parametrize("task", MTL_TASKS)
def test_ranking_by_one_score_is_the_gauc_of_that_score(ev, fitted, data, task):
    k = MTL_TASKS.index(task)
    r = ev.rows
    res = ev.score_gauc(task)
    assert res.gauc == pytest.approx(weighted_gauc(r.user, r.long_view, r.mtl_scores[:, k], r.weight).gauc,
                                     abs=1e-12)
    assert res.policy == f"mtl:{task}" and res.level == "score" and 0 < res.gauc < 1
    # the fusion that puts all the power on one task ranks exactly as that score
    space = ActionSpace()
    power = np.full(len(MTL_TASKS), space.power_range[0])
    power[k] = space.power_range[1]
    one = FixedPolicy.from_params(power, np.full(len(MTL_TASKS), 0.3), space, name="one")
    assert ev.policy_gauc(one).gauc == pytest.approx(res.gauc, abs=1e-12)
    if task == "valid":
        assert score_gauc(task, fitted, data).gauc == pytest.approx(res.gauc, abs=1e-12)


def test_a_constant_policy_equals_the_fixed_action_path(ev, fitted, data):
    a = np.random.default_rng(3).uniform(-1, 1, ACTION_DIM).astype(np.float32)
    fixed = ev.fixed_gauc(a, "a")
    for pol in (FixedPolicy(a, name="a"), ConstantItemPolicy(a)):
        res = ev.policy_gauc(pol)
        assert res.gauc == fixed.gauc and res.gauc_play10s == fixed.gauc_play10s
        assert (res.n_users, res.n_users_skipped) == (fixed.n_users, fixed.n_users_skipped)
    assert fixed_gauc(a, fitted, data, name="a").gauc == fixed.gauc
    assert ev.policy_gauc(ConstantItemPolicy(a)).level == "item"


def test_users_are_counted_and_gauc_is_in_range(ev):
    res = ev.policy_gauc(baseline_policy())
    n_users = len(np.unique(ev.rows.user))
    assert res.n_users + res.n_users_skipped == n_users
    assert res.n_users_play10s + res.n_users_skipped_play10s == n_users
    assert 0 < res.gauc < 1 and 0 < res.gauc_play10s < 1 and res.rows == len(ev)
    assert res.to_dict()["policy"] == "baseline"


def test_trained_style_policies_in_the_kuairand_spec_run(ev):
    spec = ev.spec
    for cls in (IntegratedRL, EnhancedStateRL):
        pol = cls(spec, SMALL_ALGO).policy()
        assert policy_feature_spec(pol) == spec
        res = ev.policy_gauc(pol)
        assert 0 < res.gauc < 1 and res.level == cls.level
    # a user-level policy of every part of the user state
    res = ev.policy_gauc(UserPolicy(spec.user_state_dim))
    assert 0 < res.gauc < 1
    # a stochastic policy: one action per (user, time_ms), reproducible
    r1, r2 = ev.policy_gauc(RandomPolicy(1)), ev.policy_gauc(RandomPolicy(1))
    assert r1.gauc == r2.gauc


def test_bootstrap_and_fixed_search_on_real_rows(ev):
    base = ev.predictions(baseline_policy())
    same = ev.paired_bootstrap(base, base, n_boot=5)
    assert same.diff == 0 and same.ci_low == 0 and same.ci_high == 0
    valid = ev.rows.mtl_scores[:, 0].astype(np.float64)
    d = ev.paired_bootstrap([valid, valid], base, n_boot=20)
    assert d.diff == pytest.approx(ev.score_gauc("valid").gauc - ev.policy_gauc(baseline_policy()).gauc, abs=1e-12)
    assert d.ci_low <= d.ci_high
    logged = ev.as_logged()
    assert len(logged) == len(ev)
    pol, hist = fixed_search(logged, baseline_policy().action, FixedSearchConfig(generations=2, population=4))
    assert hist[-1] >= ev.fixed_gauc(baseline_policy().action).gauc - 1e-12
    assert ev.fixed_gauc(pol.action).gauc == pytest.approx(hist[-1], abs=1e-4)


# --- errors -------------------------------------------------------------------------------------------------

def test_a_policy_of_the_default_simulator_is_refused(ev):
    sim_spec = feature_spec(SimConfig())
    for pol in (IntegratedRL(sim_spec, SMALL_ALGO).policy(), EnhancedStateRL(sim_spec, SMALL_ALGO).policy(),
                UniformExploration(EnhancedStateRL(sim_spec, SMALL_ALGO).policy(), -0.1, 0.1, per="item")):
        with pytest.raises(ValueError, match="feature spec mismatch") as e:
            ev.policy_gauc(pol)
        assert "user_profile" in str(e.value) and "kuairand" in str(e.value)


def test_a_spec_less_policy_of_the_wrong_width_gets_a_clear_error(ev):
    class Wrong(Policy):
        name = "wrong"

        def act(self, obs):
            return torch.nn.Linear(7, ACTION_DIM)(torch.as_tensor(obs.user_state())).detach().numpy()

    with pytest.raises(ValueError, match="cannot act on the KuaiRand observations"):
        ev.policy_gauc(Wrong())


def test_other_errors(ev, fitted, data):
    with pytest.raises(ValueError, match="true scores"):
        ev.policy_gauc(oracle_policy())
    with pytest.raises(ValueError, match="split must be one of"):
        RealGAUCEvaluator(fitted, data, split="valid")
    with pytest.raises(ValueError, match="unknown MTL task"):
        ev.score_gauc("click")
    with pytest.raises(ValueError, match="actions must have shape"):
        ev.fixed_gauc(np.zeros(4))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        ev.fixed_gauc(np.full(ACTION_DIM, 2.0))
    with pytest.raises(ValueError, match="has no rows"):
        RealGAUCEvaluator(ev.env, dataclasses.replace(data, test=data.test.take(np.arange(0))))
    u = data.users
    fewer = dataclasses.replace(data, users=FeatureTable(ids=u.ids[:-1], x=u.x[:-1], names=u.names))
    with pytest.raises(KuaiRandDataError, match="different KuaiRand-Pure files"):
        real_gauc(baseline_policy(), fitted, fewer)
    with pytest.raises(TypeError, match="FittedKuaiRand or a KuaiRandEnv"):
        RealGAUCEvaluator("models", data)


def test_cli_real_gauc_and_data_check(kuairand_dir, models_path, tmp_path):
    """`rlmtf evaluate real-gauc` and `rlmtf data kuairand --check` in a subprocess; a policy trained on the
    default simulator is refused with exit code 2 and a message naming the spec mismatch."""
    import json
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rlmtf.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=600, check=False)

    p = cli("evaluate", "real-gauc", "--policy", "baseline", "--json", "--kuairand-dir", kuairand_dir,
            "--kuairand-models", models_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout)
    assert res["policy"] == "baseline" and 0.5 < res["gauc"] < 1 and res["n_users"] > 100
    sim_policy = tmp_path / "sim_integrated"
    algo = IntegratedRL(feature_spec(SimConfig()), ESRLConfig(hidden=(8,), embed_dim=4, ensemble_size=2))
    algo.save_policy(sim_policy)
    bad = cli("evaluate", "real-gauc", "--policy", sim_policy, "--kuairand-dir", kuairand_dir,
              "--kuairand-models", models_path)
    assert bad.returncode == 2 and "feature spec mismatch" in " ".join(bad.stderr.split()), bad.stderr[-2000:]
    c = cli("data", "kuairand", "--check", kuairand_dir, "--json")
    assert c.returncode == 0, c.stderr[-2000:]
    assert json.loads(c.stdout)["summary"]["users"] > 20_000
    none = cli("data", "kuairand")
    assert none.returncode == 2 and "--download" in none.stderr
