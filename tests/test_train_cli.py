"""rlmtf train / ptm / analyze exploration, end to end (CLI in a subprocess where it matters)."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlmtf.algos.esrl import ESRLConfig
from rlmtf.algos.registry import PolicyLoadError, load_policy
from rlmtf.data import read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.exploration import analyse
from rlmtf.pipelines.ptm import PTMConfig, run_ptm
from rlmtf.policy.fixed import FixedPolicy
from rlmtf.train.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16,16", "--critics", "3", "--batch-size", "16"]


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "rlmtf.cli", *args], capture_output=True, text=True, cwd=REPO,
                       timeout=600, check=False)
    if ok:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def small_sim():
    return Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=2000))


@pytest.fixture(scope="module")
def explore_dir(tmp_path_factory, small_sim):
    out = tmp_path_factory.mktemp("train") / "explore"
    simulate_to_parquet(small_sim, behaviour_policy(FixedPolicy(np.zeros(10, np.float32)), "uniform", "item",
                                                    seed=2), out, seed=2, sessions=120)
    return out


def test_train_resume_and_evaluate(explore_dir, tmp_path):
    run = tmp_path / "run"
    out = cli("train", "--algo", "esrl", "--data", str(explore_dir), "--out", str(run), "--steps", "6",
              "--eval-every", "3", "--checkpoint-every", "3", "--json", *TINY)
    summary = json.loads(out.stdout)
    assert summary["steps"] == 6 and 0 < summary["val_weighted_gauc"] < 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines and all("step" in r for r in lines)
    assert any("losses/critic" in r and "q/mean" in r for r in lines)
    assert any("eval/val_weighted_gauc" in r for r in lines)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["algo"] == "esrl" and cfg["algo_config"]["ensemble_size"] == 3 and "commit" in cfg
    assert (run / "checkpoint" / "state.safetensors").is_file() and (run / "policy" / "actor.safetensors").is_file()
    cli("train", "--algo", "esrl", "--data", str(explore_dir), "--out", str(run), "--steps", "9", "--resume", *TINY)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 9
    g = cli("evaluate", "gauc", "--policy", str(run / "policy"), "--data", str(explore_dir), "--json")
    assert 0 < json.loads(g.stdout)["gauc"] < 1


def test_train_errors(explore_dir, tmp_path):
    p = cli("train", "--algo", "bogus", "--data", str(explore_dir), "--out", str(tmp_path / "r"), ok=False)
    assert p.returncode == 2 and "esrl" in p.stderr
    p = cli("train", "--algo", "esrl", "--data", str(explore_dir), "--out", str(tmp_path / "r2"), "--resume",
            *TINY, ok=False)
    assert p.returncode == 2 and "no checkpoint" in p.stderr
    p = cli("train", "--algo", "esrl", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r3"), ok=False)
    assert p.returncode == 2 and "missing" in p.stderr


def test_truncated_or_tampered_model_is_refused(explore_dir, tmp_path):
    cli("train", "--algo", "integrated", "--data", str(explore_dir), "--out", str(tmp_path / "r"), "--steps", "2",
        "--eval-every", "0", *TINY)
    pol_dir = tmp_path / "r" / "policy"
    assert load_policy(str(pol_dir)).level == "user"
    weights = pol_dir / "actor.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PolicyLoadError, match="actor.safetensors"):
        load_policy(str(pol_dir))
    weights.write_bytes(blob)
    doc = json.loads((pol_dir / "policy.json").read_text())
    doc["config"]["hidden"] = [32, 32]  # does not match the stored weights
    (pol_dir / "policy.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyLoadError, match="do not match"):
        load_policy(str(pol_dir))
    (pol_dir / "policy.json").write_text("{not json")
    with pytest.raises(PolicyLoadError, match="not valid JSON"):
        load_policy(str(pol_dir))


def test_ptm_rounds(small_sim, tmp_path):
    cfg = PTMConfig(rounds=2, sessions_per_round=80, steps_per_round=4, test_sessions=60, online_users=60,
                    online_days=1, seed=1)
    rows = run_ptm("integrated", small_sim, tmp_path / "ptm", cfg,
                   dataclasses.replace(ESRLConfig(), hidden=(16,), ensemble_size=2, batch_size=16, warmup_steps=2),
                   TrainConfig(steps=4, eval_every=0, log_every=2, checkpoint_every=100), log=lambda m: None).rows
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(0 < r["weighted_gauc"] < 1 for r in rows)
    for f in ("ptm.json", "ptm.csv", "ptm.png"):
        assert (tmp_path / "ptm" / f).stat().st_size > 0
    # round 2 explored around round 1's policy: its logged mu_bp is that policy's action, not the baseline's
    d1 = read_logs(tmp_path / "ptm" / "round_1" / "data").columns["mu_bp"]
    d2 = read_logs(tmp_path / "ptm" / "round_2" / "data").columns["mu_bp"]
    assert np.ptp(d1, 0).max() < 1e-6  # the baseline: one fixed action
    assert np.ptp(d2, 0).max() > 1e-3  # a learnt, personalised policy
    assert json.loads((tmp_path / "ptm" / "round_2" / "run" / "config.json").read_text())["warm_start"] is True


def test_exploration_efficiency_from_logs_and_analytic(explore_dir):
    rep = analyse(read_logs(explore_dir), sigma=0.2, seed=0)
    assert rep.in_box_all_logged == 1.0  # uniform exploration never leaves the box
    p = math.erf(0.15 / 0.2 / math.sqrt(2))  # P(|N(0, 0.2)| <= 0.15) = 0.5467
    # mu_bp = 0 everywhere: the box [-0.15, 0.15] never reaches +-1, so clipping changes nothing
    assert rep.efficiency_analytic == pytest.approx(1 / p**10, rel=1e-6)
    assert rep.efficiency_analytic_clipped == pytest.approx(1 / p**10, rel=1e-6)
    assert 419 == round(rep.efficiency_analytic)
    # the Monte Carlo estimate over the logged samples agrees within its sampling error
    assert rep.in_box_all_noise_monte_carlo == pytest.approx(p**10, rel=0.35)


def test_train_algo_config_file(explore_dir, tmp_path):
    """--algo-config sets hyper-parameters (saved in the run's config); an unknown field, a wrong type and a
    field a given flag also sets are refused by name, before anything is trained."""
    good = tmp_path / "bcq.toml"
    good.write_text("actor_lr = 2e-4\nrho = 0.1\n")
    run = tmp_path / "run"
    cli("train", "--algo", "bcq", "--data", str(explore_dir), "--out", str(run), "--steps", "2", "--eval-every", "0",
        "--algo-config", str(good), *TINY)
    ac = json.loads((run / "config.json").read_text())["algo_config"]
    assert ac["actor_lr"] == 2e-4 and ac["rho"] == 0.1 and ac["critic_lr"] == 1e-3 and ac["hidden"] == [16, 16]
    for text, says in (("actr_lr = 1e-3\n", "actr_lr"), ("rho = 'wide'\n", "rho"), ("hidden = [8, 8]\n", "--hidden")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        p = cli("train", "--algo", "bcq", "--data", str(explore_dir), "--out", str(tmp_path / "no"), "--steps", "2",
                "--algo-config", str(bad), *TINY, ok=False)
        assert p.returncode != 0 and says in p.stderr and "bad.toml" in p.stderr, p.stderr
        assert not (tmp_path / "no" / "policy").exists()


def test_analyze_cli(explore_dir, tmp_path):
    out = cli("analyze", "exploration", "--data", str(explore_dir), "--plot", str(tmp_path / "f.png"), "--json")
    rep = json.loads(out.stdout)
    assert rep["logged_by"] == "uniform" and (tmp_path / "f.png").stat().st_size > 10_000 and rep["cost"] is None
    cfg = tmp_path / "sim.toml"
    cfg.write_text("n_users = 300\nn_items = 2000\n")
    out = cli("analyze", "exploration", "--cost", "--users", "100", "--sim-config", str(cfg), "--json")
    rows = json.loads(out.stdout)["cost"]
    want = [("request", 0.15), ("day", 0.15), ("item", 0.15), ("item", 0.05)]
    assert [(r["per"], r["box"]) for r in rows[:4]] == want
    assert all(0 < r["top_l_kept"] <= 1 for r in rows)
    keep = rows[4]  # --keep 0.8 by default: the widest per-item box keeping 80% of the top l (on 300 users)
    assert keep["per"] == "item" and 0 < keep["box"] < 0.15 and keep["top_l_kept"] > 0.7
    p = cli("analyze", "exploration", ok=False)
    assert p.returncode != 0 and "--cost" in p.stderr


@pytest.mark.parametrize("algo", ["ddpg", "cql_sac", "bcq", "iql", "es"])
def test_train_cli_runs_every_baseline(algo, explore_dir, tmp_path):
    """Every baseline trains from the command line and leaves a policy that the evaluator loads (ES, an
    online method, runs its generations in the simulator named by --sim-config)."""
    cfg = tmp_path / "sim.toml"
    cfg.write_text("n_users = 300\nn_items = 2000\n")
    run = tmp_path / algo
    out = cli("train", "--algo", algo, "--data", str(explore_dir), "--out", str(run), "--steps", "2",
              "--eval-every", "0", "--threads", "1", "--sim-config", str(cfg), "--json", *TINY)
    summary = json.loads(out.stdout)
    assert summary["steps"] == 2 and 0 < summary["val_weighted_gauc"] < 1
    pol = load_policy(str(run / "policy"))
    assert pol.kind == algo and pol.level == "user"
    assert json.loads((run / "config.json").read_text())["algo"] == algo
