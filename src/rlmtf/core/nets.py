"""Networks shared by the RL algorithms: a state encoder, an actor (and the residual item-level actor of
Enhanced-State RL's ``residual`` variant), and a vectorised critic ensemble.

The state is a flat float vector made of named feature groups (see :mod:`rlmtf.core.schema`): for the
user state ``user_profile ++ user_history ++ context``; for the enhanced state those plus
``item_features ++ mtl_scores``. The encoder standardises the input with statistics of the training
data, embeds each group with its own small MLP and concatenates the embeddings: the profile, the
behaviour-history encoding (recent categories and engagement rates that the history already pools),
the context, the item and its MTL scores each get a representation of their own before the trunk.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

#: Standardised inputs are clipped to [-CLIP, CLIP] and stds floored at STD_FLOOR: a feature that is
#: (nearly) constant in the training data, such as the session index of a dataset of first sessions,
#: must not turn into a huge input when a policy serves states beyond the data.
CLIP = 5.0
STD_FLOOR = 1e-2
#: On the CPU, a critic ensemble of up to this many members with a shared 2-D input runs member by member
#: with plain 2-D matmuls (``CriticEnsemble._forward_members``); larger ensembles, other devices and
#: per-member (m, B, .) inputs take the vectorised ``baddbmm`` path (``CriticEnsemble._forward_vectorised``).
LOOP_MEMBERS = 16
#: That CPU path takes large batches in equal row chunks of at most this many activations each (rows x
#: widest trunk layer; 2^18 floats = 1 MiB, 1,024 rows of a 256-wide trunk), so that a layer's output is
#: still in the core's cache when the next op reads it (8-12% faster per forward-backward at 2,560 rows,
#: CQL's out-of-distribution batches, on the project's 2-core CPU with 1 MiB of L2 per core).
CHUNK_ACTIVATIONS = 1 << 18


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """((x - mean) / std) clipped to [-CLIP, CLIP]."""
    if torch.is_grad_enabled() and (x.requires_grad or mean.requires_grad or std.requires_grad):
        return ((x - mean) / std).clamp(-CLIP, CLIP)
    return torch.sub(x, mean).div_(std).clamp_(-CLIP, CLIP)  # the same values, in one buffer instead of three


def _check_embed_dim(embed_dim: int) -> None:
    if embed_dim < 0:
        raise ValueError(f"embed_dim must be >= 0 (0: no group embeddings), got {embed_dim}")


class StateEncoder(nn.Module):
    """Standardise, embed each feature group, concatenate: (..., D) -> (..., out_dim).

    ``embed_dim=0``: no group embeddings; the standardised state goes to the trunk as it is (the plain
    network of d3rlpy and most RL libraries), ``out_dim = D``."""

    def __init__(self, group_dims: list[int], embed_dim: int = 32):
        super().__init__()
        _check_embed_dim(embed_dim)
        self.group_dims = list(group_dims)
        d = sum(group_dims)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.embeds = nn.ModuleList(nn.Sequential(nn.Linear(g, embed_dim), nn.ReLU()) for g in group_dims
                                    if embed_dim > 0)
        self.out_dim = embed_dim * len(group_dims) if embed_dim > 0 else d

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=STD_FLOOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = standardise(x, self.mean, self.std)
        if not self.embeds:
            return x
        # every group's Linear + ReLU at once, as one Linear with the block-diagonal of the group weights:
        # the same function as ``reference_forward`` (the zero blocks add exact zeros), with one matmul and
        # a handful of autograd nodes instead of G Linears, G ReLUs, a split and a cat
        weight = torch.block_diag(*[e[0].weight for e in self.embeds])  # (G*E, D)
        bias = torch.cat([e[0].bias for e in self.embeds])  # (G*E,)
        return F.linear(x, weight, bias).relu_()

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` in its plain form (a Linear + ReLU per group, then cat), for tests."""
        x = standardise(x, self.mean, self.std)
        if not self.embeds:
            return x
        parts = torch.split(x, self.group_dims, dim=-1)
        return torch.cat([e(p) for e, p in zip(self.embeds, parts, strict=True)], -1)


def mlp(sizes: list[int], out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))  # on the Linear's fresh output: one buffer less per layer
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """mu(s) -> tanh -> [-1, 1]^A."""

    def __init__(self, group_dims: list[int], action_dim: int, hidden: tuple[int, ...] = (256, 256),
                 embed_dim: int = 32):
        super().__init__()
        self.encoder = StateEncoder(group_dims, embed_dim)
        self.head = mlp([self.encoder.out_dim, *hidden, action_dim], nn.Tanh())

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(state))


