"""Offline evaluation (weighted GAUC of a policy on logged data), the simulated online A/B test
(``docs/design.md#evaluation``) and the fixed-fusion search."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from _logs import make_columns, write_dataset

from rlmtf.core.fusion import ACTION_DIM, ActionSpace, fused_log_score
from rlmtf.data import read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim import SimConfig, Simulator
from rlmtf.eval.offline import evaluate_gauc, policy_log_scores
from rlmtf.eval.online import METRICS, online_ab, per_user_metrics
from rlmtf.pipelines.fixed_search import FixedSearchConfig, fixed_search
from rlmtf.policy import FixedPolicy, Policy, RequestObs, baseline_policy
from rlmtf.policy.fixed import oracle_policy, valid_only_policy

SPACE = ActionSpace()


# --- helpers --------------------------------------------------------------------------------------------


def brute_force_gauc(users, labels, scores, weights) -> tuple[float, int, int]:
    """The weighted GAUC of ``docs/design.md#weighted-gauc`` written out pair by pair (an independent reference)."""
    num_total = den_total = 0.0
    n_ok = n_skip = 0
    for u in np.unique(users):
        m = users == u
        y, f, w = labels[m], scores[m], weights[m]
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        if pos.size == 0 or neg.size == 0:
            n_skip += 1
            continue
        num = sum(w[p] * w[n] * ((f[p] > f[n]) + 0.5 * (f[p] == f[n])) for p in pos for n in neg)
        auc = num / (w[pos].sum() * w[neg].sum())
        num_total += w.sum() * auc
        den_total += w.sum()
        n_ok += 1
    return num_total / den_total, n_ok, n_skip


