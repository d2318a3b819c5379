"""Off-policy evaluation (rlmtf.eval.fqe, rlmtf.eval.ope): importance weights and estimators by hand, FQE
against a value known by simulation, and ``rlmtf evaluate ope`` in a subprocess."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlmtf.data import read_logs
from rlmtf.data.transitions import build_transitions
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.fqe import FQEConfig, episode_starts, fit_fqe, metric_rewards, policy_actions
from rlmtf.eval.ope import exploration_unit, importance_weights, is_estimates
from rlmtf.policy.fixed import FixedPolicy, baseline_policy


@pytest.fixture(scope="module")
def sim():
    return Simulator(dataclasses.replace(SimConfig(), n_users=600, n_items=2000))


def _logs(sim, tmp_path_factory, per: str, explore: str = "uniform"):
    d = tmp_path_factory.mktemp(f"ope_{per}_{explore}")
    pol = behaviour_policy(baseline_policy(), explore, per, lower_b=-0.15, upper_b=0.15, seed=3)
    simulate_to_parquet(sim, pol, d, seed=3, days=1, overwrite=True)
    logs = read_logs(d)
    logs.path = d  # for the CLI test
    return logs


@pytest.fixture(scope="module")
def day_logs(sim, tmp_path_factory):
    return _logs(sim, tmp_path_factory, "day")


@pytest.fixture(scope="module")
def request_logs(sim, tmp_path_factory):
    return _logs(sim, tmp_path_factory, "request")


def test_exploration_unit_is_recognised(day_logs, request_logs, sim, tmp_path_factory):
    assert exploration_unit(build_transitions(day_logs).day_episodes()) == "day"
    assert exploration_unit(build_transitions(request_logs)) == "request"
    assert exploration_unit(build_transitions(_logs(sim, tmp_path_factory, "item"))) == "item"


def test_the_logging_mean_gets_weight_one_and_ipw_is_the_logged_mean(day_logs):
    """With bandwidth 1 the box kernel around mu_bp covers the whole box: every weight is 1, so IPW and SNIPW
    of the logging policy's mean action are the logged mean return per episode."""
    t = build_transitions(day_logs).day_episodes()
    rho, unit, outside = importance_weights(t, t.mu_bp[:, :1].copy(), bandwidth=1.0)
    assert unit == "day" and outside == 0.0
    np.testing.assert_allclose(rho, 1.0)
    r = metric_rewards(t, day_logs)["uvc"]
    _, e = np.unique(t.episode_id, return_inverse=True)
    logged = np.bincount(e, r).mean()
    est = is_estimates(t, rho, r)
    assert est["ipw"] == pytest.approx(logged) and est["snipw"] == pytest.approx(logged)
    assert est["ess"] == pytest.approx(len(episode_starts(t)))


def test_per_request_weights_are_products_along_the_episode(request_logs):
    """A policy shifted by 0.1 in one dimension: per request the weight is 0.3 / 0.2 = 1.5 where the logged noise
    is within 0.15 of the shifted one (the kernel [-0.05, 0.25] keeps 0.2 of its 0.3 inside the box
    [-0.15, 0.15]: renormalised), else 0, and rho_(0:t) is the product over the session so far."""
    t = build_transitions(request_logs)
    acts = t.mu_bp[:, :1].copy()
    acts[:, 0, 2] = np.clip(acts[:, 0, 2] + 0.1, -1, 1)
    rho, unit, _ = importance_weights(t, acts)
    assert unit == "request"
    noise = t.action[:, 0] - t.mu_bp[:, 0]
    need = acts[:, 0] - t.mu_bp[:, 0]
    width = t.upper_b[:, 0] - t.lower_b[:, 0]
    inside = np.minimum(need + width / 2, t.upper_b[:, 0]) - np.maximum(need - width / 2, t.lower_b[:, 0])
    step = np.all(np.abs(noise - need) <= width / 2, axis=1) * np.prod(width / inside, axis=1)
    unclipped = np.abs(t.mu_bp[:, 0, 2] + 0.1) < 1  # where the shift was not clipped at the space's edge
    assert np.allclose(np.prod(width / inside, axis=1)[unclipped], 1.5, atol=1e-4)
    want = np.empty(len(t))
    for i in range(len(t)):  # by hand: the running product within each session
        want[i] = step[i] * (1.0 if t.t[i] == 0 else want[i - 1])
    np.testing.assert_allclose(rho, want, rtol=1e-5)
    assert 0 < rho.mean() < 1.5


