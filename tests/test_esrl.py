"""Enhanced-State RL and IntegratedRL-MTF: losses by hand, gradient isolation, the ensemble, targets,
per-item actions, and resume == uninterrupted."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from rlmtf.algos.esrl import EnhancedStateRL, ESRLConfig
from rlmtf.algos.integrated import IntegratedRL
from rlmtf.algos.losses import actor_loss, bound_penalty, critic_loss, soft_update, td_target
from rlmtf.algos.registry import load_policy
from rlmtf.core.nets import CriticEnsemble
from rlmtf.data import build_transitions, read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, train

SMALL = ESRLConfig(hidden=(32, 32), embed_dim=8, ensemble_size=4, warmup_steps=5, batch_size=32)


# --- losses by hand ---------------------------------------------------------------------------------

def test_bound_penalty_by_hand():
    mu_bp = torch.tensor([[0.0, 0.5, -0.5]])
    lo, hi = torch.full((1, 3), -0.15), torch.full((1, 3), 0.15)
    beta = 0.3
    scale = beta * 0.3  # beta * (upper_b - lower_b) = 0.09
    # dim 0: 0.1 inside [-0.15, 0.15] -> 0
    # dim 1: 0.8 above 0.65 by 0.15 -> exp(0.15 / 0.09)
    # dim 2: -0.8 below -0.65 by 0.15 -> exp(0.15 / 0.09)
    mu = torch.tensor([[0.1, 0.8, -0.8]])
    expected = 2 * math.exp(0.15 / scale)
    assert bound_penalty(mu, mu_bp, lo, hi, beta).item() == pytest.approx(expected, rel=1e-6)
    # on the edge the penalty is 0 (inside is closed); just past it, about exp(0) = 1
    assert bound_penalty(torch.tensor([[0.15, 0.65, -0.65]]), mu_bp, lo, hi, beta).item() == 0.0
    just = bound_penalty(torch.tensor([[0.1500001, 0.5, -0.5]]), mu_bp, lo, hi, beta).item()
    assert just == pytest.approx(1.0, abs=1e-4)


def test_td_target_by_hand():
    # m = 2 critics, B = 2 requests, l = 2 items, l' = 2 next items
    item_reward = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    done = torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[[3.0, 4.0], [10.0, 10.0]],
                           [[1.0, 1.0], [10.0, 10.0]]])
    next_pen = torch.tensor([[0.5, 0.0], [7.0, 7.0]])
    y = td_target(item_reward, done, next_q, next_pen, gamma=0.9, delta=2.0)
    # request 0, critic 0: 3 + 0.9 * ((3 - 2*0.5) + (4 - 0)) = 3 + 0.9 * 6 = 8.4
    # request 0, critic 1: 3 + 0.9 * ((1 - 1) + 1) = 3.9
    # request 1 is done: only its rewards, 0.5, for both critics
    torch.testing.assert_close(y, torch.tensor([[8.4, 0.5], [3.9, 0.5]]))


def test_critic_and_actor_loss_by_hand():
    q = torch.tensor([[[1.0, 2.0]], [[0.0, 1.0]]])  # (m=2, B=1, l=2)
    y = torch.tensor([[4.0], [2.0]])
    # critic 0: (3 - 4)^2 = 1; critic 1: (1 - 2)^2 = 1 -> summed over critics = 2
    assert critic_loss(q, y).item() == pytest.approx(2.0)
    qa = torch.tensor([[1.0, 3.0], [3.0, 3.0]])  # (m=2, S=2)
    pen = torch.tensor([0.0, 1.0])
    # state 0: -mean(1,3) + 0 + 0.5 * std(1,3)=1 -> -2 + 0.5 = -1.5
    # state 1: -3 + 2 * 1 + 0.5 * 0 = -1 -> mean = -1.25
    assert actor_loss(qa, pen, eta=2.0, lam=0.5).item() == pytest.approx(-1.25)


# --- networks ---------------------------------------------------------------------------------------

def test_vectorised_ensemble_equals_loop_over_members():
    torch.manual_seed(0)
    dims = [3, 4, 2]
    ens = CriticEnsemble(dims, 10, ensemble_size=5, hidden=(16, 16), embed_dim=6)
    ens.set_normalisation(torch.randn(9), torch.rand(9) + 0.5)
    s, a = torch.randn(7, 9), torch.rand(7, 10) * 2 - 1
    vec = ens(s, a)  # (m, B)
    loop = torch.stack([ens.member(i, s, a) for i in range(5)])
    torch.testing.assert_close(vec, loop, atol=1e-5, rtol=1e-5)


def test_critics_differ_at_initialisation():
    torch.manual_seed(0)
    ens = CriticEnsemble([3, 4], 10, ensemble_size=6, hidden=(8,), embed_dim=4)
    q = ens(torch.randn(20, 7), torch.rand(20, 10))
    assert q.shape == (6, 20)
    for i in range(6):
        for j in range(i + 1, 6):
            assert not torch.allclose(q[i], q[j])
    w = ens.layers[0].weight
    assert not torch.equal(w[0], w[1])


# --- the algorithm on real (simulated) data -------------------------------------------------------------

@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=400, n_items=2000))
    out = tmp_path_factory.mktemp("esrl") / "explore"
    simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", "item", seed=1), out, seed=1,
                        sessions=150)
    return read_logs(out), sim


@pytest.fixture(scope="module")
def trans(logs):
    return build_transitions(logs[0])


@pytest.mark.parametrize("cls", [EnhancedStateRL, IntegratedRL])
def test_actor_loss_gives_no_gradient_to_critics_and_nothing_to_targets(cls, logs, trans):
    algo = cls(logs[0].meta.feature_spec, SMALL)
    algo.set_normalisation(trans)
    batch = trans.sample(16, np.random.default_rng(0))
    for p in [*algo.critic_target.parameters(), *algo.actor_target.parameters()]:
        assert not p.requires_grad
    critic_before = [p.detach().clone() for p in algo.critic.parameters()]
    # run only the actor half: zero the critic's learning rate so a critic step cannot move it
    for g in algo.critic_opt.param_groups:
        g["lr"] = 0.0
    algo.update(batch)
    for p in algo.critic.parameters():
        # the critic got gradients from its own loss only; the actor half runs with the critic frozen
        assert p.requires_grad
    for before, p in zip(critic_before, algo.critic.parameters(), strict=True):
        torch.testing.assert_close(before, p.detach())
    # direct check: the actor loss alone leaves critic .grad empty
    algo.critic.zero_grad(set_to_none=True)
    v = algo.view(batch.to_torch())
    s = v["s"].reshape(-1, v["s"].shape[-1])
    algo.critic.requires_grad_(False)
    mu = algo.actor(s)
    loss = actor_loss(algo.critic(s, mu), bound_penalty(mu, v["mu_bp"].reshape(mu.shape),
                      v["lower_b"].reshape(mu.shape), v["upper_b"].reshape(mu.shape), 0.3), 1.2, 0.2)
    loss.backward()
    algo.critic.requires_grad_(True)
    assert all(p.grad is None for p in algo.critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.actor.parameters())
    assert all(p.grad is None for p in algo.critic_target.parameters())
    assert all(p.grad is None for p in algo.actor_target.parameters())


def test_targets_move_only_every_L_steps_by_rate_w(logs, trans):
    cfg = dataclasses.replace(SMALL, target_every=3, target_rate=0.25)
    algo = EnhancedStateRL(logs[0].meta.feature_spec, cfg)
    algo.set_normalisation(trans)
    rng = np.random.default_rng(0)
    t0 = copy.deepcopy(algo.critic_target.state_dict())
    for _ in range(2):
        algo.update(trans.sample(16, rng))
    for k, v in algo.critic_target.state_dict().items():  # steps 1, 2: unchanged
        torch.testing.assert_close(v, t0[k])
    a_target = copy.deepcopy(algo.actor_target.state_dict())
    algo.update(trans.sample(16, rng))  # step 3: target <- 0.75 target + 0.25 online (online after step 3)
    online = algo.critic.state_dict()
    for k, v in algo.critic_target.state_dict().items():
        if k in ("mean", "std"):
            continue
        torch.testing.assert_close(v, 0.75 * t0[k] + 0.25 * online[k], atol=1e-6, rtol=1e-5)
    for k, v in algo.actor_target.state_dict().items():
        if "mean" in k or "std" in k:
            continue
        expected = 0.75 * a_target[k] + 0.25 * algo.actor.state_dict()[k]
        torch.testing.assert_close(v, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["esrl", "integrated"])
def test_esrl_acts_per_item_integrated_per_request(name, logs, tmp_path):
    data, sim = logs
    algo = train(name, data, tmp_path / name, cfg=TrainConfig(steps=3, eval_every=0, log_every=1,
                                                               checkpoint_every=100), algo_cfg=SMALL)
    pol = load_policy(str(tmp_path / name / "policy"))
    assert pol.level == algo.level
    seen: list[np.ndarray] = []
    orig = pol.act

    def act(obs):
        a = orig(obs)
        seen.append(a)
        return a

    pol.act = act  # type: ignore[method-assign]
    sim.run(pol, seed=9, days=1, users=np.arange(20))
    a = seen[0]
    if name == "esrl":
        assert a.ndim == 3 and a.shape[-1] == 10
        # different actions for different candidates of one request
        assert np.abs(a - a[:, :1]).max() > 1e-4
    else:  # one action per request: every candidate of a request is fused with the same action
        assert a.ndim == 2 and a.shape[-1] == 10
    assert np.abs(a).max() <= 1.0


def test_resume_equals_uninterrupted(logs, tmp_path):
    data = logs[0]
    tc = TrainConfig(steps=12, eval_every=0, log_every=4, checkpoint_every=6, seed=3)
    full = train("esrl", data, tmp_path / "full", cfg=tc, algo_cfg=SMALL)
    train("esrl", data, tmp_path / "part", cfg=dataclasses.replace(tc, steps=6), algo_cfg=SMALL)
    resumed = train("esrl", data, tmp_path / "part", cfg=tc, algo_cfg=SMALL, resume=True)
    assert resumed.step == full.step == 12
    for k, v in full.actor.state_dict().items():
        torch.testing.assert_close(resumed.actor.state_dict()[k], v, atol=0, rtol=0)
    for k, v in full.critic.state_dict().items():
        torch.testing.assert_close(resumed.critic.state_dict()[k], v, atol=0, rtol=0)
    # and a different seed gives different weights
    other = train("esrl", data, tmp_path / "other", cfg=dataclasses.replace(tc, seed=4), algo_cfg=SMALL)
    assert not torch.equal(other.actor.head[0].weight, full.actor.head[0].weight)


def test_soft_update_rate():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    soft_update(a, b, 0.08)
    torch.testing.assert_close(a.weight.detach(), 0.92 * wa + 0.08 * wb)


def test_warm_start_keeps_the_previous_policy(logs, tmp_path):
    """PTM: a round warm-started from the previous one begins as exactly that policy, even on data whose
    feature statistics differ (the input standardisation is carried over, not refitted)."""
    data, sim = logs
    first = train("esrl", data, tmp_path / "r1", cfg=TrainConfig(steps=3, eval_every=0, checkpoint_every=100),
                  algo_cfg=SMALL)
    other = tmp_path / "other"
    simulate_to_parquet(sim, behaviour_policy(first.policy(), "uniform", "item", seed=7), other, seed=7,
                        sessions=60, start_day=3)
    second = train("esrl", other, tmp_path / "r2", cfg=TrainConfig(steps=0, eval_every=0, checkpoint_every=100),
                   algo_cfg=SMALL, warm_start_from=first)
    states = build_transitions(read_logs(other)).enhanced_state[:50].reshape(-1, first.spec.enhanced_state_dim)
    np.testing.assert_array_equal(first.act_states(states), second.act_states(states))


# --- the residual variant ----------------------------------------------------------------------------------

def test_residual_actor_bounds_the_correction_and_runs_the_user_trunk_once():
    """Every item's action is within residual_scale of the request's shared action (when no edge clips
    it); forward_list on a request's candidates equals forward on them one by one; both parts learn."""
    from rlmtf.core.nets import ResidualActor

    torch.manual_seed(0)
    groups = [4, 3, 2, 5, 3]  # three user groups, then the item's features and scores
    net = ResidualActor(groups, 3, 6, scale=0.05, hidden=(16, 16), item_hidden=(8,), embed_dim=4)
    b, n = 3, 7
    user = torch.randn(b, 1, 9).expand(b, n, 9)
    state = torch.cat([user, torch.randn(b, n, 8)], -1)  # (B, N, 17)
    flat = state.reshape(-1, 17)
    out = net(flat).reshape(b, n, 6)
    torch.testing.assert_close(net.forward_list(state), out)
    torch.testing.assert_close(net.forward_list(state[:1]), out[:1])  # one request: the serving path
    shared, corr = net.parts(flat)
    assert (corr.abs() <= 0.05 + 1e-7).all() and corr.abs().max() > 0
    shared = shared.reshape(b, n, 6)
    assert torch.equal(shared, shared[:, :1].expand(b, n, 6))  # one shared action per request
    inside = (shared.abs() < 0.95)
    assert ((out - shared).abs()[inside] <= 0.05 + 1e-6).all()
    out.sum().backward()
    assert net.shared[0].weight.grad.abs().sum() > 0 and net.correction[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="n_user_groups"):
        ResidualActor(groups, 5, 6, scale=0.05)


