"""The candidate sample (docs/design.md#the-candidate-sample): the draw, logging it changes nothing else, its
columns' checks, the transitions built from it, and Enhanced-State RL trained on it (standardisation on the
candidates, the bound penalty on them with no gradient to the critics), progressive training's logging of it
and the CLI flag."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rlmtf.algos.esrl import EnhancedStateRL, ESRLConfig
from rlmtf.algos.integrated import IntegratedRL
from rlmtf.algos.losses import bound_penalty
from rlmtf.core.schema import CANDIDATE_COLUMNS
from rlmtf.data import LogWriter, build_transitions, read_logs
from rlmtf.data.io import LogDataError
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.engine import candidate_sample
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import baseline_policy

SMALL = ESRLConfig(hidden=(32, 32), embed_dim=8, ensemble_size=4, warmup_steps=5, batch_size=32, variant="residual",
                   candidate_penalty=True, candidate_stats=True)


def test_candidate_sample_is_distinct_uniform_and_keyed_on_the_request():
    keys = np.arange(20_000, dtype=np.uint64) * np.uint64(7919) + np.uint64(11)
    pos = candidate_sample(keys, 10, 4)
    assert pos.shape == (20_000, 4) and pos.min() >= 0 and pos.max() < 10
    assert all(len(set(r)) == 4 for r in pos[:500].tolist())  # without replacement
    share = np.bincount(pos.reshape(-1), minlength=10) / pos.size  # each candidate drawn 4/10 of the time
    assert np.abs(share - 0.1).max() < 0.01
    assert np.array_equal(candidate_sample(keys[:50], 10, 4), pos[:50])  # the same request, the same sample
    assert not np.array_equal(candidate_sample(keys[50:100], 10, 4), pos[:50])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same exploration logged with and without the candidate sample."""
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=2000))
    root = tmp_path_factory.mktemp("cand")
    out = {}
    for flag in (False, True):
        pol = behaviour_policy(baseline_policy(), "uniform", "item", seed=3)
        res, path = simulate_to_parquet(sim, pol, root / str(flag), seed=3, sessions=120, log_candidates=flag)
        out[flag] = (res, read_logs(path))
    return out


def test_logging_the_sample_changes_nothing_else(pair):
    (r0, d0), (r1, d1) = pair[False], pair[True]
    for name in ("valid", "watch_time", "sessions", "requests", "reward"):
        assert np.array_equal(getattr(r0, name), getattr(r1, name)), name
    assert set(d1.columns) - set(d0.columns) == set(CANDIDATE_COLUMNS)
    for name, col in d0.columns.items():
        assert np.array_equal(col, d1.columns[name]), name


def test_the_sample_reaches_unshown_candidates(pair):
    c = pair[True][1].columns
    # the sample is drawn from all N candidates, so its MTL scores are far below the shown (top-ranked) items'
    shown, cand = c["mtl_scores"].mean(0), c["candidate_mtl_scores"].mean(0)
    assert (cand < 0.8 * shown).all(), (cand, shown)
    # the behaviour policy's box (offsets around mu_bp) comes with each sampled candidate: here +-0.15 everywhere
    np.testing.assert_array_equal(c["candidate_lower_b"], c["lower_b"])
    np.testing.assert_array_equal(c["candidate_upper_b"], c["upper_b"])
    assert np.allclose(c["candidate_lower_b"], -0.15) and np.allclose(c["candidate_upper_b"], 0.15)


def test_partial_or_bad_candidate_columns_are_refused_by_name(pair, tmp_path):
    d = pair[True][1]
    rows = np.arange(50)
    cols = {k: v[rows] for k, v in d.columns.items()}
    partial = {k: v for k, v in cols.items() if k != "candidate_upper_b"}
    with LogWriter(tmp_path / "a", d.meta) as w, pytest.raises(LogDataError, match="candidate_upper_b"):
        w.write(int(cols["day"][0]), partial)
    for name, value, what in (("candidate_mu_bp", 1.5, "candidate_mu_bp"),
                              ("candidate_lower_b", 9.0, "candidate_lower_b"),
                              ("candidate_mtl_scores", -0.5, "candidate_mtl_scores")):
        bad = {k: v.copy() for k, v in cols.items()}
        bad[name][3, 1] = value
        with LogWriter(tmp_path / name, d.meta) as w, pytest.raises(LogDataError, match=what):
            w.write(int(cols["day"][0]), bad)


def test_transitions_carry_the_sample_beside_each_request(pair):
    d = pair[True][1]
    t = build_transitions(d)
    assert t.has_candidates and not build_transitions(pair[False][1]).has_candidates
    assert t.candidate_state.shape == t.enhanced_state.shape
    d_us = t.user_state.shape[1]
    f = d.meta.feature_spec.item_features.dim
    rows = t.row_index
    np.testing.assert_array_equal(t.candidate_state[:, :, :d_us], t.enhanced_state[:, :, :d_us])
    np.testing.assert_array_equal(t.candidate_state[:, :, d_us:d_us + f], d.columns["candidate_item_features"][rows])
    np.testing.assert_array_equal(t.candidate_state[:, :, d_us + f:], d.columns["candidate_mtl_scores"][rows])
    np.testing.assert_array_equal(t.candidate_mu_bp, d.columns["candidate_mu_bp"][rows])
    a, b = t.split(0.5, seed=0)  # subsets, day episodes and batches keep them
    assert len(a) + len(b) == len(t) and a.candidate_state.shape[0] == len(a)
    day = t.day_episodes()
    assert day.has_candidates
    batch = day.batch(np.array([0, 3, 5]))
    np.testing.assert_array_equal(batch.candidate_lower_b, t.candidate_lower_b[[0, 3, 5]])
    assert "candidate_state" in batch.to_torch() and "candidate_state" not in build_transitions(
        pair[False][1]).batch(np.array([0])).to_torch()


