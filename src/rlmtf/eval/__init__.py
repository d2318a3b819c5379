"""Evaluation: weighted GAUC (offline) and statistics for simulated online A/B tests."""

from rlmtf.eval.gauc import GAUCResult, min_max_normalise, weighted_gauc
from rlmtf.eval.stats import Lift, mean_ci, paired_lift

__all__ = [
    "GAUCResult",
    "Lift",
    "mean_ci",
    "min_max_normalise",
    "paired_lift",
    "weighted_gauc",
]
