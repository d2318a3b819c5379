"""Fusion policies: the interface, hand-set fusions and exploration wrappers."""

from rlmtf.policy.base import Decision, Policy, RequestObs
from rlmtf.policy.explore import ActionNoiseExploration, SharedItemExploration, UniformExploration
from rlmtf.policy.fixed import FixedPolicy, RandomPolicy, baseline_policy

__all__ = ["ActionNoiseExploration", "Decision", "FixedPolicy", "Policy", "RandomPolicy", "RequestObs",
           "SharedItemExploration", "UniformExploration", "baseline_policy"]
