"""Data-parallel training with torchrun (2 CPU processes, gloo) against one process on the same global batch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlmtf.data.shard import shard_dataset
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import FixedPolicy
from rlmtf.train.loop import TrainConfig, train

#: 2 processes average their gradients in another order than one process sums its batch: float32
#: rounding, compounded over the steps (measured: <= 1e-6 relative after 40 steps)
RTOL = 1e-4

COMMON = ["--hidden", "32,32", "--critics", "2", "--batch-size", "32", "--eval-every", "10", "--checkpoint-every",
          "10", "--threads", "1", "--json"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=150, n_items=1200))
    root = tmp_path_factory.mktemp("dist")
    simulate_to_parquet(sim, behaviour_policy(FixedPolicy(np.zeros(10, np.float32)), "uniform", seed=1),
                        root / "logs", seed=1, sessions=250)
    shard_dataset(root / "logs", root / "sharded", 4)
    return root


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--standalone", "-m", "rlmtf", "train", *args], capture_output=True, text=True,
                          timeout=420, env=env, check=False)


def _single(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlmtf", "train", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def _state(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "state.safetensors"))


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if k == "rng.state":
            continue
        assert a[k].shape == b[k].shape, k
        if a[k].is_floating_point():
            worst = max(worst, float((a[k] - b[k]).abs().max()) / (float(b[k].abs().max()) + 1e-12))
        else:
            assert torch.equal(a[k], b[k]), k
    return worst


@pytest.mark.parametrize("algo", ["integrated", "iql"])
def test_two_processes_match_one_on_the_same_global_batch(data, tmp_path, algo):
    args = ["--algo", algo, "--data", str(data / "logs"), "--steps", "20", *COMMON]
    two = _torchrun([*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    one = _single([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = _state(tmp_path / "two"), _state(tmp_path / "one")
    diff = _max_rel_diff(a, b)
    assert diff < RTOL, diff
    # and training moved the weights by far more than that: the comparison can tell runs apart
    init = tmp_path / "init"
    assert _single([*args, "--steps", "0", "--out", str(init)]).returncode == 0
    weights = _state(init)  # no optimizer state yet
    assert _max_rel_diff(weights, {k: b[k] for k in weights}) > 100 * RTOL
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["world_size"] == 2
    assert json.loads(two.stdout)["steps"] == 20  # rank 0 reports; the other rank prints nothing
    assert not (tmp_path / "two" / "checkpoint" / "rank-0.json").exists()
    assert (tmp_path / "two" / "checkpoint" / "rank-1.json").is_file()


def test_streamed_ranks_read_their_own_shards_and_resume_exactly(data, tmp_path):
    args = ["--algo", "cql_sac", "--data", str(data / "sharded"), "--stream", "--buffer-shards", "1",
            "--reuse", "0.5", *COMMON]
    full = _torchrun([*args, "--steps", "20", "--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-3000:]
    half = _torchrun([*args, "--steps", "10", "--out", str(tmp_path / "half")])
    assert half.returncode == 0, half.stderr[-3000:]
    resumed = _torchrun([*args, "--steps", "20", "--resume", "--out", str(tmp_path / "half")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _max_rel_diff(_state(tmp_path / "full"), _state(tmp_path / "half")) == 0.0

    r0 = json.loads((tmp_path / "full" / "checkpoint" / "state.json").read_text())["stream"]["units"]
    r1 = json.loads((tmp_path / "full" / "checkpoint" / "rank-1.json").read_text())["stream"]["units"]
    assert r0 == ["shard=00000", "shard=00002"] and r1 == ["shard=00001", "shard=00003"]

    # a 2-process checkpoint cannot be resumed by one process: its batches belong to both ranks
    one = _single([*args, "--steps", "30", "--resume", "--out", str(tmp_path / "full")])
    assert one.returncode != 0 and "resume with the same number of processes" in " ".join(one.stderr.split())


def test_the_global_batch_must_split_evenly(data, tmp_path):
    out = _torchrun(["--algo", "ddpg", "--data", str(data / "logs"), "--steps", "2", "--out", str(tmp_path / "r"),
                     *COMMON[:4], "--batch-size", "33", "--threads", "1"])
    assert out.returncode != 0 and "does not split evenly over 2 processes" in " ".join(out.stderr.split())


def test_one_process_in_library_use_is_unchanged(data, tmp_path):
    """Without torchrun the loop is the single-process one (no process group is created)."""
    from rlmtf.algos.esrl import ESRLConfig

    algo = train("integrated", data / "logs", tmp_path / "r", cfg=TrainConfig(steps=3, eval_every=0),
                 algo_cfg=ESRLConfig(hidden=(8,), ensemble_size=2, batch_size=16, warmup_steps=2))
    assert algo.step == 3 and not algo._ddp
    assert not torch.distributed.is_initialized()