def test_esrl_standardises_on_the_candidates_and_penalises_their_box(pair):
    d = pair[True][1]
    t = build_transitions(d)
    algo = EnhancedStateRL(d.meta.feature_spec, SMALL)
    np.testing.assert_array_equal(algo.train_states(t), t.candidate_state.reshape(-1, t.candidate_state.shape[-1]))
    plain = EnhancedStateRL(d.meta.feature_spec, dataclasses.replace(SMALL, candidate_stats=False))
    assert plain.train_states(t).shape == algo.train_states(t).shape
    assert not np.array_equal(plain.train_states(t), algo.train_states(t))
    algo.set_normalisation(t)
    batch = t.sample(16, np.random.default_rng(0))
    # the penalty on the candidates reaches the actor and only the actor
    v = algo.view(batch.to_torch())
    with torch.no_grad():  # push the actor far out of the box so that the penalty is > 0
        for p in algo.actor.parameters():
            p.add_(torch.randn_like(p))
    pen = algo.candidate_box_penalty(v)
    assert pen.shape == (16 * d.meta.list_len,) and (pen > 0).any()
    algo.actor.zero_grad(set_to_none=True)
    algo.critic.zero_grad(set_to_none=True)
    pen.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.actor.parameters())
    assert all(p.grad is None for p in algo.critic.parameters())
    m = algo.update(batch)
    assert m["actor/candidate_penalty"] > 0 and 0 < m["actor/candidate_outside_box"] <= 1


def test_training_on_the_candidates_pulls_their_actions_into_the_box(pair):
    d = pair[True][1]
    t = build_transitions(d)
    outside = {}
    for flag in (False, True):
        torch.manual_seed(0)
        algo = EnhancedStateRL(d.meta.feature_spec, dataclasses.replace(SMALL, candidate_penalty=flag, eta=5.0,
                                                                         candidate_stats=False, warmup_steps=0))
        algo.set_normalisation(t)
        with torch.no_grad():
            for p in algo.actor.parameters():
                p.add_(0.5 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
        rng = np.random.default_rng(0)
        for _ in range(60):
            algo.update(t.sample(32, rng))
        with torch.no_grad():  # d() of the actor's actions on every request's candidate sample
            cs = torch.as_tensor(t.candidate_state).reshape(-1, t.candidate_state.shape[-1])
            mu = algo.actor(cs)
            box = [torch.as_tensor(x).reshape(mu.shape) for x in (t.candidate_mu_bp, t.candidate_lower_b,
                                                                  t.candidate_upper_b)]
            outside[flag] = float(bound_penalty(mu, *box, algo.cfg.beta).mean())
    assert outside[True] < outside[False], outside


def test_candidate_sample_is_refused_where_it_cannot_apply(pair):
    d = pair[False][1]
    t = build_transitions(d)
    algo = EnhancedStateRL(d.meta.feature_spec, SMALL)
    with pytest.raises(ValueError, match="candidate_stats.*--log-candidates"):
        algo.set_normalisation(t)
    penalty_only = EnhancedStateRL(d.meta.feature_spec, dataclasses.replace(SMALL, candidate_stats=False))
    penalty_only.set_normalisation(t)  # standardised on the shown items: the logs have what it needs
    with pytest.raises(ValueError, match="candidate_penalty.*--log-candidates"):
        penalty_only.update(t.sample(4, np.random.default_rng(0)))
    for flags in ({"candidate_penalty": True}, {"candidate_stats": True}):
        with pytest.raises(ValueError, match="acts per request"):
            IntegratedRL(d.meta.feature_spec, ESRLConfig(**flags))


def test_progressive_training_logs_the_sample_when_the_algorithm_reads_it(tmp_path):
    from rlmtf.pipelines.ptm import PTMConfig, run_ptm
    from rlmtf.train.loop import TrainConfig

    sim = Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=2000))
    cfg = PTMConfig(rounds=1, sessions_per_round=40, steps_per_round=3, test_sessions=20, online_users=50,
                    online_days=1)
    run_ptm("esrl", sim, tmp_path / "ptm", cfg, dataclasses.replace(SMALL, candidate_stats=False),
            TrainConfig(steps=3, eval_every=0), log=lambda s: None)
    assert all(c in read_logs(tmp_path / "ptm" / "round_1" / "data").columns for c in CANDIDATE_COLUMNS)
    assert "candidate_mu_bp" not in read_logs(tmp_path / "ptm" / "test").columns


def test_simulate_cli_logs_the_sample(tmp_path):
    out = tmp_path / "logs"
    r = subprocess.run([sys.executable, "-m", "rlmtf", "simulate", "--out", str(out), "--sessions", "20",
                        "--users", "200", "--per", "item", "--log-candidates", "--json"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] > 0
    cols = read_logs(out).columns
    assert all(c in cols for c in CANDIDATE_COLUMNS)
