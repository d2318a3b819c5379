"""One contract every algorithm keeps (Enhanced-State RL, IntegratedRL-MTF and every baseline).

- an update runs, returns finite float metrics, and changes the weights;
- actions lie in [-1, 1] with the right shape (per request for user level, per item for item level);
- save_policy + load_policy round-trips to identical actions;
- state_tensors + load_state_tensors resumes to identical actions and identical next updates;
- two runs with the same seed are identical.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

import numpy as np
import pytest
import torch

from rlmtf.algos import ALGORITHMS, algorithm_class
from rlmtf.algos.base import ActorCriticConfig
from rlmtf.algos.registry import load_policy
from rlmtf.data import build_transitions, read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.base import Policy
from rlmtf.policy.fixed import baseline_policy


def small_config(config_cls: type):
    """The algorithm's defaults, shrunk wherever a field of that name exists (fast tests)."""
    shrink = {"hidden": (16, 16), "embed_dim": 4, "ensemble_size": 2, "warmup_steps": 2, "batch_size": 16,
              "popsize": 4, "sessions_per_candidate": 8, "n_action_samples": 4, "latent_dim": 4}
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in shrink.items() if k in names})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=300, n_items=1000))
    out = tmp_path_factory.mktemp("contract") / "explore"
    simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", "request", seed=1), out, seed=1,
                        sessions=80)
    logs = read_logs(out)
    return sim, logs, build_transitions(logs)


#: variants kept to the same contract: "<algorithm>-<variant>"
VARIANTS = ("esrl-residual",)


def make(name: str, world, seed: int = 0):
    sim, logs, trans = world
    kind, _, variant = name.partition("-")
    cls = algorithm_class(kind)
    cfg = small_config(cls.config_cls)
    if variant:
        cfg = dataclasses.replace(cfg, variant=variant, item_hidden=(8,))
    algo = cls(logs.meta.feature_spec, cfg, seed=seed)
    if getattr(cls, "online", False):
        algo.attach(sim)
    algo.set_normalisation(trans)
    return algo


def step(algo, trans, rng):
    return algo.update(None if getattr(algo, "online", False) else trans.sample(algo.cfg.batch_size, rng))


def weights(algo) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in algo.state_tensors()[0].items()}


@pytest.fixture(params=[*sorted(ALGORITHMS), *VARIANTS])
def name(request):
    return request.param


def test_update_runs_and_changes_weights(name, world):
    _, _, trans = world
    algo = make(name, world)
    rng = np.random.default_rng(0)
    algo.warm_start(trans, rng)
    before = weights(algo)
    metrics = step(algo, trans, rng)
    assert metrics and all(isinstance(v, float) and np.isfinite(v) for v in metrics.values()), metrics
    after = weights(algo)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, f"{name}: one update changed no tensor"
    # the acting network itself moved (not only optimizer state)
    assert any(k.split(".")[0] in algo.acting for k in changed), changed
    assert algo.step == 1


def test_actions_are_bounded_and_shaped(name, world):
    sim, logs, trans = world
    algo = make(name, world)
    states = algo.train_states(trans)[:7]
    a = algo.act_states(states)
    assert a.shape == (7, logs.meta.feature_spec.action_dim)
    assert np.isfinite(a).all() and (np.abs(a) <= 1.0).all()
    # through the simulator: one action per request (user level) or per candidate (item level)
    pol = algo.policy()
    res = sim.run(pol, seed=3, days=1, max_sessions=5)
    assert res.requests.sum() > 0
    got = []
    sim.run(_Spy(pol, got), seed=3, days=1, max_sessions=5)
    acts, n_cand = got[0]
    if algo.level == "user":
        assert acts.ndim == 2 and acts.shape[1] == logs.meta.feature_spec.action_dim
    else:
        assert acts.ndim == 3 and acts.shape[1] == n_cand
    assert (np.abs(acts) <= 1.0).all()


class _Spy(Policy):
    """A policy wrapper that records the first actions it returns."""

    def __init__(self, inner, got):
        self.inner, self.got = inner, got
        self.level, self.name = inner.level, "spy"  # type: ignore[misc]

    def act(self, obs):
        a = self.inner.act(obs)
        if not self.got:
            self.got.append((a, obs.mtl_scores.shape[1]))
        return a


