"""The README's scaling section, followed as written: its command block and the SLURM script, at tiny sizes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {"SESSIONS": "700", "SHARDS": "4", "STEPS": "4", "DEVICE": "cpu", "NPROC": "2", "WORKERS": "2",
        "DATA": "data", "EXTRA": "--hidden 16 --critics 2 --eval-every 0 --threads 1", "OMP_NUM_THREADS": "1"}


def _env(**extra: str) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # rlmtf and torchrun of this environment
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **TINY, **extra}


def scaling_block() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- scaling-begin -->\s*```bash\n(.*?)```\s*<!-- scaling-end -->", text, re.S)
    assert m, "README.md lost its scaling block"
    return m.group(1)


def test_the_scaling_commands_run_as_written(tmp_path):
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", scaling_block()], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "data" / "sharded").glob("shard=*"))
    assert shards == [f"shard={k:05d}" for k in range(4)]
    for run, world in (("paper-esrl", 1), ("paper-esrl-node", 2)):
        cfg = json.loads((tmp_path / "runs" / run / "config.json").read_text())
        assert cfg["world_size"] == world and cfg["train_config"]["stream"] is True
        assert cfg["algo_config"]["batch_size"] == 256 * world
        assert (tmp_path / "runs" / run / "policy" / "policy.json").is_file()
    assert "runs/paper-esrl-node/policy" in out.stdout  # the evaluation's table lists both policies


def test_the_slurm_script_runs_through_srun_and_torchrun(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text('#!/bin/sh\nexec "$@"\n')  # one node: run the task here
    (shims / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    for f in shims.iterdir():
        f.chmod(0o755)
    data = tmp_path / "data"
    env = _env(DATA=str(data))
    sim = ["rlmtf", "simulate", "--policy", "baseline", "--explore", "uniform", "--per", "item", "--sessions", "150",
           "--seed", "1", "--out", str(data / "explore")]
    assert subprocess.run(sim, env=env, capture_output=True, timeout=300, check=False).returncode == 0
    assert subprocess.run(["rlmtf", "data", "shard", str(data / "explore"), str(data / "sharded"), "--shards", "2"],
                          env=env, capture_output=True, timeout=300, check=False).returncode == 0
    env = {**env, "PATH": str(shims) + os.pathsep + env["PATH"], "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1",
           "SLURM_JOB_ID": str(40000 + os.getpid() % 20000), "GPUS_PER_NODE": "2", "OUT": str(tmp_path / "run"),
           "STEPS": "3"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "train_esrl.sbatch")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["algo_config"]["batch_size"] == 512
