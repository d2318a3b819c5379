"""Training throughput of Enhanced-State RL and IntegratedRL-MTF at the paper's size.

One update = a critic step and an actor step on a batch of 256 requests x 5 items (1,280 enhanced
states), m = 10 critics with hidden layers 256 x 256. The vectorised ensemble (weights [m, in, out],
batched matmul) is timed beside a loop over 10 separate critic networks of the same architecture,
in the same run, on the same batch.

    python benchmarks/bench_train.py [--steps 20] [--hidden 256,256] [--critics 10] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn

from rlmtf.algos.esrl import EnhancedStateRL, EnsembleActorCritic, ESRLConfig
from rlmtf.algos.integrated import IntegratedRL
from rlmtf.core.nets import STD_FLOOR, mlp, standardise
from rlmtf.core.provenance import git_commit
from rlmtf.data.transitions import RequestBatch
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.world import feature_spec


class LoopCritics(nn.Module):
    """The same m critics as separate networks, evaluated by a Python loop (the slow reference)."""

    def __init__(self, group_dims: list[int], action_dim: int, m: int, hidden: tuple[int, ...], embed_dim: int):
        super().__init__()
        self.group_dims = group_dims
        d = sum(group_dims)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.members = nn.ModuleList()
        for _ in range(m):
            embeds = nn.ModuleList(nn.Linear(g, embed_dim) for g in group_dims)
            trunk = mlp([embed_dim * len(group_dims) + action_dim, *hidden, 1])
            self.members.append(nn.ModuleDict({"embeds": embeds, "trunk": trunk}))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=STD_FLOOR))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = standardise(state, self.mean, self.std)
        parts = torch.split(x, self.group_dims, dim=-1)
        out = []
        for mem in self.members:
            h = torch.cat([torch.relu(e(p)) for e, p in zip(mem["embeds"], parts, strict=True)] + [action], -1)
            out.append(mem["trunk"](h).squeeze(-1))
        return torch.stack(out)


def random_batch(spec, b: int, l: int, rng: np.random.Generator) -> RequestBatch:
    a = spec.action_dim

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    mu = np.clip(f(b, l, a) * 0.3, -1, 1)
    box = np.full((b, l, a), 0.15, np.float32)
    return RequestBatch(user_state=f(b, spec.user_state_dim), enhanced_state=f(b, l, spec.enhanced_state_dim),
                        action=np.clip(mu + 0.1 * f(b, l, a), -1, 1), mu_bp=mu, lower_b=-box, upper_b=box,
                        item_reward=np.abs(f(b, l)), reward=np.abs(f(b)),
                        done=(rng.random(b) < 0.15).astype(np.float32), gap=np.zeros(b, np.float32),
                        next_user_state=f(b, spec.user_state_dim), next_enhanced_state=f(b, l, spec.enhanced_state_dim),
                        next_mu_bp=mu, next_lower_b=-box, next_upper_b=box)


def time_steps(algo: EnsembleActorCritic, batch: RequestBatch, steps: int) -> float:
    algo.update(batch)  # warm-up
    if algo.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        algo.update(batch)
    if algo.device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--hidden", default="256,256")
    ap.add_argument("--critics", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    spec = feature_spec(SimConfig())
    cfg = ESRLConfig(hidden=hidden, ensemble_size=args.critics)
    batch = random_batch(spec, cfg.batch_size, 5, np.random.default_rng(0))
    rows = []
    for cls in (EnhancedStateRL, IntegratedRL):
        algo = cls(spec, cfg, device=args.device)
        rows.append({"algo": cls.kind, "critics": "vectorised", "steps_per_s": time_steps(algo, batch, args.steps)})
        if not args.skip_loop:
            loop = cls(spec, cfg, device=args.device)
            dims = cls.group_dims(spec)
            loop.critic = LoopCritics(dims, spec.action_dim, args.critics, hidden, cfg.embed_dim).to(loop.device)
            loop.critic_target = LoopCritics(dims, spec.action_dim, args.critics, hidden,
                                             cfg.embed_dim).to(loop.device).requires_grad_(False)
            loop.critic_target.load_state_dict(loop.critic.state_dict())
            loop.critic_opt = torch.optim.Adam(loop.critic.parameters(), lr=cfg.critic_lr)
            rows.append({"algo": cls.kind, "critics": "python loop",
                         "steps_per_s": time_steps(loop, batch, args.steps)})
    out = {"batch": f"{cfg.batch_size} requests x 5 items", "critics": args.critics, "hidden": list(hidden),
           "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "commit": git_commit(), "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"batch {out['batch']}, {args.critics} critics, hidden {hidden}, device {args.device}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    for r in rows:
        print(f"  {r['algo']:<11} {r['critics']:<11} {r['steps_per_s']:8.2f} steps/s")
    by = {(r["algo"], r["critics"]): r["steps_per_s"] for r in rows}
    for algo in ("esrl", "integrated"):
        if (algo, "python loop") in by:
            print(f"  {algo}: vectorised / loop = {by[(algo, 'vectorised')] / by[(algo, 'python loop')]:.2f}x")


if __name__ == "__main__":
    main()
