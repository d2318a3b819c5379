"""Offline search of one fixed fusion for everybody: the classical MTF approach.

Before RL-MTF, fusion weights were tuned by grid search or Bayesian optimisation over a set of
candidate parameter vectors (the Enhanced-State RL paper's introduction, refs [19, 36]): the same
weights for every user and item. Here CMA-ES (the ``cmaes`` package) searches the action space
([-1, 1]^10, or [-1, 1]^9 in the relative parameterisation) for the fixed fusion with the highest
weighted GAUC on logged training data. It is a non-personalised reference point that every RL method
should beat, and it is cheap to train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlmtf.core.fusion import ActionSpace, fused_log_score
from rlmtf.data.io import LoggedData
from rlmtf.eval.gauc import weighted_gauc
from rlmtf.policy.fixed import FixedPolicy


@dataclass(frozen=True)
class FixedSearchConfig:
    generations: int = 30
    """CMA-ES generations."""
    population: int = 12
    """Candidates per generation."""
    sigma: float = 0.4
    """Initial step size in action units."""
    seed: int = 0


def fixed_search(data: LoggedData, start: np.ndarray, cfg: FixedSearchConfig = FixedSearchConfig(),
                 space: ActionSpace = ActionSpace(),
                 on_generation: Callable[[int, float], None] | None = None) -> tuple[FixedPolicy, list[float]]:
    """CMA-ES over a fixed action maximising weighted GAUC on ``data``; returns the policy and the
    best GAUC after each generation."""
    from cmaes import CMA

    c = data.columns
    users = c["user_id"]
    labels = c["valid"].astype(np.int64)
    weights = c["reward"].astype(np.float64) + 1.0
    scores = c["mtl_scores"].astype(np.float64)

    def gauc(a: np.ndarray) -> float:
        return weighted_gauc(users, labels, fused_log_score(scores, a, space), weights).gauc

    opt = CMA(mean=np.clip(np.asarray(start, np.float64), -0.95, 0.95), sigma=cfg.sigma,
              bounds=np.tile([-1.0, 1.0], (space.dim, 1)), population_size=cfg.population, seed=cfg.seed)
    best_a, best = np.asarray(start, np.float64), gauc(np.asarray(start, np.float64))
    history = []
    for g in range(cfg.generations):
        sols = []
        for _ in range(opt.population_size):
            a = opt.ask()
            v = gauc(a)
            sols.append((a, -v))
            if v > best:
                best, best_a = v, a
        opt.tell(sols)
        history.append(best)
        if on_generation:
            on_generation(g, best)
    return FixedPolicy(np.clip(best_a, -1, 1).astype(np.float32), name="fixed-search", space=space), history