def test_doubly_robust_by_hand(day_logs):
    t = build_transitions(day_logs).day_episodes()
    rng = np.random.default_rng(0)
    rho = rng.uniform(0, 2, len(t))
    r, q, v = rng.normal(size=len(t)), rng.normal(size=len(t)), rng.normal(size=len(t))
    ep = t.episode_id
    total, n = 0.0, 0
    for i in range(len(t)):
        first = i == 0 or ep[i] != ep[i - 1]
        n += first
        total += rho[i] * (r[i] - q[i]) + (1.0 if first else rho[i - 1]) * v[i]
    assert is_estimates(t, rho, r, q, v)["dr"] == pytest.approx(total / n)
    # with rho = 1 and a model that equals the returns-to-go, DR is the model's start value
    est = is_estimates(t, np.ones(len(t)), r, q=np.zeros(len(t)), v=np.zeros(len(t)))
    assert est["dr"] == pytest.approx(est["ipw"])


def test_first_order_dm_recovers_a_linear_effect_of_the_action(day_logs):
    """With a reward that is linear in the logged noise (10 + 2 x the noise of dimension 2, in half-widths, per
    request), the direct method's interval holds the value of a policy half a half-width up in dimension 2 (the
    logged days' reward had their noise been that), and the logging mean's lift is about 0."""
    from rlmtf.eval.ope import first_order_dm

    t = build_transitions(day_logs).day_episodes()
    half = (t.upper_b[:, 0, 2] - t.lower_b[:, 0, 2]) / 2
    g = (t.action[:, 0, 2] - t.mu_bp[:, 0, 2]) / half
    r = {"x": 10.0 + 2.0 * g}
    shifted = t.mu_bp[:, :1].copy()
    shifted[:, 0, 2] += 0.5 * half
    _, e = np.unique(t.episode_id, return_inverse=True)
    truth = np.bincount(e, 10.0 + 2.0 * 0.5 * np.ones(len(t))).mean()
    est = first_order_dm(t, r, shifted, n_boot=50)["x"]
    # the episode totals vary with their length (about 10 x 13 requests), so the slope has sampling noise
    assert est["ci_low"] <= truth <= est["ci_high"] and abs(est["value"] / truth - 1) < 0.06, (est, truth)
    ref = first_order_dm(t, r, t.mu_bp[:, :1].copy(), n_boot=50)["x"]
    assert abs(ref["lift"]["mean"]) < 0.02 and ref["lift"]["ci_low"] < 0.02


def test_direct_method_models_recover_curvature_and_a_per_user_slope(day_logs):
    """A reward with a curvature in dimension 2 and a slope in dimension 4 that changes sign with the first state
    feature: the linear model misses both (it sees only the average slope), the quadratic model recovers the
    curvature, the personal model recovers the per-user slope too (one fit serves several policies)."""
    from rlmtf.eval.ope import DirectMethod

    t = build_transitions(day_logs).day_episodes()
    _, e = np.unique(t.episode_id, return_inverse=True)
    first = np.r_[True, t.episode_id[1:] != t.episode_id[:-1]]
    s0 = t.user_state[first][:, 0].astype(np.float64)
    z = ((s0 - s0.mean()) / s0.std())[e]  # the episode's standardised first state feature, per request
    half = (t.upper_b[:, 0] - t.lower_b[:, 0]) / 2
    g = (t.action[:, 0] - t.mu_bp[:, 0]) / half  # (R, A) logged noise in half-widths (one per day)
    cnt = np.bincount(e)[e]  # so that an episode's total is the per-day function below
    day_value = lambda x2, x4: 10.0 - 4.0 * x2 ** 2 + 3.0 * z * x4  # noqa: E731
    r = {"x": day_value(g[:, 2], g[:, 4]) / cnt}
    up = t.mu_bp[:, :1].copy()  # one half-width up in dimension 2: the curvature costs 4 x (1 - 1/3) a day
    up[:, 0, 2] += half[:, 2]
    per_user = t.mu_bp[:, :1].copy()  # + sign(z) half-widths in dimension 4 (3 E|z| a day), centred elsewhere
    per_user[:, 0, 4] += np.sign(z) * half[:, 4]
    logged = np.bincount(e, r["x"]).mean()
    truth_up = np.bincount(e, day_value(np.ones(len(t)), 0 * z) / cnt).mean()
    truth_pu = np.bincount(e, day_value(0 * z, np.sign(z)) / cnt).mean()
    assert truth_up < logged - 2 and truth_pu > logged + 1.5
    est = {m: DirectMethod(t, r, n_boot=50, model=m) for m in ("linear", "quadratic", "personal")}
    v = {m: (dm.estimate(up)["x"]["value"], dm.estimate(per_user)["x"]["value"]) for m, dm in est.items()}
    assert abs(v["linear"][0] - logged) < 0.5 and abs(v["linear"][1] - logged) < 0.5, (v, logged)
    # the quadratic model sees the per-user policy's gain from sitting at dimension 2's centre, not its slope
    assert abs(v["quadratic"][0] - truth_up) < 0.5 and abs(v["quadratic"][1] - 10.0) < 0.5, (v, truth_up)
    assert abs(v["personal"][0] - truth_up) < 0.5 and abs(v["personal"][1] - truth_pu) < 0.5, (v, truth_pu)
    with pytest.raises(ValueError, match="unknown direct-method model"):
        DirectMethod(t, r, model="cubic")


