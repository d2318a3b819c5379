"""True user behaviour: what a user would do with an item, and the probabilities behind it.

For user u and item i, with affinity ``a = interest_weight * log(C * interest_u[cat_i] + 0.1) +
taste_weight * <taste_u, style_i> + quality_weight * quality_i``:

- **engagement** ``E ~ Bernoulli(sigmoid(engage_bias + a + engage_activity * (activity - 0.5) +
  engage_clickbait * cb * susceptibility - engage_fatigue * fatigue))``: the user watches with intent;
- **click** ``~ Bernoulli(sigmoid(click_bias + click_engaged * E + click_clickbait * cb))``;
- **watch ratio**: if engaged, log-normal around ``engaged_ratio_median`` shifted by affinity,
  quality, clickbait (cut short) and duration (long videos are watched to a smaller fraction), with
  an engaged clickbait view lasting at least ``clickbait_hook_s``; if not engaged, a skip: play time
  0 with ``skip_zero_prob``, else a log-normal play time of a few seconds. watch_time = ratio * duration;
- **valid** = watch_time > 10 s; **finish** = watch_time >= duration;
- **like, share, collect, follow, comment**: only on engaged views, logits ``bias + interaction_affinity
  * a + interaction_quality * quality - interaction_clickbait * cb``.

The *true scores* are the exact probabilities (and the expected watch time) of the MTL tasks under
this model, computed analytically; the imperfect MTL model (``mtl.py``) reads them with errors.
Fatigue is a latent session state: true scores used by the MTL model are taken at fatigue 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, ndtr

from rlmtf.core import rng as crng
from rlmtf.envs.sim import ops
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.world import Items, Users

INTERACTIONS = ("like", "share", "collect", "follow", "comment")

# stream ids of the draws made for a shown item
_S_ENGAGE, _S_CLICK, _S_ZERO, _S_RATIO = 101, 102, 103, 104
_S_INTERACT = {name: 110 + i for i, name in enumerate(INTERACTIONS)}


@dataclass
class ItemResponse:
    """Per user-item behaviour parameters, arrays shaped like the item ids (B, N)."""

    p_engage: np.ndarray
    log_ratio_mean: np.ndarray  # engaged log watch ratio mean
    interaction_base: np.ndarray  # interaction logit without the per-behaviour bias
    item: np.ndarray  # item ids
    table: np.ndarray | None = None  # (B, N, 12) the items' rows of BehaviourModel._item_table, if gathered

    def take(self, idx: np.ndarray) -> ItemResponse:
        """Select items along the candidate axis: idx (B, l) into (B, N)."""
        return ItemResponse(*(np.take_along_axis(x, idx, 1) for x in
                              (self.p_engage, self.log_ratio_mean, self.interaction_base, self.item)))


class BehaviourModel:
    """Computes :class:`ItemResponse`, true MTL-task scores, and samples feedback."""

    def __init__(self, cfg: SimConfig, users: Users, items: Items):
        self.cfg, self.b = cfg, cfg.behaviour
        self.users, self.items = users, items
        b = self.b
        self._log_ci = np.log(cfg.n_categories * users.interest + 0.1)  # (U, C)
        self.inter_bias = np.array([b.like_bias, b.share_bias, b.collect_bias, b.follow_bias, b.comment_bias])
        # Item-only parts of the model, computed once (I,).
        dur = items.duration
        self.log_dur = np.log(dur)
        self.item_ratio_offset = (np.log(b.engaged_ratio_median) + b.ratio_quality * items.quality
                                  - b.ratio_clickbait * items.clickbait
                                  - b.ratio_duration * np.log(dur / cfg.items.duration_median_s))
        self.item_quality_term = b.quality_weight * items.quality
        self.item_inter_term = b.interaction_quality * items.quality - b.interaction_clickbait * items.clickbait
        self.log_valid_threshold = np.log(b.valid_threshold_s / dur)  # log ratio needed for a valid view
        self.hook_valid = (items.clickbait > 0) & (np.minimum(b.clickbait_hook_s, dur) > b.valid_threshold_s)
        self.hook_finish = (items.clickbait > 0) & (dur <= b.clickbait_hook_s)
        ms, ss = np.log(b.skip_seconds_median / dur), b.skip_seconds_sigma  # skip log-ratio mean and sd
        p_play = 1.0 - b.skip_zero_prob
        self.p_valid_skip = p_play * (1.0 - ndtr((self.log_valid_threshold - ms) / ss))
        self.mean_skip_s = p_play * np.minimum(np.exp(ms + 0.5 * ss * ss), b.max_watch_ratio) * dur
        self.p_finish_skip = p_play * (1.0 - ndtr(-ms / ss))
        self.hook_s = np.where(items.clickbait > 0, np.minimum(b.clickbait_hook_s, dur), 0.0)
        # float32 copies for the per-candidate hot path (B x N elements per request batch)
        f32 = np.float32
        self._log_ci32 = self._log_ci.astype(f32)
        self._taste32 = users.taste.astype(f32)
        self._user_engage32 = (b.engage_bias + b.engage_activity * (users.activity - 0.5)).astype(f32)
        self._susc32 = (b.engage_clickbait * users.susceptibility).astype(f32)
        # one gather per candidate brings every item constant: columns of _item_table
        self._item_table = np.column_stack([
            self.item_quality_term, items.clickbait, self.item_ratio_offset, self.item_inter_term,
            self.log_valid_threshold, self.p_valid_skip, self.mean_skip_s, self.p_finish_skip,
            np.maximum(self.hook_s, 0.0), dur, self.hook_valid, self.hook_finish, items.style,
        ]).astype(f32)

    def response(self, user: np.ndarray, item: np.ndarray, fatigue: np.ndarray | None) -> ItemResponse:
        """user (B,), item (B, N) ids, fatigue (B,) or None (= 0) -> ItemResponse of shape (B, N), float32."""
        b, it = self.b, self.items
        tab = ops.rows(self._item_table, item)  # (B, N, 12 + d): item constants, then the style vector
        taste = np.matmul(tab[..., 12:], self._taste32[user][:, :, None])[..., 0]  # (B, N)
        affinity = (np.float32(b.interest_weight) * np.take_along_axis(self._log_ci32[user], it.category[item], 1)
                    + np.float32(b.taste_weight) * taste + tab[..., 0])
        logit_e = affinity + self._user_engage32[user][:, None] + tab[..., 1] * self._susc32[user][:, None]
        if fatigue is not None:
            logit_e -= (b.engage_fatigue * fatigue[:, None]).astype(np.float32)
        return ItemResponse(p_engage=ops.sigmoid(logit_e),
                            log_ratio_mean=tab[..., 2] + np.float32(b.ratio_affinity) * affinity,
                            interaction_base=np.float32(b.interaction_affinity) * affinity + tab[..., 3],
                            item=item, table=tab)

    def true_scores(self, r: ItemResponse) -> np.ndarray:
        """Exact P(valid), E[watch time]/cap, P(finish), P(like), P(share) -> (B, N, 5) float32."""
        b, f32 = self.b, np.float32
        tab = ops.rows(self._item_table, r.item) if r.table is None else r.table  # (B, N, 12 + d)
        pe, m = r.p_engage, r.log_ratio_mean
        inv_s = f32(1.0 / b.engaged_ratio_sigma)
        q = 1 - pe
        out = np.empty(pe.shape + (5,), dtype=f32)
        p_valid_eng = np.maximum(ops.ndtr((m - tab[..., 4]) * inv_s), tab[..., 10])  # hook: valid for sure
        out[..., 0] = pe * p_valid_eng + q * tab[..., 5]
        s = b.engaged_ratio_sigma
        mean_eng = np.maximum(np.minimum(np.exp(m + f32(0.5 * s * s)), f32(b.max_watch_ratio)) * tab[..., 9],
                              tab[..., 8])
        out[..., 1] = np.minimum((pe * mean_eng + q * tab[..., 6]) * f32(1.0 / self.cfg.mtl.watch_time_cap_s), 1.0)
        p_fin_eng = np.maximum(ops.ndtr(m * inv_s), tab[..., 11])
        out[..., 2] = pe * p_fin_eng + q * tab[..., 7]
        out[..., 3] = pe * ops.sigmoid(f32(self.inter_bias[0]) + r.interaction_base)
        out[..., 4] = pe * ops.sigmoid(f32(self.inter_bias[1]) + r.interaction_base)
        return out

    def sample(self, r: ItemResponse, k: np.ndarray) -> dict[str, np.ndarray]:
        """Draw feedback for shown items. ``k``: uint64 keys shaped like the items (request x item),
        so that the same user meets the same item at the same request with the same dice."""
        b = self.b
        dur = self.items.duration[r.item]
        cb = self.items.clickbait[r.item]
        engaged = crng.uniform(k, _S_ENGAGE) < r.p_engage
        click = crng.uniform(k, _S_CLICK) < expit(b.click_bias + b.click_engaged * engaged + b.click_clickbait * cb)
        z = crng.normal(k, _S_RATIO)
        ratio_eng = np.exp(r.log_ratio_mean + b.engaged_ratio_sigma * z)
        ratio_skip = b.skip_seconds_median * np.exp(b.skip_seconds_sigma * z) / dur
        ratio_skip = np.where(crng.uniform(k, _S_ZERO) < b.skip_zero_prob, 0.0, ratio_skip)
        ratio = np.minimum(np.where(engaged, ratio_eng, ratio_skip), b.max_watch_ratio)
        watch = ratio * dur
        watch = np.where(engaged, np.maximum(watch, self.hook_s[r.item]), watch)
        ratio = watch / dur
        out = {
            "click": click.astype(np.int8),
            "watch_time": watch,
            "watch_ratio": ratio,
            "valid": (watch > b.valid_threshold_s).astype(np.int8),
            "finish": (watch >= dur * (1 - 1e-9)).astype(np.int8),
            "engaged": engaged,
            "clickbait": cb,
        }
        for j, name in enumerate(INTERACTIONS):
            p = expit(self.inter_bias[j] + r.interaction_base)
            out[name] = (engaged & (crng.uniform(k, _S_INTERACT[name]) < p)).astype(np.int8)
        return out
