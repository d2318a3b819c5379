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
    """Per user-item behaviour parameters, arrays shaped like the item ids (..., )."""

    p_engage: np.ndarray
    affinity: np.ndarray
    log_ratio_mean: np.ndarray  # engaged log watch ratio mean
    duration: np.ndarray
    clickbait: np.ndarray
    interaction_logit: np.ndarray  # (..., 5) logits of like, share, collect, follow, comment when engaged

    def take(self, idx: np.ndarray) -> ItemResponse:
        """Select items along the last candidate axis: idx (B, l) into (B, N)."""
        return ItemResponse(
            p_engage=np.take_along_axis(self.p_engage, idx, 1),
            affinity=np.take_along_axis(self.affinity, idx, 1),
            log_ratio_mean=np.take_along_axis(self.log_ratio_mean, idx, 1),
            duration=np.take_along_axis(self.duration, idx, 1),
            clickbait=np.take_along_axis(self.clickbait, idx, 1),
            interaction_logit=np.take_along_axis(self.interaction_logit, idx[..., None], 1),
        )


class BehaviourModel:
    """Computes :class:`ItemResponse`, true MTL-task scores, and samples feedback."""

    def __init__(self, cfg: SimConfig, users: Users, items: Items):
        self.cfg, self.b = cfg, cfg.behaviour
        self.users, self.items = users, items
        self._log_ci = np.log(cfg.n_categories * users.interest + 0.1)  # (U, C)
        b = self.b
        self._inter_bias = np.array([b.like_bias, b.share_bias, b.collect_bias, b.follow_bias, b.comment_bias])

    def response(self, user: np.ndarray, item: np.ndarray, fatigue: np.ndarray | None) -> ItemResponse:
        """user (B,), item (B, N) ids, fatigue (B,) or None (= 0) -> ItemResponse of shape (B, N)."""
        b, it, us = self.b, self.items, self.users
        cat = it.category[item]  # (B, N)
        taste = np.einsum("bd,bnd->bn", us.taste[user], it.style[item])  # (B, N)
        quality = it.quality[item]
        affinity = (b.interest_weight * np.take_along_axis(self._log_ci[user], cat, 1)
                    + b.taste_weight * taste + b.quality_weight * quality)
        cb = it.clickbait[item]
        act = us.activity[user][:, None]
        logit = (b.engage_bias + affinity + b.engage_activity * (act - 0.5)
                 + b.engage_clickbait * cb * us.susceptibility[user][:, None])
        if fatigue is not None:
            logit = logit - b.engage_fatigue * fatigue[:, None]
        duration = it.duration[item]
        log_ratio = (np.log(b.engaged_ratio_median) + b.ratio_affinity * affinity + b.ratio_quality * quality
                     - b.ratio_clickbait * cb
                     - b.ratio_duration * np.log(duration / self.cfg.items.duration_median_s))
        inter = (self._inter_bias + (b.interaction_affinity * affinity + b.interaction_quality * quality
                                     - b.interaction_clickbait * cb)[..., None])  # (B, N, 5)
        return ItemResponse(p_engage=expit(logit), affinity=affinity, log_ratio_mean=log_ratio,
                            duration=duration, clickbait=cb, interaction_logit=inter)

    def true_scores(self, r: ItemResponse) -> np.ndarray:
        """Exact P(valid), E[watch time]/cap, P(finish), P(like), P(share) -> (..., 5)."""
        b = self.b
        pe, m, s, dur = r.p_engage, r.log_ratio_mean, b.engaged_ratio_sigma, r.duration
        thr = np.log(b.valid_threshold_s / dur)  # log ratio needed for a valid view
        hook = (r.clickbait > 0) & (np.minimum(b.clickbait_hook_s, dur) > b.valid_threshold_s)
        p_valid_eng = np.where(hook, 1.0, 1.0 - ndtr((thr - m) / s))
        ms, ss = np.log(b.skip_seconds_median / dur), b.skip_seconds_sigma  # skip log-ratio mean and sd
        p_play = 1.0 - b.skip_zero_prob
        p_valid_skip = p_play * (1.0 - ndtr((thr - ms) / ss))
        valid = pe * p_valid_eng + (1 - pe) * p_valid_skip
        mean_eng = np.minimum(np.exp(m + 0.5 * s * s), b.max_watch_ratio) * dur
        mean_eng = np.where(r.clickbait > 0, np.maximum(mean_eng, np.minimum(b.clickbait_hook_s, dur)), mean_eng)
        mean_skip = p_play * np.minimum(np.exp(ms + 0.5 * ss * ss), b.max_watch_ratio) * dur
        watch = np.minimum((pe * mean_eng + (1 - pe) * mean_skip) / self.cfg.mtl.watch_time_cap_s, 1.0)
        p_fin_eng = np.where((r.clickbait > 0) & (dur <= b.clickbait_hook_s), 1.0, 1.0 - ndtr(-m / s))
        finish = pe * p_fin_eng + (1 - pe) * p_play * (1.0 - ndtr(-ms / ss))
        inter = expit(r.interaction_logit)
        like, share = pe * inter[..., 0], pe * inter[..., 1]
        return np.stack([valid, watch, finish, like, share], -1)

    def sample(self, r: ItemResponse, k: np.ndarray) -> dict[str, np.ndarray]:
        """Draw feedback for shown items. ``k``: uint64 keys shaped like the items (request x item),
        so that the same user meets the same item at the same request with the same dice."""
        b = self.b
        engaged = crng.uniform(k, _S_ENGAGE) < r.p_engage
        click = crng.uniform(k, _S_CLICK) < expit(b.click_bias + b.click_engaged * engaged
                                                     + b.click_clickbait * r.clickbait)
        z = crng.normal(k, _S_RATIO)
        ratio_eng = np.exp(r.log_ratio_mean + b.engaged_ratio_sigma * z)
        ratio_skip = b.skip_seconds_median * np.exp(b.skip_seconds_sigma * z) / r.duration
        ratio_skip = np.where(crng.uniform(k, _S_ZERO) < b.skip_zero_prob, 0.0, ratio_skip)
        ratio = np.minimum(np.where(engaged, ratio_eng, ratio_skip), b.max_watch_ratio)
        watch = ratio * r.duration
        hook = engaged & (r.clickbait > 0)
        watch = np.where(hook, np.maximum(watch, np.minimum(b.clickbait_hook_s, r.duration)), watch)
        ratio = watch / r.duration
        out = {
            "click": click.astype(np.int8),
            "watch_time": watch,
            "watch_ratio": ratio,
            "valid": (watch > b.valid_threshold_s).astype(np.int8),
            "finish": (watch >= r.duration * (1 - 1e-9)).astype(np.int8),
            "engaged": engaged,
        }
        p = expit(r.interaction_logit)
        for i, name in enumerate(INTERACTIONS):
            out[name] = (engaged & (crng.uniform(k, _S_INTERACT[name]) < p[..., i])).astype(np.int8)
        return out
