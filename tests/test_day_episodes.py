"""Day episodes: a session's last request continues into the user's next session of the day
(``Transitions.day_episodes``), and every algorithm discounts that step by ``session_gamma``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from _logs import make_columns, write_dataset

from rlmtf.algos import algorithm_class
from rlmtf.core.bellman import bellman_target, discounts
from rlmtf.data import LogDataError, build_transitions, read_logs


def _day_logs(tmp_path: Path, users: tuple[int, ...]):
    cols = make_columns((2, 1, 3))  # sessions 100 (t 0, 1), 101 (t 0), 102 (t 0, 1, 2)
    per_session = dict(zip((100, 101, 102), users, strict=True))
    cols["user_id"] = np.array([per_session[int(s)] for s in cols["session_id"]], np.int64)
    return build_transitions(read_logs(write_dataset(tmp_path / "ds", [(0, cols)])))


def test_a_session_continues_into_the_users_next_session_that_day(tmp_path):
    tr = _day_logs(tmp_path, (5, 5, 6))
    day = tr.day_episodes(return_bonus=7.0)
    assert day.episode == "day" and tr.episode == "session"
    np.testing.assert_array_equal(tr.next_index, [1, 1, 2, 4, 5, 5])
    np.testing.assert_array_equal(day.next_index, [1, 2, 2, 4, 5, 5])  # 100's last request -> 101's first
    np.testing.assert_array_equal(day.done, [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(day.gap, [0, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(day.reward - tr.reward, [0, 7, 0, 0, 0, 0])
    np.testing.assert_allclose(day.item_reward.sum(1), day.reward, rtol=1e-6)
    np.testing.assert_array_equal(day.episode_id, [100, 100, 100, 102, 102, 102])
    np.testing.assert_array_equal(tr.gap, np.zeros(6))
    with pytest.raises(ValueError, match="already"):
        day.day_episodes()


def test_a_split_keeps_whole_user_days(sim_day):
    _, _, day = sim_day
    key = day.day.astype(np.int64) * 10**7 + day.user_id
    _, full = np.unique(key, return_counts=True)
    assert (full > 0).all() and (day.gap > 0).any(), "the test data must hold user-days with several sessions"
    a, b = day.split(0.5, seed=0)
    assert len(a) + len(b) == len(day) and 0 < len(a) < len(day)
    for part in (a, b):
        assert part.episode == "day"
        k = part.day.astype(np.int64) * 10**7 + part.user_id
        u, c = np.unique(k, return_counts=True)
        np.testing.assert_array_equal(c, full[np.searchsorted(np.unique(key), u)])  # whole user-days only
        same_day = (part.user_id[part.next_index] == part.user_id) & (part.day[part.next_index] == part.day)
        assert same_day.all()


def test_interleaved_user_days_are_refused(tmp_path):
    with pytest.raises(LogDataError, match="consecutive"):
        _day_logs(tmp_path, (5, 6, 5)).day_episodes()


def test_the_session_gap_is_discounted_by_session_gamma():
    gap = torch.tensor([0.0, 1.0, 0.0])
    disc = discounts(gap, 0.9, 0.5)
    torch.testing.assert_close(disc, torch.tensor([0.9, 0.5, 0.9]))
    y = bellman_target(torch.ones(3), torch.tensor([0.0, 0.0, 1.0]), torch.full((3,), 10.0), disc)
    torch.testing.assert_close(y, torch.tensor([1 + 9.0, 1 + 5.0, 1.0]))


@pytest.fixture(scope="module")
def sim_day(tmp_path_factory):
    from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.policy.fixed import baseline_policy

    sim = Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=1000))
    out = tmp_path_factory.mktemp("day") / "explore"
    simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", "request", seed=1), out, seed=1,
                        sessions=120)
    logs = read_logs(out)
    return sim, logs, build_transitions(logs).day_episodes(return_bonus=1.0)


@pytest.mark.parametrize("name", ["esrl", "integrated", "ddpg", "cql_sac", "bcq", "iql"])
def test_every_actor_critic_uses_the_session_gamma_at_a_gap(sim_day, name):
    """The same batch under two session discounts: the first update's critic differs exactly through the
    requests whose next request opens another session."""
    _, logs, day = sim_day
    cls = algorithm_class(name)
    names = {f.name for f in dataclasses.fields(cls.config_cls)}
    small = {k: v for k, v in {"hidden": (8,), "embed_dim": 4, "ensemble_size": 2, "batch_size": 64,
                                "n_action_samples": 2, "latent_dim": 4}.items() if k in names}
    idx = np.flatnonzero(day.gap > 0)[:32]
    batch = day.batch(np.r_[idx, idx])
    metrics = {}
    for sg in (0.9, 0.2):
        algo = cls(logs.meta.feature_spec, dataclasses.replace(cls.config_cls(), session_gamma=sg, **small), seed=3)
        algo.set_normalisation(day)
        metrics[sg] = algo.update(batch)
    assert any(metrics[0.9][k] != metrics[0.2][k] for k in metrics[0.9]), f"{name}: session_gamma changed nothing"


def test_cli_train_with_a_day_objective(tmp_path):
    """``rlmtf train --objective day:...`` in a subprocess: the settings reach both configs; bad uses are
    refused by name."""
    import json
    import subprocess
    import sys

    def rlmtf(*args):
        return subprocess.run([sys.executable, "-m", "rlmtf.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=300, check=False)

    cfg = tmp_path / "small.toml"
    cfg.write_text("n_users = 300\nn_items = 2000\n")
    data = tmp_path / "d"
    assert rlmtf("simulate", "--sim-config", cfg, "--out", data, "--sessions", "150", "--seed", "1").returncode == 0
    run = tmp_path / "run"
    out = rlmtf("train", "--algo", "integrated", "--data", data, "--out", run, "--steps", "20", "--hidden", "8",
                "--critics", "2", "--objective", "day:gamma=0.97,session_gamma=0.8,return_bonus=1")
    assert out.returncode == 0, out.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["train_config"]["episode"] == "day" and saved["train_config"]["return_bonus"] == 1.0
    assert saved["algo_config"]["gamma"] == 0.97 and saved["algo_config"]["session_gamma"] == 0.8
    es = rlmtf("train", "--algo", "es", "--data", data, "--out", tmp_path / "es", "--steps", "1", "--objective", "day")
    assert es.returncode == 2 and "no critic" in es.stderr
    stream = rlmtf("train", "--algo", "ddpg", "--data", data, "--out", tmp_path / "s", "--steps", "1", "--stream",
                   "--objective", "day")
    assert stream.returncode == 2 and "without --stream" in stream.stderr
    bad = rlmtf("train", "--algo", "ddpg", "--data", data, "--out", tmp_path / "b", "--steps", "1", "--objective",
                "day:gama=1")
    assert bad.returncode == 2 and "key=value" in bad.stderr