def product_score(scores: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Formula 1 as a product, with the action -> (power, bias) map written out (power in [0, 2], bias in
    [0.01, 1])."""
    half = (action.astype(np.float64) + 1.0) / 2.0
    power, bias = 2.0 * half[..., :5], 0.01 + 0.99 * half[..., 5:]
    return np.prod((scores.astype(np.float64) + bias) ** power, axis=-1)


class PerItemPolicy(Policy):
    """An item-level test policy: the valid power depends on the item id, the like power on a feature."""

    level = "item"
    name = "per-item"

    def act(self, obs: RequestObs) -> np.ndarray:
        return per_item_action(obs.item_id, obs.item_features[..., 0])


def per_item_action(item_id: np.ndarray, feature0: np.ndarray) -> np.ndarray:
    a = np.full(item_id.shape + (ACTION_DIM,), -0.5, dtype=np.float32)
    a[..., 0] = (item_id % 11) / 5.0 - 1.0
    a[..., 3] = np.clip(2.0 * (feature0 - 4.5), -1, 1)  # _logs item features lie in [4, 5)
    return a


@pytest.fixture
def logs(tmp_path: Path):
    cols = make_columns((3, 1, 2, 4, 2, 5, 1, 3), seed=4)
    return read_logs(write_dataset(tmp_path / "ds", [(0, cols)]))


# --- weighted GAUC of a policy on logged data ----------------------------------------------------------


def test_evaluate_gauc_hand_computed(tmp_path: Path):
    """Three users with one request each; the policy ranks by the valid score alone.

    Weights are reward + 1 = position + 1 = 1..5.
    User A: scores .9 .8 .7 .6 .5, labels 1 0 1 0 0. pos {.9 w1, .7 w3}, neg {.8 w2, .6 w4, .5 w5}:
      .9 beats all: 1 * 11; .7 beats .6 and .5: 3 * 9; num 38, den 4 * 11 = 44; W_A = 15.
    User B: scores .3 .3 .2 .2 .1, labels 0 1 1 0 1. pos {.3 w2, .2 w3, .1 w5}, neg {.3 w1, .2 w4}:
      .3 ties .3 and beats .2: 0.5 * 2 * 1 + 2 * 4 = 9; .2 ties .2: 0.5 * 3 * 4 = 6; .1: 0;
      num 15, den 10 * 5 = 50; W_B = 15.
    User C: all positive, left out.  GAUC = (15 * 38/44 + 15 * 15/50) / 30.
    """
    cols = make_columns((1, 1, 1), seed=0)  # sessions 100, 101, 102 -> users 1002, 1003, 1004
    assert np.unique(cols["user_id"]).tolist() == [1002, 1003, 1004]
    cols["mtl_scores"][:, 0] = np.array([.9, .8, .7, .6, .5, .3, .3, .2, .2, .1, .5, .4, .3, .2, .1], np.float32)
    cols["valid"] = np.array([1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1], np.int8)
    np.testing.assert_array_equal(cols["reward"], np.tile(np.arange(5, dtype=np.float32), 3))
    data = read_logs(write_dataset(tmp_path / "ds", [(0, cols)]))
    policy = FixedPolicy.from_params((1.0, 0.0, 0.0, 0.0, 0.0), (0.01,) * 5, name="valid-score")
    res = evaluate_gauc(policy, data)
    assert res.gauc == pytest.approx((15 * 38 / 44 + 15 * 15 / 50) / 30, abs=1e-12)
    assert (res.n_users, res.n_users_skipped, res.rows, res.policy) == (2, 1, 15, "valid-score")


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_gauc_matches_brute_force(logs, seed):
    rng = np.random.default_rng(seed)
    policy = FixedPolicy(rng.uniform(-1, 1, ACTION_DIM), name="random-fixed")
    c = logs.columns
    want = brute_force_gauc(c["user_id"], c["valid"], product_score(c["mtl_scores"], policy.action),
                            c["reward"].astype(np.float64) + 1.0)
    res = evaluate_gauc(policy, logs)
    assert res.gauc == pytest.approx(want[0], abs=1e-9)
    assert (res.n_users, res.n_users_skipped) == want[1:]
    assert res.to_dict()["gauc"] == res.gauc


def test_policy_log_scores_is_formula_1_per_row(logs):
    policy = baseline_policy()
    got = policy_log_scores(policy, logs)
    c = logs.columns
    want = fused_log_score(c["mtl_scores"].astype(np.float64), policy.action.astype(np.float64), SPACE)
    assert got.shape == (len(logs),)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(got), product_score(c["mtl_scores"], policy.action), rtol=1e-5)


def test_item_level_policy_is_applied_per_item(logs):
    c = logs.columns
    got = policy_log_scores(PerItemPolicy(), logs)
    a = per_item_action(c["item_id"], c["item_features"][:, 0])  # (rows, A): each row's own action
    assert np.unique(a[:, 0]).size > 5
    want = fused_log_score(c["mtl_scores"].astype(np.float64), a.astype(np.float64), SPACE)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # one action per request (any of them) would give other scores
    first_of_request = per_item_action(c["item_id"][:1], c["item_features"][:1, 0])
    assert not np.allclose(got, fused_log_score(c["mtl_scores"].astype(np.float64),
                                                first_of_request.astype(np.float64), SPACE))
    res = evaluate_gauc(PerItemPolicy(), logs)
    want_g = brute_force_gauc(c["user_id"], c["valid"], product_score(c["mtl_scores"], a),
                              c["reward"].astype(np.float64) + 1.0)
    assert res.gauc == pytest.approx(want_g[0], abs=1e-9)


def test_true_score_policy_needs_true_scores(logs, tmp_path: Path):
    with pytest.raises(ValueError, match="true_scores"):
        policy_log_scores(oracle_policy(), logs)
    with pytest.raises(ValueError, match="true_scores"):
        evaluate_gauc(oracle_policy(), logs)
    cols = make_columns((2, 3), seed=5, true_scores=True)
    data = read_logs(write_dataset(tmp_path / "with_true", [(0, cols)]))
    got = policy_log_scores(oracle_policy(), data)
    c = data.columns
    want = fused_log_score(c["true_scores"].astype(np.float64), oracle_policy().action.astype(np.float64), SPACE)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, policy_log_scores(baseline_policy(), data))  # the MTL scores differ


# --- simulated online A/B ------------------------------------------------------------------------------


AB_USERS = 1500


@pytest.fixture(scope="module")
def ab_sim() -> Simulator:
    return Simulator(dataclasses.replace(SimConfig(), n_users=AB_USERS))


@pytest.fixture(scope="module")
def ab(ab_sim):
    copy = baseline_policy()
    copy.name = "baseline-copy"
    return online_ab([baseline_policy(), copy, valid_only_policy()], ab_sim, users=AB_USERS, days=1, seed=3)


def test_identical_policies_have_zero_lift(ab):
    control, same = ab.arms[0], ab.arms[1]
    assert (control.policy, same.policy) == ("baseline", "baseline-copy")
    assert same.means == control.means
    assert (same.n_sessions, same.n_rows) == (control.n_sessions, control.n_rows)
    assert set(same.lifts) == set(METRICS)
    for k in METRICS:
        lift = same.lifts[k]
        assert lift["lift"] == 0.0 and lift["diff"] == 0.0, k
        assert lift["ci_low"] == pytest.approx(0.0, abs=1e-12) and lift["ci_high"] == pytest.approx(0.0, abs=1e-12)
        assert lift["p_value"] == 1.0, k
    assert control.lifts == {}


def test_valid_only_loses_uvc(ab):
    arm = ab.arms[2]
    assert arm.policy == "valid-only"
    uvc = arm.lifts["uvc"]
    assert uvc["lift"] < 0 and uvc["ci_low"] <= uvc["lift"] <= uvc["ci_high"] < 0
    assert uvc["p_value"] < 0.01
    assert uvc["n"] == AB_USERS
    assert arm.means["uvc"]["mean"] < ab.arms[0].means["uvc"]["mean"]
    for k in METRICS:
        m = arm.means[k]
        assert m["ci_low"] <= m["mean"] <= m["ci_high"], k


def test_ab_means_are_the_simulated_per_user_means(ab, ab_sim):
    r = ab_sim.run(baseline_policy(), seed=3, days=1, users=np.arange(AB_USERS))
    m = per_user_metrics(r)
    control = ab.arms[0]
    assert control.n_sessions == r.n_sessions
    assert control.means["uvc"]["mean"] == pytest.approx(r.valid.sum() / AB_USERS)
    assert control.means["udt"]["mean"] == pytest.approx(r.watch_time.sum() / 60.0 / AB_USERS)
    assert control.means["sessions"]["mean"] == pytest.approx(r.sessions.sum() / AB_USERS)
    length = m["session_length"]
    assert control.means["session_length"]["mean"] == pytest.approx(np.nanmean(length))
    d = ab.to_dict()
    assert d["control"] == "baseline" and len(d["arms"]) == 3 and d["users"] == AB_USERS


def test_online_ab_rejects_users_out_of_range(ab_sim):
    for users in (0, AB_USERS + 1):
        with pytest.raises(ValueError, match="users"):
            online_ab([baseline_policy()], ab_sim, users=users, days=1, seed=0)
    with pytest.raises(ValueError):
        online_ab([], ab_sim, users=10, days=1, seed=0)


# --- fixed-fusion search -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explore_logs(tmp_path_factory):
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=1000, n_items=3000))
    out = tmp_path_factory.mktemp("eval") / "explore"
    simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", seed=1), out, seed=1, sessions=600)
    return read_logs(out)


def test_fixed_search_improves_gauc_on_its_training_data(explore_logs):
    start = baseline_policy().action
    seen: list[tuple[int, float]] = []
    cfg = FixedSearchConfig(generations=6, population=8, seed=0)
    tuned, history = fixed_search(explore_logs, start, cfg, SPACE, on_generation=lambda g, v: seen.append((g, v)))
    assert len(history) == cfg.generations and [g for g, _ in seen] == list(range(cfg.generations))
    assert [v for _, v in seen] == history
    assert all(b >= a for a, b in zip(history, history[1:], strict=False))
    g_start = evaluate_gauc(FixedPolicy(start), explore_logs).gauc
    g_tuned = evaluate_gauc(tuned, explore_logs).gauc
    assert history[0] >= g_start - 1e-9
    assert g_tuned == pytest.approx(history[-1], abs=1e-3)  # the policy is the best one found (float32)
    assert g_tuned >= g_start - 1e-4
    assert history[-1] > g_start  # the baseline is not the optimum on this data: the search finds better
    assert tuned.name == "fixed-search" and tuned.action.shape == (ACTION_DIM,)
    assert np.abs(tuned.action).max() <= 1.0
