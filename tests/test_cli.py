"""The ``rlmtf`` command line, run in a subprocess as a user would: simulate, validate, evaluate,
sim config/calibrate, and exit code 2 with a message that names the problem on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlmtf.envs.kuairand.paths import LOG_FILE as KUAIRAND_LOG
from rlmtf.envs.kuairand.paths import default_kuairand_dir

REPO = Path(__file__).resolve().parents[1]
LIFT_METRICS = ("uvc", "udt", "sessions", "reward", "session_length")


def rlmtf(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlmtf.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


def ok(*args: str | Path) -> subprocess.CompletedProcess:
    p = rlmtf(*args)
    assert p.returncode == 0, f"rlmtf {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}"
    return p


def ok_json(*args: str | Path):
    return json.loads(ok(*args, "--json").stdout)


def _squash(s: str) -> str:
    """Rich wraps long lines at the console width: compare without whitespace."""
    return "".join(s.split())


def fails(*args: str | Path, names: tuple[str, ...]) -> str:
    """Run, expect exit code 2 and every string in ``names`` in the error message; return stderr."""
    p = rlmtf(*args)
    assert p.returncode == 2, f"expected exit 2, got {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    err = _squash(p.stderr)
    assert "Traceback" not in p.stderr
    for name in names:
        assert _squash(name) in err, f"{name!r} not in the error message:\n{p.stderr}"
    return p.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def small_toml(work) -> Path:
    path = work / "small.toml"
    path.write_text("n_users = 2000\n")
    return path


def simulate_args(out: Path, small_toml: Path) -> list[str | Path]:
    return ["simulate", "--policy", "baseline", "--explore", "uniform", "--sessions", "300", "--seed", "3",
            "--out", out, "--sim-config", small_toml]


@pytest.fixture(scope="module")
def dataset(work, small_toml) -> tuple[Path, dict]:
    out = work / "ds1"
    summary = ok_json(*simulate_args(out, small_toml))
    return out, summary


def parquet_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


# --- simulate / validate ---------------------------------------------------------------------------------


def test_simulate_writes_a_valid_dataset(dataset):
    out, summary = dataset
    # --sessions 300: whole user-days until at least 300 sessions have started
    assert 300 <= summary["sessions"] < 300 + 64 * 8 and summary["rows"] > 300 * 5
    assert summary["policy"] == "baseline+uniform" and Path(summary["out"]) == out
    v = ok_json("data", "validate", out)
    assert v["sessions"] == summary["sessions"] and v["rows"] == summary["rows"] and v["files"] >= 1
    assert v["requests"] * 5 == v["rows"] and 0 < v["users"] <= 2000
    meta = json.loads((out / "_meta.json").read_text())
    assert meta["info"]["sim_config"]["n_users"] == 2000 and meta["info"]["seed"] == 3


def test_simulate_is_byte_identical_for_the_same_seed(dataset, work, small_toml):
    out, _ = dataset
    again = work / "ds2"
    ok(*simulate_args(again, small_toml))
    a, b = parquet_files(out), parquet_files(again)
    assert a and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    other = work / "ds3"
    ok(*[x if x != "3" else "4" for x in simulate_args(other, small_toml)])
    assert parquet_files(other) != a


def test_simulate_refuses_a_non_empty_out(dataset, small_toml):
    out, _ = dataset
    before = parquet_files(out)
    fails(*simulate_args(out, small_toml), names=(str(out), "overwrite"))
    assert parquet_files(out) == before


# --- evaluate ---------------------------------------------------------------------------------------------


def test_evaluate_gauc(dataset):
    out, _ = dataset
    r = ok_json("evaluate", "gauc", "--policy", "baseline", "--data", out)
    assert isinstance(r, dict) and r["policy"] == "baseline"
    assert 0 < r["gauc"] < 1 and r["n_users"] > 0 and r["rows"] > 0
    several = ok_json("evaluate", "gauc", "--policy", "baseline", "--policy", "random", "--policy", "valid-only",
                      "--data", out)
    assert isinstance(several, list) and [x["policy"] for x in several] == ["baseline", "random", "valid-only"]
    assert several[0] == r
    assert all(0 < x["gauc"] < 1 for x in several)


def test_evaluate_online():
    r = ok_json("evaluate", "online", "--policy", "baseline", "--policy", "valid-only", "--users", "400",
                "--days", "1", "--seed", "1")
    assert r["users"] == 400 and r["days"] == 1 and r["seed"] == 1 and r["control"] == "baseline"
    assert [a["policy"] for a in r["arms"]] == ["baseline", "valid-only"]
    lifts = r["arms"][1]["lifts"]
    for k in LIFT_METRICS:
        lift = lifts[k]
        assert lift["ci_low"] <= lift["lift"] <= lift["ci_high"], k
        assert 0.0 <= lift["p_value"] <= 1.0, k
        assert lift["n"] > 0
    assert lifts["uvc"]["lift"] < 0


# --- sim config / calibrate -----------------------------------------------------------------------------


def test_sim_config_prints_toml_that_round_trips(work, small_toml):
    text = ok("sim", "config").stdout
    d = tomllib.loads(text)
    assert d["n_users"] == 20_000 and d["list_len"] == 5 and "leave_bias" in d["session"]
    path = work / "resolved.toml"
    path.write_text(text)
    assert ok("sim", "config", "--sim-config", path).stdout == text
    small = tomllib.loads(ok("sim", "config", "--sim-config", small_toml).stdout)
    assert small["n_users"] == 2000 and {k: v for k, v in small.items() if k != "n_users"} == \
        {k: v for k, v in d.items() if k != "n_users"}


def test_sim_calibrate():
    d = default_kuairand_dir()
    if d is None or not (Path(d) / KUAIRAND_LOG).is_file():
        pytest.skip("KuaiRand-Pure data not found")
    r = ok_json("sim", "calibrate", "--users", "1500")
    checked = [row for row in r["rows"] if row["ok"] is not None]
    assert len(checked) == 9  # six rates and three watch-ratio quantiles
    bad = [row["quantity"] for row in checked if not row["ok"]]
    assert bad == []
    assert r["real"]["rows"] == 228_329


# --- errors ----------------------------------------------------------------------------------------------


def test_unknown_policy(dataset):
    out, _ = dataset
    fails("evaluate", "gauc", "--policy", "no-such-policy", "--data", out, names=("no-such-policy",))
    fails("evaluate", "online", "--policy", "no-such-policy", "--users", "10", "--days", "1",
          names=("no-such-policy",))


def test_a_directory_without_a_policy_is_named(dataset, work):
    """A directory that exists but holds no policy: the error says so and names where it looked, in every
    command that takes a policy."""
    out, _ = dataset
    empty = work / "not_a_policy"
    (empty / "policy").mkdir(parents=True, exist_ok=True)
    names = ("no policy.json", str(empty), str(empty / "policy"))
    fails("evaluate", "gauc", "--policy", empty, "--data", out, names=names)
    fails("evaluate", "online", "--policy", "baseline", "--policy", empty, "--users", "10", "--days", "1",
          names=names)
    fails("simulate", "--policy", empty, "--sessions", "5", "--out", work / "never_sim", names=names)
    # (an address that cannot be bound: were the policy accepted, the server would fail rather than run)
    fails("serve", "--policy", empty, "--log-dir", work / "never_log", "--host", "256.0.0.1", names=names)


def test_a_run_directory_names_its_policy(dataset, work):
    """A run directory (``policy/`` inside) is accepted wherever a policy is named, as its policy/ is."""
    out, _ = dataset
    run = work / "run_fixed"
    (run / "policy").mkdir(parents=True, exist_ok=True)
    (run / "policy" / "policy.json").write_text(json.dumps({"kind": "fixed", "name": "flat", "action": [0.1] * 10}))
    by_run, by_policy = (ok_json("evaluate", "gauc", "--policy", p, "--data", out) for p in (run, run / "policy"))
    assert by_run == by_policy and by_run["policy"] == "flat" and 0 < by_run["gauc"] < 1


def test_missing_data_dir(work):
    missing = work / "no_such_dataset"
    fails("evaluate", "gauc", "--policy", "baseline", "--data", missing, names=(str(missing),))
    fails("data", "validate", missing, names=(str(missing),))


def test_sim_config_with_an_unknown_key(work):
    path = work / "bad.toml"
    path.write_text("n_users = 2000\n[session]\nleave_biass = -2.0\n")
    fails("sim", "config", "--sim-config", path, names=("session.leave_biass",))
    fails("simulate", "--sessions", "5", "--out", work / "never", "--sim-config", path,
          names=("session.leave_biass",))
    assert not (work / "never" / "_meta.json").exists()


def test_bad_exploration_options(work, small_toml):
    fails("simulate", "--sessions", "5", "--out", work / "never1", "--sim-config", small_toml,
          "--lower-b", "0.2", "--upper-b", "0.1", names=("lower_b",))
    fails("simulate", "--sessions", "5", "--out", work / "never2", "--sim-config", small_toml, "--per", "bogus",
          names=("--per", "bogus"))


def test_corrupted_dataset_is_rejected_naming_file_row_and_column(dataset, work):
    src, _ = dataset
    bad = work / "corrupt"
    shutil.copytree(src, bad)
    rel = sorted(parquet_files(bad))[0]
    path = bad / rel
    table = pq.read_table(path)
    i = table.schema.get_field_index("action")
    field = table.schema.field(i)
    flat = table.column(i).combine_chunks().flatten().to_numpy().copy()
    dim = flat.size // table.num_rows
    row = 7
    flat[row * dim + 3] = 1.5
    new = pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(np.float32), type=pa.float32()), dim)
    pq.write_table(table.set_column(i, field, new), path)
    assert pq.read_table(path).column("action")[row].as_py()[3] == 1.5
    names = (rel, f"row {row}", "'action'")
    fails("evaluate", "gauc", "--policy", "baseline", "--data", bad, names=names)
    fails("data", "validate", bad, names=names)
