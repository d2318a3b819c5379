"""Our DDPG, CQL+SAC, BCQ and IQL beside d3rlpy's, trained on the same logs, in the same online A/B.

One exploration data set on the default simulator (the hand-set baseline fusion with uniform noise per
request in a box of +-``--box`` around it), one training split of it (ours: ``rlmtf.train.loop.train``
with its 10% validation sessions held out; d3rlpy: an ``MDPDataset`` of the same 90% of sessions as
user-level transitions: user_state, the request's action, the request reward r_t, terminal = the
session's last request), the same networks (``--hidden``, d3rlpy's ``VectorEncoderFactory``), batch,
gamma, steps and standardised states on both sides (d3rlpy: ``StandardObservationScaler`` with the
training-set statistics; our embeddings are off, ``embed_dim`` 0, which is d3rlpy's architecture, so the
networks are the same size). Shared settings (tau, sampled actions) are set equal; the rest of each
side's hyper-parameters are its own defaults (ours: the algorithm configs; d3rlpy: its configs, e.g.
CQL's Lagrangian weight and BCQ's 0.05 perturbation).

Every trained policy, each d3rlpy one wrapped as a user-level :class:`rlmtf.policy.base.Policy`, plays
one simulated A/B against the hand-set baseline (common random numbers; users 0..U-1, a seed the data
never saw). Training speed (gradient steps per second, the wall time between the first and the last
step of the training loop of each side) is measured in the same run, one thread.

The diagnostics per policy (``actions``) are taken on 4,096 training states: mean |a - mu_bp|, the
share of action dimensions outside the exploration box and the share at the action space's edge.

    python benchmarks/peer_d3rlpy.py --out runs/peer_d3rlpy [--seed 0] [--sides ours d3rlpy]
                                     [--variants after before] [--algos ddpg cql_sac bcq iql]
                                     [--set bcq.actor_lr=1e-3 ...]

``--set ALGO.FIELD=VALUE`` adds an arm of ours with that config field changed (a what-if beside the
default, labelled with the change); repeat it to change several fields of one arm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlmtf.algos import algorithm_class
from rlmtf.core.provenance import file_logger, git_commit
from rlmtf.data.io import read_logs
from rlmtf.data.transitions import Transitions, build_transitions
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.eval.online import online_ab
from rlmtf.policy.base import Policy, RequestObs
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, train

#: our algorithm -> d3rlpy's counterpart
PAIRS = {"ddpg": "ddpg", "cql_sac": "cql", "bcq": "bcq", "iql": "iql"}
METRICS = ("uvc", "udt", "reward", "sessions")
#: our configs before the fixes of the logged-data commit (``--variants before``): the same code with the
#: fixes turned off reproduces the earlier algorithms draw for draw
BEFORE = {"ddpg": {"data_action_range": False, "target_noise": 0.0},
          "cql_sac": {"policy_lr": None, "cql_alpha_lr": 0.0, "alpha_lr": 3e-4},
          "bcq": {"rho": 0.15, "n_act_samples": 10, "actor_lr": 3e-4, "critic_lr": 3e-4}, "iql": {}}


class D3Policy(Policy):
    """A trained d3rlpy algorithm as a user-level fusion policy: its greedy action on the user state."""

    level = "user"

    def __init__(self, algo, name: str):
        self.algo, self.name = algo, name

    def act(self, obs: RequestObs) -> np.ndarray:
        return np.clip(self.algo.predict(obs.user_state()), -1.0, 1.0).astype(np.float32)


def d3_dataset(t: Transitions):
    """User-level transitions of ``t`` (sorted by session and t) as a d3rlpy MDPDataset."""
    import d3rlpy

    return d3rlpy.dataset.MDPDataset(observations=t.user_state.astype(np.float32),
                                     actions=t.action[:, 0].astype(np.float32),
                                     rewards=t.reward.astype(np.float32).reshape(-1, 1),
                                     terminals=t.done.astype(np.float32), timeouts=np.zeros(len(t.done), np.float32))


def d3_config(name: str, a: argparse.Namespace, mean: np.ndarray, std: np.ndarray):
    import d3rlpy as d3

    enc = d3.models.VectorEncoderFactory(hidden_units=list(a.hidden))
    common = {"batch_size": a.batch, "gamma": a.gamma,
              "observation_scaler": d3.preprocessing.StandardObservationScaler(mean=mean, std=std)}
    if name == "ddpg":
        return d3.algos.DDPGConfig(actor_encoder_factory=enc, critic_encoder_factory=enc, **common)
    if name == "cql":
        return d3.algos.CQLConfig(actor_encoder_factory=enc, critic_encoder_factory=enc, n_action_samples=10,
                                  **common)
    if name == "bcq":
        return d3.algos.BCQConfig(actor_encoder_factory=enc, critic_encoder_factory=enc, imitator_encoder_factory=enc,
                                  **common)
    if name == "iql":
        return d3.algos.IQLConfig(actor_encoder_factory=enc, critic_encoder_factory=enc, value_encoder_factory=enc,
                                  **common)
    raise ValueError(name)


def train_d3(name: str, t: Transitions, a: argparse.Namespace, out: Path) -> tuple[D3Policy, float]:
    """Train d3rlpy's ``name`` for ``a.steps`` steps; the policy and its steps per second."""
    import d3rlpy

    d3rlpy.seed(a.seed)
    mean, std = t.user_state.mean(0), t.user_state.std(0)
    algo = d3_config(name, a, mean, std).create(device="cpu:0")
    stamps: list[float] = []
    algo.fit(d3_dataset(t), n_steps=a.steps, n_steps_per_epoch=a.steps, show_progress=False, save_interval=10**9,
             logger_adapter=d3rlpy.logging.NoopAdapterFactory(), experiment_name=str(out / name),
             callback=lambda *_: stamps.append(time.perf_counter()))
    return D3Policy(algo, f"d3rlpy-{name}"), (len(stamps) - 1) / (stamps[-1] - stamps[0])


