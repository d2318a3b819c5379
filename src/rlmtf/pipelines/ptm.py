"""Progressive Training Mode (the paper's section 3.3.3; ``docs/design.md#progressive-training``).

Round k: explore around mu_bp = policy_(k-1) in the simulator (round 1: the hand-set baseline) for
one simulated "day" of ``sessions_per_round`` sessions, train on that round's data, evaluate, and
make the new policy the next round's behaviour policy. From round 2 on, training warm-starts from
the previous round's networks (actor, critics, targets and optimizers) and runs ``steps`` more
steps on the new round's data only: the newest exploration data describes the newest policy's
neighbourhood, which is what the bound penalty keeps the actor in.

Every round is evaluated by weighted GAUC on a fixed test set logged by the baseline policy and by a
simulated online A/B test against the baseline on fixed users and seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlmtf.algos.base import Algorithm
from rlmtf.data.io import read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.engine import Environment
from rlmtf.eval.offline import evaluate_gauc, mean_policy_action
from rlmtf.eval.online import online_ab
from rlmtf.policy.base import Policy
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, train


@dataclass
class PTMResult:
    """What :func:`run_ptm` produced: one row per round (round 0 = the baseline), the last round's
    trained algorithm, and each round's logged-data directory."""

    rows: list[dict]
    algo: Algorithm
    data_dirs: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class PTMConfig:
    rounds: int = 5
    sessions_per_round: int = 5000
    """Exploration sessions logged per round (one simulated day)."""
    steps_per_round: int = 2000
    test_sessions: int = 3000
    """Sessions of the baseline-logged test set for the weighted GAUC."""
    online_users: int = 2000
    online_days: int = 2
    seed: int = 0
    workers: int = 1
    """Processes for simulation."""


def run_ptm(algo: str, sim: Environment, out: str | Path, cfg: PTMConfig = PTMConfig(),
            algo_cfg: Any = None, train_cfg: TrainConfig = TrainConfig(),
            log: Callable[[str], None] = print, progress=None, test_dir: Path | None = None) -> PTMResult:
    """Run the rounds; write ``ptm.json``, ``ptm.csv`` and ``ptm.png`` into ``out``.

    ``test_dir``: an existing baseline-logged test set to evaluate on (default: log one in ``out/test``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    space = sim.cfg.action_space
    base = baseline_policy(space)
    per = "item" if algo == "esrl" else "request"
    test_dir = Path(test_dir) if test_dir is not None else out / "test"
    if not (test_dir / "_meta.json").is_file():
        simulate_to_parquet(sim, base, test_dir, seed=cfg.seed + 10_000, sessions=cfg.test_sessions,
                            start_day=1000, overwrite=True, workers=cfg.workers)
    test = read_logs(test_dir)
    base_gauc = evaluate_gauc(base, test, space).gauc
    rows: list[dict] = [{"round": 0, "policy": "baseline", "weighted_gauc": base_gauc, "uvc_lift": 0.0,
                         "udt_lift": 0.0, "mean_action": mean_policy_action(base, test).round(4).tolist()}]
    behaviour: Policy = base
    prev = None
    data_dirs: list[Path] = []
    for k in range(1, cfg.rounds + 1):
        rd = out / f"round_{k}"
        log(f"round {k}/{cfg.rounds}: exploring around {behaviour.name}")
        simulate_to_parquet(sim, behaviour_policy(behaviour, "uniform", per, seed=cfg.seed + k), rd / "data",
                            seed=cfg.seed + k, sessions=cfg.sessions_per_round, start_day=k - 1, overwrite=True,
                            workers=cfg.workers, progress=progress)
        data_dirs.append(rd / "data")
        log(f"round {k}/{cfg.rounds}: training {algo} ({'warm start' if prev else 'from the behaviour policy'})")
        prev = train(algo, rd / "data", rd / "run", cfg=TrainConfig(**{**asdict(train_cfg), "seed": cfg.seed + k}),
                     algo_cfg=algo_cfg, space=space, warm_start_from=prev)
        policy = prev.policy(name=f"{algo}-round{k}")
        gauc = evaluate_gauc(policy, test, space).gauc
        ab = online_ab([base, policy], sim, users=cfg.online_users, days=cfg.online_days, seed=cfg.seed + 20_000,
                       workers=cfg.workers)
        arm = ab.arms[1]
        row = {"round": k, "policy": policy.name, "weighted_gauc": gauc,
               "mean_action": mean_policy_action(policy, test).round(4).tolist()}
        for m in ("uvc", "udt"):
            lift = arm.lifts[m]
            row.update({f"{m}_lift": lift["lift"], f"{m}_ci": [lift["ci_low"], lift["ci_high"]],
                        m: arm.means[m]["mean"]})
        rows.append(row)
        log(f"round {k}: weighted GAUC {gauc:.4f}, UVC {row['uvc_lift']:+.2%}, UDT {row['udt_lift']:+.2%} vs baseline")
        behaviour = policy
    (out / "ptm.json").write_text(json.dumps({"algo": algo, "config": asdict(cfg), "rounds": rows}, indent=2))
    _write_csv(out / "ptm.csv", rows)
    plot_ptm(rows, out / "ptm.png", title=f"Progressive training: {algo}")
    assert prev is not None  # rounds >= 1
    return PTMResult(rows=rows, algo=prev, data_dirs=data_dirs)


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = ["round", "policy", "weighted_gauc", "uvc_lift", "udt_lift"]
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def plot_ptm(rows: list[dict], path: Path, title: str = "Progressive training") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = [r["round"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.3))
    a1.plot(k, [r["weighted_gauc"] for r in rows], "o-")
    a1.set_xlabel("round (0 = baseline)")
    a1.set_ylabel("weighted GAUC (baseline-logged test set)")
    for key, label in (("uvc_lift", "UVC"), ("udt_lift", "UDT")):
        a2.plot(k, [100 * r[key] for r in rows], "o-", label=label)
    for r in rows[1:]:
        for key, c in (("uvc", "C0"), ("udt", "C1")):
            lo, hi = r[f"{key}_ci"]
            a2.plot([r["round"]] * 2, [100 * lo, 100 * hi], color=c, alpha=0.5)
    a2.axhline(0, color="k", lw=0.8)
    a2.set_xlabel("round")
    a2.set_ylabel("online lift over baseline (%), 95% CI")
    a2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
