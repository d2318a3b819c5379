"""The KuaiRand environment: a world of the request engine over the real KuaiRand-Pure users and videos.

Small response / MTL models are fitted once for the module on a 15,000-row sample (about 5 s); the
tests skip when the KuaiRand-Pure data are not found.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rlmtf.algos.esrl import EnhancedStateRL, ESRLConfig
from rlmtf.core import rng as crng
from rlmtf.core.config_io import ConfigError
from rlmtf.core.fusion import ACTION_DIM, MTL_TASKS
from rlmtf.core.reward import item_reward
from rlmtf.data import build_transitions, read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.engine import Environment, RunResult
from rlmtf.envs.factory import make_env
from rlmtf.envs.kuairand.calibrate import baseline_usage, calibrate_offsets
from rlmtf.envs.kuairand.config import KuaiRandEnvConfig, load_env_config
from rlmtf.envs.kuairand.data import load_kuairand
from rlmtf.envs.kuairand.env import KuaiRandEnv
from rlmtf.envs.kuairand.fit import FitConfig, fit_all
from rlmtf.envs.kuairand.mtl import MTLConfig
from rlmtf.envs.kuairand.paths import LOG_FILE, KuaiRandDataError, default_kuairand_dir
from rlmtf.envs.kuairand.response import ResponseConfig, long_view_rule
from rlmtf.envs.kuairand.usage import usage_stats
from rlmtf.envs.parallel import run_parallel
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.online import online_ab
from rlmtf.policy.base import Policy
from rlmtf.policy.fixed import FixedPolicy, RandomPolicy, baseline_policy, oracle_policy, valid_only_policy

METRICS = ("valid", "watch_time", "sessions", "requests", "reward", "items", "clickbait_shown")
SMALL_FIT = FitConfig(response=ResponseConfig(hidden=(32, 16), epochs=2, batch_size=1024),
                      mtl=MTLConfig(hidden=(16,), epochs=1, batch_size=1024), max_train_rows=15_000,
                      max_test_rows=2_000)


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
def models_dir(kuairand_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kuairand_env_models")
    fit_all(kuairand_dir, out, SMALL_FIT, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def env(kuairand_dir, models_dir) -> KuaiRandEnv:
    e = make_env("kuairand", kuairand_dir=kuairand_dir, models_dir=models_dir, log=lambda s: None)
    assert isinstance(e, KuaiRandEnv) and isinstance(e, Environment)
    return e


def run_logged(env, policy, **kw) -> tuple[RunResult, dict[str, np.ndarray]]:
    chunks = []
    r = env.run(policy, sink=lambda day, cols: chunks.append(cols), **kw)
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}
    return r, cols


def sort_rows(cols):
    o = np.lexsort((cols["position"], cols["t"], cols["session_id"]))
    return {k: v[o] for k, v in cols.items()}


def assert_columns_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- the world ------------------------------------------------------------------------------------------

def test_spec_and_config_follow_the_data(env):
    b = env.builder
    assert env.cfg.n_users == b.n_users == 27_285 and env.cfg.n_items == b.n_items == 7_583
    assert env.spec.user_profile.dim == 146 + 10 and env.spec.item_features.dim == 75 + 10
    assert env.spec.user_history.dim == env.n_tags + 7 and env.spec.context.dim == 4
    assert env.spec.mtl_tasks == MTL_TASKS and env.spec.action_dim == ACTION_DIM
    d = env.cfg.to_dict()
    assert d["env"] == "kuairand" and d["n_users"] == 27_285 and d["session"]["leave_like"] == 0.7


def test_precomputed_networks_equal_the_fitted_models(env):
    rng = np.random.default_rng(0)
    u = rng.integers(0, env.cfg.n_users, 40)
    items = rng.integers(0, env.cfg.n_items, (40, 6))
    uu, ii = np.repeat(u, 6), items.reshape(-1)
    np.testing.assert_allclose(env.mtl_scores(u, items).reshape(-1, 5), env.mtl_model.scores(uu, ii), atol=2e-6)
    ref = env.response.predict(uu, ii)
    truth = env.true_scores(u, items).reshape(-1, 5)
    np.testing.assert_allclose(truth[:, 0], ref.p_long_view_watch, atol=2e-6)
    np.testing.assert_allclose(truth[:, 2], ref.p_finish, atol=2e-6)
    np.testing.assert_allclose(truth[:, 3], ref.behaviours["like"], atol=2e-6)
    np.testing.assert_allclose(truth[:, 4], ref.behaviours["forward"], atol=2e-6)
    dur = env.duration_s[ii]
    np.testing.assert_allclose(truth[:, 1], np.minimum(ref.expected_ratio * dur / 120.0, 1.0), atol=1e-5)


def test_counter_based_sampler_follows_the_response_model(env):
    rng = np.random.default_rng(1)
    n_pairs, n_draws = 60, 400
    u = np.repeat(rng.integers(0, env.cfg.n_users, n_pairs), n_draws)
    items = np.repeat(rng.integers(0, env.cfg.n_items, n_pairs), n_draws)[:, None]
    keys = crng.key(7, np.arange(u.size))[:, None]
    fb, truth = env.respond(u, items, keys, with_truth=True)
    p = truth[:, 0]  # (n, 5)
    for j, name in ((0, "valid"), (2, "finish"), (3, "like"), (4, "share")):
        assert abs(fb[name].mean() - p[:, j].mean()) < 4 * np.sqrt(p[:, j].mean() / u.size) + 2e-3, name
    ref = env.response.predict(u[::n_draws], items[::n_draws, 0])
    expected_watch = (ref.expected_ratio * env.duration_s[items[::n_draws, 0]]).mean()
    assert abs(fb["watch_time"].mean() / expected_watch - 1) < 0.08
    dur = env.duration_s[items]
    np.testing.assert_array_equal(fb["valid"], long_view_rule(fb["watch_ratio"], dur).astype(np.int8))
    assert (fb["collect"] == 0).all()  # KuaiRand has no collect
    # the same keys give the same draws, other keys other draws
    again, _ = env.respond(u[:500], items[:500], keys[:500])
    np.testing.assert_array_equal(again["watch_time"], fb["watch_time"][:500])
    other, _ = env.respond(u[:500], items[:500], keys[:500] + np.uint64(1))
    assert not np.array_equal(other["watch_time"], fb["watch_time"][:500])


def test_usage_statistics_of_the_log(kuairand_dir):
    s = usage_stats(load_kuairand(kuairand_dir)).summary
    assert s["sessions"] == 141_258 and s["session_length_median"] == 1.0
    assert abs(s["session_length_mean"] - 1.2153) < 1e-3
    assert abs(s["sessions_per_active_day"] - 1.5893) < 1e-3
    assert abs(s["active_day_share"] - 0.3262) < 1e-3 and s["max_sessions_per_day"] == 13


# --- running ---------------------------------------------------------------------------------------------

def test_baseline_run_gives_finite_results(env):
    users = np.arange(3000)
    r = env.run(baseline_policy(env.cfg.action_space), seed=0, days=2, users=users)
    assert r.days.tolist() == [0, 1]
    for k in METRICS:
        v = getattr(r, k)
        assert v.shape == (users.size, 2) and np.isfinite(v).all() and (v >= 0).all(), k
    assert (r.clickbait_shown == 0).all()  # no clickbait trait in KuaiRand
    assert r.n_rows == r.items.sum() == 5 * r.requests.sum() > 0
    assert r.n_sessions == r.sessions.sum() and (r.requests >= r.sessions).all()
    assert (r.sessions <= env.cfg.days.max_sessions_per_day).all()


def test_same_seed_identical_and_other_seed_differs(env):
    pol = behaviour_policy(baseline_policy(), "uniform", "item", seed=2)
    users = np.arange(1500)
    r1, c1 = run_logged(env, pol, seed=3, days=1, users=users)
    r2, c2 = run_logged(env, pol, seed=3, days=1, users=users)
    for k in METRICS:
        np.testing.assert_array_equal(getattr(r1, k), getattr(r2, k), err_msg=k)
    assert_columns_equal(c1, c2)
    r3 = env.run(pol, seed=4, days=1, users=users)
    assert not np.array_equal(r1.valid, r3.valid)


def test_batching_and_user_subsets_do_not_change_a_users_outcomes(env):
    pol = baseline_policy()
    small = env.with_config(dataclasses.replace(env.cfg, max_concurrent_sessions=37))
    ra, ca = run_logged(env, pol, seed=9, days=2, users=np.arange(0, 1000))
    rb, cb = run_logged(small, pol, seed=9, days=2, users=np.arange(500, 1500))
    ia, ib = np.arange(500, 1000), np.arange(0, 500)
    for k in METRICS:
        np.testing.assert_array_equal(getattr(ra, k)[ia], getattr(rb, k)[ib], err_msg=k)
    shared = np.arange(500, 1000)
    assert_columns_equal(sort_rows({k: v[np.isin(ca["user_id"], shared)] for k, v in ca.items()}),
                         sort_rows({k: v[np.isin(cb["user_id"], shared)] for k, v in cb.items()}))


def test_parallel_workers_equal_one_process(env):
    pol = baseline_policy()
    one = env.run(pol, seed=5, days=1, users=np.arange(1200))
    two, _ = run_parallel(env, pol, workers=2, seed=5, days=1, users=np.arange(1200), max_sessions=None)
    for k in METRICS:
        np.testing.assert_array_equal(getattr(one, k), getattr(two, k), err_msg=k)


def test_simulate_to_parquet_gives_training_data(env, tmp_path):
    pol = behaviour_policy(baseline_policy(), "uniform", "item", seed=1)
    r, out = simulate_to_parquet(env, pol, tmp_path / "logs", seed=1, sessions=400)
    assert r.n_sessions >= 400
    data = read_logs(out)
    c = data.columns
    assert len(data) == r.n_rows and data.meta.feature_spec == env.spec and data.meta.list_len == 5
    assert data.meta.info["sim_config"]["env"] == "kuairand"
    assert "true_scores" not in c  # off by default (cfg.log_true_scores)
    for g, dim in (("user_profile", 156), ("item_features", 85), ("context", 4),
                   ("user_history", env.spec.user_history.dim)):
        assert c[g].shape == (len(data), dim) and np.isfinite(c[g]).all(), g
    np.testing.assert_array_equal(c["item_features"], env.item_table[c["item_id"]])
    np.testing.assert_array_equal(c["user_profile"], env.profile_table[c["user_id"]])
    assert (c["collect"] == 0).all()
    dur = env.duration_s[c["item_id"]]
    ratio = c["watch_ratio"].astype(np.float64)
    clear = np.abs(ratio - np.minimum(18.0 / dur, 1.0)) > 1e-5  # away from float32 rounding at the threshold
    np.testing.assert_array_equal(c["valid"][clear], long_view_rule(ratio, dur)[clear])
    np.testing.assert_allclose(c["reward"], item_reward(c, env.cfg.reward), rtol=1e-5, atol=1e-5)
    # the history moves inside a session
    second = np.flatnonzero((c["t"] == 1) & (c["position"] == 0))
    assert second.size > 0
    first = np.array([np.flatnonzero((c["session_id"] == c["session_id"][i]) & (c["t"] == 0)
                                     & (c["position"] == 0))[0] for i in second[:20]])
    assert not np.array_equal(c["user_history"][second[:20]], c["user_history"][first])
    tr = build_transitions(data)
    assert tr.enhanced_state.shape[1:] == (5, env.spec.enhanced_state_dim)
    assert tr.user_state.shape[1] == env.spec.user_state_dim and np.isfinite(tr.reward).all()


def test_true_scores_are_logged_when_asked(env, tmp_path):
    e = env.with_config(dataclasses.replace(env.cfg, log_true_scores=True))
    _, out = simulate_to_parquet(e, baseline_policy(), tmp_path / "logs", seed=2, sessions=150)
    c = read_logs(out).columns
    ts = c["true_scores"]
    assert ts.shape == (len(c["item_id"]), 5) and (ts >= 0).all() and (ts <= 1).all()
    ref = env.true_scores(c["user_id"][:50], c["item_id"][:50, None]).reshape(-1, 5)
    np.testing.assert_allclose(ts[:50], ref, atol=2e-6)


class _Spy(Policy):
    """Records what it sees; acts like the wrapped policy."""

    def __init__(self, inner: Policy):
        self.inner, self.level, self.name, self.score_source = inner, inner.level, inner.name, inner.score_source
        self.seen = []

    def act(self, obs):
        self.seen.append(obs)
        return self.inner.act(obs)


def test_user_and_item_level_policies_run(env):
    users = np.arange(600)
    fixed = FixedPolicy(np.linspace(-0.8, 0.8, ACTION_DIM), name="fixed")
    esrl = EnhancedStateRL(env.spec, ESRLConfig(hidden=(16,), ensemble_size=2, embed_dim=4)).policy()
    for pol in (fixed, RandomPolicy(seed=1), esrl):
        spy = _Spy(pol)
        r = env.run(spy, seed=6, days=1, users=users)
        assert r.n_rows > 0 and np.isfinite(r.reward).all(), pol.name
        obs = spy.seen[0]
        assert obs.mtl_scores.shape == obs.item_id.shape + (5,) and obs.true_scores is None
        assert obs.enhanced_state().shape[-1] == env.spec.enhanced_state_dim


def test_oracle_ranks_by_the_true_scores(env):
    spy = _Spy(oracle_policy(env.cfg.action_space))
    r = env.run(spy, seed=1, days=1, users=np.arange(80))
    assert r.n_rows > 0
    ts = spy.seen[0].true_scores
    assert ts is not None and ts.shape == spy.seen[0].mtl_scores.shape and (ts >= 0).all() and (ts <= 1).all()


def test_online_ab_with_common_random_numbers(env):
    base, valid = baseline_policy(), valid_only_policy()
    ab = online_ab([base, valid, base], env, users=2000, days=1, seed=11)
    assert [a.policy for a in ab.arms] == ["baseline", "valid-only", "baseline"]
    for k, v in ab.per_user[0].items():
        np.testing.assert_array_equal(v, ab.per_user[2][k], err_msg=k)  # identical policies, identical users
        assert ab.arms[2].lifts[k]["lift"] == 0.0
    assert not np.array_equal(ab.per_user[0]["reward"], ab.per_user[1]["reward"])
    for arm in ab.arms:
        assert all(np.isfinite(m["mean"]) for m in arm.means.values())


# --- the leave model --------------------------------------------------------------------------------------

def test_leave_model_gives_log_like_sessions(env):
    """Documented: the baseline policy's mean session length is calibrated to the log's 1.215 requests
    (full models); with these small models it must stay within 1.1..1.35."""
    m = baseline_usage(env, users=8000, days=1, seed=0)
    assert 1.1 <= m["session_length"] <= 1.35, m
    assert 1.3 <= m["sessions_per_active_day"] <= 1.9, m
    assert abs(m["active_day_share"] - 0.326) < 0.03, m


def test_in_order_consumption(env):
    """Consumed in order: unseen items carry no feedback and follow the seen ones, the leave logit after item j
    is the request-level one with items 1..j, and the calibrated offsets keep the consumed items per session
    and the sessions per user-day near those of every list consumed (calibrated on the full models; within
    15% with these small ones)."""
    users = np.arange(4000)
    cfg = dataclasses.replace(env.cfg, consumption=dataclasses.replace(env.cfg.consumption, mode="in_order"))
    ino = env.with_config(cfg)
    r, c = run_logged(ino, baseline_policy(), seed=3, days=2, users=users)
    c = sort_rows(c)
    seen = c["seen"].astype(bool).reshape(-1, env.cfg.list_len)
    assert seen[:, 0].all() and (np.diff(seen.astype(int), axis=1) <= 0).all() and not seen.all()
    for col in ("valid", "like", "watch_time", "reward"):
        assert not c[col][~seen.reshape(-1)].any(), col
    ref = env.run(baseline_policy(), seed=3, days=2, users=users)
    per = (r.items.sum() / r.sessions.sum()) / (ref.items.sum() / ref.sessions.sum())
    assert 0.85 < per < 1.15 and 0.85 < r.sessions.mean() / ref.sessions.mean() < 1.15, (per, r.sessions.mean())
    # the prefix logits by hand: no long view yet -> + leave_no_long_view; a like so far -> - leave_like
    st = ino.user_state(np.array([0]))
    fb = {"valid": np.array([[0, 1, 0, 0, 0]]), "like": np.array([[0, 0, 1, 0, 0]])}
    got = ino.leave_logits(None, np.array([0]), np.array([0]), np.array([0]), np.array([0]), np.zeros((1, 5), int),
                           fb, st)
    sc = env.cfg.session
    base = st.leave_logit[0] + sc.leave_offset
    want = base + np.array([sc.leave_no_long_view, 0, -sc.leave_like, -sc.leave_like, -sc.leave_like])
    np.testing.assert_allclose(got[0], want)


def test_leave_model_reacts_to_long_views_and_likes(env):
    """P(session ends after a request) is higher after a request without a long view, lower after a like."""
    def leave_rates(**kw):
        cfg = dataclasses.replace(env.cfg, session=dataclasses.replace(env.cfg.session, **kw))
        _, c = run_logged(env.with_config(cfg), baseline_policy(), seed=2, days=1, users=np.arange(6000))
        first = c["position"] == 0
        order = np.lexsort((c["position"], c["t"], c["session_id"]))
        rows = order.reshape(-1, env.cfg.list_len)  # requests x items
        done, lv, like = c["done"][rows[:, 0]], c["valid"][rows].any(1), c["like"][rows].any(1)
        assert first.sum() == len(rows)
        return {"no_lv": done[~lv].mean(), "lv": done[lv].mean(), "like": done[like].mean(),
                "no_like": done[~like].mean()}

    r = leave_rates(leave_no_long_view=2.0, leave_like=0.0)
    assert r["no_lv"] > r["lv"] + 0.05, r
    r = leave_rates(leave_no_long_view=0.0, leave_like=2.0)
    assert r["like"] < r["no_like"] - 0.05, r


def test_calibration_moves_towards_the_log(env):
    s = env.usage.summary
    leave, ret = calibrate_offsets(env, users=3000, days=1, seed=1, rounds=3, log=lambda m: None)
    cfg = dataclasses.replace(env.cfg, session=dataclasses.replace(env.cfg.session, leave_offset=leave),
                              days=dataclasses.replace(env.cfg.days, return_offset=ret))
    m = baseline_usage(env.with_config(cfg), users=3000, seed=1)
    assert abs(m["session_length"] - s["session_length_mean"]) < 0.02
    assert abs(m["sessions_per_active_day"] - s["sessions_per_active_day"]) < 0.05


# --- the factory -----------------------------------------------------------------------------------------

def test_make_env_choices_and_errors(env, kuairand_dir, models_dir, tmp_path, monkeypatch):
    assert type(make_env("sim")) is Simulator
    with pytest.raises(ValueError, match="available: sim, kuairand"):
        make_env("kuairnd")
    toml = tmp_path / "env.toml"
    toml.write_text("list_len = 4\n[session]\nleave_like = 0.5\n")
    e = make_env("kuairand", toml, kuairand_dir, models_dir, log=lambda s: None)
    assert e.cfg.list_len == 4 and e.cfg.session.leave_like == 0.5
    assert e.run(baseline_policy(), seed=0, days=1, users=np.arange(200)).items.sum() % 4 == 0
    toml.write_text("[session]\nleave_lik = 0.5\n")
    with pytest.raises(ConfigError, match="leave_lik"):
        load_env_config(toml)
    toml.write_text("n_users = 5\n")
    with pytest.raises(ConfigError, match="n_users"):
        make_env("kuairand", toml, kuairand_dir, models_dir, log=lambda s: None)
    # no models and no data: a clear error naming RLMTF_KUAIRAND_DIR
    monkeypatch.setenv("RLMTF_KUAIRAND_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(KuaiRandDataError, match="RLMTF_KUAIRAND_DIR"):
        make_env("kuairand", models_dir=tmp_path / "empty", log=lambda s: None)
    assert isinstance(KuaiRandEnvConfig().to_dict()["retrieval"], dict)


def test_calibrated_defaults_with_the_full_models(kuairand_dir):
    """With the fully fitted models the defaults reproduce the log (runs only where they are at hand)."""
    d = os.environ.get("RLMTF_KUAIRAND_MODELS")
    if not d or not (Path(d) / "manifest.json").is_file():
        pytest.skip("set RLMTF_KUAIRAND_MODELS to fully fitted models (fit_all defaults) to check the calibration")
    full = KuaiRandEnv.load(d, data_dir=kuairand_dir, log=lambda s: None)
    m = baseline_usage(full, users=10_000, days=1, seed=0)
    assert abs(m["session_length"] - 1.2153) < 0.03, m
    assert abs(m["sessions_per_active_day"] - 1.5893) < 0.06, m


def test_make_env_fits_on_first_use_into_the_cache(kuairand_dir, tmp_path, monkeypatch):
    import rlmtf.envs.kuairand.fit as fit
    from rlmtf.envs.kuairand.paths import default_models_dir

    real_fit = fit.fit_all
    calls = []

    def small_fit(data_dir, out_dir, cfg=None, log=print):  # the default fit takes ~90 s: fit small instead
        calls.append(out_dir)
        return real_fit(data_dir, out_dir, SMALL_FIT, log=log)

    monkeypatch.setattr(fit, "fit_all", small_fit)
    monkeypatch.delenv("RLMTF_KUAIRAND_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    where = default_models_dir(kuairand_dir)
    assert where.parent == tmp_path / "cache" / "rlmtf" and where.name.startswith("kuairand-")
    assert default_models_dir(kuairand_dir) == where
    messages: list[str] = []
    e = make_env("kuairand", kuairand_dir=kuairand_dir, log=messages.append)
    assert calls == [where] and (where / "manifest.json").is_file() and (where / "usage.json").is_file()
    assert "fitting" in messages[0] and str(where) in messages[0]
    messages.clear()
    again = make_env("kuairand", kuairand_dir=kuairand_dir, log=messages.append)  # cached: no fit, no data pass
    assert len(calls) == 1 and messages == []
    np.testing.assert_array_equal(e.run(baseline_policy(), seed=1, days=1, users=np.arange(300)).reward,
                                  again.run(baseline_policy(), seed=1, days=1, users=np.arange(300)).reward)
    monkeypatch.setenv("RLMTF_KUAIRAND_MODELS", str(tmp_path / "mine"))
    assert default_models_dir(kuairand_dir) == tmp_path / "mine"


def test_cli_env_kuairand_simulates_trains_and_evaluates(kuairand_dir, models_dir, tmp_path):
    """`--env kuairand` through the command line: log exploration data, train on it, A/B test the result."""
    import subprocess
    import sys

    def cli(*args):
        p = subprocess.run([sys.executable, "-m", "rlmtf.cli", *map(str, args), "--env", "kuairand",
                            "--kuairand-dir", kuairand_dir, "--kuairand-models", models_dir],
                           capture_output=True, text=True, timeout=600, check=False)
        assert p.returncode == 0, p.stderr[-3000:]
        return p

    data = tmp_path / "explore"
    cli("simulate", "--policy", "baseline", "--explore", "uniform", "--sessions", "60", "--seed", "1", "--out", data)
    meta = json.loads((data / "_meta.json").read_text())
    assert meta["info"]["env"] == "kuairand"
    run = tmp_path / "integrated"
    cli("train", "--algo", "integrated", "--data", data, "--out", run, "--steps", "2", "--eval-every", "0",
        "--threads", "1", "--hidden", "16,16", "--critics", "2", "--batch-size", "16")
    p = cli("evaluate", "online", "--policy", "baseline", "--policy", run / "policy", "--users", "40", "--days", "1",
            "--json")
    res = json.loads(p.stdout)
    assert [a["policy"] for a in res["arms"]][0] == "baseline" and len(res["arms"]) == 2


def test_progressive_training_and_the_paper_experiment_run_on_kuairand(env, tmp_path):
    """`ptm` and `experiment paper --env kuairand`: a tiny preset end to end (PTM rounds for both of the
    paper's methods, an offline baseline, ES online in the environment, GAUC, A/B, tables, report)."""
    from rlmtf.pipelines.paper import Preset, run_paper

    tiny = Preset("tiny", rounds=2, sessions_per_round=30, test_sessions=40, steps_per_round=3, hidden=(8,),
                  embed_dim=4, batch_size=16, ensemble_size=2, warmup_steps=2, es_generations=1, es_popsize=4,
                  es_sessions_per_candidate=4, online_users=40, online_days=1, ptm_online_users=30, seeds=1)
    tables = run_paper(tmp_path / "paper", preset=tiny, sim=env, env="kuairand",
                       methods=("es", "ddpg", "integrated", "esrl"), log=lambda m: None)
    assert {e["method"] for e in tables["table1"]} == {"es", "ddpg", "integrated", "baseline"}
    assert all(0 < e["mean"] < 1 for e in tables["table1"])
    assert {e["metric"] for e in tables["table4"]} >= {"uvc_lift", "udt_lift"}
    meta = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert meta["env"] == "kuairand"
    rounds = json.loads((tmp_path / "paper" / "seed_0" / "ptm_esrl" / "ptm.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    data_meta = json.loads((tmp_path / "paper" / "seed_0" / "ptm_esrl" / "round_1" / "data" / "_meta.json").read_text())
    assert data_meta["info"]["env"] == "kuairand"
    assert (tmp_path / "paper" / "report.html").stat().st_size > 10_000