def overrides(items: list[str]) -> dict[str, dict[str, float]]:
    """``["bcq.actor_lr=1e-3", ...]`` -> {"bcq": {"actor_lr": 0.001}, ...} (values parsed as numbers)."""
    out: dict[str, dict[str, float]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        algo, dot, field = key.partition(".")
        if not sep or not dot or algo not in PAIRS:
            raise SystemExit(f"--set {item!r}: expected ALGO.FIELD=VALUE with ALGO one of {', '.join(PAIRS)}")
        if field not in {f.name for f in dataclasses.fields(algorithm_class(algo).config_cls)}:
            raise SystemExit(f"--set {item!r}: {algo} has no config field {field!r}")
        out.setdefault(algo, {})[field] = int(value) if value.lstrip("-").isdigit() else float(value)
    return out


def train_ours(name: str, data: Path, a: argparse.Namespace, out: Path, variant: str = "after",
               changes: dict[str, float] | None = None):
    """Train our ``name`` (``variant`` "before": with the fixes off; ``changes``: config fields set on top)
    for ``a.steps`` steps; the trained algorithm and its steps per second."""
    stamps: list[float] = []
    fields = {**(BEFORE[name] if variant == "before" else {}), **(changes or {})}
    cfg = dataclasses.replace(algorithm_class(name).config_cls(), hidden=tuple(a.hidden), embed_dim=0,
                              batch_size=a.batch, gamma=a.gamma, **fields)
    tc = TrainConfig(steps=a.steps, seed=a.seed, eval_every=0, log_every=500, checkpoint_every=10**9)
    tag = variant + "".join(f"_{k}{v}" for k, v in (changes or {}).items())
    algo = train(name, data, out / f"ours_{name}_{tag}", cfg=tc, algo_cfg=cfg,
                 on_step=lambda step, _m: stamps.append(time.perf_counter()) if step < a.steps else None)
    return algo, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def action_stats(pol: Policy | None, algo, t: Transitions) -> dict:
    """How far the policy's actions on 4,096 training states leave the logged box."""
    idx = np.random.default_rng(0).choice(len(t.reward), size=min(4096, len(t.reward)), replace=False)
    s = t.user_state[idx]
    act = algo.act_states(s) if pol is None else np.clip(pol.algo.predict(s), -1, 1)
    mu, lo, hi = t.mu_bp[idx, 0], t.lower_b[idx, 0], t.upper_b[idx, 0]
    outside = (act < mu + lo - 1e-6) | (act > mu + hi + 1e-6)
    return {"mean_abs_from_mu_bp": float(np.abs(act - mu).mean()), "outside_box": float(outside.mean()),
            "at_edge": float((np.abs(act) > 0.99).mean()), "action_std_over_states": float(act.std(0).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/peer_d3rlpy"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sessions", type=int, default=16000)
    ap.add_argument("--box", type=float, default=0.15)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--gamma", type=float, default=0.9)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--algos", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--sides", nargs="+", default=["ours", "d3rlpy"], choices=["ours", "d3rlpy"])
    ap.add_argument("--variants", nargs="+", default=["after"], choices=["after", "before"],
                    help="ours as it is (after) and/or with the logged-data fixes off (before)")
    ap.add_argument("--set", dest="changes", action="append", default=[], metavar="ALGO.FIELD=VALUE",
                    help="an extra arm of ours with this config field changed (repeatable)")
    a = ap.parse_args()
    changes = overrides(a.changes)
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    log = file_logger(a.out / "log.txt")

    sim = Simulator(SimConfig())
    base = baseline_policy(sim.cfg.action_space)
    data = a.out / "explore"
    if not (data / "_meta.json").exists():
        simulate_to_parquet(sim, behaviour_policy(base, "uniform", "request", seed=a.seed, lower_b=-a.box,
                                                  upper_b=a.box), data, seed=a.seed, sessions=a.sessions,
                            overwrite=True)
    _, train_t = build_transitions(read_logs(data)).split(TrainConfig().val_fraction, seed=a.seed)  # as train()
    pols: list[Policy] = [base]
    speed, actions = {}, {}
    for name in a.algos:
        for variant in a.variants if "ours" in a.sides else ():
            if variant == "before" and not BEFORE[name]:
                continue  # unchanged by the fixes
            algo, sps = train_ours(name, data, a, a.out, variant)
            label = name if variant == "after" else f"{name} (before)"
            pols.append(algo.policy(name=label))
            speed[label], actions[label] = sps, action_stats(None, algo, train_t)
            log(f"ours {label}: {sps:.1f} steps/s, actions {actions[label]}")
        if "ours" in a.sides and name in changes:
            algo, sps = train_ours(name, data, a, a.out, "after", changes[name])
            label = f"{name} ({', '.join(f'{k}={v}' for k, v in changes[name].items())})"
            pols.append(algo.policy(name=label))
            speed[label], actions[label] = sps, action_stats(None, algo, train_t)
            log(f"ours {label}: {sps:.1f} steps/s, actions {actions[label]}")
        if "d3rlpy" in a.sides:
            pol, sps = train_d3(PAIRS[name], train_t, a, a.out)
            pols.append(pol)
            speed[pol.name], actions[pol.name] = sps, action_stats(pol, None, train_t)
            log(f"{pol.name}: {sps:.1f} steps/s, actions {actions[pol.name]}")
    t0 = time.perf_counter()
    ab = online_ab(pols, sim, users=a.users, days=a.days, seed=a.seed + 2000)
    log(f"A/B of {len(pols)} arms in {time.perf_counter() - t0:.0f}s")
    for arm in ab.arms[1:]:
        log(f"{arm.policy}: " + ", ".join(f"{m} {arm.lifts[m]['lift']:+.2%} [{arm.lifts[m]['ci_low']:+.2%}, "
                                          f"{arm.lifts[m]['ci_high']:+.2%}]" for m in METRICS))
    res = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "commit": git_commit(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps_per_s": speed, "actions": actions,
           "online": ab.to_dict()}
    (a.out / "result.json").write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
