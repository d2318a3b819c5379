"""BCQ (BatchRL-MTF) and the online ES baseline: BCQ's perturbation bound, VAE loss and clipped double-Q target
by hand, gradient isolation and acting by argmax Q1; ES fitness == a direct simulator run, common random
numbers, exact CMA-ES resume (also through train's checkpoints), and a short run that improves a bad start."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rlmtf.algos.bcq import BCQ, BCQConfig, bcq_target, clipped_double_q, vae_loss
from rlmtf.algos.es import ESConfig, EvolutionStrategy
from rlmtf.algos.losses import critic_mse
from rlmtf.algos.registry import load_policy
from rlmtf.data import build_transitions, read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.envs.sim.world import feature_spec
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, train

SPEC = feature_spec(SimConfig())
BCQ_SMALL = BCQConfig(hidden=(16, 16), embed_dim=4, n_action_samples=5, n_act_samples=7, latent_dim=4, batch_size=16)


@pytest.fixture(scope="module")
def sim():
    return Simulator(dataclasses.replace(SimConfig(), n_users=400, n_items=1000))


@pytest.fixture(scope="module")
def logs(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("bcq_es") / "explore"
    simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", "request", seed=1), out, seed=1,
                        sessions=60)
    return read_logs(out)


@pytest.fixture(scope="module")
def trans(logs):
    return build_transitions(logs)


# --- BCQ: pure helpers by hand ----------------------------------------------------------------------

def test_vae_loss_by_hand():
    recon = torch.tensor([[0.5, 0.0]])
    action = torch.tensor([[0.0, 0.0]])
    mean = torch.tensor([[1.0, 0.0]])
    std = torch.tensor([[1.0, 0.5]])
    loss, rec, kl = vae_loss(recon, action, mean, std, kl_weight=0.5)
    # reconstruction: mean of (0.25, 0) = 0.125
    # KL per latent: -0.5 * (1 + log std^2 - mean^2 - std^2): (1 + 0 - 1 - 1) -> 0.5;
    #                (1 + log 0.25 - 0 - 0.25) -> -0.5 * (0.75 - 1.386294) = 0.318147; mean 0.409074
    kl_hand = (0.5 + -0.5 * (0.75 + math.log(0.25))) / 2
    assert rec.item() == pytest.approx(0.125)
    assert kl.item() == pytest.approx(kl_hand, rel=1e-6)
    assert loss.item() == pytest.approx(0.125 + 0.5 * kl_hand, rel=1e-6)
    # the KL of the prior itself is zero
    assert vae_loss(action, action, torch.zeros(1, 3), torch.ones(1, 3), 0.5)[0].item() == pytest.approx(0.0)


def test_clipped_double_q_target_by_hand():
    # 2 critics, B = 2 next states, n = 3 generated actions each
    next_q = torch.tensor([[[1.0, 4.0, 2.0], [5.0, 0.0, 1.0]],
                           [[3.0, 2.0, 2.0], [1.0, 1.0, 9.0]]])
    q = clipped_double_q(next_q, 0.75)
    # state 0: min (1, 2, 2), max (3, 4, 2) -> (1.5, 2.5, 2.0); state 1: min (1, 0, 1), max (5, 1, 9) -> (2, .25, 3)
    torch.testing.assert_close(q, torch.tensor([[1.5, 2.5, 2.0], [2.0, 0.25, 3.0]]))
    y = bcq_target(torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0]), next_q, gamma=0.9, lambda_=0.75)
    # state 0: 1 + 0.9 * max(1.5, 2.5, 2) = 3.25; state 1 is done: its reward only
    torch.testing.assert_close(y, torch.tensor([3.25, 0.5]))
    # lambda = 1 is the plain min of the two critics
    torch.testing.assert_close(clipped_double_q(next_q, 1.0), next_q.min(0).values)
    # twin critic loss: sum over critics of the mean squared errors
    loss = critic_mse(torch.tensor([[1.0, 2.0], [0.0, 2.0]]), torch.tensor([2.0, 2.0]))
    assert loss.item() == pytest.approx((1 + 0) / 2 + (4 + 0) / 2)


# --- BCQ: the networks and the update ----------------------------------------------------------------

def test_perturbation_stays_within_rho_of_the_generated_action():
    algo = BCQ(SPEC, BCQ_SMALL, seed=0)
    with torch.no_grad():  # saturate the tanh so that the bound is actually reached
        algo.perturb.head[-2].weight.mul_(200.0)
    g = torch.Generator().manual_seed(0)
    s = 3 * torch.randn(64, SPEC.user_state_dim, generator=g)
    a = 2 * torch.rand(64, SPEC.action_dim, generator=g) - 1
    a[:8] = 1.0
    a[8:16] = -1.0
    with torch.no_grad():
        out = algo.perturb(s, a)
        dev = (out - a).abs()
        assert (dev <= BCQ_SMALL.rho + 1e-6).all() and (out.abs() <= 1.0).all()
        assert dev.max() > 0.9 * BCQ_SMALL.rho  # the bound is tight, not trivially far away
        # acting: every candidate lies within rho of the decoded action of the fixed latents
        n = BCQ_SMALL.n_act_samples
        decoded = algo.vae.decode(s.repeat_interleave(n, 0), algo.vae.act_latents.repeat(64, 1)).reshape(64, n, -1)
        assert ((algo.candidate_actions(s) - decoded).abs() <= BCQ_SMALL.rho + 1e-6).all()


def test_acting_is_argmax_q1_over_fixed_latents(tmp_path):
    algo = BCQ(SPEC, BCQ_SMALL, seed=0)
    lat = algo.vae.act_latents
    assert lat.shape == (BCQ_SMALL.n_act_samples, BCQ_SMALL.latent_dim) and (lat.abs() <= 0.5).all()
    s = 2 * torch.randn(9, SPEC.user_state_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cand = algo.candidate_actions(s)  # (9, n, A)
        q1 = torch.stack([algo.critic(s, cand[:, j])[0] for j in range(cand.shape[1])], 1)  # (9, n)
        expected = cand[torch.arange(9), q1.argmax(1)]
    got = algo.act_states(s.numpy())
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(algo.act_states(s.numpy()), got)  # deterministic
    # the latents travel with the saved policy, so a policy with a different seed acts identically
    algo.save_policy(tmp_path / "p")
    assert "vae.act_latents" in load_file(str(tmp_path / "p" / "actor.safetensors"))
    other = BCQ(SPEC, BCQ_SMALL, seed=7)
    assert not torch.equal(other.vae.act_latents, lat)
    np.testing.assert_array_equal(load_policy(str(tmp_path / "p")).algo.act_states(s.numpy()), got)


def test_gradient_isolation(trans):
    algo = BCQ(SPEC, BCQ_SMALL, seed=0)
    algo.set_normalisation(trans)
    seen: dict[str, dict[str, torch.Tensor | None]] = {}

    def grads(mod):
        return {n: None if p.grad is None else p.grad.clone() for n, p in mod.named_parameters()}

    def spy(opt, name):
        inner = opt.step

        def step(*a, **k):
            seen[name] = {"vae": grads(algo.vae), "critic": grads(algo.critic), "perturb": grads(algo.perturb)}
            return inner(*a, **k)
        opt.step = step

    spy(algo.vae_opt, "vae_step")
    spy(algo.critic_opt, "critic_step")
    spy(algo.actor_opt, "actor_step")
    rng = np.random.default_rng(0)
    for it in range(2):
        algo.update(trans.sample(BCQ_SMALL.batch_size, rng))
        vs, cs, acs = seen["vae_step"], seen["critic_step"], seen["actor_step"]
        # the critic loss (whose target decodes with the VAE and perturbs with the target) adds nothing to the VAE
        for n, g in cs["vae"].items():
            assert torch.equal(g, vs["vae"][n]), n
        if it == 0:  # nothing has put a gradient on the perturbation network before its own step
            assert all(g is None for g in cs["perturb"].values())
        # the perturbation loss adds nothing to the critics or the VAE, and does train the perturbation net
        for n, g in acs["critic"].items():
            assert torch.equal(g, cs["critic"][n]), n
        for n, g in acs["vae"].items():
            assert torch.equal(g, vs["vae"][n]), n
        assert all(g is not None for g in acs["perturb"].values())
        assert any(g.abs().sum() > 0 for g in acs["perturb"].values())
    for target in (algo.critic_target, algo.perturb_target):
        assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in algo.critic.parameters())  # unfrozen after the actor step


def test_targets_move_softly(trans):
    algo = BCQ(SPEC, BCQ_SMALL, seed=0)
    algo.set_normalisation(trans)
    t0 = {k: v.clone() for k, v in algo.critic_target.state_dict().items()}
    algo.update(trans.sample(BCQ_SMALL.batch_size, np.random.default_rng(0)))
    tau = BCQ_SMALL.tau
    for k, v in algo.critic.state_dict().items():
        if k in ("mean", "std"):
            continue
        torch.testing.assert_close(algo.critic_target.state_dict()[k], (1 - tau) * t0[k] + tau * v)


# --- ES ---------------------------------------------------------------------------------------------

ES_SMALL = ESConfig(popsize=4, sessions_per_candidate=16)


def make_es(sim, cfg=ES_SMALL, seed=0) -> EvolutionStrategy:
    es = EvolutionStrategy(sim.spec, cfg, seed=seed)
    es.attach(sim)
    g = torch.Generator().manual_seed(3)  # a non-trivial input standardisation
    d = sim.spec.user_state_dim
    es.actor.set_normalisation(torch.rand(d, generator=g), 0.5 + torch.rand(d, generator=g))
    return es


def test_es_starts_at_the_baseline_and_needs_a_simulator(sim):
    es = EvolutionStrategy(sim.spec, ES_SMALL)
    states = np.random.default_rng(0).normal(size=(5, sim.spec.user_state_dim)).astype(np.float32)
    np.testing.assert_allclose(es.act_states(states), np.tile(baseline_policy().action, (5, 1)), atol=1e-6)
    with pytest.raises(RuntimeError, match="attach"):
        es.update()
    with pytest.raises(ValueError, match="init_action"):
        EvolutionStrategy(sim.spec, ESConfig(init_action=(0.0,) * 3))


def test_es_fitness_equals_a_direct_simulator_run(sim):
    es = make_es(sim)
    es.update()
    a, d = sim.spec.action_dim, sim.spec.user_state_dim
    for i in (0, ES_SMALL.popsize - 1):
        theta = es.last_candidates[i]
        # an independent policy: another ES whose actor holds W = w / sqrt(D) and b of the candidate
        other = make_es(sim, seed=42)
        with torch.no_grad():
            other.actor.weight.copy_(torch.as_tensor(theta[: a * d].reshape(a, d) / math.sqrt(d)))
            other.actor.bias.copy_(torch.as_tensor(theta[a * d:]))
        res = sim.run(other.policy(), seed=es.last_seed, days=1, max_sessions=ES_SMALL.sessions_per_candidate,
                      users=es.last_users)
        assert es.last_fitness[i] == res.reward.sum() / res.requests.sum()
    # the policy kept is the distribution's mean
    np.testing.assert_array_equal(es.actor.bias.detach().numpy(), es._cma.mean[a * d:].astype(np.float32))


def test_es_common_random_numbers(sim, monkeypatch):
    es = make_es(sim)
    calls = []
    inner_run = sim.run

    def run(policy, **kw):
        calls.append((kw["seed"], kw["users"].copy()))
        return inner_run(policy, **kw)

    monkeypatch.setattr(sim, "run", run)
    inner_ask = es._cma.ask
    asked: list[np.ndarray] = []

    def ask():  # every second candidate repeats the previous one
        asked.append(asked[-1].copy() if len(asked) % 2 else inner_ask())
        return asked[-1]

    monkeypatch.setattr(es._cma, "ask", ask)
    es.update()
    fit = es.last_fitness
    assert fit[0] == fit[1] and fit[2] == fit[3]  # identical candidates, identical fitness
    assert fit[0] != fit[2]  # and the candidates themselves matter
    assert len(calls) == ES_SMALL.popsize + 1  # + the mean
    for seed, users in calls[1:]:
        assert seed == calls[0][0]
        np.testing.assert_array_equal(users, calls[0][1])
    n = len(calls)
    es.update()
    assert calls[n][0] != calls[0][0] and not np.array_equal(calls[n][1], calls[0][1])  # fresh per generation


def test_es_state_round_trips_exactly(sim, tmp_path):
    a1 = make_es(sim, seed=5)
    a1.update()
    a1.update()
    tensors, meta = a1.state_tensors()
    save_file(tensors, str(tmp_path / "s.safetensors"))  # the real serialisation: safetensors + JSON
    (tmp_path / "s.json").write_text(json.dumps(meta))
    a2 = make_es(sim, seed=99)
    a2.load_state_tensors(load_file(str(tmp_path / "s.safetensors")), json.loads((tmp_path / "s.json").read_text()))
    assert a2.seed == 5 and a2.step == 2 and a2._cma.generation == a1._cma.generation == 2
    for name in ("_mean", "_C", "_p_sigma", "_pc"):
        np.testing.assert_array_equal(getattr(a2._cma, name), getattr(a1._cma, name))
    assert a2._cma._sigma == a1._cma._sigma
    for _ in range(2):
        m1, m2 = a1.update(), a2.update()
        np.testing.assert_array_equal(a2.last_candidates, a1.last_candidates)  # the same next candidates
        assert m1 == m2
    np.testing.assert_array_equal(a2._cma._C, a1._cma._C)
    states = np.random.default_rng(0).normal(size=(6, sim.spec.user_state_dim)).astype(np.float32)
    np.testing.assert_array_equal(a2.act_states(states), a1.act_states(states))
    # a state of another population size is refused
    a3 = make_es(sim, cfg=dataclasses.replace(ES_SMALL, popsize=6))
    with pytest.raises(ValueError, match="popsize"):
        a3.load_state_tensors(tensors, meta)


def test_es_train_resume_equals_uninterrupted(sim, logs, tmp_path):
    tc = TrainConfig(steps=3, eval_every=0, log_every=1, checkpoint_every=2, seed=3)
    full = train("es", logs, tmp_path / "full", cfg=tc, algo_cfg=ES_SMALL, sim=sim)
    train("es", logs, tmp_path / "part", cfg=dataclasses.replace(tc, steps=2), algo_cfg=ES_SMALL, sim=sim)
    resumed = train("es", logs, tmp_path / "part", cfg=tc, algo_cfg=ES_SMALL, sim=sim, resume=True)
    assert resumed.step == full.step == 3
    np.testing.assert_array_equal(resumed._cma.mean, full._cma.mean)
    for k, v in full.actor.state_dict().items():
        torch.testing.assert_close(resumed.actor.state_dict()[k], v, atol=0, rtol=0)
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and all("es/fitness_mean" in x for x in lines)
    pol = load_policy(str(tmp_path / "full" / "policy"))
    states = build_transitions(logs).user_state[:8]
    np.testing.assert_array_equal(pol.algo.act_states(states), full.act_states(states))


def test_es_improves_a_bad_start():
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=2000, n_items=2000))
    bad = (0.9, -0.9, -0.9, -0.9, -0.9) + (-0.9,) * 5  # rank by the clickbait-prone valid score alone
    cfg = ESConfig(popsize=6, sessions_per_candidate=32, sigma0=0.5, personalised=False, init_action=bad,
                   eval_mean=False)
    es = EvolutionStrategy(sim.spec, cfg, seed=0)
    es.attach(sim)

    def held_out() -> float:  # a fixed seed the generations never use
        r = sim.run(es.policy(), seed=10_007, days=1, max_sessions=200)
        return float(r.reward.sum() / r.requests.sum())

    start = held_out()
    for _ in range(4):
        es.update()
    assert held_out() > start + 0.3  # measured: +0.45 to +0.7 over seeds 0-5