class ResidualActor(nn.Module):
    """An item-level actor whose action is a shared user-level action plus a bounded per-item correction:
    mu(s_tj) = clip(u(s_t) + scale * tanh(c(h(s_t), x_j)), -1, 1), where the first ``n_user_groups`` groups
    of the enhanced state are the user state s_t, h its trunk's last hidden layer, u = tanh(linear(h)) the
    shared action and x_j the item's own groups (features, MTL scores). Every item of a request gets the
    same u; no item's action can leave u by more than ``scale`` per dimension.

    ``forward`` takes flat enhanced states (S, D) like :class:`Actor`; ``forward_list`` takes a request's
    candidates (B, N, D), whose user groups are equal along N, and runs the user trunk once per request."""

    def __init__(self, group_dims: list[int], n_user_groups: int, action_dim: int, scale: float,
                 hidden: tuple[int, ...] = (256, 256), item_hidden: tuple[int, ...] = (64,), embed_dim: int = 32):
        super().__init__()
        if not 0 < n_user_groups < len(group_dims):
            raise ValueError(f"n_user_groups must be in [1, {len(group_dims) - 1}], got {n_user_groups}")
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.encoder = StateEncoder(group_dims, embed_dim)
        self.n_user_groups = n_user_groups
        self._bounds = [0, *itertools.accumulate(group_dims)]  # each group's column range in the state
        per_group = [embed_dim] * len(group_dims) if embed_dim > 0 else list(group_dims)
        self.user_out = sum(per_group[:n_user_groups])
        self.trunk = nn.Sequential(*mlp([self.user_out, *hidden]), nn.ReLU())
        self.shared = nn.Sequential(nn.Linear(hidden[-1], action_dim), nn.Tanh())
        self.correction = mlp([hidden[-1] + self.encoder.out_dim - self.user_out, *item_hidden, action_dim],
                              nn.Tanh())
        self.scale = float(scale)

    def parts(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shared action, correction) for flat states (S, D): (S, A) each, the correction in [-scale, scale]."""
        z = self.encoder(state)
        h = self.trunk(z[..., :self.user_out])
        return self.shared(h), self.scale * self.correction(torch.cat([h, z[..., self.user_out:]], -1))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        shared, corr = self.parts(state)
        return (shared + corr).clamp(-1.0, 1.0)

    def forward_list(self, state: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, A): the same function as ``forward`` on the flattened states, computed for
        serving with as few ops as the function allows: the user groups are encoded and the trunk run once per
        request (from its first candidate); each path's standardisation is folded into its group embeddings
        (the clip moved to the raw inputs: clamp(x, mean - CLIP std, mean + CLIP std), the same values), the
        embeddings of a path run as one block-diagonal matmul, and the correction's first layer is split into
        its user part (once per request, folded into the bias) and its item part (per candidate). The folded
        weights are cached until a parameter or the normalisation changes (:meth:`_serving_weights`)."""
        if not self.encoder.embeds:  # no embeddings to fold into: the plain function
            b, n, d = state.shape
            return self.forward(state.reshape(b * n, d)).reshape(b, n, -1)
        ud = self._bounds[self.n_user_groups]
        return self.forward_user_items(state[:, 0, :ud], state[..., ud:])

    def forward_user_items(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_list` from a request's user state (B, D_user) and its candidates' own groups
        (B, N, D_item), without building the (B, N, D) enhanced states (the serving path)."""
        if not self.encoder.embeds:
            b, n, _ = items.shape
            return self.forward_list(torch.cat([user[:, None, :].expand(b, n, -1), items], -1))
        w = self._serving_weights()
        x = torch.addmm(w["user_b"], torch.clamp(user, w["user_lo"], w["user_hi"]), w["user_w"]).relu_()
        for weight, bias in w["trunk"]:
            x = torch.addmm(bias, x, weight).relu_()
        h = x  # (B, H)
        shared = torch.addmm(w["shared"][1], h, w["shared"][0]).tanh_()  # (B, A)
        head = w["head"]
        bias = torch.addmm(head[0][1], h, w["head_user"])  # (B, k): the user part of the correction's first layer
        items = torch.clamp(items, w["item_lo"], w["item_hi"])  # (B, N, D_item)
        if items.shape[0] == 1:  # one request (serving): plain 2-D matmuls
            z = torch.addmm(w["item_b"], items[0], w["item_w"]).relu_()
            x = torch.addmm(bias[0], z, head[0][0])[None]
        else:
            z = torch.matmul(items, w["item_w"]).add_(w["item_b"]).relu_()
            x = torch.baddbmm(bias[:, None, :], z, head[0][0].expand(z.shape[0], -1, -1))
        for weight, b_ in head[1:]:  # every layer but the last is followed by a ReLU, the last by the tanh
            x = torch.matmul(x.relu_(), weight).add_(b_)
        return x.tanh_().mul_(self.scale).add_(shared[:, None, :]).clamp_(-1.0, 1.0)

    def _serving_weights(self) -> dict:
        """The folded serving weights of :meth:`forward_list` (transposed for ``addmm``), rebuilt when any
        parameter or normalisation buffer has been written since (their storage and version counters)."""
        if getattr(self, "_serving_params", None) is None:  # Parameters stay the same objects (``.to`` swaps
            self._serving_params = list(self.parameters())  # their data, ``load_state_dict`` copies into them)
        enc = self.encoder  # buffers are looked up each time: ``.to`` replaces them
        key = [(p.data_ptr(), p._version) for p in self._serving_params]
        key += [(enc.mean.data_ptr(), enc.mean._version), (enc.std.data_ptr(), enc.std._version)]
        cached = getattr(self, "_serving_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        g, bounds = self.n_user_groups, self._bounds
        ud = bounds[g]
        with torch.no_grad():
            def fold(lo: int, hi: int, cols: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
                weight = torch.block_diag(*[enc.embeds[k][0].weight for k in range(lo, hi)])  # (out, in)
                bias = torch.cat([enc.embeds[k][0].bias for k in range(lo, hi)])
                mean, std = enc.mean[cols], enc.std[cols]
                folded = weight / std
                return (folded.t().contiguous(), bias - folded @ mean, mean - CLIP * std, mean + CLIP * std)

            linears = [m for m in self.trunk.modules() if isinstance(m, nn.Linear)]
            head = [m for m in self.correction if isinstance(m, nn.Linear)]
            hid = linears[-1].out_features
            uw, ub, ulo, uhi = fold(0, g, slice(0, ud))
            iw, ib, ilo, ihi = fold(g, len(enc.group_dims), slice(ud, None))
            first = head[0].weight
            w = {"user_w": uw, "user_b": ub, "user_lo": ulo, "user_hi": uhi,
                 "item_w": iw, "item_b": ib, "item_lo": ilo, "item_hi": ihi,
                 "trunk": [(m.weight.t().contiguous(), m.bias.clone()) for m in linears],
                 "shared": (self.shared[0].weight.t().contiguous(), self.shared[0].bias.clone()),
                 "head_user": first[:, :hid].t().contiguous(),
                 "head": [(first[:, hid:].t().contiguous(), head[0].bias.clone())]
                 + [(m.weight.t().contiguous(), m.bias.clone()) for m in head[1:]]}
        self._serving_cache = (key, w)
        return w


class VectorizedLinear(nn.Module):
    """m independent linear layers applied at once: x (m, B, in) -> (m, B, out), weights (m, in, out)."""

    def __init__(self, in_features: int, out_features: int, ensemble_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the same scheme as nn.Linear, drawn independently for every member
        for i in range(self.weight.shape[0]):
            nn.init.kaiming_uniform_(self.weight[i].T, a=math.sqrt(5))  # (out, in) view, as nn.Linear
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)  # (m, B, out)


class CriticEnsemble(nn.Module):
    """m critics Q^i(s, a) as one vectorised network (no Python loop over members).

    Input: state (B, D) and action (B, A), shared by all members, or (m, B, .) per member.
    Output: (m, B). Each member has its own encoder weights too (vectorised the same way).

    Two computations of the same function from the same parameters: ``_forward_vectorised`` (``baddbmm``
    over (m, B, .), made for the GPU) and, on the CPU with a shared 2-D input and m <= ``LOOP_MEMBERS``,
    ``_forward_members`` (in row chunks of ``CHUNK_ACTIVATIONS``), which is faster there (see its docstring;
    ``tests/test_nets_speed_equivalence.py`` checks both against plain per-member matmuls, outputs and
    gradients).
    """

    def __init__(self, group_dims: list[int], action_dim: int, ensemble_size: int = 10,
                 hidden: tuple[int, ...] = (256, 256), embed_dim: int = 32):
        super().__init__()
        _check_embed_dim(embed_dim)
        self.m = ensemble_size
        self.group_dims = list(group_dims)
        d = sum(group_dims)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.embeds = nn.ModuleList(VectorizedLinear(g, embed_dim, ensemble_size) for g in group_dims
                                    if embed_dim > 0)  # embed_dim 0: the trunk reads the standardised state
        sizes = [(embed_dim * len(group_dims) if embed_dim > 0 else d) + action_dim, *hidden, 1]
        self.layers = nn.ModuleList(VectorizedLinear(sizes[i], sizes[i + 1], ensemble_size)
                                    for i in range(len(sizes) - 1))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=STD_FLOOR))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if state.dim() == 2 and action.dim() == 2 and state.device.type == "cpu" and self.m <= LOOP_MEMBERS:
            bsz = state.shape[0]
            rows = max(64, CHUNK_ACTIVATIONS // max(layer.weight.shape[-1] for layer in self.layers))
            if bsz <= rows:
                return self._forward_members(state, action)
            size = -(-bsz // -(-bsz // rows))  # equal chunks of at most `rows` rows
            return torch.cat([self._forward_members(s, a) for s, a in
                              zip(state.split(size), action.split(size), strict=True)], 1)
        return self._forward_vectorised(state, action)

    def _members(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(m, ...) -> the m members' (...) views: ``squeeze`` for one member (a free view in backward too),
        else ``unbind`` (its backward is one stack, where m ``select``s would zero-fill m full gradients)."""
        return (t.squeeze(0),) if self.m == 1 else t.unbind(0)

    def _forward_members(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The CPU form for a shared input, state (B, D) and action (B, A): (m, B).

        - the group embeddings of all members are one matmul, (B, D) @ (D, m*G*E), against a weight that
          is block-diagonal per member (``torch.block_diag`` of the same parameters), instead of G
          ``baddbmm``s over an expanded (m, B, D) input, G ReLUs, a split and a cat;
        - each member's trunk runs on plain 2-D ``addmm``s: on the CPU ``bmm`` has no gain over a loop for
          m <= a few, and its 1-column output layer (and that layer's gradients) ran ~3x slower than
          ``addmm``s;
        - when only the action needs a gradient (an actor's loss through frozen critics), the first layer
          is split into its embedding and action parts (h = e @ W_e + a @ W_a + b), so that the gradient
          reaches the action through a (B, A) matmul instead of one over the whole concatenated input.
        """
        m, bsz = self.m, state.shape[0]
        x = standardise(state, self.mean, self.std)  # (B, D)
        if self.embeds:
            ws = [self._members(e.weight) for e in self.embeds]  # per group: m x (g, E)
            if m == 1:
                w_emb = torch.block_diag(*[w[0] for w in ws])  # (D, G*E)
            else:
                w_emb = torch.cat([torch.block_diag(*[w[i] for w in ws]) for i in range(m)], 1)  # (D, m*G*E)
            b_emb = torch.cat([e.bias for e in self.embeds], 2).reshape(-1)  # (m*G*E,): member i, group g, unit e
            ge = w_emb.shape[1] // m
            h_emb = torch.addmm(b_emb, x, w_emb).relu_()  # (B, m*G*E)
            h_emb = (h_emb,) if m == 1 else h_emb.view(bsz, m, ge).unbind(1)  # m x (B, G*E)
        else:  # no group embeddings: every member's trunk reads the standardised state
            ge, h_emb = x.shape[1], (x,) * m
        first = self.layers[0]
        split = action.requires_grad and not first.weight.requires_grad
        if split:
            w_e, w_a = (self._members(w) for w in first.weight.split([ge, action.shape[1]], 1))
        layers = [(self._members(layer.weight), self._members(layer.bias.squeeze(1))) for layer in self.layers]
        qs = []
        for i in range(m):
            w0, b0 = layers[0][0][i], layers[0][1][i]
            if split:
                h = torch.addmm(torch.addmm(b0, action, w_a[i]), h_emb[i], w_e[i])
            else:
                h = torch.addmm(b0, torch.cat([h_emb[i], action], 1), w0)  # (B, out)
            for w, b in layers[1:]:
                h = torch.addmm(b[i], h.relu_(), w[i])
            qs.append(h.view(bsz))
        return qs[0].view(1, bsz) if m == 1 else torch.stack(qs)  # (m, B)

    def _forward_vectorised(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The vectorised form (any device; shared or per-member inputs): (m, B)."""
        x = standardise(state, self.mean, self.std)
        if x.dim() == 2:  # shared input: (B, D) -> (m, B, D) without copying
            x = x.unsqueeze(0).expand(self.m, -1, -1)
        if action.dim() == 2:
            action = action.unsqueeze(0).expand(self.m, -1, -1)
        parts = torch.split(x, self.group_dims, dim=-1)
        feats = [torch.relu(e(p)) for e, p in zip(self.embeds, parts, strict=True)] if self.embeds else [x]
        h = torch.cat([*feats, action], -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)  # (m, B, out)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)  # (m, B)

    def member(self, i: int, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q^i alone, computed with ordinary matmuls (for testing the other paths): (B,)."""
        x = standardise(state, self.mean, self.std)
        parts = torch.split(x, self.group_dims, dim=-1)
        feats = ([torch.relu(p @ e.weight[i] + e.bias[i]) for e, p in zip(self.embeds, parts, strict=True)]
                 if self.embeds else [x])
        h = torch.cat([*feats, action], -1)
        for j, layer in enumerate(self.layers):
            h = h @ layer.weight[i] + layer.bias[i]
            if j < len(self.layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)
