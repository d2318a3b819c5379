"""Progressive training with the gate: a round's candidate replaces the incumbent only when it passes the
offline and the online test; on rejection the incumbent keeps serving, the box shrinks and the next round
explores around the incumbent again."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import rlmtf.pipelines.ptm as ptm_module
from rlmtf.algos.esrl import ESRLConfig
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.pipelines.ptm import PTMConfig, run_ptm
from rlmtf.train.loop import TrainConfig

SMALL = dataclasses.replace(ESRLConfig(), hidden=(8,), embed_dim=4, ensemble_size=2, batch_size=32, warmup_steps=5)


@pytest.fixture(scope="module")
def sim():
    return Simulator(dataclasses.replace(SimConfig(), n_users=600, n_items=1500))


def _cfg(**kw) -> PTMConfig:
    kw = {"gate_fqe_steps": 30, **kw}
    return PTMConfig(rounds=2, sessions_per_round=120, steps_per_round=10, test_sessions=60, online_users=60,
                     online_days=1, gate_users=80, seed=3, **kw)


def test_a_rejected_round_keeps_the_incumbent_and_shrinks_the_box(sim, tmp_path, monkeypatch):
    explored = []
    real = ptm_module.behaviour_policy

    def spy(base, explore, per, lower_b, upper_b, seed, **kw):
        explored.append((base.name, upper_b))
        return real(base, explore, per, lower_b=lower_b, upper_b=upper_b, seed=seed, **kw)

    monkeypatch.setattr(ptm_module, "behaviour_policy", spy)
    monkeypatch.setattr(ptm_module, "_gate", lambda *a, **k: False)
    res = run_ptm("integrated", sim, tmp_path / "reject", _cfg(gate=True), SMALL, TrainConfig(steps=10, eval_every=0),
                  log=lambda s: None)
    assert explored == [("baseline", pytest.approx(0.15)), ("baseline", pytest.approx(0.075))]
    assert [r.get("accepted") for r in res.rows[1:]] == [False, False]
    assert res.incumbent.name == "baseline" and res.algo is None

    explored.clear()
    monkeypatch.setattr(ptm_module, "_gate", lambda *a, **k: True)
    res = run_ptm("integrated", sim, tmp_path / "accept", _cfg(gate=True), SMALL, TrainConfig(steps=10, eval_every=0),
                  log=lambda s: None)
    assert explored == [("baseline", pytest.approx(0.15)), ("integrated-round1", pytest.approx(0.15))]
    assert res.incumbent.name == "integrated-round2" and res.algo is not None


@pytest.mark.parametrize("offline", ["dm", "fqe", "critic"])
def test_the_gate_decides_by_its_offline_and_online_tests(sim, tmp_path, offline):
    # DM needs at least twice as many held-out user-days as regressors (1 + 46 state dims + 10 action dims)
    more = {"sessions_per_round": 600, "holdout_fraction": 0.5} if offline == "dm" else {}
    cfg = dataclasses.replace(_cfg(gate=True, train_on="all", gate_offline=offline), **more)
    res = run_ptm("integrated", sim, tmp_path / "gated", cfg, SMALL, TrainConfig(steps=10, eval_every=0),
                  log=lambda s: None)
    def screened(off: dict) -> float:  # DM, FQE: the 95% interval's upper end must be > 0; critics: mean - sd
        if offline == "critic":
            return off["lcb"]
        return off["ci_high"] if "ci_high" in off else off["mean"] + 1.96 * off["sd"]

    for r in res.rows[1:]:
        assert r["gate"] in ("offline", "online", "passed")
        if offline == "dm":
            assert "DM" in r["offline"]["estimate"] and r["offline"]["name"] == "DM"
            assert r["offline"]["ci_low"] < r["offline"]["mean"] < r["offline"]["ci_high"]
        if offline == "fqe":
            assert "FQE" in r["offline"]["estimate"] and r["offline"]["sd"] > 0
            assert r["offline"]["mean"] == pytest.approx(r["offline"]["candidate"] / r["offline"]["incumbent"] - 1,
                                                         abs=0.05)
        if r["gate"] == "offline":
            assert screened(r["offline"]) <= 0 and not r["accepted"]
        else:
            assert screened(r["offline"]) > 0
            assert r["accepted"] == (r["gate_ab"]["ci_low"] > 0)
            assert r["gate_ab"]["users"] == 80
    assert (tmp_path / "gated" / "ptm.png").is_file()


def test_an_unknown_screen_is_refused():
    with pytest.raises(ValueError, match="gate_screen must be bound or sign"):
        PTMConfig(gate_screen="median")


@pytest.mark.parametrize("offline", ["dm", "fqe"])
@pytest.mark.parametrize("screen", ["bound", "sign"])
def test_the_offline_estimate_decides_whether_the_ab_runs(sim, monkeypatch, offline, screen):
    """"bound": a DM / FQE lift whose 95% interval lies below 0 rejects the candidate before any A/B, one whose
    interval reaches above 0 hands it to the A/B; "sign": the point estimate decides."""
    from rlmtf.policy.fixed import baseline_policy

    base = baseline_policy(sim.cfg.action_space)
    other = "_offline_fqe" if offline == "dm" else "_offline_dm"
    monkeypatch.setattr(ptm_module, other, lambda *a, **k: pytest.fail(f"{other} called"))
    cases = (((-0.03, False), (-0.01, True), (0.01, True)) if screen == "bound"  # sd 1%: upper ends -1.0%, +1.0%
             else ((-0.01, False), (0.0, False), (0.01, True)))
    for lift, runs_ab in cases:
        monkeypatch.setattr(ptm_module, f"_offline_{offline}",
                            lambda *a, v=lift, **k: {"estimate": offline, "name": offline, "mean": v, "sd": 0.01})
        calls: list[int] = []
        monkeypatch.setattr(ptm_module, "online_ab", lambda *a, c=calls, **k: c.append(1) or _FakeAB())
        row: dict = {}
        ok = ptm_module._gate(_cfg(gate=True, gate_offline=offline, gate_screen=screen), 1, sim, base, base, None,
                              np.zeros(3), None, np.arange(500, 580), row, lambda s: None)
        assert bool(calls) == runs_ab and ok == runs_ab and row["gate"] == ("passed" if runs_ab else "offline")


def test_dm_with_too_few_held_out_days_leaves_the_decision_to_the_ab(sim, tmp_path):
    res = run_ptm("integrated", sim, tmp_path / "few", dataclasses.replace(_cfg(gate=True), rounds=1), SMALL,
                  TrainConfig(steps=10, eval_every=0), log=lambda s: None)
    r = res.rows[1]
    assert r["offline"]["skipped"] and "too few" in r["offline"]["estimate"] and "gate_ab" in r
    assert r["accepted"] == (r["gate_ab"]["ci_low"] > 0)


def test_a_state_too_wide_for_the_held_out_days_is_cut_to_its_principal_components(sim, tmp_path):
    from rlmtf.data.io import read_logs
    from rlmtf.data.transitions import build_transitions
    from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
    from rlmtf.policy.fixed import baseline_policy

    base = baseline_policy(sim.cfg.action_space)
    simulate_to_parquet(sim, behaviour_policy(base, "uniform", "day", lower_b=-0.15, upper_b=0.15, seed=1),
                        tmp_path / "d", seed=1, sessions=400, overwrite=True)
    logs = read_logs(tmp_path / "d")
    t = build_transitions(logs).day_episodes()
    red = ptm_module.principal_user_state(t, 3)
    first = np.r_[True, t.episode_id[1:] != t.episode_id[:-1]]
    var = red.user_state[first].var(0)
    assert red.user_state.shape == (len(t), 3) and np.all(np.diff(var) <= 1e-6) and var[0] > 0
    np.testing.assert_allclose(red.user_state[first].mean(0), 0, atol=1e-4)
    assert red.action is t.action and red.reward is t.reward  # what the DM estimates is untouched
    days, dim = int(first.sum()), sim.cfg.action_space.dim
    wide = dataclasses.replace(t, user_state=np.repeat(t.user_state, 1 + days // t.user_state.shape[1], 1))
    est = ptm_module._offline_dm(_cfg(gate=True), 1, base, wide, logs, dim)  # the incumbent against itself:
    assert not est.get("skipped") and f"reduced to its {days // 2 - 1 - dim} principal" in est["estimate"]
    assert abs(est["mean"]) < 0.02 and est["ci_low"] < 0 < est["ci_high"]  # only the logged noise's correction


def test_an_item_level_candidate_falls_back_from_dm_to_fqe(sim, monkeypatch):
    from rlmtf.policy.fixed import baseline_policy

    base = baseline_policy(sim.cfg.action_space)
    monkeypatch.setattr(ptm_module, "_offline_dm", lambda *a, **k: None)  # what it returns for item-level actions
    monkeypatch.setattr(ptm_module, "_offline_fqe", lambda *a, **k: {"estimate": "FQE", "name": "FQE", "mean": -0.1,
                                                                     "sd": 0.01})
    row: dict = {}
    assert not ptm_module._gate(_cfg(gate=True), 1, sim, base, base, None, np.zeros(3), None, np.arange(500, 580),
                                row, lambda s: None)
    assert row["offline"]["name"] == "FQE" and row["gate"] == "offline"


class _FakeAB:
    class _Arm:
        lifts = {m: {"lift": 0.02, "ci_low": 0.01, "ci_high": 0.03} for m in ("uvc", "udt", "sessions", "reward")}

    arms = [_Arm(), _Arm()]


def test_the_sized_ab_reaches_the_target_standard_error():
    """By hand: one-sided 95% bound 1.645 s; s* = 0.01 / (1.645 + 0.8416) = 0.4022%; a pilot of 2 days with
    s = 1% needs 2 x (1 / 0.4022)^2 = 12.4 -> 13 days, capped at 8; s = 0.2% needs none beyond the pilot."""
    cfg = _cfg(gate=True, gate_days=2, gate_mde=0.01)
    wide = ptm_module.gate_ab_size({"lift": 0.03, "ci_low": 0.03 - 1.644854 * 0.01}, cfg)
    assert wide["se"] == pytest.approx(0.01, rel=1e-5) and wide["target_se"] == pytest.approx(0.004022, rel=1e-3)
    assert wide["days_needed"] == 13 and wide["days"] == 8
    narrow = ptm_module.gate_ab_size({"lift": -0.01, "ci_low": -0.01 - 1.644854 * 0.002}, cfg)
    assert narrow["days_needed"] == 1 and narrow["days"] == 2
    at_power = ptm_module.gate_ab_size({"lift": 0.0, "ci_low": -1.644854 * 0.004}, dataclasses.replace(
        cfg, gate_power=0.5, gate_max_days=20))  # s* = 0.01 / 1.645 = 0.608%: 2 x (0.4 / 0.608)^2 = 0.87 -> 1
    assert at_power["days"] == 2


def test_the_gate_reruns_a_wide_pilot_on_more_days_and_decides_on_that_alone(sim, monkeypatch):
    from rlmtf.policy.fixed import baseline_policy

    base = baseline_policy(sim.cfg.action_space)
    days_run: list[int] = []

    def fake_ab(policies, env, *, users, days, seed, workers, confidence):
        days_run.append(days)
        ab = _FakeAB()
        ab.arms = [ab._Arm(), type("Arm", (), {"lifts": {"uvc": {  # the pilot looks good; the full sample does not
            "lift": 0.05 if days == 1 else 0.004, "ci_low": 0.05 - 0.03 if days == 1 else -0.001,
            "ci_high": 0.08}}})()]
        return ab

    monkeypatch.setattr(ptm_module, "online_ab", fake_ab)
    row: dict = {}
    cfg = _cfg(gate=True, gate_offline="none", gate_days=1, gate_mde=0.01, gate_max_days=5)
    ok = ptm_module._gate(cfg, 1, sim, base, base, None, None, None, np.arange(500, 580), row, lambda s: None)
    assert days_run == [1, 5] and not ok and row["gate"] == "online"  # the pilot's +5% never decides
    assert row["gate_ab"]["days"] == 5 and row["gate_ab"]["pilot"]["days_needed"] > 5
    days_run.clear()
    ok = ptm_module._gate(dataclasses.replace(cfg, gate_mde=0.0), 1, sim, base, base, None, None, None,
                          np.arange(500, 580), {}, lambda s: None)
    assert days_run == [1] and ok  # without a detectable lift to size for, the fixed-size test as before


def test_the_horizon_rule_sets_the_first_rounds_steps(sim, tmp_path, monkeypatch):
    monkeypatch.setattr(ptm_module, "horizon_steps", lambda data, episode, cfg: 25)
    monkeypatch.setattr(ptm_module, "_gate", lambda *a, **k: True)
    res = run_ptm("integrated", sim, tmp_path / "h", _cfg(gate=True, steps_rule="horizon"), SMALL,
                  TrainConfig(steps=10, eval_every=0), log=lambda s: None)
    assert [r["steps"] for r in res.rows[1:]] == [25, 10]  # round 2 warm-starts: the round's own steps


def test_item_keep_cuts_the_per_item_noise_each_round(sim, tmp_path, monkeypatch):
    from rlmtf.data.io import read_logs

    monkeypatch.setattr(ptm_module, "_gate", lambda *a, **k: True)
    cfg = dataclasses.replace(_cfg(gate=True), rounds=1, per="day+item", item_box=0.15, item_keep=0.8)
    res = run_ptm("esrl", sim, tmp_path / "k", cfg, dataclasses.replace(SMALL, variant="residual"),
                  TrainConfig(steps=5, eval_every=0), log=lambda s: None)
    noise = res.rows[1]["item_noise"]
    assert noise["top_l_kept"] >= 0.8 and 0 < noise["box"] < 0.15
    cols = read_logs(tmp_path / "k" / "round_1" / "data").columns
    half = (np.asarray(cols["upper_b"]) - np.asarray(cols["lower_b"])) / 2  # the day's box plus the item's
    assert np.abs(half.max() - (0.15 + noise["box"])) < 1e-5


def test_exploration_leaves_the_gate_users_alone(sim, tmp_path):
    from rlmtf.data.io import read_logs

    run_ptm("integrated", sim, tmp_path / "g", dataclasses.replace(_cfg(gate=True), rounds=1), SMALL,
            TrainConfig(steps=5, eval_every=0), log=lambda s: None)
    users = np.unique(read_logs(tmp_path / "g" / "round_1" / "data").columns["user_id"])
    assert users.max() < sim.cfg.n_users - 80


@pytest.mark.parametrize("kw, match", [({"gate_metric": "ctr"}, "gate_metric"), ({"train_on": "last"}, "train_on"),
                                        ({"box_shrink": 0.0}, "box_shrink"), ({"gate_offline": "gauc"}, "gate_offline"),
                                        ({"steps_rule": "auto"}, "steps_rule"), ({"gate_mde": -0.01}, "gate_mde"),
                                        ({"gate_mde": 0.01, "gate_days": 3, "gate_max_days": 2}, "gate_max_days"),
                                        ({"item_keep": 1.0}, "item_keep")])
def test_bad_gate_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        PTMConfig(**kw)


def test_cli_ptm_with_the_gate(tmp_path):
    import json
    import subprocess
    import sys

    cfg = tmp_path / "small.toml"
    cfg.write_text("n_users = 500\nn_items = 1500\n")
    out = subprocess.run([sys.executable, "-m", "rlmtf.cli", "ptm", "--algo", "integrated", "--out", tmp_path / "p",
                          "--rounds", "2", "--sessions-per-round", "120", "--steps-per-round", "10",
                          "--test-sessions", "60", "--users", "60", "--days", "1", "--hidden", "8", "--critics", "2",
                          "--gate", "--gate-users", "80", "--gate-fqe-steps", "20", "--train-on", "all", "--per", "day",
                          "--edge", "shift",
                          "--objective", "day:gamma=1,session_gamma=1", "--sim-config", cfg, "--json"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 3 and all("accepted" in r and "gate" in r for r in rows[1:])
    bad = subprocess.run([sys.executable, "-m", "rlmtf.cli", "ptm", "--algo", "integrated", "--out", tmp_path / "q",
                          "--gate-metric", "ctr", "--sim-config", cfg], capture_output=True, text=True, timeout=300,
                         check=False)
    assert bad.returncode == 2 and "gate_metric" in bad.stderr
