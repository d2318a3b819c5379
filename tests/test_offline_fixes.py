"""The fixes of the offline baselines for logged data, checked by hand: the logged action range and TD3's
smoothed target (DDPG), CQL-Lagrange's automatic conservative weight and CQL's policy learning rate, BCQ's
reference perturbation limit and acting candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlmtf.algos.action_range import ActionRange
from rlmtf.algos.bcq import BCQ, BCQConfig
from rlmtf.algos.cql_sac import CQLSAC, CQLSACConfig, cql_alpha_loss
from rlmtf.algos.ddpg import DDPG, DDPGConfig, smoothed_target_action
from rlmtf.core.bellman import bellman_target
from rlmtf.core.schema import FeatureGroup, FeatureSpec
from rlmtf.data.transitions import RequestBatch

SPEC = FeatureSpec(user_profile=FeatureGroup((("p", 3),)), user_history=FeatureGroup((("h", 2),)),
                   context=FeatureGroup((("c", 1),)), item_features=FeatureGroup((("i", 1),)), action_dim=2)
SMALL = {"hidden": (16, 16), "embed_dim": 0, "batch_size": 16}


def batch(rng: np.random.Generator, n: int = 16, lo: float = -0.9, hi: float = -0.6) -> RequestBatch:
    d, a_dim, n_es = SPEC.user_state_dim, SPEC.action_dim, SPEC.enhanced_state_dim
    a = rng.uniform(lo, hi, (n, 1, a_dim)).astype(np.float32)
    z = np.zeros((n, 1, a_dim), np.float32)
    r = rng.standard_normal(n).astype(np.float32)
    return RequestBatch(user_state=rng.standard_normal((n, d)).astype(np.float32),
                        enhanced_state=np.zeros((n, 1, n_es), np.float32), action=a, mu_bp=z, lower_b=z, upper_b=z,
                        item_reward=r[:, None], reward=r, done=np.zeros(n, np.float32), gap=np.zeros(n, np.float32),
                        next_user_state=rng.standard_normal((n, d)).astype(np.float32),
                        next_enhanced_state=np.zeros((n, 1, n_es), np.float32), next_mu_bp=z, next_lower_b=z,
                        next_upper_b=z)


class _T:
    """The two fields of Transitions that set_normalisation reads."""

    def __init__(self, b: RequestBatch):
        self.user_state, self.action = b.user_state, b.action


# --- the logged action range -----------------------------------------------------------------------------

def test_action_range_by_hand():
    r = ActionRange(2)
    x = torch.tensor([[-0.3, 0.9]])
    torch.testing.assert_close(r.unscale(r.scale(x)), x)  # unfitted: the identity on [-1, 1]
    torch.testing.assert_close(r.scale(x), x)
    r.fit(torch.tensor([[-1.0, 0.2], [-0.8, 0.6], [-0.9, 0.4]]))
    torch.testing.assert_close(r.low, torch.tensor([-1.0, 0.2]))
    torch.testing.assert_close(r.high, torch.tensor([-0.8, 0.6]))
    # -0.9 is the middle of [-1, -0.8]: 0; 0.6 the top of [0.2, 0.6]: 1
    torch.testing.assert_close(r.scale(torch.tensor([[-0.9, 0.6]])), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(r.unscale(torch.tensor([[-1.0, 0.0]])), torch.tensor([[-1.0, 0.4]]))
    r.fit(torch.tensor([[0.5, 1.0], [0.5, 1.0]]))  # a constant dimension keeps a minimal width, inside [-1, 1]
    assert (r.high - r.low).min() > 0 and r.high.max() <= 1.0


def test_actor_acts_inside_the_logged_range_and_saves_it(tmp_path):
    from rlmtf.algos.registry import load_policy

    rng = np.random.default_rng(0)
    algo = DDPG(SPEC, DDPGConfig(**SMALL), seed=0)
    b = batch(rng, 256)
    algo.set_normalisation(_T(b))
    with torch.no_grad():  # saturate the actor's tanh so that the bounds are reached
        for p in algo.actor.parameters():
            p.mul_(50.0)
    acts = algo.act_states(rng.standard_normal((64, SPEC.user_state_dim)).astype(np.float32) * 3)
    lo, hi = b.action[:, 0].min(0), b.action[:, 0].max(0)
    assert (acts >= lo - 1e-5).all() and (acts <= hi + 1e-5).all()
    assert (np.abs(acts - lo) < 1e-3).any() or (np.abs(acts - hi) < 1e-3).any()
    algo.save_policy(tmp_path / "p")
    assert np.allclose(load_policy(tmp_path / "p").algo.action_range.low.numpy(), lo, atol=1e-6)
    # off: the full action space, the paper's
    full = DDPG(SPEC, DDPGConfig(**SMALL, data_action_range=False), seed=0)
    full.set_normalisation(_T(b))
    assert torch.equal(full.action_range.low, -torch.ones(2))


# --- DDPG: TD3's smoothed target ---------------------------------------------------------------------------

def test_smoothed_target_action_by_hand():
    a = torch.tensor([[0.9, 0.0, -0.2]])
    noise = torch.tensor([[0.3, -0.7, 0.1]])
    # noise clipped to [-0.5, 0.5]: [0.3, -0.5, 0.1]; then the action to [-1, 1]: [1.0, -0.5, -0.1]
    torch.testing.assert_close(smoothed_target_action(a, noise, 0.5), torch.tensor([[1.0, -0.5, -0.1]]))


def test_ddpg_target_replays_the_smoothing_noise():
    algo = DDPG(SPEC, DDPGConfig(**SMALL, target_noise=0.3, target_noise_clip=0.4), seed=0)
    b = batch(np.random.default_rng(1)).to_torch("cpu")
    s, a, r, done, s2 = b["user_state"], b["action"][:, 0], b["reward"], b["done"], b["next_user_state"]
    state = algo.gen.get_state()
    _, _, y = algo.critic_loss(s, a, r, done, s2)
    algo.gen.set_state(state)
    with torch.no_grad():
        eps = torch.randn((s.shape[0], 2), generator=algo.gen)
        a2 = (algo.actor_target(s2) + (0.3 * eps).clamp(-0.4, 0.4)).clamp(-1, 1)
        expected = bellman_target(r, done, algo.critic_target(s2, a2)[0], 0.9)
    torch.testing.assert_close(y, expected)
    plain = DDPG(SPEC, DDPGConfig(**SMALL, target_noise=0.0), seed=0)
    _, _, y0 = plain.critic_loss(s, a, r, done, s2)
    torch.testing.assert_close(y0, bellman_target(r, done, plain.critic_target(s2, plain.actor_target(s2))[0], 0.9))


# --- CQL-Lagrange ------------------------------------------------------------------------------------------

def test_cql_alpha_loss_by_hand_and_direction():
    log_alpha = torch.tensor(0.0, requires_grad=True)
    gap = torch.tensor([12.0, 11.0])  # above the threshold 10
    loss = cql_alpha_loss(log_alpha, gap, 5.0, 10.0)
    assert loss.item() == pytest.approx(-(5 * 2 + 5 * 1))
    loss.backward()
    assert log_alpha.grad.item() < 0  # gradient descent raises alpha'
    log_alpha.grad = None
    cql_alpha_loss(log_alpha, torch.tensor([3.0, 4.0]), 5.0, 10.0).backward()
    assert log_alpha.grad.item() > 0  # below the threshold: alpha' falls


def test_cql_weight_is_w_times_the_multiplier_and_moves_with_the_gap():
    rng = np.random.default_rng(2)
    algo = CQLSAC(SPEC, CQLSACConfig(**SMALL, n_action_samples=3, cql_alpha=2.0, cql_alpha_lr=0.1,
                                     cql_threshold=1e3), seed=0)
    b = batch(rng).to_torch("cpu")
    args = (b["user_state"], b["action"][:, 0], b["reward"], b["done"], b["next_user_state"])
    with torch.no_grad():
        algo.log_cql_alpha.value.fill_(np.log(3.0))
    state = algo.gen.get_state()
    loss, parts = algo.critic_loss(*args)
    assert loss.item() == pytest.approx(parts["td"].item() + 2.0 * 3.0 * 2 * parts["cql"].item(), rel=1e-5)
    algo.gen.set_state(state)
    before = algo.log_cql_alpha.value.item()
    for _ in range(5):  # the gap (a few units) is far below the threshold 1000: alpha' must fall
        algo.update(batch(rng))
    assert algo.log_cql_alpha.value.item() < before
    assert algo.actor_opt.param_groups[0]["lr"] == 1e-4  # CQL's policy learning rate, not the shared 3e-4
    fixed = CQLSAC(SPEC, CQLSACConfig(**SMALL, n_action_samples=3, cql_alpha_lr=0.0, policy_lr=None), seed=0)
    assert fixed.actor_opt.param_groups[0]["lr"] == fixed.cfg.actor_lr
    fixed.update(batch(rng))
    assert fixed.log_cql_alpha.value.item() == 0.0  # lr 0: the fixed weight w


# --- BCQ ---------------------------------------------------------------------------------------------------

def test_bcq_reference_perturbation_and_acting_candidates():
    cfg = BCQConfig()
    assert cfg.rho == 0.05 and cfg.n_act_samples == 100 and cfg.n_action_samples == 10
    assert cfg.actor_lr == cfg.critic_lr == cfg.vae_lr == 1e-3  # Fujimoto's BCQ.py (and d3rlpy's defaults)
    algo = BCQ(SPEC, BCQConfig(**SMALL, n_act_samples=13, n_action_samples=4, latent_dim=4), seed=0)
    s = torch.randn(5, SPEC.user_state_dim)
    with torch.no_grad():
        assert algo.candidate_actions(s).shape == (5, 13, 2)
