"""Tests for rlmtf.envs.sim.config: typed defaults, YAML/TOML/JSON overrides, errors and TOML round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rlmtf.core.config_io import ConfigError
from rlmtf.core.fusion import ActionSpace
from rlmtf.core.reward import RewardWeights
from rlmtf.envs.sim.config import (
    BehaviourConfig,
    SessionConfig,
    SimConfig,
    UserConfig,
    load_sim_config,
    sim_config_from_dict,
    to_toml,
)

TOML_TEXT = """\
n_users = 5000
world_seed = 7

[behaviour]
like_bias = -2.8

[session]
leave_bias = -2
max_requests = 30

[users]
clickbait_susceptibility = [0.25, 2.0]

[action_space]
power_range = [0.0, 3.0]
"""

YAML_TEXT = """\
n_users: 5000
world_seed: 7
behaviour:
  like_bias: -2.8
session:
  leave_bias: -2.0
  max_requests: 30
users:
  clickbait_susceptibility: [0.25, 2]
action_space:
  power_range: [0, 3.0]
"""

EXPECTED = dataclasses.replace(
    SimConfig(),
    n_users=5000,
    world_seed=7,
    behaviour=BehaviourConfig(like_bias=-2.8),
    session=SessionConfig(leave_bias=-2.0, max_requests=30),
    users=UserConfig(clickbait_susceptibility=(0.25, 2.0)),
    action_space=ActionSpace(power_range=(0.0, 3.0)),
)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_none_gives_defaults():
    cfg = load_sim_config(None)
    assert cfg == SimConfig()
    assert cfg.n_users == 20_000 and cfg.list_len == 5
    assert cfg.reward == RewardWeights()
    assert cfg.action_space == ActionSpace()


def test_toml_overrides_nested(tmp_path):
    cfg = load_sim_config(_write(tmp_path, "sim.toml", TOML_TEXT))
    assert cfg.n_users == 5000
    assert cfg.world_seed == 7
    assert cfg.behaviour.like_bias == -2.8
    assert cfg.session.leave_bias == -2.0 and isinstance(cfg.session.leave_bias, float)  # int 2 -> float
    assert cfg.session.max_requests == 30
    assert cfg.users.clickbait_susceptibility == (0.25, 2.0)
    assert isinstance(cfg.users.clickbait_susceptibility, tuple)
    assert cfg.action_space.power_range == (0.0, 3.0)
    # untouched values keep their defaults, in the same and in other tables
    assert cfg.behaviour.share_bias == BehaviourConfig().share_bias
    assert cfg.users.latent_dim == UserConfig().latent_dim
    assert cfg.n_items == SimConfig().n_items
    assert cfg.mtl == SimConfig().mtl
    assert cfg == EXPECTED


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_equals_toml(tmp_path, suffix):
    c_toml = load_sim_config(_write(tmp_path, "sim.toml", TOML_TEXT))
    c_yaml = load_sim_config(_write(tmp_path, "sim" + suffix, YAML_TEXT))
    assert c_yaml == c_toml == EXPECTED
    assert isinstance(c_yaml.users.clickbait_susceptibility[1], float)  # yaml int 2 -> 2.0


def test_json_file(tmp_path):
    d = {"n_users": 5000, "world_seed": 7, "behaviour": {"like_bias": -2.8},
         "session": {"leave_bias": -2.0, "max_requests": 30},
         "users": {"clickbait_susceptibility": [0.25, 2.0]}, "action_space": {"power_range": [0, 3]}}
    cfg = load_sim_config(_write(tmp_path, "sim.json", json.dumps(d)))
    assert cfg == EXPECTED


def test_empty_yaml_and_toml_give_defaults(tmp_path):
    assert load_sim_config(_write(tmp_path, "e.yaml", "")) == SimConfig()
    assert load_sim_config(_write(tmp_path, "e.toml", "")) == SimConfig()


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="n_userz"):
        load_sim_config(_write(tmp_path, "s.toml", "n_userz = 3\n"))


def test_unknown_nested_key_named_dotted(tmp_path):
    with pytest.raises(ConfigError, match=r"behaviour\.like_biaz"):
        load_sim_config(_write(tmp_path, "s.toml", "[behaviour]\nlike_biaz = -2.0\n"))
    with pytest.raises(ConfigError, match=r"session\.nope"):
        load_sim_config(_write(tmp_path, "s.yaml", "session:\n  nope: 1\n"))


def test_error_names_the_file(tmp_path):
    p = _write(tmp_path, "named_file.toml", "bogus = 1\n")
    with pytest.raises(ConfigError, match="named_file.toml"):
        load_sim_config(p)


@pytest.mark.parametrize(
    "text, key",
    [
        ('[behaviour]\nlike_bias = "high"\n', "behaviour.like_bias"),  # string for a float
        ("n_users = 5000.0\n", "n_users"),  # float for an int
        ("[session]\nmax_requests = 12.5\n", "session.max_requests"),
        ("[session]\nleave_bias = true\n", "session.leave_bias"),  # bool for a float
        ("n_users = true\n", "n_users"),  # bool for an int
        ("[users]\nclickbait_susceptibility = [0.5]\n", "users.clickbait_susceptibility"),  # wrong length
        ('[users]\nclickbait_susceptibility = [0.5, "x"]\n', r"users.clickbait_susceptibility\[1\]"),
        ("behaviour = 3\n", "behaviour"),  # a number where a table belongs
    ],
)
def test_wrong_type_names_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_sim_config(_write(tmp_path, "s.toml", text))


def test_wrong_type_from_dict():
    with pytest.raises(ConfigError, match=r"reward\.like"):
        sim_config_from_dict({"reward": {"like": "2"}})
    with pytest.raises(ConfigError, match=r"days\.max_sessions_per_day"):
        sim_config_from_dict({"days": {"max_sessions_per_day": 2.0}})


def test_invalid_value_rejected_by_dataclass():
    # ActionSpace validates its ranges; the error becomes a ConfigError naming the table
    with pytest.raises(ConfigError, match="action_space"):
        sim_config_from_dict({"action_space": {"bias_range": [0.0, 1.0]}})


def test_unknown_suffix_raises(tmp_path):
    with pytest.raises(ConfigError, match="ini"):
        load_sim_config(_write(tmp_path, "sim.ini", "n_users = 5\n"))


def test_missing_file_raises(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_sim_config(tmp_path / "nope.toml")


def test_unparsable_file_raises(tmp_path):
    with pytest.raises(ConfigError, match="parse"):
        load_sim_config(_write(tmp_path, "bad.toml", "n_users = = 3\n"))
    with pytest.raises(ConfigError, match="parse"):
        load_sim_config(_write(tmp_path, "bad.json", "{not json"))


def test_top_level_not_a_table(tmp_path):
    with pytest.raises(ConfigError, match="top level"):
        load_sim_config(_write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_yaml_exponent_float(tmp_path):
    cfg = load_sim_config(_write(tmp_path, "exp.yaml", "behaviour:\n  skip_zero_prob: 5e-2\n"))
    assert cfg.behaviour.skip_zero_prob == 0.05


def test_to_toml_round_trip_default(tmp_path):
    text = to_toml(SimConfig())
    assert "[behaviour]" in text and "n_users = 20000" in text
    p = _write(tmp_path, "rt.toml", text)
    assert load_sim_config(p) == SimConfig()


def test_to_toml_round_trip_modified(tmp_path):
    cfg = dataclasses.replace(
        EXPECTED,
        n_items=321,
        items=dataclasses.replace(SimConfig().items, clickbait_fraction=1e-5, duration_max_s=1e6),
        reward=RewardWeights(watch_time=0.5, comment=-1.25),
        action_space=ActionSpace(power_range=(-1.0, 3.0), bias_range=(0.001, 0.5)),
    )
    p = _write(tmp_path, "rt.toml", to_toml(cfg))
    back = load_sim_config(p)
    assert back == cfg
    assert back.items.clickbait_fraction == 1e-5
    # and a second trip is stable
    assert to_toml(back) == to_toml(cfg)


def test_to_dict_is_plain():
    d = SimConfig().to_dict()
    assert d["users"]["clickbait_susceptibility"] == [0.5, 1.5]
    assert d["action_space"]["bias_range"] == [0.01, 1.0]
    assert sim_config_from_dict(json.loads(json.dumps(d))) == SimConfig()