@pytest.mark.parametrize("item_hidden, embed_dim", [((8,), 4), ((), 4), ((8, 6), 3), ((8,), 0)])
def test_residual_serving_path_equals_the_training_function(item_hidden, embed_dim):
    """forward_list folds the standardisation (its clip moved to the raw inputs) into the embeddings and caches
    the folded weights: the same values as forward, with inputs far beyond the clip, and again after the
    parameters and the normalisation change (the cache must notice)."""
    from rlmtf.core.nets import CLIP, ResidualActor

    torch.manual_seed(1)
    groups = [4, 3, 2, 5, 3]
    net = ResidualActor(groups, 3, 6, scale=0.3, hidden=(16, 16), item_hidden=item_hidden, embed_dim=embed_dim)
    net.encoder.set_normalisation(torch.randn(17), torch.rand(17) + 0.1)
    b, n = 4, 9
    state = torch.cat([torch.randn(b, 1, 9).expand(b, n, 9), torch.randn(b, n, 8)], -1) * 3.0
    z = (state - net.encoder.mean) / net.encoder.std
    assert (z.abs() > CLIP).any()  # the clip matters for these inputs
    for _ in range(2):
        with torch.no_grad():
            want = net(state.reshape(-1, 17)).reshape(b, n, 6)
            torch.testing.assert_close(net.forward_list(state), want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(net.forward_list(state[2:3]), want[2:3], rtol=1e-5, atol=1e-6)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)  # a training step, then new statistics
        net(state.reshape(-1, 17)).pow(2).sum().backward()
        opt.step()
        net.encoder.set_normalisation(torch.randn(17), torch.rand(17) + 0.1)


