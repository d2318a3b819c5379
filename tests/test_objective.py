"""The objective (episode, discounts, return bonus) and the finite-difference analysis that chooses it."""

import dataclasses

import numpy as np
import pytest

from rlmtf.core.objective import Objective, request_values, user_day_values
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.objective import objective_gradients
from rlmtf.policy.fixed import baseline_policy

M = 8  # max sessions per day in the session-id encoding


def sid(day_user: int, k: int) -> int:
    return day_user * M + k


# user-day 3: session k=0 with 2 requests, k=1 with 1 request; user-day 5: one session of 2 requests
SESSION = np.array([sid(3, 0), sid(3, 0), sid(3, 1), sid(5, 0), sid(5, 0)])
T = np.array([0, 1, 0, 0, 1])
R = np.array([1.0, 2.0, 4.0, 8.0, 16.0])


def test_session_episode_discounts_by_request_index():
    disc, rew = request_values(SESSION, T, R, Objective(gamma=0.5), M)
    np.testing.assert_allclose(disc, [1, 0.5, 1, 1, 0.5])
    np.testing.assert_array_equal(rew, R)
    keys, value, episodes = user_day_values(SESSION, T, R, Objective(gamma=0.5), M)
    np.testing.assert_array_equal(keys, [3, 5])
    np.testing.assert_allclose(value, [1 + 0.5 * 2 + 4, 8 + 0.5 * 16])
    np.testing.assert_array_equal(episodes, [2, 1])


def test_day_episode_continues_into_the_next_session_with_its_own_discount_and_bonus():
    obj = Objective(episode="day", gamma=0.5, session_gamma=0.25, return_bonus=10.0)
    disc, rew = request_values(SESSION, T, R, obj, M)
    # day 3: t0 -> t1 (gamma) -> next session (session_gamma); day 5 starts afresh
    np.testing.assert_allclose(disc, [1, 0.5, 0.5 * 0.25, 1, 0.5])
    # the bonus goes to the last request of a session that another session follows the same day
    np.testing.assert_allclose(rew, [1, 2 + 10, 4, 8, 16])
    _, value, episodes = user_day_values(SESSION, T, R, obj, M)
    np.testing.assert_allclose(value, [1 + 0.5 * 12 + 0.125 * 4, 8 + 0.5 * 16])
    np.testing.assert_array_equal(episodes, [1, 1])


def test_zero_discount_gives_exact_zeros():
    disc, _ = request_values(SESSION, T, R, Objective(episode="day", gamma=0.0, session_gamma=1.0), M)
    np.testing.assert_array_equal(disc, [1, 0, 0, 1, 0])


@pytest.mark.parametrize("text, want", [
    ("session", Objective()),
    ("session:gamma=1", Objective(gamma=1.0)),
    ("day:gamma=0.9,session_gamma=0.8,return_bonus=2", Objective("day", 0.9, 0.8, 2.0)),
])
def test_parse(text, want):
    assert Objective.parse(text) == want


@pytest.mark.parametrize("text, match", [
    ("week", "episode must be one of"), ("session:gamma=2", "gamma must be a number in"),
    ("day:gama=1", "key=value"), ("day:gamma=x", "must be a number"),
    ("session:return_bonus=1", "belong to the day episode"),
])
def test_parse_errors_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        Objective.parse(text)


def test_gradients_of_the_undiscounted_day_return_are_those_of_the_reward_per_user_day():
    env = Simulator(dataclasses.replace(SimConfig(), n_users=400, n_items=2000))
    objs = {"day": Objective("day", 1.0, 1.0), "session": Objective(gamma=0.9)}
    rep = objective_gradients(env, baseline_policy(env.cfg.action_space).action, objs, users=300, days=1, seed=1,
                              bootstrap=20)
    # the same quantity computed two ways: the logged rows' rewards summed per user-day and the engine's totals
    np.testing.assert_allclose(rep.gradient["day"], rep.gradient["reward"], rtol=1e-4, atol=1e-6)
    assert rep.cosine["day"]["reward"] == pytest.approx(1.0)
    assert rep.value["session"] < rep.value["day"]  # a user-day has at least one session, discounted less
    assert all(np.isfinite(rep.gradient_se["uvc"])) and max(rep.gradient_se["uvc"]) > 0
    assert len(rep.levers("uvc", 3)) == 3


def test_cli_analyze_objective_in_a_subprocess(tmp_path):
    import json
    import subprocess
    import sys

    cfg = tmp_path / "small.toml"
    cfg.write_text("n_users = 300\nn_items = 2000\n")
    args = [sys.executable, "-m", "rlmtf.cli", "analyze", "objective", "--sim-config", str(cfg), "--users", "200",
            "--days", "1", "--bootstrap", "10", "--objective", "day:gamma=1,session_gamma=1", "--objective",
            "session"]
    out = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert set(rep["cosine"]) == {"day:gamma=1,session_gamma=1", "session"}
    assert rep["cosine"]["day:gamma=1,session_gamma=1"]["reward"] == pytest.approx(1.0)
    assert len(rep["gradient"]["uvc"]) == 10 and len(rep["action_names"]) == 10
    bad = subprocess.run([*args[:-4], "--objective", "week"], capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "episode must be one of" in bad.stderr
    trained = subprocess.run([*args[:5], "--policy", str(tmp_path)], capture_output=True, text=True, timeout=300,
                             check=False)
    assert trained.returncode == 2 and "policy.json" in trained.stderr


def test_propagation_steps_by_hand():
    """h / tau with h the 90th percentile of the episodes' lengths, capped at 1 / (1 - gamma)."""
    from rlmtf.core.objective import propagation_steps

    lengths = np.arange(1, 11)  # 1..10 requests: numpy's linear 90th percentile is 9.1
    assert propagation_steps(lengths, tau=0.01) == 910
    assert propagation_steps(lengths, tau=0.01, gamma=0.8) == 500  # the discount's horizon 5 < 9.1
    assert propagation_steps(lengths, tau=0.01, quantile=0.5) == 550
    with pytest.raises(ValueError, match="episode_lengths"):
        propagation_steps(np.array([0, 3]), tau=0.01)
    with pytest.raises(ValueError, match="tau"):
        propagation_steps(lengths, tau=0.0)


def test_horizon_steps_reads_the_logs_episodes_and_the_configs_target_rate(tmp_path):
    """Day episodes are longer than sessions, so they need more steps; Enhanced-State RL's targets move by
    w every L steps (rate w / L); ES has no targets (0)."""
    import dataclasses

    from rlmtf.algos.ddpg import DDPGConfig
    from rlmtf.algos.es import ESConfig
    from rlmtf.algos.esrl import ESRLConfig
    from rlmtf.data.io import read_logs
    from rlmtf.envs.collect import simulate_to_parquet
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.policy.fixed import baseline_policy
    from rlmtf.train.loop import horizon_steps

    sim = Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=1000))
    simulate_to_parquet(sim, baseline_policy(), tmp_path / "d", seed=1, sessions=300)
    logs = read_logs(tmp_path / "d")
    day = horizon_steps(logs, "day", DDPGConfig(gamma=1.0))
    session = horizon_steps(logs, "session", DDPGConfig(gamma=1.0))
    assert day > session > 0 and day % 1 == 0
    assert horizon_steps(logs, "day", ESRLConfig(gamma=1.0, target_rate=0.05, target_every=10)) == day
    assert horizon_steps(logs, "session", DDPGConfig(gamma=0.5)) == 400  # capped at 1 / (1 - 0.5) = 2 requests
    assert horizon_steps(logs, "day", ESConfig()) == 0
