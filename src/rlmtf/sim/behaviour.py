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

from rlmtf.sim import rng as crng
from rlmtf.sim.config import SimConfig
from rlmtf.sim.world import Items, Users

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

    def response(self, user: np.ndarray, item: np.ndarray, fatigue: np.ndarray | None) -> ItemResponse:
        """user (B,), item (B, N) ids, fatigue (B,) or None (= 0) -> ItemResponse of shape (B, N)."""
        b, it, us = self.b, self.items, self.users
        taste = np.einsum("bd,bnd->bn", us.taste[user], it.style[item])  # (B, N)
        affinity = (b.interest_weight * np.take_along_axis(self._log_ci[user], it.category[item], 1)
                    + b.taste_weight * taste + self.item_quality_term[item])
        cb = it.clickbait[item]
        logit_e = affinity + (b.engage_bias + b.engage_activity * (us.activity[user] - 0.5))[:, None]
        logit_e += b.engage_clickbait * cb * us.susceptibility[user][:, None]
        if fatigue is not None:
            logit_e -= b.engage_fatigue * fatigue[:, None]
        return ItemResponse(p_engage=expit(logit_e),
                            log_ratio_mean=self.item_ratio_offset[item] + b.ratio_affinity * affinity,
                            interaction_base=b.interaction_affinity * affinity + self.item_inter_term[item],
                            item=item)

    def true_scores(self, r: ItemResponse) -> np.ndarray:
        """Exact P(valid), E[watch time]/cap, P(finish), P(like), P(share) -> (..., 5)."""
        b, i = self.b, r.item
        pe, m, s = r.p_engage, r.log_ratio_mean, b.engaged_ratio_sigma
        dur = self.items.duration[i]
        p_valid_eng = np.where(self.hook_valid[i], 1.0, ndtr((m - self.log_valid_threshold[i]) / s))
        out = np.empty(pe.shape + (5,))
        out[..., 0] = pe * p_valid_eng + (1 - pe) * self.p_valid_skip[i]
        mean_eng = np.maximum(np.minimum(np.exp(m + 0.5 * s * s), b.max_watch_ratio) * dur, self.hook_s[i])
        out[..., 1] = np.minimum((pe * mean_eng + (1 - pe) * self.mean_skip_s[i]) / self.cfg.mtl.watch_time_cap_s, 1.0)
        p_fin_eng = np.where(self.hook_finish[i], 1.0, ndtr(m / s))
        out[..., 2] = pe * p_fin_eng + (1 - pe) * self.p_finish_skip[i]
        out[..., 3] = pe * expit(self.inter_bias[0] + r.interaction_base)
        out[..., 4] = pe * expit(self.inter_bias[1] + r.interaction_base)
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
