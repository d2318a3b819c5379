"""The fast CPU forms of the shared networks compute the same function as the plain ones.

``rlmtf.core.nets`` computes the group embeddings as one matmul against a block-diagonal weight, runs small
critic ensembles member by member with 2-D matmuls on the CPU (splitting the first trunk layer when only
the action needs a gradient), and uses in-place ReLUs and standardisation. Each is checked here against a
straightforward reference written out in this file (a Linear + ReLU per feature group and a cat; plain
per-member matmuls), for outputs and for the gradients of every parameter and of the inputs, so that a
speed-up that changes the function fails. The parameters, their state_dict keys and shapes, and the
random numbers drawn at initialisation are those of the plain networks.
"""

from __future__ import annotations

import pytest
import torch

import rlmtf.core.nets as nets
from rlmtf.core.nets import CLIP, Actor, CriticEnsemble, StateEncoder, mlp, standardise

DIMS = [3, 4, 2]  # feature groups of a 9-dim state
A = 5


def ref_standardise(x, mean, std):
    return ((x - mean) / std).clamp(-CLIP, CLIP)


def ref_encoder(enc: StateEncoder, x: torch.Tensor) -> torch.Tensor:
    """A Linear + ReLU per group on its slice, concatenated."""
    x = ref_standardise(x, enc.mean, enc.std)
    outs, off = [], 0
    for e, g in zip(enc.embeds, DIMS, strict=True):
        lin = e[0]
        outs.append(torch.relu(x[..., off:off + g] @ lin.weight.T + lin.bias))
        off += g
    return torch.cat(outs, -1)