def test_residual_variant_is_item_level_only():
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.world import feature_spec

    spec = feature_spec(SimConfig())
    with pytest.raises(ValueError, match="variant 'residual'"):
        IntegratedRL(spec, ESRLConfig(variant="residual", hidden=(8, 8)))
    algo = EnhancedStateRL(spec, ESRLConfig(variant="residual", hidden=(8, 8), ensemble_size=2), seed=0)
    dims = algo.group_dims(spec)
    states = np.random.default_rng(0).random((2, 5, sum(dims))).astype(np.float32)
    states[:, :, :sum(dims[:3])] = states[:, :1, :sum(dims[:3])]  # one user state per request
    a = algo.act_states(states)
    assert a.shape == (2, 5, spec.action_dim)
    np.testing.assert_allclose(a, algo.act_states(states.reshape(10, -1)).reshape(2, 5, -1), atol=1e-6)
    from rlmtf.policy.base import RequestObs

    r, n = np.random.default_rng(3), 40
    obs = RequestObs(user_id=np.zeros(2, np.int64), request_key=np.zeros(2, np.uint64),
                     user_profile=r.random((2, dims[0]), np.float32), user_history=r.random((2, dims[1]), np.float32),
                     context=r.random((2, dims[2]), np.float32), item_id=np.tile(np.arange(n), (2, 1)),
                     mtl_scores=r.random((2, n, dims[4]), np.float32),
                     item_features_=r.random((2, n, dims[3]), np.float32))  # the serving path, from the request
    np.testing.assert_allclose(algo.policy().act(obs), algo.act_states(obs.enhanced_state()), atol=1e-6)