def test_save_load_round_trip_gives_identical_actions(name, world, tmp_path):
    _, _, trans = world
    algo = make(name, world)
    rng = np.random.default_rng(1)
    algo.warm_start(trans, rng)
    for _ in range(2):
        step(algo, trans, rng)
    algo.save_policy(tmp_path / "p", extra={"name": name})
    loaded = load_policy(str(tmp_path / "p"))
    assert loaded.kind == name.partition("-")[0] and loaded.level == algo.level
    states = algo.train_states(trans)[:32]
    np.testing.assert_array_equal(loaded.algo.act_states(states), algo.act_states(states))


def test_resume_from_state_tensors_continues_identically(name, world):
    _, _, trans = world
    a1 = make(name, world, seed=5)
    rng = np.random.default_rng(2)
    a1.warm_start(trans, rng)
    step(a1, trans, rng)
    tensors, meta = a1.state_tensors()
    a2 = make(name, world, seed=99)  # different init: everything must come from the state
    a2.load_state_tensors(tensors, meta)
    assert a2.step == a1.step
    states = a1.train_states(trans)[:16]
    np.testing.assert_array_equal(a2.act_states(states), a1.act_states(states))
    if getattr(a1, "online", False):
        return  # an online generation draws fresh simulator seeds from the step count; covered below
    batch = trans.sample(a1.cfg.batch_size, np.random.default_rng(7))
    torch.manual_seed(0)  # anything drawn from torch's global stream instead of algo.gen would now differ
    m1 = a1.update(batch)
    torch.manual_seed(1)
    m2 = a2.update(batch)
    assert m1 == pytest.approx(m2, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(a2.act_states(states), a1.act_states(states), rtol=1e-5, atol=1e-6)


def test_same_seed_is_deterministic(name, world):
    _, _, trans = world
    runs = []
    for _ in range(2):
        algo = make(name, world, seed=11)
        rng = np.random.default_rng(11)
        algo.warm_start(trans, rng)
        for _ in range(3):
            step(algo, trans, rng)
        runs.append(algo.act_states(algo.train_states(trans)[:32]))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("algo_name", [a for a in sorted(ALGORITHMS) if a != "es"])
def test_plain_trunk_without_group_embeddings(algo_name, world, tmp_path):
    """embed_dim=0: no per-group embeddings (d3rlpy's plain networks): trains, saves, loads, acts the same."""
    sim, logs, trans = world
    cls = algorithm_class(algo_name)
    plain = cls(logs.meta.feature_spec, dataclasses.replace(small_config(cls.config_cls), embed_dim=0), seed=1)
    embedded = make(algo_name, world, seed=1)
    n_params = {a: sum(p.numel() for m in a.modules().values() for p in m.parameters()) for a in (plain, embedded)}
    assert not any("embeds" in k for k in plain.state_tensors()[0])
    plain.set_normalisation(trans)
    rng = np.random.default_rng(2)
    plain.warm_start(trans, rng)
    before = weights(plain)
    metrics = step(plain, trans, rng)
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(before[k], v) for k, v in weights(plain).items())
    states = trans.enhanced_state[:7] if plain.level == "item" else trans.user_state[:7]
    path = plain.save_policy(tmp_path / "p")
    loaded = load_policy(str(path))
    np.testing.assert_array_equal(loaded.algo.act_states(states), plain.act_states(states))
    assert n_params[plain] != n_params[embedded]
    with pytest.raises(ValueError, match="embed_dim must be >= 0"):
        cls(logs.meta.feature_spec, dataclasses.replace(small_config(cls.config_cls), embed_dim=-1))


def test_config_fields_are_documented_and_shared_ones_come_from_the_base(name):
    """Every field of the algorithm's config, its own or a shared base's, has a docstring; the offline
    actor-critics take the shared fields from one base instead of repeating them."""
    cls = algorithm_class(name.partition("-")[0])
    documented = set()
    for klass in cls.config_cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for st, nxt in zip(body, [*body[1:], None], strict=True):
            if (isinstance(st, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                documented.add(st.target.id)
    assert [f.name for f in dataclasses.fields(cls.config_cls) if f.name not in documented] == []
    if not getattr(cls, "online", False):
        assert issubclass(cls.config_cls, ActorCriticConfig)
        own = vars(cls.config_cls).get("__annotations__", {})
        # a shared field is declared again only to change its default (e.g. BCQ's learning rates)
        base = {f.name: f.default for f in dataclasses.fields(ActorCriticConfig)}
        mine = {f.name: f.default for f in dataclasses.fields(cls.config_cls)}
        assert not [k for k in set(own) & set(base) if mine[k] == base[k]]
