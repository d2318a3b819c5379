"""IntegratedRL-MTF (SPEC section 6): the baseline Enhanced-State RL beats.

Paper: P. Liu et al., "Integrating Offline Reinforcement Learning with Online Exploration for
Multi-Task Fusion in Recommender Systems" (IntegratedRL-MTF, Tencent, 2024), the predecessor the
Enhanced-State RL paper builds on.

The same machinery as :mod:`rlmtf.algos.esrl` (ensemble of critics, exploration-box penalty,
critic-disagreement penalty, soft targets) on the *user state* s_t: one action per request applied
to every candidate, critics Q^i(s_t, a_t) trained on the request reward r_t. Only the view of a
batch differs: this class takes the user-level view of :class:`rlmtf.algos.base.Algorithm` back.
"""

from __future__ import annotations

from rlmtf.algos.base import Algorithm, register
from rlmtf.algos.esrl import EnhancedStateRL


class IntegratedRL(EnhancedStateRL):
    kind = "integrated"
    level = "user"

    group_dims = classmethod(Algorithm.group_dims.__func__)  # type: ignore[assignment]
    view = staticmethod(Algorithm.view)
    obs_states = staticmethod(Algorithm.obs_states)
    train_states = staticmethod(Algorithm.train_states)


register(IntegratedRL)
