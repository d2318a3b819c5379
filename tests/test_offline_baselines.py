"""Offline baselines DDPG, IQL and CQL+SAC: loss helpers by hand, gradient isolation, targets, the
importance-sampled CQL penalty recomputed from the same draws, and a small learning sanity check."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from rlmtf.algos.cql_sac import (
    CQLSAC,
    CQLSACConfig,
    cql_logsumexp,
    cql_penalty,
    sac_actor_loss,
    temperature_loss,
)
from rlmtf.algos.ddpg import DDPG, DDPGConfig, ddpg_actor_loss
from rlmtf.algos.gaussian import GaussianActor, TanhGaussianActor, gaussian_log_prob, tanh_log_det
from rlmtf.algos.iql import IQL, IQLConfig, awr_actor_loss, awr_weights, expectile_loss
from rlmtf.algos.losses import critic_mse
from rlmtf.core.bellman import bellman_target
from rlmtf.core.schema import FeatureGroup, FeatureSpec
from rlmtf.data.transitions import RequestBatch

# a tiny world: user state = 3 + 2 + 1 features, 2 action dimensions
SPEC = FeatureSpec(user_profile=FeatureGroup((("p", 3),)), user_history=FeatureGroup((("h", 2),)),
                   context=FeatureGroup((("c", 1),)), item_features=FeatureGroup((("i", 1),)), action_dim=2)
A_STAR = np.array([0.5, -0.3], dtype=np.float32)
SMALL = {"hidden": (32, 32), "embed_dim": 4, "batch_size": 32}
ALGOS = {"ddpg": (DDPG, DDPGConfig), "iql": (IQL, IQLConfig), "cql_sac": (CQLSAC, CQLSACConfig)}


def make(name: str, **over):
    cls, cfg_cls = ALGOS[name]
    return cls(SPEC, cfg_cls(**{**SMALL, **over}), seed=0)


def synthetic_batch(rng: np.random.Generator, n: int, p_done: float = 0.5) -> RequestBatch:
    """Requests with random states, uniform logged actions and reward -||a - a*||^2 (the state does not
    matter); a fraction ``p_done`` of them end their session."""
    d, a_dim, n_es = SPEC.user_state_dim, SPEC.action_dim, SPEC.enhanced_state_dim
    s = rng.standard_normal((n, d)).astype(np.float32)
    s2 = rng.standard_normal((n, d)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, 1, a_dim)).astype(np.float32)
    r = -((a[:, 0] - A_STAR) ** 2).sum(-1)
    zeros_a = np.zeros((n, 1, a_dim), np.float32)
    return RequestBatch(user_state=s, enhanced_state=np.zeros((n, 1, n_es), np.float32), action=a, mu_bp=zeros_a,
                        lower_b=zeros_a - 0.1, upper_b=zeros_a + 0.1, item_reward=r[:, None], reward=r,
                        done=(rng.random(n) < p_done).astype(np.float32), gap=np.zeros(n, np.float32),
                        next_user_state=s2,
                        next_enhanced_state=np.zeros((n, 1, n_es), np.float32), next_mu_bp=zeros_a,
                        next_lower_b=zeros_a - 0.1, next_upper_b=zeros_a + 0.1)


def grads_none(module: torch.nn.Module) -> bool:
    return all(p.grad is None for p in module.parameters())


def grads_nonzero(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# --- loss helpers by hand ---------------------------------------------------------------------------------

def test_bellman_target_and_critic_mse_by_hand():
    y = bellman_target(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), 0.9)
    torch.testing.assert_close(y, torch.tensor([10.0, 2.0]))  # 1 + 0.9 * 10; done: reward only
    q = torch.tensor([[1.0, 3.0], [0.0, 2.0]])  # (m=2, B=2)
    # critic 0: ((1-2)^2 + (3-2)^2) / 2 = 1; critic 1: (4 + 0) / 2 = 2; summed = 3
    assert critic_mse(q, torch.tensor([2.0, 2.0])).item() == pytest.approx(3.0)
    assert ddpg_actor_loss(torch.tensor([[1.0, 3.0]])).item() == pytest.approx(-2.0)


def test_expectile_loss_by_hand():
    # diff = Q - V: positive errors weigh tau, negative ones 1 - tau
    diff = torch.tensor([2.0, -1.0, 0.0])
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 1 + 0.0) / 3)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (diff**2).mean().item())
    # the 0.9-expectile of {0, 1, 2, 10} is where the gradient vanishes: with v in (2, 10),
    # 0.9 (10 - v) = 0.1 (3 v - 3) -> v = 9.3 / 1.2 (well above the mean 3.25)
    q = torch.tensor([0.0, 1.0, 2.0, 10.0])
    for v0, sign in [(9.3 / 1.2, 0), (3.25, -1), (9.0, 1)]:
        v = torch.tensor(v0, requires_grad=True)
        expectile_loss(q - v, 0.9).backward()
        if sign == 0:
            assert v.grad.item() == pytest.approx(0.0, abs=1e-5)
        else:  # below the expectile the loss pulls V up (negative gradient), above it down
            assert math.copysign(1, v.grad.item()) == sign


def test_awr_weights_clip_and_actor_loss_by_hand():
    w = awr_weights(torch.tensor([0.0, 1.0, 2.0, -1.0]), beta=3.0, max_weight=100.0)
    # exp(0) = 1, exp(3) = 20.09, exp(6) = 403 -> clipped to 100, exp(-3) = 0.0498
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(3.0), 100.0, math.exp(-3.0)]))
    assert awr_weights(torch.tensor([2.0]), beta=3.0, max_weight=500.0).item() == pytest.approx(math.exp(6.0))
    # -mean(w * log pi) = -((1 * -1) + (3 * -2)) / 2 = 3.5
    assert awr_actor_loss(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 3.0])).item() == pytest.approx(3.5)


def test_cql_logsumexp_and_penalty_by_hand():
    q_ood = torch.tensor([[[1.0, 2.0, 0.0]], [[0.0, 0.0, 0.0]]])  # (m=2, B=1, K=3)
    log_density = torch.tensor([[0.0, math.log(2.0), -1.0]])  # (B=1, K=3)
    # critic 0: log(e^(1-0) + e^(2-log 2) + e^(0+1)) = log(2e + e^2/2)
    lse0 = math.log(2 * math.e + math.e**2 / 2)
    lse1 = math.log(1 + 0.5 + math.e)  # critic 1: log(e^0 + e^(-log 2) + e^1)
    torch.testing.assert_close(cql_logsumexp(q_ood, log_density), torch.tensor([[lse0], [lse1]]))
    # temperature 2: 2 log sum exp(x / 2)
    lse0_t = 2 * math.log(math.exp(0.5) + math.exp((2 - math.log(2)) / 2) + math.exp(0.5))
    assert cql_logsumexp(q_ood, log_density, temp=2.0)[0, 0].item() == pytest.approx(lse0_t, rel=1e-6)
    q_data = torch.tensor([[0.5], [-1.0]])
    torch.testing.assert_close(cql_penalty(q_ood, log_density, q_data), torch.tensor([lse0 - 0.5, lse1 + 1.0]))


def test_sac_actor_and_temperature_losses_by_hand():
    # mean(0.2 * -1 - 1, 0.2 * 0.5 - 2) = mean(-1.2, -1.9) = -1.55
    loss = sac_actor_loss(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.5]), 0.2)
    assert loss.item() == pytest.approx(-1.55)
    # log pi + target = [-1 - 2, -3 - 2] -> mean -4; loss = -log_alpha * -4 = 4 log_alpha
    log_alpha = torch.tensor(0.5, requires_grad=True)
    t = temperature_loss(log_alpha, torch.tensor([-1.0, -3.0]), target_entropy=-2.0)
    assert t.item() == pytest.approx(2.0)
    t.backward()
    # entropy 2 > target -2: the gradient is positive, so descent lowers alpha
    assert log_alpha.grad.item() == pytest.approx(4.0)
    log_alpha.grad = None
    temperature_loss(log_alpha, torch.tensor([3.0]), target_entropy=-2.0).backward()  # entropy -3 < -2
    assert log_alpha.grad.item() < 0


def test_gaussian_log_probs_match_torch_distributions():
    torch.manual_seed(0)
    x, mean, log_std = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3) * 0.5
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_std), ref)
    u = torch.randn(5, 3) * 2
    torch.testing.assert_close(tanh_log_det(u), torch.log(1 - torch.tanh(u) ** 2).sum(-1), atol=1e-5, rtol=1e-5)

    actor = TanhGaussianActor([3, 2, 1], 2, hidden=(8,), embed_dim=4)
    s = torch.randn(64, 6)
    a, logp = actor.sample(s, torch.Generator().manual_seed(0))
    assert a.shape == (64, 2) and logp.shape == (64,) and (a.abs() <= 1).all()
    m, ls = actor.dist(s)
    u = torch.atanh(a.clamp(-1 + 1e-6, 1 - 1e-6))
    ref = torch.distributions.Normal(m, ls.exp()).log_prob(u).sum(-1) - torch.log(1 - a**2 + 1e-12).sum(-1)
    torch.testing.assert_close(logp, ref, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(actor(s), torch.tanh(m))  # deterministic action: tanh(mean)

    g = GaussianActor([3, 2, 1], 2, hidden=(8,), embed_dim=4)
    with torch.no_grad():
        g.log_std.fill_(-0.5)
    act = torch.rand(64, 2) * 2 - 1
    ref = torch.distributions.Normal(g(s), math.exp(-0.5)).log_prob(act).sum(-1)
    torch.testing.assert_close(g.log_prob(s, act), ref)


# --- gradient isolation and targets ----------------------------------------------------------------------

def _tensors(algo, seed: int = 0):
    return algo.user_tensors(synthetic_batch(np.random.default_rng(seed), 16))


def test_ddpg_gradient_isolation():
    algo = make("ddpg")
    s, a, r, done, s2, _ = _tensors(algo)
    loss_c, _, _ = algo.critic_loss(s, a, r, done, s2)
    loss_c.backward()
    assert grads_nonzero(algo.critic) and grads_none(algo.actor)
    algo.critic.zero_grad(set_to_none=True)
    algo.critic.requires_grad_(False)
    algo.actor_loss(s).backward()
    algo.critic.requires_grad_(True)
    assert grads_none(algo.critic) and grads_nonzero(algo.actor)
    assert grads_none(algo.actor_target) and grads_none(algo.critic_target)


def test_iql_gradient_isolation():
    algo = make("iql")
    s, a, r, done, s2, _ = _tensors(algo)
    algo.value_loss(s, a).backward()  # V regresses on the target critics: nothing reaches any Q
    assert grads_nonzero(algo.value)
    assert grads_none(algo.critic) and grads_none(algo.critic_target) and grads_none(algo.actor)
    algo.value.zero_grad(set_to_none=True)
    loss_c, _, _ = algo.critic_loss(s, a, r, done, s2)  # the targets use V(s') without gradient
    loss_c.backward()
    assert grads_nonzero(algo.critic) and grads_none(algo.value) and grads_none(algo.actor)
    algo.critic.zero_grad(set_to_none=True)
    adv = algo.advantage(s, a)
    assert not adv.requires_grad
    loss_a, w = algo.actor_loss(s, a, adv)
    loss_a.backward()
    assert grads_nonzero(algo.actor) and algo.actor.log_std.grad is not None
    assert grads_none(algo.critic) and grads_none(algo.value) and grads_none(algo.critic_target)
    torch.testing.assert_close(w, awr_weights(adv, 3.0, 100.0))


def test_cql_sac_gradient_isolation():
    algo = make("cql_sac", n_action_samples=3)
    s, a, r, done, s2, _ = _tensors(algo)
    loss_c, _ = algo.critic_loss(s, a, r, done, s2)  # policy samples for the penalty carry no gradient
    loss_c.backward()
    assert grads_nonzero(algo.critic) and grads_none(algo.actor) and grads_none(algo.log_alpha)
    algo.critic.zero_grad(set_to_none=True)
    algo.critic.requires_grad_(False)
    loss_a, logp = algo.actor_loss(s)
    loss_a.backward()
    algo.critic.requires_grad_(True)
    assert grads_none(algo.critic) and grads_nonzero(algo.actor) and grads_none(algo.log_alpha)
    assert not logp.requires_grad
    assert grads_none(algo.critic_target)


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_update_moves_targets_by_tau_and_never_gives_them_gradients(name):
    algo = make(name, tau=0.25)
    targets = {k: m for k, m in algo.modules().items() if k.endswith("_target")}
    assert targets and all(not p.requires_grad for m in targets.values() for p in m.parameters())
    before = {k: copy.deepcopy(m.state_dict()) for k, m in targets.items()}
    metrics = algo.update(synthetic_batch(np.random.default_rng(0), 32))
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    mods = algo.modules()
    for k, m in targets.items():
        assert grads_none(m)
        online = mods[k.removesuffix("_target")].state_dict()
        for key, v in m.state_dict().items():  # target <- 0.75 target + 0.25 online (after the step)
            torch.testing.assert_close(v, 0.75 * before[k][key] + 0.25 * online[key], atol=1e-6, rtol=1e-5)
    # the online networks are trainable again after the frozen actor step
    assert all(p.requires_grad for k, m in mods.items() if not k.endswith("_target") for p in m.parameters())


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_update_gives_every_network_gradient_from_its_own_loss_only(name):
    """Count the backward passes reaching each parameter during ``update``: exactly one each (its own
    loss). An actor loss leaking into a critic, or a critic loss into V or the actor, would add one."""
    algo = make(name)
    counts: dict[str, int] = {}
    handles = []
    for mod_name, mod in algo.modules().items():
        for p_name, p in mod.named_parameters():
            key = f"{mod_name}.{p_name}"
            if mod_name.endswith("_target"):
                assert not p.requires_grad, key
                continue
            counts[key] = 0
            handles.append(p.register_hook(lambda g, key=key: counts.__setitem__(key, counts[key] + 1)))
    algo.update(synthetic_batch(np.random.default_rng(0), 32))
    for h in handles:
        h.remove()
    assert counts and all(c == 1 for c in counts.values()), {k: c for k, c in counts.items() if c != 1}


def test_cql_penalty_recomputed_from_the_same_draws():
    """Replay the generator and rebuild the penalty by hand: uniform actions with density 2^-A, n policy
    actions at s and n at s', all evaluated at s, one critic member at a time."""
    n = 3
    algo = make("cql_sac", n_action_samples=n, cql_alpha=2.0)
    s, a, r, done, s2, _ = _tensors(algo, seed=4)
    bsz, a_dim = a.shape
    state = algo.gen.get_state()
    loss, parts = algo.critic_loss(s, a, r, done, s2)
    algo.gen.set_state(state)
    with torch.no_grad():
        algo.actor.sample(s2, algo.gen)  # the TD target's draw comes first
        a_rand = torch.rand((bsz, n, a_dim), generator=algo.gen) * 2 - 1
        a_cur, lp_cur = algo.actor.sample(s.repeat_interleave(n, 0), algo.gen)
        a_nxt, lp_nxt = algo.actor.sample(s2.repeat_interleave(n, 0), algo.gen)
        pens = []
        for i in range(2):
            q_data = algo.critic.member(i, s, a)  # (B,)
            rows = []
            for b in range(bsz):
                vals = [algo.critic.member(i, s[b:b + 1], a_rand[b, k:k + 1])[0] + a_dim * math.log(2)
                        for k in range(n)]
                vals += [algo.critic.member(i, s[b:b + 1], a_cur[b * n + k:b * n + k + 1])[0] - lp_cur[b * n + k]
                         for k in range(n)]
                vals += [algo.critic.member(i, s[b:b + 1], a_nxt[b * n + k:b * n + k + 1])[0] - lp_nxt[b * n + k]
                         for k in range(n)]
                rows.append(torch.logsumexp(torch.stack(vals), 0) - q_data[b])
            pens.append(torch.stack(rows).mean())
    expected = torch.stack(pens)
    assert parts["cql"].item() == pytest.approx(expected.mean().item(), rel=1e-4, abs=1e-5)
    assert loss.item() == pytest.approx(parts["td"].item() + 2.0 * expected.sum().item(), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("name", ["iql", "cql_sac"])
def test_deterministic_action_is_the_mean(name):
    algo = make(name)
    s = torch.randn(9, SPEC.user_state_dim)
    got = torch.as_tensor(algo.act_states(s.numpy()))
    expected = torch.tanh(algo.actor.dist(s)[0]) if name == "cql_sac" else algo.actor(s)
    torch.testing.assert_close(got, expected.detach())
    # and repeated calls do not draw from the algorithm's random stream
    state = algo.gen.get_state()
    algo.act_states(s.numpy())
    assert torch.equal(algo.gen.get_state(), state)


# --- learning sanity ----------------------------------------------------------------------------------------

#: DDPG and CQL+SAC follow the critic's action gradient; with the actor as fast as the critic it first
#: overshoots to a corner of [-1, 1]^A while the young critic still extrapolates almost linearly (and the
#: tanh saturates), so here the actor learns slower than the critic (CORL's CQL uses 3e-5 for its policy).
SANITY = {"ddpg": {"actor_lr": 3e-5, "critic_lr": 1e-3}, "iql": {},
          "cql_sac": {"actor_lr": 3e-5, "critic_lr": 1e-3, "n_action_samples": 4, "batch_size": 64}}


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_few_hundred_updates_move_the_action_towards_the_best(name):
    """reward = -||a - a*||^2 whatever the state (fresh logged data every step): the action approaches a*."""
    rng = np.random.default_rng(0)
    algo = make(name, **{"hidden": (64, 64), "batch_size": 128, **SANITY[name]})
    test_states = rng.standard_normal((256, SPEC.user_state_dim)).astype(np.float32)

    def dist() -> float:
        return float(np.linalg.norm(algo.act_states(test_states) - A_STAR, axis=-1).mean())

    d0 = dist()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest and leaves the other core alone
    try:
        for _ in range(600):
            algo.update(synthetic_batch(rng, algo.cfg.batch_size))
    finally:
        torch.set_num_threads(threads)
    d1 = dist()
    assert d1 < 0.4 * d0 and d1 < 0.25, (d0, d1)
