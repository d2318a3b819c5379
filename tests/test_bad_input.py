"""Bad input is refused by name (docs/bad-input.md): every config file through one validation layer
(types, finite values, ranges), model files with exactly the tensors their policy.json implies, and
every file reader turning its library's errors into the project's named errors, so that no command
prints a traceback. Issue 16, problems 1 and 2."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file

from rlmtf.algos.esrl import EnhancedStateRL, ESRLConfig
from rlmtf.algos.registry import PolicyLoadError, load_policy
from rlmtf.core.config_io import ConfigError, config_from_json
from rlmtf.data import read_logs
from rlmtf.data.io import LogDataError
from rlmtf.envs.collect import simulate_to_parquet
from rlmtf.envs.kuairand.config import load_env_config
from rlmtf.envs.sim.config import SimConfig, load_sim_config, sim_config_from_dict
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.envs.sim.world import feature_spec
from rlmtf.policy.fixed import baseline_policy
from rlmtf.serve.export import export_logs
from rlmtf.serve.logcheck import check_log
from rlmtf.serve.store import DB_NAME, LogStoreError, ServeStore, ShownItem

REPO = Path(__file__).resolve().parents[1]
SPEC = feature_spec(SimConfig())


def rlmtf(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlmtf.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


def refused(p: subprocess.CompletedProcess, *names: str, code: int = 2) -> None:
    """Exit ``code``, no traceback, and every name in the (whitespace-squashed) message."""
    err = "".join(p.stderr.split())
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    for n in names:
        assert "".join(n.split()) in err, (n, p.stderr)


# --- configs ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "key"), [
    ("[behaviour]\nlike_bias = nan\n", "behaviour.like_bias"),
    ("n_users = -5\n", "n_users"),
    ("list_len = 0\n", "list_len"),
    ("[items]\nclickbait_fraction = 1.5\n", "items.clickbait_fraction"),
    ("[users]\nclickbait_susceptibility = [1.5, 0.5]\n", "users.clickbait_susceptibility"),
    ("[session]\nmax_requests = 0\n", "session.max_requests"),
    ("[items]\nduration_min_s = 700.0\n", "duration_min_s"),
    ("[retrieval]\nn_candidates = 0\n", "retrieval.n_candidates"),
])
def test_a_sim_config_value_that_makes_no_sense_is_refused_by_key(tmp_path, text, key):
    path = tmp_path / "sim.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        load_sim_config(path)
    assert str(path) in str(e.value)


def test_a_sim_config_dict_gets_the_same_checks():
    with pytest.raises(ConfigError, match="list_len"):
        sim_config_from_dict({"list_len": 0})
    assert sim_config_from_dict({}) == SimConfig()


def test_an_env_config_value_that_makes_no_sense_is_refused(tmp_path):
    path = tmp_path / "env.toml"
    path.write_text("[retrieval]\ninterest_share = inf\n")
    with pytest.raises(ConfigError, match=r"retrieval\.interest_share"):
        load_env_config(path)


@pytest.mark.parametrize(("text", "what"), [
    ("n_users: [1, 2\n", "not valid YAML"),
    ("n_users: !!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
])
def test_a_broken_or_unsafe_yaml_file_is_a_config_error(tmp_path, text, what):
    path = tmp_path / "sim.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=what) as e:
        load_sim_config(path)
    assert str(path) in str(e.value)


def test_sim_config_refuses_by_name_without_a_traceback(tmp_path):
    bad = tmp_path / "zero.toml"
    bad.write_text("list_len = 0\n")
    refused(rlmtf("sim", "config", "--sim-config", bad), str(bad), "list_len")
    tagged = tmp_path / "tag.yaml"
    tagged.write_text("n_users: !!python/object/apply:os.system ['echo hacked']\n")
    p = rlmtf("sim", "config", "--sim-config", tagged)
    refused(p, str(tagged), "not valid YAML")
    assert "hacked" not in p.stdout


# --- saved policies ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory) -> Path:
    """An untrained Enhanced-State RL policy, saved (the files are what matters here)."""
    algo = EnhancedStateRL(SPEC, ESRLConfig(hidden=(8, 8), embed_dim=4, ensemble_size=2))
    return algo.save_policy(tmp_path_factory.mktemp("policy") / "esrl")


def _copy_policy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize(("field", "value", "named"), [
    ("hidden", ["a"], "config.hidden[0]"),
    ("hidden", [0, 8], "config.hidden"),
    ("gamma", 1.5, "config.gamma"),
    ("batch_size", "256", "config.batch_size"),
    ("actor_lr", -1.0, "config.actor_lr"),
])
def test_a_policy_config_with_a_bad_field_is_named(saved_policy, tmp_path, field, value, named):
    pol = _copy_policy(saved_policy, tmp_path / "bad")
    doc = json.loads((pol / "policy.json").read_text())
    doc["config"][field] = value
    (pol / "policy.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyLoadError, match=named.replace(".", r"\.").replace("[", r"\[")) as e:
        load_policy(str(pol))
    assert str(pol / "policy.json") in str(e.value)


def test_config_from_json_checks_types_and_ranges():
    assert config_from_json(ESRLConfig, dataclasses.asdict(ESRLConfig())) == ESRLConfig()
    with pytest.raises(ConfigError, match=r"config\.ensemble_size"):
        config_from_json(ESRLConfig, {"ensemble_size": 0})
    with pytest.raises(ConfigError, match="finite"):
        config_from_json(ESRLConfig, {"beta": float("nan")})


def test_a_model_file_with_an_extra_or_retyped_tensor_is_refused(saved_policy, tmp_path):
    assert load_policy(str(saved_policy)).name
    extra = _copy_policy(saved_policy, tmp_path / "extra")
    tensors = np_load_file(str(extra / "actor.safetensors"))
    np_save_file({**tensors, "actor.backdoor": np.zeros(3, np.float32)}, str(extra / "actor.safetensors"))
    with pytest.raises(PolicyLoadError, match="unexpected tensor.*actor.backdoor"):
        load_policy(str(extra))
    retyped = _copy_policy(saved_policy, tmp_path / "retyped")
    name = sorted(tensors)[0]
    np_save_file({**tensors, name: tensors[name].astype(np.float64)}, str(retyped / "actor.safetensors"))
    with pytest.raises(PolicyLoadError, match=f"tensor '{name}' is torch.float64"):
        load_policy(str(retyped))


# --- Parquet ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parquet")
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=40, n_items=300))
    simulate_to_parquet(sim, baseline_policy(), root / "ds", seed=0, sessions=6)
    return root / "ds"


def _corrupt_copy(src: Path, dst: Path, where: str) -> Path:
    dst.mkdir()
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).write_bytes(f.read_bytes())
    target = sorted(dst.rglob("*.parquet"))[0]
    raw = bytearray(target.read_bytes())
    if where == "footer":  # the thrift metadata just before the length and the magic bytes
        raw[-200:-8] = b"\xff" * 192
    else:  # compressed data pages in the middle of the file
        mid = len(raw) // 3
        raw[mid:mid + 2048] = bytes(range(256)) * 8
    target.write_bytes(bytes(raw))
    return target


@pytest.mark.parametrize("where", ["footer", "page"])
def test_a_corrupt_parquet_file_is_a_log_data_error_naming_it(dataset, tmp_path, where):
    target = _corrupt_copy(dataset, tmp_path / "ds", where)
    with pytest.raises(LogDataError) as e:
        read_logs(tmp_path / "ds")
    assert target.name in str(e.value) or target.parent.name in str(e.value)


def test_evaluate_gauc_refuses_a_corrupt_file_without_a_traceback(dataset, tmp_path):
    target = _corrupt_copy(dataset, tmp_path / "ds", "page")
    refused(rlmtf("evaluate", "gauc", "--policy", "baseline", "--data", tmp_path / "ds"), target.name)


# --- the serving log --------------------------------------------------------------------------------------

def _vec(n: int, rng) -> np.ndarray:
    return rng.random(n).astype(np.float32)


def write_log(log_dir: Path, n_requests: int = 300, feedback: dict | None = None) -> None:
    """A serving log of ``n_requests`` requests of 5 shown items each (and one feedback per request)."""
    rng = np.random.default_rng(0)
    store = ServeStore(log_dir, SPEC.to_json(), durability="process")
    a = SPEC.action_dim
    for r in range(n_requests):
        shown = [ShownItem(position=p, item_id=f"i{p}", item_features=_vec(SPEC.item_features.dim, rng),
                           mtl_scores=_vec(len(SPEC.mtl_tasks), rng), mu_bp=np.zeros(a), lower_b=np.zeros(a),
                           upper_b=np.zeros(a), action=np.zeros(a), score=1.0) for p in range(5)]
        store.log_request(request_id=f"r{r}", user_id=f"u{r % 7}", session_id=f"s{r // 3}", policy_version="baseline",
                          explored=False, user_profile=_vec(SPEC.user_profile.dim, rng),
                          user_history=_vec(SPEC.user_history.dim, rng), context=_vec(SPEC.context.dim, rng),
                          shown=shown, ts=1.7e9 + r)
        store.log_feedback(event_id=f"e{r}", request_id=f"r{r}", item_id="i0",
                           behaviours=feedback or {"watch_time": 12.0, "valid": 1}, session_end=False)
    store.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def damaged_log(tmp_path_factory) -> Path:
    log = tmp_path_factory.mktemp("damaged") / "log"
    write_log(log)
    db = log / DB_NAME
    raw = bytearray(db.read_bytes())
    page = 4096
    mid = (len(raw) // page // 2) * page
    raw[mid:mid + page] = b"\x5a" * page  # one page of garbage in the middle of the tables
    db.write_bytes(bytes(raw))
    return log


def test_a_damaged_serving_log_is_refused_at_open_and_never_written(damaged_log):
    db = damaged_log / DB_NAME
    before = _digest(db)
    with pytest.raises(LogStoreError, match=str(db)):
        ServeStore(damaged_log, SPEC.to_json())
    assert _digest(db) == before
    with pytest.raises(LogStoreError, match="salvage"):
        export_logs(damaged_log, damaged_log.parent / "out")
    assert _digest(db) == before


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    (tmp_path / "log").mkdir()
    db = tmp_path / "log" / DB_NAME
    db.write_bytes(b"this is not sqlite" * 100)
    before = _digest(db)
    with pytest.raises(LogStoreError, match=str(db)):
        ServeStore(tmp_path / "log", SPEC.to_json())
    with pytest.raises(LogStoreError, match=str(db)):
        export_logs(tmp_path / "log", tmp_path / "out")
    assert _digest(db) == before
    assert check_log(tmp_path / "log")["ok"] is False


def test_logs_check_and_salvage(damaged_log, tmp_path):
    report = check_log(damaged_log)
    assert report["ok"] is False and report["problems"]
    summary = export_logs(damaged_log, tmp_path / "salvaged", salvage=True)
    assert summary["rows"] > 0 and summary["requests"] < 300
    lost = summary["lost_rows"]
    assert set(lost) == {"requests", "shown", "feedback"}
    assert len(read_logs(tmp_path / "salvaged")) == summary["rows"]


def test_cli_on_a_damaged_log_names_it_without_a_traceback(damaged_log, tmp_path):
    db = damaged_log / DB_NAME
    before = _digest(db)
    refused(rlmtf("serve", "--log-dir", damaged_log, "--port", "1"), str(db))
    refused(rlmtf("logs", "export", "--log-dir", damaged_log, "--out", tmp_path / "x"), str(db), "--salvage")
    refused(rlmtf("logs", "check", "--log-dir", damaged_log), "damaged", code=1)
    p = rlmtf("logs", "export", "--log-dir", damaged_log, "--out", tmp_path / "y", "--salvage", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] > 0
    assert _digest(db) == before
    good = tmp_path / "good"
    write_log(good, n_requests=3)
    p = rlmtf("logs", "check", "--log-dir", good, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["requests"] == 3


def test_serve_and_evaluate_refuse_a_bad_policy_config_without_a_traceback(saved_policy, dataset, tmp_path):
    pol = _copy_policy(saved_policy, tmp_path / "bad")
    doc = json.loads((pol / "policy.json").read_text())
    doc["config"]["hidden"] = ["a"]
    (pol / "policy.json").write_text(json.dumps(doc))
    refused(rlmtf("serve", "--policy", pol, "--log-dir", tmp_path / "log", "--port", "1"), "config.hidden[0]")
    refused(rlmtf("evaluate", "gauc", "--policy", pol, "--data", dataset), "config.hidden[0]")
