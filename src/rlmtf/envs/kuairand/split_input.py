"""Fast evaluation of the fitted KuaiRand networks on many user-item pairs: the first linear layer's user and
item parts precomputed once per user and per item (standardisation is per column), so a pair costs one
gather-add plus the rest of the network."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rlmtf.core.nets import standardise
from rlmtf.envs.kuairand.features import FeatureBuilder

_PAIR_CHUNK = 8192

_USER_GROUPS, _ITEM_GROUPS, _PAIR_GROUPS = ("user", "user_stats"), ("item", "item_stats"), ("cross", "pre")


def flatten(mods) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in mods:
        out += flatten(m) if isinstance(m, nn.Sequential) else [m]
    return out


class SplitInput:
    """A network ``rest(first(standardise(x)))`` evaluated with the first linear layer's user and item parts
    precomputed per user and per item: standardisation is per column, so ``first(std(x)) = A_user[u] +
    A_item[i] + W_pair std(x_pair)``. Equal to the network up to float rounding; far cheaper per pair."""

    def __init__(self, builder: FeatureBuilder, groups: tuple[str, ...], norm: nn.Module, first: nn.Linear,
                 rest: list[nn.Module], user_blocks: dict[str, np.ndarray], item_blocks: dict[str, np.ndarray]):
        self.builder, self.rest = builder, list(rest)
        self._bufs: dict[int, torch.Tensor] = {}
        self.pair_groups = tuple(g for g in groups if g in _PAIR_GROUPS)
        cols = np.cumsum([0, *(len(builder.names(g)) for g in groups)])
        span = {g: slice(int(cols[j]), int(cols[j + 1])) for j, g in enumerate(groups)}
        w, mean, std = first.weight.detach(), norm.mean, norm.std

        def part(names: tuple[str, ...], blocks: dict[str, np.ndarray], n: int) -> torch.Tensor:
            acc = torch.zeros(n, w.shape[0])
            for g in names:
                if g in span:
                    s = span[g]
                    x = standardise(torch.as_tensor(blocks[g], dtype=torch.float32), mean[s], std[s])
                    acc += x @ w[:, s].T
            return acc

        with torch.no_grad():
            self.a_user = part(_USER_GROUPS, user_blocks, builder.n_users).contiguous()
            self.a_item = (part(_ITEM_GROUPS, item_blocks, builder.n_items) + first.bias.detach()).contiguous()
            if self.pair_groups:
                idx = np.concatenate([np.arange(span[g].start, span[g].stop) for g in self.pair_groups])
                t = torch.as_tensor(idx)
                self.w_pair, self.pair_mean, self.pair_std = w[:, t].T.contiguous(), mean[t], std[t]
        unknown = set(groups) - set(_USER_GROUPS + _ITEM_GROUPS + _PAIR_GROUPS)
        if unknown:
            raise ValueError(f"feature groups {sorted(unknown)} are not known to the environment")

    @torch.no_grad()
    def __call__(self, u: np.ndarray, i: np.ndarray) -> torch.Tensor:
        """u (B,) user rows, i (B, M) item rows -> (B * M, out) activations of the network."""
        b, m = i.shape
        out = torch.empty(b * m, self.out_dim)
        step = max(1, _PAIR_CHUNK // max(m, 1))  # requests per chunk: activations stay in cache
        for s in range(0, b, step):
            self._chunk(u[s:s + step], i[s:s + step], out[s * m:min(s + step, b) * m])
        return out

    @property
    def out_dim(self) -> int:
        return [mod for mod in self.rest if isinstance(mod, nn.Linear)][-1].out_features \
            if any(isinstance(mod, nn.Linear) for mod in self.rest) else self.a_item.shape[1]

    def _buffer(self, j: int, rows: int, cols: int) -> torch.Tensor:
        """Scratch (rows, cols) reused across calls: fresh large tensors cost page faults on every request."""
        buf = self._bufs.get(j)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = self._bufs[j] = torch.empty(max(rows, _PAIR_CHUNK), cols)
        return buf[:rows]

    def _chunk(self, u: np.ndarray, i: np.ndarray, out: torch.Tensor) -> None:
        b, m = i.shape
        n = b * m
        x = self._buffer(-1, n, self.a_item.shape[1])
        torch.index_select(self.a_item, 0, torch.as_tensor(i.reshape(-1)), out=x)
        x.view(b, m, -1).add_(self.a_user[torch.as_tensor(u)][:, None])
        if self.pair_groups:
            g = self.builder.groups(np.repeat(u, m), i.reshape(-1), self.pair_groups)
            p = torch.as_tensor(np.concatenate([g[k] for k in self.pair_groups], 1))
            x.add_(standardise(p, self.pair_mean, self.pair_std) @ self.w_pair)
        for j, mod in enumerate(self.rest):
            if isinstance(mod, nn.ReLU):
                x.relu_()
            elif isinstance(mod, nn.Sigmoid):
                x.sigmoid_()
            elif isinstance(mod, nn.Linear):
                y = self._buffer(j, n, mod.out_features)
                torch.addmm(mod.bias, x, mod.weight.T, out=y)
                x = y
            else:
                x = mod(x)
        out.copy_(x)
