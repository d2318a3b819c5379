"""Networks shared by the RL algorithms: a state encoder, an actor, and a vectorised critic ensemble.

The state is a flat float vector made of named feature groups (see :mod:`rlmtf.schema`): for the
user state ``user_profile ++ user_history ++ context``; for the enhanced state those plus
``item_features ++ mtl_scores``. The encoder standardises the input with statistics of the training
data, embeds each group with its own small MLP and concatenates the embeddings: the profile, the
behaviour-history encoding (recent categories and engagement rates that the history already pools),
the context, the item and its MTL scores each get a representation of their own before the trunk.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Standardised inputs are clipped to [-CLIP, CLIP] and stds floored at STD_FLOOR: a feature that is
#: (nearly) constant in the training data, such as the session index of a dataset of first sessions,
#: must not turn into a huge input when a policy serves states beyond the data.
CLIP = 5.0
STD_FLOOR = 1e-2


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((x - mean) / std).clamp(-CLIP, CLIP)


class StateEncoder(nn.Module):
    """Standardise, embed each feature group, concatenate: (..., D) -> (..., out_dim)."""

    def __init__(self, group_dims: list[int], embed_dim: int = 32):
        super().__init__()
        self.group_dims = list(group_dims)
        d = sum(group_dims)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.embeds = nn.ModuleList(nn.Sequential(nn.Linear(g, embed_dim), nn.ReLU()) for g in group_dims)
        self.out_dim = embed_dim * len(group_dims)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=STD_FLOOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = standardise(x, self.mean, self.std)
        parts = torch.split(x, self.group_dims, dim=-1)
        return torch.cat([e(p) for e, p in zip(self.embeds, parts, strict=True)], -1)


def mlp(sizes: list[int], out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
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
    """

    def __init__(self, group_dims: list[int], action_dim: int, ensemble_size: int = 10,
                 hidden: tuple[int, ...] = (256, 256), embed_dim: int = 32):
        super().__init__()
        self.m = ensemble_size
        self.group_dims = list(group_dims)
        d = sum(group_dims)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.embeds = nn.ModuleList(VectorizedLinear(g, embed_dim, ensemble_size) for g in group_dims)
        sizes = [embed_dim * len(group_dims) + action_dim, *hidden, 1]
        self.layers = nn.ModuleList(VectorizedLinear(sizes[i], sizes[i + 1], ensemble_size)
                                    for i in range(len(sizes) - 1))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=STD_FLOOR))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = standardise(state, self.mean, self.std)
        if x.dim() == 2:  # shared input: (B, D) -> (m, B, D) without copying
            x = x.unsqueeze(0).expand(self.m, -1, -1)
        if action.dim() == 2:
            action = action.unsqueeze(0).expand(self.m, -1, -1)
        parts = torch.split(x, self.group_dims, dim=-1)
        h = torch.cat([torch.relu(e(p)) for e, p in zip(self.embeds, parts, strict=True)] + [action], -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)  # (m, B, out)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)  # (m, B)

    def member(self, i: int, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q^i alone, computed with ordinary matmuls (for testing the vectorised path): (B,)."""
        x = standardise(state, self.mean, self.std)
        parts = torch.split(x, self.group_dims, dim=-1)
        h = torch.cat([torch.relu(p @ e.weight[i] + e.bias[i]) for e, p in zip(self.embeds, parts, strict=True)]
                      + [action], -1)
        for j, layer in enumerate(self.layers):
            h = h @ layer.weight[i] + layer.bias[i]
            if j < len(self.layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)
