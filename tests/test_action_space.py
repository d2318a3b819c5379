"""The relative action space (``docs/design.md#the-action-space``): no flat direction, biases on a log
scale, and the same fusions as the paper's space where both can express them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlmtf.algos.registry import load_policy
from rlmtf.core.fusion import ActionSpace, fused_log_score
from rlmtf.data import read_logs
from rlmtf.envs.collect import behaviour_policy
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.base import Policy
from rlmtf.policy.fixed import BASELINE_BIAS, BASELINE_POWER, FixedPolicy, baseline_policy

REL = ActionSpace(parameterisation="relative")


def test_dimension_names_and_range_ends():
    assert REL.dim == 9 and REL.n_power == 4
    assert REL.names()[:4] == ("power:watch_time", "power:finish", "power:like", "power:share")
    assert REL.names()[4:] == tuple(f"bias:{t}" for t in ("valid", "watch_time", "finish", "like", "share"))
    power, bias = REL.to_params(np.array([[-1.0] * 9, [0.0] * 9, [1.0] * 9]))
    np.testing.assert_allclose(power[:, 0], 1.0)  # the first power is fixed
    np.testing.assert_allclose(power[:, 1:], [[0.0] * 4, [1.0] * 4, [2.0] * 4])
    # log scale over [0.001, 1]: -1 -> 0.001, 0 -> the geometric middle 10^-1.5, +1 -> 1
    np.testing.assert_allclose(bias, [[1e-3] * 5, [10 ** -1.5] * 5, [1.0] * 5], rtol=1e-12)


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_round_trip(xp):
    a = np.random.default_rng(0).uniform(-1, 1, (7, 9))
    if xp == "torch":
        power, bias = REL.to_params(torch.tensor(a))
        back = REL.from_params(power, bias).numpy()
    else:
        back = REL.from_params(*REL.to_params(a))
    np.testing.assert_allclose(back, a, atol=1e-12)


def test_from_params_divides_by_the_first_power_and_keeps_the_ranking():
    scores = np.random.default_rng(1).uniform(0, 1, (50, 5))
    power, bias = np.array([0.5, 0.4, 0.3, 0.2, 0.15]), np.array([0.1, 0.1, 0.1, 0.05, 0.05])
    a_rel = REL.from_params(power, bias)
    np.testing.assert_allclose(REL.to_params(a_rel)[0], power / 0.5)
    paper = ActionSpace()
    ref = fused_log_score(scores, paper.from_params(power, bias), paper)
    got = fused_log_score(scores, a_rel, REL)
    np.testing.assert_array_equal(np.argsort(ref), np.argsort(got))
    with pytest.raises(ValueError, match="first power"):
        REL.from_params(np.array([0.0, 1, 1, 1, 1]), bias)


def test_no_flat_direction():
    """In the paper's space moving all powers together changes no ranking; in the relative space every
    action dimension changes some ranking."""
    scores = np.random.default_rng(2).uniform(0, 1, (400, 5)) ** 2

    def order(space, a):
        return np.argsort(fused_log_score(scores, a, space))

    paper = ActionSpace()
    base = paper.from_params(np.array(BASELINE_POWER), np.array(BASELINE_BIAS))
    scale = baseline_policy(paper).action.copy()
    scale[:5] = paper.from_params(np.array(BASELINE_POWER) * 1.2, np.array(BASELINE_BIAS))[:5]
    np.testing.assert_array_equal(order(paper, base), order(paper, scale))  # the flat direction
    a0 = baseline_policy(REL).action.astype(np.float64)
    for i in range(REL.dim):
        a = a0.copy()
        a[i] += 0.3 if a[i] < 0.7 else -0.3
        assert not np.array_equal(order(REL, a0), order(REL, a)), REL.names()[i]


def test_hand_set_biases_sit_inside_the_relative_range():
    """Under the paper's map the hand-set like/share biases (0.05) are 0.08 action units from the floor, so a
    0.15 box crosses it; under the relative map every hand-set bias is at least 0.5 units from an edge."""
    assert (1 + ActionSpace().from_params(np.array(BASELINE_POWER), np.array(BASELINE_BIAS))[5:]).min() < 0.1
    assert (1 - np.abs(baseline_policy(REL).action[4:])).min() > 0.5


def test_unknown_parameterisation_is_named():
    with pytest.raises(ValueError, match="parameterisation must be one of paper, relative"):
        ActionSpace(parameterisation="free")
    with pytest.raises(ValueError, match="expected 9 .the .relative. action space"):
        REL.to_params(np.zeros(10))


def small(space: ActionSpace) -> Simulator:
    return Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=1500, action_space=space))


def test_the_baseline_gives_the_same_users_in_either_space():
    """The same fusion expressed in either space ranks the same lists, so under common random numbers the
    simulated users behave identically."""
    ra = small(ActionSpace()).run(baseline_policy(ActionSpace()), seed=4, days=2)
    rb = small(REL).run(baseline_policy(REL), seed=4, days=2)
    for name in ("valid", "watch_time", "sessions", "requests", "reward"):
        np.testing.assert_allclose(getattr(ra, name), getattr(rb, name), rtol=1e-9, err_msg=name)


def test_exploration_and_logs_in_the_relative_space():
    sim = small(REL)
    cols: list[dict] = []
    pol = behaviour_policy(baseline_policy(REL), "uniform", "request", lower_b=-0.15, upper_b=0.15, seed=1)
    sim.run(pol, seed=1, days=1, sink=lambda day, c: cols.append(c))
    action, mu = np.concatenate([c["action"] for c in cols]), np.concatenate([c["mu_bp"] for c in cols])
    assert action.shape[1] == 9 and sim.spec.action_dim == 9
    assert (np.abs(action - mu) <= 0.15 + 1e-6).all() and np.abs(action - mu).max() > 0.1
    with pytest.raises(ValueError, match="environment logs actions of the 'relative' one"):
        small(REL).run(baseline_policy(ActionSpace()), seed=1, days=1, users=np.arange(5), sink=lambda d, c: None)


class TenDims(Policy):
    """Actions of the paper's 10 dimensions without saying so: the environment's space applies."""

    name = "ten"

    def act(self, obs):
        return np.zeros((obs.batch_size, 10), np.float32)


def test_actions_of_another_dimension_are_refused_with_the_space_named():
    with pytest.raises(ValueError, match="expected .*9 dimensions.*relative"):
        small(REL).run(TenDims(), seed=1, days=1, users=np.arange(5))


def test_a_policy_carrying_its_space_ranks_the_same_in_either_environment():
    pol = baseline_policy(REL)
    ra = small(ActionSpace()).run(pol, seed=2, days=1)
    rb = small(REL).run(pol, seed=2, days=1)
    np.testing.assert_array_equal(ra.valid, rb.valid)


def test_a_fixed_policy_in_the_wrong_space_is_refused_with_its_dimension():
    with pytest.raises(ValueError, match="8"):
        FixedPolicy(np.zeros(8, np.float32))


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "rlmtf.cli", *args], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=600, check=False)
    if ok:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_cli_logs_trains_and_evaluates_in_the_relative_space(tmp_path):
    """simulate --action-space relative logs 9-number actions; the trained policy carries its space, so it is
    evaluated in the default environment without a flag."""
    data, run = tmp_path / "logs", tmp_path / "run"
    cli("simulate", "--out", str(data), "--explore", "uniform", "--sessions", "120", "--users", "300",
        "--action-space", "relative", "--seed", "1")
    logs = read_logs(data)
    assert logs.meta.feature_spec.action_dim == 9 and logs.columns["action"].shape[1] == 9
    cli("train", "--algo", "integrated", "--data", str(data), "--out", str(run), "--steps", "20", "--hidden", "16,16",
        "--critics", "2", "--batch-size", "32", "--eval-every", "10", "--threads", "1")
    doc = json.loads((run / "policy" / "policy.json").read_text())
    assert doc["action_space"]["parameterisation"] == "relative"
    pol = load_policy(str(run / "policy"))
    assert pol.action_space == REL
    res = json.loads(cli("evaluate", "online", "--policy", "baseline", "--policy", str(run / "policy"), "--users",
                         "100", "--days", "1", "--json").stdout)
    assert len(res["arms"]) == 2
    bad = cli("simulate", "--out", str(tmp_path / "x"), "--sessions", "10", "--action-space", "free", ok=False)
    assert bad.returncode != 0 and "parameterisation must be one of paper, relative" in bad.stderr
