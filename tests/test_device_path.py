"""The pieces of the GPU path that run anywhere: device-resident batches, lazy metrics, compile options.

The CUDA half (CPU and GPU agree on the same batch) is marked ``gpu``; benchmarks/gpu_check.sh runs it with
the throughput table on a machine with a GPU.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlmtf.algos import ALGORITHMS, algorithm_class
from rlmtf.algos.esrl import ESRLConfig
from rlmtf.data.io import read_logs
from rlmtf.data.samplers import DeviceSampler, SliceSampler
from rlmtf.data.transitions import build_transitions
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import FixedPolicy
from rlmtf.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = [a for a in ALGORITHMS if not getattr(algorithm_class(a), "online", False)]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory):
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=120, n_items=1000))
    out = tmp_path_factory.mktemp("device") / "logs"
    simulate_to_parquet(sim, behaviour_policy(FixedPolicy(np.zeros(10, np.float32)), "uniform", "item", seed=4), out,
                        seed=4, sessions=120)
    return out


def _small_cfg(name: str):
    cls = algorithm_class(name).config_cls
    names = {f.name for f in dataclasses.fields(cls)}
    want = {"hidden": (16,), "ensemble_size": 2, "batch_size": 16, "warmup_steps": 3, "n_action_samples": 3}
    return cls(**{k: v for k, v in want.items() if k in names})


def test_device_batches_are_the_numpy_batches(logs_dir):
    t = build_transitions(read_logs(logs_dir))
    dev, ref = DeviceSampler(t, "cpu"), SliceSampler(t)
    for seed in range(3):
        a = dev.sample(24, np.random.default_rng(seed)).to_torch("cpu")
        b = ref.sample(24, np.random.default_rng(seed)).to_torch("cpu")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", OFFLINE)
def test_lazy_metrics_are_the_same_numbers(logs_dir, name):
    t = build_transitions(read_logs(logs_dir))
    spec = read_logs(logs_dir, columns=["session_id"]).meta.feature_spec
    runs = []
    for lazy in (False, True):
        algo = algorithm_class(name)(spec, _small_cfg(name), seed=3)
        algo.set_normalisation(t)
        algo.lazy_metrics = lazy
        m = algo.update(t.sample(16, np.random.default_rng(1)))
        runs.append(m)
    floats, tensors = runs
    assert all(isinstance(v, float) for v in floats.values())
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in tensors.values())
    assert floats == {k: float(v) for k, v in tensors.items()}


def test_data_on_device_trains_the_same_weights(logs_dir, tmp_path):
    cfg = TrainConfig(steps=6, eval_every=0, seed=2)
    acfg = ESRLConfig(hidden=(16,), ensemble_size=2, batch_size=16, warmup_steps=3)
    train("esrl", logs_dir, tmp_path / "a", cfg=cfg, algo_cfg=acfg)
    train("esrl", logs_dir, tmp_path / "b", cfg=dataclasses.replace(cfg, data_on_device=True), algo_cfg=acfg)
    a = load_file(str(tmp_path / "a" / "checkpoint" / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "state.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_compile_mode_and_missing_cuda_are_named(logs_dir, tmp_path):
    with pytest.raises(ValueError, match="compile must be one of"):
        train("ddpg", logs_dir, tmp_path / "r", cfg=TrainConfig(steps=1, compile="fastest"),
              algo_cfg=_small_cfg("ddpg"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            train("ddpg", logs_dir, tmp_path / "r2", cfg=TrainConfig(steps=1, device="cuda"))


def test_gpu_check_script_runs_its_agreement_check_on_cpu(tmp_path):
    """The prepared GPU script in its CPU-vs-CPU mode: every algorithm, tiny sizes (its logic, not speed)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--devices", "cpu,cpu",
                          "--quick", "--json", str(tmp_path / "check.json")], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    import json

    doc = json.loads((tmp_path / "check.json").read_text())
    assert {r["algo"] for r in doc["agreement"]} == set(OFFLINE)
    assert all(r["ok"] for r in doc["agreement"]), doc["agreement"]
    assert {r["algo"] for r in doc["throughput"]} >= set(OFFLINE)


@pytest.mark.gpu
def test_cpu_and_cuda_agree_on_the_same_batches(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--devices", "cpu,cuda",
                          "--quick", "--compile", "none", "--json", str(tmp_path / "check.json")], capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
