"""Simulate a behaviour policy and write what it logs as a Parquet dataset (``docs/design.md#logged-data``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from rlmtf.core.provenance import git_commit
from rlmtf.core.schema import DatasetMeta
from rlmtf.data.writer import LogWriter
from rlmtf.envs.engine import Environment, RunResult
from rlmtf.policy.base import Policy
from rlmtf.policy.explore import ActionNoiseExploration, SharedItemExploration, UniformExploration

Explore = Literal["none", "uniform", "noise"]


def behaviour_policy(base: Policy, explore: Explore = "uniform",
                     per: Literal["request", "item", "day", "request+item", "day+item"] = "request",
                     lower_b: float = -0.15,
                     upper_b: float = 0.15, sigma: float = 0.2, seed: int = 0, edge: Literal["clip", "shift"] = "clip",
                     item_box: float = 0.05) -> Policy:
    """Wrap ``base`` in the exploration of ``docs/design.md#exploration`` (or return it for ``explore="none"``).
    ``per="day+item"`` / ``"request+item"``: uniform noise per user-day / request in [lower_b, upper_b] plus
    per user-item pair in [-item_box, item_box] (:class:`SharedItemExploration`)."""
    if explore == "none":
        return base
    if explore == "uniform" and per in ("day+item", "request+item"):
        return SharedItemExploration(base, lower_b, upper_b, -item_box, item_box, seed=seed, edge=edge,
                                     shared_per=per.split("+")[0])
    if explore == "uniform":
        return UniformExploration(base, lower_b, upper_b, per=per, seed=seed, edge=edge)
    if explore == "noise":
        return ActionNoiseExploration(base, sigma=sigma, per=per, seed=seed, lower_b=lower_b, upper_b=upper_b)
    raise ValueError(f"explore must be none, uniform or noise, got {explore!r}")


def simulate_to_parquet(sim: Environment, policy: Policy, out: str | Path, *, seed: int, sessions: int | None = None,
                        days: int | None = None, users: np.ndarray | None = None, start_day: int = 0,
                        overwrite: bool = False, info: dict | None = None, workers: int = 1,
                        progress: Callable[[int, int], None] | None = None, log_candidates: bool = False
                        ) -> tuple[RunResult, Path]:
    """Run ``policy`` in ``sim`` and write every shown user-item pair to ``out`` (partitioned by day).

    With ``workers > 1`` the users are split across forked processes, each writing its own shard;
    ``log_candidates`` adds the candidate sample (``docs/design.md#the-candidate-sample``)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    explore = ("uniform" if isinstance(policy, UniformExploration) else
               "noise" if isinstance(policy, ActionNoiseExploration) else "none")
    per = getattr(policy, "per", None)
    meta_info = {"env": sim.name, "policy": policy.name, "explore": explore, "per": per,
                 "seed": seed, "sessions": sessions, "days": days,
                 "start_day": start_day, "workers": workers, "sim_config": sim.cfg.to_dict(),
                 "commit": git_commit(), **(info or {})}
    meta = DatasetMeta(feature_spec=sim.spec, list_len=sim.cfg.list_len, info=meta_info)
    with LogWriter(out, meta, overwrite=overwrite) as writer:
        if workers == 1:
            result = sim.run(policy, seed=seed, days=days, max_sessions=sessions, users=users, start_day=start_day,
                             sink=writer.write, progress=progress, log_candidates=log_candidates)
        else:
            from rlmtf.envs.parallel import run_parallel

            result, counts = run_parallel(sim, policy, workers=workers, seed=seed, days=days, users=users,
                                          max_sessions=sessions, start_day=start_day, out=Path(out), meta=meta,
                                          progress=progress, log_candidates=log_candidates)
            for rows, files, days_ in counts:
                writer.add_counts(rows, files, days_)
    return result, Path(out)