# --- the list-aware critic ---------------------------------------------------------------------------------

def test_list_features_by_hand():
    """Three items whose fused log scores are 0, -1 and -2 (power 1 on the first task, 0 elsewhere, biases at
    their floor 0.01): the soft rank tends to the exact rank 0, 1/2, 1 as the temperature falls; the standing
    is tanh((f - mean) / sd) = tanh(+-1.2247, 0); both are unchanged when every log score is doubled."""
    from rlmtf.algos.esrl import list_features
    from rlmtf.core.fusion import ActionSpace

    space = ActionSpace()
    k = space.n_tasks
    scores = torch.full((1, 3, k), 0.5)
    scores[0, :, 0] = torch.exp(torch.tensor([0.0, -1.0, -2.0])) - 0.01
    bias = torch.full((1, 3, k), 0.01)

    def action(first_power: float) -> torch.Tensor:
        power = torch.zeros(1, 3, k)
        power[..., 0] = first_power
        return space.from_params(power, bias)

    a = action(1.0).requires_grad_(True)
    feats = list_features(scores, a, space, temperature=1e-3)
    np.testing.assert_allclose(feats[0, :, 0].detach().numpy(), [0.0, 0.5, 1.0], atol=1e-4)
    np.testing.assert_allclose(feats[0, :, 1].detach().numpy(), np.tanh([1.5 ** 0.5, 0.0, -(1.5 ** 0.5)]),
                               atol=1e-5)
    torch.testing.assert_close(list_features(scores, action(2.0), space, temperature=1e-3), feats.detach(),
                               atol=1e-4, rtol=1e-4)
    soft = list_features(scores, a, space, temperature=1.0)
    soft[0, 1, 0].backward()  # the middle item's soft rank moves with every item's action
    assert (a.grad[0].abs().sum(-1) > 0).all()


