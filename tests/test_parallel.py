"""Simulation over several processes equals the single-process simulation, user by user."""

import dataclasses

import numpy as np
import pytest

from rlmtf.data import read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.parallel import run_parallel, split_budget, split_users
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import baseline_policy


@pytest.fixture(scope="module")
def sim():
    return Simulator(dataclasses.replace(SimConfig(), n_users=1500, n_items=3000))


def test_two_workers_equal_one_process(sim):
    pol = behaviour_policy(baseline_policy(), "uniform", "item", seed=4)
    one = sim.run(pol, seed=5, days=2, users=np.arange(900))
    two, counts = run_parallel(sim, pol, workers=2, seed=5, days=2, users=np.arange(900), max_sessions=None)
    assert counts == []
    np.testing.assert_array_equal(one.user_ids, two.user_ids)
    for k in ("valid", "watch_time", "sessions", "requests", "reward", "items"):
        np.testing.assert_array_equal(getattr(one, k), getattr(two, k), err_msg=k)
    assert (one.n_rows, one.n_sessions) == (two.n_rows, two.n_sessions)


def test_sharded_parquet_has_the_same_rows(sim, tmp_path):
    pol = behaviour_policy(baseline_policy(), "uniform", "request", seed=1)
    simulate_to_parquet(sim, pol, tmp_path / "one", seed=3, days=1, users=np.arange(600))
    r, _ = simulate_to_parquet(sim, pol, tmp_path / "two", seed=3, days=1, users=np.arange(600), workers=2)
    a, b = read_logs(tmp_path / "one"), read_logs(tmp_path / "two")
    assert len(a) == len(b) == r.n_rows
    assert any("part-001-" in f for f in b.files) and any("part-000-" in f for f in b.files)
    ka = np.lexsort((a.columns["position"], a.columns["t"], a.columns["session_id"]))
    kb = np.lexsort((b.columns["position"], b.columns["t"], b.columns["session_id"]))
    for col in ("session_id", "item_id", "action", "mtl_scores", "reward", "done"):
        np.testing.assert_array_equal(a.columns[col][ka], b.columns[col][kb], err_msg=col)


def test_session_budget_is_split_across_workers(sim, tmp_path):
    r, _ = simulate_to_parquet(sim, baseline_policy(), tmp_path / "d", seed=1, sessions=777, workers=2)
    assert 777 <= r.n_sessions < 777 + 2 * 64 * 8  # whole user-days in each worker
    assert len(np.unique(read_logs(tmp_path / "d").columns["session_id"])) == r.n_sessions


def test_split_helpers():
    blocks = split_users(np.arange(10), 3)
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_budget(11, blocks) == [5, 3, 3]  # floor(4.4)=4, 3, 3 -> the remainder 1 goes to the first
    assert split_budget(None, blocks) == [None, None, None]
