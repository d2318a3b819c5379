"""A new user's first hour with the command line, in a subprocess as they would run it: a resume takes
the run's own configuration, Ctrl-C keeps the run, one overwrite rule, policies labelled apart, a warning
for data explored per request, argument checks before the imports, strict JSON tables, flags without
values, ``--version`` and ``-h``."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.online import METRICS
from rlmtf.pipelines.paper import METHODS
from rlmtf.policy.fixed import FixedPolicy

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16,16", "--critics", "3", "--batch-size", "16", "--eval-every", "0", "--threads", "1"]


def cli(*args: str | Path, timeout: float = 600, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *extra, "-m", "rlmtf.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, check=False)


def ok(*args: str | Path) -> subprocess.CompletedProcess:
    p = cli(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def refused(*args: str | Path, names: tuple[str, ...]) -> str:
    p = cli(*args)
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr
    err = " ".join(p.stderr.split())
    for name in names:
        assert name in err, f"{name!r} not in:\n{p.stderr}"
    return err


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    """Two small datasets: explored per user-item pair and per request."""
    root = tmp_path_factory.mktemp("first_hour")
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=2000))
    out = {}
    for per in ("item", "request"):
        out[per] = root / per
        simulate_to_parquet(sim, behaviour_policy(FixedPolicy(np.zeros(10, np.float32)), "uniform", per, seed=2),
                            out[per], seed=2, sessions=120, info={"explore": "uniform", "per": per})
    return out


def test_the_cli_knows_every_algorithm_and_compile_mode_without_importing_them():
    from rlmtf.algos import ALGORITHMS
    from rlmtf.cli.common import ALGORITHM_NAMES
    from rlmtf.cli.runs import COMPILE_NAMES
    from rlmtf.train.loop import COMPILE_MODES

    assert set(ALGORITHM_NAMES) == set(ALGORITHMS)
    assert COMPILE_NAMES == COMPILE_MODES


def test_resume_takes_the_runs_configuration_and_refuses_a_contradicting_flag(logs, tmp_path):
    run = tmp_path / "run"
    p = ok("train", "--algo", "INTEGRATED", "--data", logs["request"], "--out", run, "--steps", "4",
           "--checkpoint-every", "2", *TINY)
    assert json.loads((run / "config.json").read_text())["algo"] == "integrated"  # any case
    err = " ".join(p.stderr.split())  # the bar shows the critics' mean and spread of Q; the end, the final GAUC
    assert "Q mean" in err and "Q sd" in err and "val GAUC nan" not in err
    assert "trained integrated for 4 steps (validation weighted GAUC 0." in err
    # neither --algo, --data nor --hidden (whose default, 256,256, is not the run's): all from config.json
    p = ok("train", "--out", run, "--resume", "--steps", "6", "--json")
    assert json.loads(p.stdout)["steps"] == 6
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train_config"]["steps"] == 6 and cfg["algo_config"]["hidden"] == [16, 16]
    assert [r["from_step"] for r in cfg["resumed"]] == [4]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 6
    # the same values given again are fine; other ones are refused by name, before anything runs
    ok("train", "--out", run, "--resume", "--steps", "7", "--hidden", "16,16", "--algo", "integrated")
    err = refused("train", "--out", run, "--resume", "--steps", "9", "--hidden", "64,64", "--algo", "ddpg",
                  names=("--hidden 64,64", "16,16", "--algo ddpg", "config.json"))
    assert "--critics" not in err  # left at its default: not a contradiction
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 7


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(logs, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "rlmtf.cli", "train", "--algo", "integrated", "--data",
                          str(logs["request"]), "--out", str(run), "--steps", "1000000", "--checkpoint-every",
                          "1000000", *TINY], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and not (metrics.is_file() and metrics.stat().st_size):
            time.sleep(0.2)  # the first logged step: training has started, no checkpoint written yet
        assert not (run / "checkpoint").exists()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "checkpoint saved in" in " ".join(err.split())
    step = json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    assert 0 < step < 1_000_000
    out = ok("train", "--out", run, "--resume", "--steps", str(step + 3), "--json")
    assert json.loads(out.stdout)["steps"] == step + 3


def test_one_overwrite_rule_for_every_command_that_writes_a_directory(logs, tmp_path):
    run = tmp_path / "run"
    ok("train", "--algo", "integrated", "--data", logs["request"], "--out", run, "--steps", "1", *TINY)
    before = (run / "config.json").read_text()
    refused("train", "--algo", "integrated", "--data", logs["request"], "--out", run, "--steps", "1", *TINY,
            names=(str(run), "already exists", "pass --overwrite", "--resume"))
    assert (run / "config.json").read_text() == before
    err = refused("simulate", "--sessions", "5", "--out", logs["item"],
                  names=(str(logs["item"]), "already exists", "pass --overwrite"))
    assert "overwrite=True" not in err
    refused("data", "shard", logs["item"], logs["request"], "--shards", "2",
            names=(str(logs["request"]), "already exists", "pass --overwrite"))
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "notes.txt").write_text("mine")
    refused("experiment", "paper", "--preset", "smoke", "--out", exp, names=(str(exp), "pass --overwrite", "--resume"))
    refused("demo", "--out", exp, names=(str(exp), "pass --overwrite"))
    (run / "notes.txt").write_text("mine")  # not part of a run: --overwrite leaves such a directory alone
    refused("train", "--algo", "integrated", "--data", logs["request"], "--out", run, "--overwrite", *TINY,
            names=("notes.txt", "not deleting it"))
    (run / "notes.txt").unlink()
    ok("train", "--algo", "integrated", "--data", logs["request"], "--out", run, "--steps", "2", "--overwrite", *TINY)
    assert json.loads((run / "config.json").read_text())["train_config"]["steps"] == 2


def test_two_policies_of_one_kind_are_labelled_by_path_or_name(logs, tmp_path):
    for name in ("a", "b"):
        ok("train", "--algo", "integrated", "--data", logs["request"], "--out", tmp_path / name, "--steps", "1",
           *TINY)
    a, b = str(tmp_path / "a"), str(tmp_path / "b" / "policy")
    gauc = json.loads(ok("evaluate", "gauc", "--policy", "baseline", "--policy", a, "--policy", b, "--data",
                         logs["request"], "--json").stdout)
    assert [r["policy"] for r in gauc] == ["baseline", a, b]
    online = json.loads(ok("evaluate", "online", "--policy", f"old={a}", "--policy", f"new={b}", "--users", "30",
                           "--days", "1", "--json").stdout)
    assert [arm["policy"] for arm in online["arms"]] == ["old", "new"] and online["control"] == "old"


def test_enhanced_state_rl_on_data_explored_per_request_is_warned(logs, tmp_path):
    p = ok("train", "--algo", "esrl", "--data", logs["request"], "--out", tmp_path / "req", "--steps", "0", *TINY)
    err = " ".join(p.stderr.split())
    assert "warning:" in err and "explored per request" in err and "--per item" in err
    p = ok("train", "--algo", "esrl", "--data", logs["item"], "--out", tmp_path / "item", "--steps", "0", *TINY)
    assert "warning:" not in p.stderr
    p = ok("train", "--algo", "integrated", "--data", logs["request"], "--out", tmp_path / "int", "--steps", "0",
           *TINY)
    assert "warning:" not in p.stderr


@pytest.mark.parametrize("args, names", [
    (("--steps", "-1"), ("--steps must be >= 0", "-1")),
    (("--hidden", "64,x"), ("--hidden", "'64,x'")),
    (("--algo", "sac"), ("--algo must be one of", "esrl", "'sac'")),
    (("--critics", "0"), ("--critics must be >= 1",)),
    (("--device", "tpu"), ("--device", "'tpu'")),
])
def test_train_arguments_are_checked_before_the_imports_and_the_progress_bar(logs, tmp_path, args, names):
    base = {"--algo": "esrl", "--data": str(logs["item"]), "--out": str(tmp_path / "r")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    p = cli("train", *[x for kv in base.items() for x in kv], extra=("-X", "importtime"))
    assert p.returncode == 2, p.stderr[-3000:]
    err = " ".join(p.stderr.split())
    for name in names:
        assert name in err, err[-3000:]
    imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "pyarrow" not in imported
    assert "━" not in p.stderr and "0/-1" not in p.stderr  # no progress bar drawn
    assert not (tmp_path / "r").exists()


def _fake_experiment(root: Path) -> Path:
    """An experiment directory with one finished seed (no runs on disk): what `experiment render` reads."""
    rng = np.random.default_rng(0)
    methods = [m for m, _ in METHODS] + ["baseline"]
    (root / "seed_0").mkdir(parents=True)
    meta = {"title": "t", "preset": {"name": "smoke"}, "seeds": [0], "env": "sim", "commit": "abc", "device": "cpu",
            "started": "today", "methods": methods[:-1]}
    (root / "config.json").write_text(json.dumps(meta))
    (root / "seed_0" / "result.json").write_text(json.dumps({
        "seed": 0, "gauc": {m: 0.55 + 0.001 * i for i, m in enumerate(methods)}, "ptm": {}, "runs": {},
        "seconds": {"x": 1.0}}))
    np.savez_compressed(root / "seed_0" / "online.npz",
                        **{f"{m}.{k}": rng.uniform(1, 2, 40) for m in methods for k in METRICS})
    return root


def test_tables_json_is_strict_json_and_the_smoke_preset_says_what_it_is(tmp_path):
    out = _fake_experiment(tmp_path / "exp")
    p = ok("experiment", "render", out)
    text = (out / "tables.json").read_text()

    def no_constant(name):
        raise AssertionError(f"tables.json holds {name}")

    doc = json.loads(text, parse_constant=no_constant)  # one seed: sd, intervals and p-values are undefined
    assert "NaN" not in text and any(e["std"] is None for e in doc["entries"])
    assert all(isinstance(e["mean"], float) for e in doc["entries"])
    md = (out / "tables.md").read_text()
    assert "smoke preset checks" in md.split("## Table 1")[0] and "--preset default" in md.split("## Table 1")[0]
    html = (out / "report.html").read_text()
    assert "smoke preset checks" in html.split("<h2>Tables</h2>")[0]
    assert "smoke preset checks" in " ".join(p.stderr.split())


def test_flags_show_no_value_and_there_is_version_and_short_help():
    for cmd in (("train",), ("evaluate", "gauc"), ("simulate",), ("experiment", "paper"), ("logs", "export"), ()):
        p = ok(*cmd, "-h")
        assert "<bool>" not in p.stdout and "--help" in p.stdout, cmd
    assert "--json" in ok("train", "--help").stdout
    from importlib.metadata import version

    assert ok("--version").stdout.strip() == f"rlmtf {version('rlmtf')}"