def test_fqe_recovers_the_value_of_the_logging_policy(sim, tmp_path_factory):
    """On logs of the baseline without exploration, FQE of the baseline estimates the logged mean of valid
    views per user-day (its true on-policy value) within 6%."""
    d = tmp_path_factory.mktemp("ope_onpolicy")
    simulate_to_parquet(sim, baseline_policy(), d, seed=5, days=2, overwrite=True)
    logs = read_logs(d)
    t = build_transitions(logs).day_episodes()
    r = metric_rewards(t, logs)["uvc"]
    _, e = np.unique(t.episode_id, return_inverse=True)
    truth = np.bincount(e, r).mean()
    res = fit_fqe(t, logs, policy_actions(baseline_policy(), logs, t, 10),
                  FQEConfig(steps=1500, members=3, hidden=(32, 32), embed_dim=8), metrics=("uvc",))
    assert res.members["uvc"].shape == (3,) and res.level == "user"
    assert abs(res.summary("uvc")["mean"] / truth - 1) < 0.06, (res.summary("uvc"), truth)


def test_fqe_targets_stay_in_the_logged_return_range_without_biasing_the_value(day_logs):
    """The clipped targets keep every member's value inside the range of the logged days' returns (a policy at
    a corner of the box, on few days, is extrapolation), and the clip is in the metric's own units: FQE of the
    logging policy's mean action stays near the logged mean per user-day (a bound in the wrong units would
    cut it)."""
    t = build_transitions(day_logs).day_episodes()
    cfg = FQEConfig(steps=1500, members=3, hidden=(32, 32), embed_dim=8)
    few, _ = t.split(30 / np.unique(t.episode_id).size, seed=0)
    r = metric_rewards(few, day_logs)["uvc"]
    _, e = np.unique(few.episode_id, return_inverse=True)
    best = np.bincount(e, r).max()
    corner = np.clip(few.mu_bp[:, :1] + 0.15, -1, 1).astype(np.float32)
    res = fit_fqe(few, day_logs, corner, cfg, metrics=("uvc",))
    assert (res.members["uvc"] <= best * 1.001).all() and (res.members["uvc"] >= 0).all(), (res.members, best)
    r_all = metric_rewards(t, day_logs)["uvc"]
    logged = r_all.sum() / len(episode_starts(t))
    ref = fit_fqe(t, day_logs, t.mu_bp[:, :1].copy(), cfg, metrics=("uvc",))
    assert abs(ref.summary("uvc")["mean"] / logged - 1) < 0.1, (ref.summary("uvc"), logged)


def test_fqe_rejects_malformed_actions(day_logs):
    t = build_transitions(day_logs).day_episodes()
    with pytest.raises(ValueError, match="actions must have shape"):
        fit_fqe(t, day_logs, np.zeros((3, 1, 10), np.float32))
    with pytest.raises(ValueError, match="unknown metric"):
        fit_fqe(t, day_logs, t.mu_bp[:, :1].copy(), metrics=("clicks",))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlmtf.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1], check=False)


def test_evaluate_ope_cli(day_logs, tmp_path):
    data = day_logs.path
    fixed = tmp_path / "shifted.json"
    a = baseline_policy().action.copy()
    a[2] += 0.05
    FixedPolicy(a, name="shifted").save(fixed)
    p = cli("evaluate", "ope", "--policy", "baseline", "--policy", f"shifted={fixed}", "--data", str(data),
            "--steps", "60", "--members", "2", "--threads", "1", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout)
    assert [e["policy"] for e in rep["policies"]] == ["baseline", "shifted"] and rep["exploration"] == "day"
    base = rep["policies"][0]
    assert base["fqe"]["uvc"]["lift"]["mean"] == pytest.approx(0.0, abs=1e-9)  # the reference itself
    assert base["is"]["uvc"]["ipw"]["value"] == pytest.approx(base["is"]["uvc"]["snipw"]["value"])
    bad = cli("evaluate", "ope", "--policy", "baseline", "--data", str(data), "--episode", "week")
    assert bad.returncode != 0 and "--episode must be day or session" in bad.stderr
    bad = cli("evaluate", "ope", "--policy", "baseline", "--data", str(data), "--dm-model", "cubic")
    assert bad.returncode != 0 and "--dm-model must be one of linear, quadratic, personal" in bad.stderr