def test_a_list_aware_critic_reads_the_lists_order_and_trains(logs, trans):
    cfg = dataclasses.replace(SMALL, variant="residual", list_aware=True)
    algo = EnhancedStateRL(logs[0].meta.feature_spec, cfg, seed=0)
    algo.set_normalisation(trans)
    a = logs[0].meta.feature_spec.action_dim
    assert algo.critic.layers[0].weight.shape[1] == 5 * SMALL.embed_dim + a + 2  # five groups, action, list
    batch = trans.sample(16, np.random.default_rng(0))
    v = algo.view(batch.to_torch())
    s, act = v["s"], v["a"]
    x = algo.critic_action(s, act.reshape(-1, a))
    assert x.shape == (16 * s.shape[1], a + 2)
    torch.testing.assert_close(x[:, :a], act.reshape(-1, a))
    flipped = algo.critic_action(s.flip(1), act.flip(1).reshape(-1, a)).reshape(16, -1, a + 2)
    torch.testing.assert_close(flipped.flip(1), x.reshape(16, -1, a + 2))  # features follow the item, not the slot
    before = [p.detach().clone() for p in algo.critic.parameters()]
    m = algo.update(batch)
    assert np.isfinite(m["losses/critic"]) and np.isfinite(m["losses/actor"])
    assert any(not torch.equal(b, p) for b, p in zip(before, algo.critic.parameters(), strict=True))
    with pytest.raises(ValueError, match="list_aware"):
        IntegratedRL(logs[0].meta.feature_spec, dataclasses.replace(SMALL, list_aware=True))
