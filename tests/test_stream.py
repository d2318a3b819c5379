"""Streaming training data with bounded memory: residency, determinism, validation, resume, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlmtf.algos.esrl import ESRLConfig
from rlmtf.data.io import LogDataError, read_logs
from rlmtf.data.shard import shard_dataset
from rlmtf.data.stream import StreamingSampler, discover_units, validation_mask
from rlmtf.data.transitions import build_transitions
from rlmtf.data.writer import LogWriter
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import FixedPolicy
from rlmtf.train.loop import TrainConfig, train


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory):
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=200, n_items=1500))
    out = tmp_path_factory.mktemp("stream") / "explore"
    simulate_to_parquet(sim, behaviour_policy(FixedPolicy(np.zeros(10, np.float32)), "uniform", seed=3), out,
                        seed=3, sessions=400)
    return out


@pytest.fixture(scope="module")
def sharded(logs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "sharded"
    shard_dataset(logs_dir, out, 6)
    return out


def _keys(batch):
    return batch.user_state[:, 0], batch.reward


def test_units_are_shards_and_memory_holds_at_most_buffer_plus_one(sharded):
    meta, units = discover_units(sharded)
    assert [u.name for u in units] == [f"shard={k:05d}" for k in range(6)]
    assert sum(u.rows for u in units) == len(read_logs(sharded, columns=["session_id"]))
    s = StreamingSampler(sharded, seed=1, buffer_shards=2, reuse=0.5)
    rng = np.random.default_rng(0)
    seen, rotations = set(), 0
    try:
        for _ in range(60):
            before = [r.unit for r in s.resident]
            oldest, drawn = len(s.resident[0].train), s.drawn
            b = s.sample(32, rng)
            assert len(b) == 32
            assert len(s.resident) == 2  # never more in memory; one more at most is loading
            after = [r.unit for r in s.resident]
            if after != before:  # a rotation: the oldest went out once 0.5 x its requests had been drawn
                rotations += 1
                assert after[0] == before[1] and drawn >= 0.5 * oldest
            else:
                assert drawn < 0.5 * oldest or s._next is None
            seen.update(after)
        assert seen == set(range(6)) and s.epoch >= 1  # rotated through every unit, into a second pass
        s._next.result()  # let the load ahead finish
        assert s.loads == 2 + rotations + 1  # the initial buffer, each rotation, and the one loading ahead
    finally:
        s.close()


def test_same_seed_same_batches_and_resume_mid_pass_is_exact(sharded):
    def draws(sampler, rng, n):
        return [sampler.sample(16, rng) for _ in range(n)]

    a = StreamingSampler(sharded, seed=4, buffer_shards=2, reuse=0.3)
    b = StreamingSampler(sharded, seed=4, buffer_shards=2, reuse=0.3)
    ra, rb = np.random.default_rng(9), np.random.default_rng(9)
    try:
        first = draws(a, ra, 25)
        for x, y in zip(first, draws(b, rb, 25), strict=True):
            np.testing.assert_array_equal(x.enhanced_state, y.enhanced_state)
        st, rng_state = a.state(), ra.bit_generator.state
        rest = draws(a, ra, 40)
    finally:
        a.close()
        b.close()
    c = StreamingSampler(sharded, seed=4, buffer_shards=2, reuse=0.3)
    rc = np.random.default_rng()
    rc.bit_generator.state = rng_state
    try:
        c.load_state(st)
        for x, y in zip(rest, draws(c, rc, 40), strict=True):
            np.testing.assert_array_equal(x.enhanced_state, y.enhanced_state)
            np.testing.assert_array_equal(x.next_user_state, y.next_user_state)
    finally:
        c.close()


def test_validation_sessions_are_never_trained_on(sharded):
    s = StreamingSampler(sharded, seed=2, buffer_shards=6, val_fraction=0.25)
    try:
        val = s.validation_logs()
        assert val is not None
        val_ids = set(np.unique(val.columns["session_id"]).tolist())
        train_ids = set()
        for r in s.resident:
            train_ids |= set(np.unique(r.train.session_id).tolist())
        assert val_ids and train_ids and not (val_ids & train_ids)
        all_ids = np.unique(read_logs(sharded, columns=["session_id"]).columns["session_id"])
        held = validation_mask(all_ids, 0.25, 2)
        assert set(all_ids[held].tolist()) == val_ids  # every unit is resident: all held-out sessions
        assert 0.15 < held.mean() < 0.35
    finally:
        s.close()


def test_ranks_read_disjoint_units(sharded):
    a = StreamingSampler(sharded, rank=0, world=2, buffer_shards=1)
    b = StreamingSampler(sharded, rank=1, world=2, buffer_shards=1)
    try:
        assert {u.name for u in a.units}.isdisjoint({u.name for u in b.units})
        assert len(a.units) + len(b.units) == 6
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError, match="every rank needs at least one"):
        StreamingSampler(sharded, rank=0, world=7)


def test_a_unit_that_cuts_a_session_is_refused_with_advice(logs_dir, tmp_path):
    logs = read_logs(logs_dir)
    logs = logs.take(np.flatnonzero(logs.columns["day"] == logs.columns["day"].min()))
    order = np.lexsort((logs.columns["position"], logs.columns["t"], logs.columns["session_id"]))
    cut = build_transitions(logs).row_index[1, 0]  # the first row of request 1: a cut inside session 0
    k = int(np.flatnonzero(order == cut)[0])
    with LogWriter(tmp_path / "cut", logs.meta) as w:
        for part in (order[:k], order[k:]):
            w.write(int(logs.columns["day"][0]), {n: v[part] for n, v in logs.columns.items()})
    s = None
    with pytest.raises(LogDataError, match="whole sessions.*rlmtf data shard"):
        s = StreamingSampler(tmp_path / "cut", buffer_shards=2)
    assert s is None


def test_streamed_training_resumes_exactly_and_learns(sharded, tmp_path):
    cfg = TrainConfig(steps=24, seed=5, eval_every=12, checkpoint_every=12, log_every=6, stream=True,
                      buffer_shards=2, reuse=0.4)
    acfg = ESRLConfig(hidden=(16,), ensemble_size=2, batch_size=32, warmup_steps=5)
    train("integrated", sharded, tmp_path / "full", cfg=cfg, algo_cfg=acfg)
    half = train("integrated", sharded, tmp_path / "half", cfg=dataclasses.replace(cfg, steps=12), algo_cfg=acfg)
    assert half.step == 12
    resumed = train("integrated", sharded, tmp_path / "half", cfg=cfg, algo_cfg=acfg, resume=True)
    assert resumed.step == 24
    a = load_file(str(tmp_path / "full" / "checkpoint" / "state.safetensors"))
    b = load_file(str(tmp_path / "half" / "checkpoint" / "state.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert (tmp_path / "full" / "policy" / "policy.json").is_file()


def test_stream_option_needs_a_directory(logs_dir):
    logs = read_logs(logs_dir)
    with pytest.raises(ValueError, match="dataset directory"):
        train("integrated", logs, "unused", cfg=TrainConfig(stream=True))


def test_resident_shards_on_the_device_give_the_same_training(sharded, tmp_path):
    """With data_on_device the resident shards are tensors and batches are gathered there: same numbers."""
    cfg = TrainConfig(steps=10, seed=1, eval_every=0, stream=True, buffer_shards=2, reuse=0.3)
    acfg = ESRLConfig(hidden=(16,), ensemble_size=2, batch_size=32, warmup_steps=3)
    train("integrated", sharded, tmp_path / "np", cfg=cfg, algo_cfg=acfg)
    train("integrated", sharded, tmp_path / "dev", cfg=dataclasses.replace(cfg, data_on_device=True), algo_cfg=acfg)
    a = load_file(str(tmp_path / "np" / "checkpoint" / "state.safetensors"))
    b = load_file(str(tmp_path / "dev" / "checkpoint" / "state.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
