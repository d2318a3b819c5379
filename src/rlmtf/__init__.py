"""rlmtf: reinforcement-learning multi-task fusion for recommender systems.

Data flow: ``sim`` (user-session simulator) -> ``data`` (logged exploration data in Parquet)
-> training -> ``eval`` (weighted GAUC, simulated online A/B) -> serving.
"""

from rlmtf.core.fusion import ACTION_DIM, MTL_TASKS, N_TASKS, ActionSpace, final_score, fused_log_score
from rlmtf.core.reward import RewardWeights, item_reward, request_reward

__version__ = "0.1.0"

__all__ = [
    "ACTION_DIM",
    "MTL_TASKS",
    "N_TASKS",
    "ActionSpace",
    "RewardWeights",
    "final_score",
    "fused_log_score",
    "item_reward",
    "request_reward",
]
