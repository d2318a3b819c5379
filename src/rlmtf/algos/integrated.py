"""IntegratedRL-MTF (``docs/design.md#integratedrl-mtf``): the baseline Enhanced-State RL beats.

Paper: P. Liu et al., "Integrating Offline Reinforcement Learning with Online Exploration for
Multi-Task Fusion in Recommender Systems" (IntegratedRL-MTF, Tencent, 2024), the predecessor the
Enhanced-State RL paper builds on.

The same machinery as :mod:`rlmtf.algos.esrl` (ensemble of critics, exploration-box penalty,
critic-disagreement penalty, soft targets: :class:`rlmtf.algos.esrl.EnsembleActorCritic`) on the *user
state* s_t: one action per request applied to every candidate, critics Q^i(s_t, a_t) trained on the
request reward r_t. That is the user-level view every algorithm has by default
(:class:`rlmtf.algos.base.Algorithm`), so this class only names itself.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from rlmtf.algos.base import register
from rlmtf.algos.esrl import EnsembleActorCritic


class IntegratedRL(EnsembleActorCritic):
    """IntegratedRL-MTF: the ensemble actor-critic on the user state, one action per request."""

    kind: ClassVar[str] = "integrated"
    level: ClassVar[Literal["user", "item"]] = "user"


register(IntegratedRL)
