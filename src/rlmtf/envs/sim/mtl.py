"""The imperfect multi-task (MTL) model that produces the scores the fusion policy ranks with.

For task k of user u and item i on day d::

    logit(score_k) = c_k + slope_u * (logit(truth_k) - c_k) + bias_k(item segment) + noise_{u,i,d,k}

- ``slope_u = 1 - inactive_slope * (1 - activity_u)``: predictions for inactive users are
  compressed towards the task centre c_k (less data, less resolution);
- ``bias_k``: a fixed miscalibration per (category, task); fresh items have their like and share
  over-estimated; short items their valid score; long items have watch time under- and finish
  over-estimated; clickbait has finish and like over-estimated (a click-trained model is fooled);
- ``noise`` ~ N(0, base_noise + inactive_noise * (1 - activity) + fresh_noise * fresh), a pure
  function of (world seed, user, item, day) so the same model gives the same score all day.

The truth is taken at fatigue 0: the model does not see the latent session fatigue. These errors
depend on the item and the user, which is what lets per-item fusion (Enhanced-State RL) correct
what one action per user cannot.
"""

from __future__ import annotations

import numpy as np

from rlmtf.core import rng as crng
from rlmtf.envs.sim import ops
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.world import Items, Users

#: Task centres c_k on the logit scale (typical logits of valid, watch_time, finish, like, share).
TASK_CENTRES = np.array([-0.8, -1.8, -1.6, -4.0, -7.0])
_S_MTL = 201


class MTLModel:
    def __init__(self, cfg: SimConfig, users: Users, items: Items, rng: np.random.Generator):
        m = cfg.mtl
        self.cfg, self.m, self.users, self.items = cfg, m, users, items
        k = len(TASK_CENTRES)
        cat_bias = m.category_bias_sigma * rng.standard_normal((cfg.n_categories, k))
        # Per-item fixed bias (I, K), computed once: category + segment effects.
        bias = cat_bias[items.category].copy()
        fresh = items.age_days < cfg.items.fresh_days
        short = items.duration < m.short_s
        long_ = items.duration > m.long_s
        bias[fresh, 3] += m.fresh_interaction_bias
        bias[fresh, 4] += m.fresh_interaction_bias
        bias[short, 0] += m.short_valid_bias
        bias[long_, 1] += m.long_watch_bias
        bias[long_, 2] += m.long_finish_bias
        bias[:, 2] += m.clickbait_finish_bias * items.clickbait
        bias[:, 3] += m.clickbait_finish_bias * items.clickbait
        self.item_bias = bias
        self._item_bias32 = bias.astype(np.float32)
        self._centres = TASK_CENTRES.astype(np.float32)
        self.item_noise = m.fresh_noise * fresh.astype(np.float64)  # (I,)
        self.user_noise = m.base_noise + m.inactive_noise * (1.0 - users.activity)  # (U,)
        self.user_slope = 1.0 - m.inactive_slope * (1.0 - users.activity)  # (U,)
        self.user_slope32 = self.user_slope.astype(np.float32)
        self.user_noise32 = self.user_noise.astype(np.float32)
        self.item_noise32 = self.item_noise.astype(np.float32)

    def scores(self, truth: np.ndarray, user: np.ndarray, item: np.ndarray, day: np.ndarray) -> np.ndarray:
        """truth (B, N, K) true scores, user (B,), item (B, N), day (B,) -> MTL scores (B, N, K) float32."""
        x = ops.logit(truth, eps=1e-6)  # a new array, updated in place
        x -= self._centres
        x *= self.user_slope32[user][:, None, None]
        x += self._centres
        x += ops.rows(self._item_bias32, item)
        sd = self.user_noise32[user][:, None] + self.item_noise32[item]  # (B, N)
        k = crng.key(self.cfg.world_seed, user[:, None], item, day[:, None])  # (B, N)
        noise = crng.normals5(k, _S_MTL)  # (B, N, 5)
        noise *= sd[..., None]
        x += noise
        return ops.sigmoid(x)
