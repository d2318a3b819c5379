"""A training process killed while it writes a checkpoint leaves the previous checkpoint readable, and
``resume`` then ends with the same weights as an uninterrupted run (issue 16, 'faults that lose nothing')."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import baseline_policy

REPO = Path(__file__).resolve().parents[1]

TRAIN = """
import os, sys
from rlmtf.algos.esrl import ESRLConfig
from rlmtf.train.loop import TrainConfig, train

data, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls, real = [0], os.replace

def replace(src, dst, *a, **kw):  # the process dies at the kill_at-th rename into checkpoint/
    if "checkpoint" in str(dst):
        if calls[0] == kill_at:
            os._exit(9)
        calls[0] += 1
    return real(src, dst, *a, **kw)

os.replace = replace
train("esrl", data, out, cfg=TrainConfig(steps=STEPS, eval_every=0, checkpoint_every=3, log_every=1),
      algo_cfg=ESRLConfig(hidden=(8, 8), embed_dim=4, ensemble_size=2, warmup_steps=1, batch_size=8))
"""
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckfault")
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=40, n_items=300))
    simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", "item", seed=1), root / "logs", seed=1,
                        sessions=20)
    return root / "logs"


def _train(data: Path, out: Path, kill_at: int = -1, resume: bool = False) -> int:
    from rlmtf.algos.esrl import ESRLConfig
    from rlmtf.train.loop import TrainConfig, train

    if kill_at >= 0:
        script = textwrap.dedent(TRAIN).replace("STEPS", str(STEPS))
        return subprocess.run([sys.executable, "-c", script, str(data), str(out), str(kill_at)], cwd=REPO,
                              capture_output=True, timeout=300, check=False).returncode
    train("esrl", data, out, cfg=TrainConfig(steps=STEPS, eval_every=0, checkpoint_every=3, log_every=1),
          algo_cfg=ESRLConfig(hidden=(8, 8), embed_dim=4, ensemble_size=2, warmup_steps=1, batch_size=8),
          resume=resume)
    return 0


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("whole") / "run"
    _train(data, out)
    return load_file(str(out / "checkpoint" / "state.safetensors"))


# renames into checkpoint/: step 3: tensors (0), meta (1); step 6: both to state.prev.* (2, 3), then the new
# tensors (4) and meta (5). Killed at 3: one file moved aside; at 5: new tensors beside the old meta.
@pytest.mark.parametrize("kill_at", [3, 5])
def test_a_kill_during_a_checkpoint_save_loses_nothing(data, uninterrupted, tmp_path, kill_at):
    run = tmp_path / "run"
    assert _train(data, run, kill_at=kill_at) == 9  # killed in the middle of the step-6 save
    _train(data, run, resume=True)
    resumed = load_file(str(run / "checkpoint" / "state.safetensors"))
    assert set(resumed) == set(uninterrupted)
    for name, v in uninterrupted.items():
        np.testing.assert_array_equal(resumed[name], v, err_msg=name)
    assert not (run / "checkpoint" / "state.prev.json").exists()
