"""IntegratedRL-MTF (SPEC section 6): the baseline Enhanced-State RL beats.

Paper: P. Liu et al., "Integrating Offline Reinforcement Learning with Online Exploration for
Multi-Task Fusion in Recommender Systems" (IntegratedRL-MTF, Tencent, 2024), the predecessor the
Enhanced-State RL paper builds on.

The same machinery as :mod:`rlmtf.algos.esrl` (ensemble of critics, exploration-box penalty,
critic-disagreement penalty, soft targets) on the *user state* s_t: one action per request applied
to every candidate, critics Q^i(s_t, a_t) trained on the request reward r_t. Only the view of a
batch differs, so this class overrides just that.
"""

from __future__ import annotations

import numpy as np
import torch

from rlmtf.algos.esrl import EnhancedStateRL, register
from rlmtf.data.transitions import Transitions
from rlmtf.policy.base import RequestObs
from rlmtf.schema import FeatureSpec


class IntegratedRL(EnhancedStateRL):
    kind = "integrated"
    level = "user"

    @classmethod
    def group_dims(cls, spec: FeatureSpec) -> list[int]:
        return [spec.user_profile.dim, spec.user_history.dim, spec.context.dim]

    @staticmethod
    def view(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch as (B, 1, .) tensors: the request is the unit; its action is the (shared) action of
        its items and its reward is r_t."""
        return {"s": b["user_state"][:, None], "a": b["action"][:, :1], "mu_bp": b["mu_bp"][:, :1],
                "lower_b": b["lower_b"][:, :1], "upper_b": b["upper_b"][:, :1], "r": b["reward"][:, None],
                "done": b["done"], "s2": b["next_user_state"][:, None], "mu_bp2": b["next_mu_bp"][:, :1],
                "lower_b2": b["next_lower_b"][:, :1], "upper_b2": b["next_upper_b"][:, :1]}

    @staticmethod
    def obs_states(obs: RequestObs) -> np.ndarray:
        return obs.user_state()

    @staticmethod
    def train_states(t: Transitions) -> np.ndarray:
        return t.user_state


register(IntegratedRL)