def ref_critic(c: CriticEnsemble, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Every member with its own plain matmuls: (m, B)."""
    x = ref_standardise(state, c.mean, c.std)
    qs = []
    for i in range(c.m):
        parts, off = [], 0
        for e, g in zip(c.embeds, DIMS, strict=True):
            parts.append(torch.relu(x[:, off:off + g] @ e.weight[i] + e.bias[i]))
            off += g
        h = torch.cat(parts + [action], -1)
        for j, layer in enumerate(c.layers):
            h = h @ layer.weight[i] + layer.bias[i]
            if j < len(c.layers) - 1:
                h = torch.relu(h)
        qs.append(h[:, 0])
    return torch.stack(qs)


def normalised(module, dtype=torch.float32):
    module = module.to(dtype)
    gen = torch.Generator().manual_seed(3)
    target = module.encoder if isinstance(module, Actor) else module
    target.set_normalisation(torch.randn(9, generator=gen, dtype=dtype),
                             torch.rand(9, generator=gen, dtype=dtype) + 0.3)
    return module


def assert_same(got, want, dtype):
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(got, want, **tol)


def grads(out, inputs, upstream):
    return torch.autograd.grad(out, inputs, upstream, allow_unused=False)


# --- the state encoder ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead", [(11,), (4, 6)])
def test_encoder_matches_per_group_linears(dtype, lead):
    torch.manual_seed(0)
    enc = normalised(StateEncoder(DIMS, embed_dim=7), dtype)
    x = (torch.randn(*lead, 9, dtype=dtype) * 4).requires_grad_()  # some inputs beyond the clip
    out, ref = enc(x), ref_encoder(enc, x)
    assert out.shape == (*lead, 21)
    assert_same(out, ref, dtype)
    assert_same(enc.reference_forward(x), ref, dtype)
    up = torch.randn_like(ref)
    params = [x, *enc.parameters()]
    for g, r in zip(grads(out, params, up), grads(ref, params, up), strict=True):
        assert_same(g, r, dtype)


def test_actor_matches_reference_and_keeps_its_keys():
    torch.manual_seed(0)
    actor = normalised(Actor(DIMS, A, hidden=(16, 16), embed_dim=7))
    s = torch.randn(13, 9) * 3
    ref = actor.head[4](torch.relu(actor.head[2](torch.relu(actor.head[0](ref_encoder(actor.encoder, s))))))
    out = actor(s)
    assert_same(out, torch.tanh(ref), torch.float32)
    up = torch.randn_like(out)
    params = list(actor.parameters())
    for g, r in zip(grads(out, params, up), grads(torch.tanh(ref), params, up), strict=True):
        assert_same(g, r, torch.float32)
    assert {k: tuple(v.shape) for k, v in actor.state_dict().items()} == {
        "encoder.mean": (9,), "encoder.std": (9,),
        "encoder.embeds.0.0.weight": (7, 3), "encoder.embeds.0.0.bias": (7,),
        "encoder.embeds.1.0.weight": (7, 4), "encoder.embeds.1.0.bias": (7,),
        "encoder.embeds.2.0.weight": (7, 2), "encoder.embeds.2.0.bias": (7,),
        "head.0.weight": (16, 21), "head.0.bias": (16,), "head.2.weight": (16, 16), "head.2.bias": (16,),
        "head.4.weight": (A, 16), "head.4.bias": (A,)}


def test_mlp_with_inplace_relu_is_the_plain_mlp():
    torch.manual_seed(0)
    net = mlp([6, 8, 8, 3])
    x = torch.randn(5, 6, requires_grad=True)
    ref = net[4](torch.relu(net[2](torch.relu(net[0](x)))))
    out = net(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    up = torch.randn_like(out)
    params = [x, *net.parameters()]
    for g, r in zip(grads(out, params, up), grads(ref, params, up), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_standardise_in_place_path_is_the_formula(requires_grad):
    torch.manual_seed(0)
    x = (torch.randn(7, 9) * 10).requires_grad_(requires_grad)
    x0 = x.detach().clone()
    mean, std = torch.randn(9), torch.rand(9) + 0.1
    out = standardise(x, mean, std)
    torch.testing.assert_close(out, ref_standardise(x0, mean, std), rtol=0, atol=0)
    torch.testing.assert_close(x.detach(), x0, rtol=0, atol=0)  # the input is left alone
    with torch.no_grad():
        torch.testing.assert_close(standardise(x, mean, std), ref_standardise(x0, mean, std), rtol=0, atol=0)
    assert out.requires_grad == requires_grad


# --- the critic ensemble --------------------------------------------------------------------------------

def make_critic(m: int, hidden: tuple[int, ...], dtype=torch.float32) -> CriticEnsemble:
    torch.manual_seed(m)
    return normalised(CriticEnsemble(DIMS, A, ensemble_size=m, hidden=hidden, embed_dim=6), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden", [(16, 16), (8,), ()])
@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_critic_fast_path_matches_per_member_matmuls(m, hidden, dtype):
    """The critic's loss (gradients on every parameter) and an actor's loss through frozen critics (the
    gradient on the action alone: the split first layer), outputs and gradients."""
    c = make_critic(m, hidden, dtype)
    s = torch.randn(17, 9, dtype=dtype) * 3
    a = torch.rand(17, A, dtype=dtype) * 2 - 1
    up = torch.randn(m, 17, dtype=dtype)

    out, ref = c(s, a), ref_critic(c, s, a)
    assert out.shape == (m, 17) and out.is_contiguous()
    assert_same(out, ref, dtype)
    params = list(c.parameters())
    for g, r in zip(grads(out, params, up), grads(ref, params, up), strict=True):
        assert_same(g, r, dtype)

    c.requires_grad_(False)
    a_pi = a.clone().requires_grad_()
    out, ref = c(s, a_pi), ref_critic(c, s, a_pi)
    assert_same(out, ref, dtype)
    assert_same(grads(out, [a_pi], up)[0], grads(ref, [a_pi], up)[0], dtype)

    with torch.no_grad():
        assert_same(c(s, a), ref_critic(c, s, a), dtype)
    for i in range(m):
        assert_same(c.member(i, s, a), ref[i], dtype)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_critic_gradients_on_state_and_action_together(m):
    c = make_critic(m, (8, 8), torch.float64)
    s = (torch.randn(4, 9, dtype=torch.float64) * 0.5).requires_grad_()
    a = (torch.rand(4, A, dtype=torch.float64) * 2 - 1).requires_grad_()
    up = torch.randn(m, 4, dtype=torch.float64)
    ins = [s, a, *c.parameters()]
    for g, r in zip(grads(c(s, a), ins, up), grads(ref_critic(c, s, a), ins, up), strict=True):
        assert_same(g, r, torch.float64)
    assert torch.autograd.gradcheck(c, (s, a))


@pytest.mark.parametrize("m", [1, 2])
def test_critic_in_row_chunks_matches_per_member_matmuls(m, monkeypatch):
    """Large batches run in row chunks (here of 64 rows: 150 rows -> 3 chunks of 50)."""
    monkeypatch.setattr(nets, "CHUNK_ACTIVATIONS", 1)
    c = make_critic(m, (16, 16))
    calls = []
    members = c._forward_members
    monkeypatch.setattr(c, "_forward_members", lambda s, a: calls.append(len(s)) or members(s, a))
    s, a = torch.randn(150, 9) * 3, torch.rand(150, A) * 2 - 1
    up = torch.randn(m, 150)
    out, ref = c(s, a), ref_critic(c, s, a)
    assert calls == [50, 50, 50]
    assert out.shape == (m, 150) and out.is_contiguous()
    assert_same(out, ref, torch.float32)
    params = list(c.parameters())
    for g, r in zip(grads(out, params, up), grads(ref, params, up), strict=True):
        assert_same(g, r, torch.float32)
    c.requires_grad_(False)
    a_pi = a.clone().requires_grad_()
    assert_same(grads(c(s, a_pi), [a_pi], up)[0], grads(ref_critic(c, s, a_pi), [a_pi], up)[0], torch.float32)


def test_cpu_shared_input_takes_the_member_path_and_the_rest_the_vectorised_one(monkeypatch):
    c = make_critic(2, (8,))
    s, a = torch.randn(6, 9), torch.rand(6, A)
    want = ref_critic(c, s, a)
    vectorised = c._forward_vectorised(s, a)  # the GPU form, on the same input
    assert_same(vectorised, want, torch.float32)

    def boom(*_):
        raise AssertionError("took the vectorised path")

    monkeypatch.setattr(c, "_forward_vectorised", boom)
    assert_same(c(s, a), want, torch.float32)
    monkeypatch.undo()
    # per-member inputs (m, B, .) go through the vectorised path
    s_m, a_m = torch.stack([s, s + 1]), torch.stack([a, -a])
    per_member = c(s_m, a_m)
    for i in range(2):
        assert_same(per_member[i], c.member(i, s_m[i], a_m[i]), torch.float32)


def test_critic_on_an_empty_batch():
    for m in (1, 3):
        c = make_critic(m, (8,))
        assert c(torch.zeros(0, 9), torch.zeros(0, A)).shape == (m, 0)


def test_parameters_keys_shapes_and_initial_draws_are_unchanged():
    """The keys and shapes of the plain networks, and the same random numbers drawn in the same order
    (sums of the parameters at seed 0, recorded with the plain per-group implementation)."""
    torch.manual_seed(0)
    c = CriticEnsemble(DIMS, A, 2, (8, 8), 6)
    a = Actor(DIMS, A, (8, 8), 6)
    want_c = {"mean": ((9,), 0.0), "std": ((9,), 9.0), "embeds.0.weight": ((2, 3, 6), -2.483401),
              "embeds.0.bias": ((2, 1, 6), -0.022338), "embeds.1.weight": ((2, 4, 6), 1.33563),
              "embeds.1.bias": ((2, 1, 6), -1.107709), "embeds.2.weight": ((2, 2, 6), -1.712025),
              "embeds.2.bias": ((2, 1, 6), 2.226965), "layers.0.weight": ((2, 23, 8), 0.049503),
              "layers.0.bias": ((2, 1, 8), -0.15021), "layers.1.weight": ((2, 8, 8), -1.32303),
              "layers.1.bias": ((2, 1, 8), 0.539728), "layers.2.weight": ((2, 8, 1), 0.610227),
              "layers.2.bias": ((2, 1, 1), 0.280942)}
    want_a = {"encoder.mean": ((9,), 0.0), "encoder.std": ((9,), 9.0),
              "encoder.embeds.0.0.weight": ((6, 3), 0.182447), "encoder.embeds.0.0.bias": ((6,), -1.285623),
              "encoder.embeds.1.0.weight": ((6, 4), 0.772613), "encoder.embeds.1.0.bias": ((6,), -0.320468),
              "encoder.embeds.2.0.weight": ((6, 2), 1.524556), "encoder.embeds.2.0.bias": ((6,), -0.025075),
              "head.0.weight": ((8, 18), 1.872113), "head.0.bias": ((8,), -0.126057),
              "head.2.weight": ((8, 8), -0.473418), "head.2.bias": ((8,), -0.902606),
              "head.4.weight": ((5, 8), -0.967277), "head.4.bias": ((5,), 0.343138)}
    for module, want in ((c, want_c), (a, want_a)):
        sd = module.state_dict()
        assert list(sd) == list(want)
        for k, (shape, total) in want.items():
            assert tuple(sd[k].shape) == shape, k
            assert float(sd[k].double().sum()) == pytest.approx(total, abs=2e-6), k


@pytest.mark.parametrize("m", [1, 2, 10])
def test_critic_without_group_embeddings_fast_and_vectorised_paths_agree(m):
    """embed_dim=0 (the trunk reads the standardised state): the CPU member loop, the vectorised path and
    plain per-member matmuls give the same values and gradients."""
    from rlmtf.core.nets import CriticEnsemble, StateEncoder

    torch.manual_seed(0)
    dims = [5, 7, 3]
    crit = CriticEnsemble(dims, 4, m, (16, 8), embed_dim=0)
    assert not list(crit.embeds) and crit.layers[0].weight.shape[1] == sum(dims) + 4
    crit.set_normalisation(torch.randn(15), torch.rand(15) + 0.5)
    s, a = torch.randn(33, 15), torch.randn(33, 4, requires_grad=True)
    fast = crit(s, a)
    slow = crit._forward_vectorised(s, a)
    ref = torch.stack([crit.member(i, s, a) for i in range(m)])
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slow, ref, rtol=1e-5, atol=1e-6)
    g_fast, = torch.autograd.grad(fast.sum(), a)
    g_ref, = torch.autograd.grad(ref.sum(), a)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-6)
    enc = StateEncoder(dims, 0)
    enc.set_normalisation(torch.zeros(15), torch.ones(15) * 2)
    assert enc.out_dim == 15
    torch.testing.assert_close(enc(s), (s / 2).clamp(-5, 5))
