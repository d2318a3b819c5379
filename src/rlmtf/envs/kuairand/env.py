"""A second environment grounded in the real KuaiRand-Pure log: real users, real items, fitted behaviour.

:class:`KuaiRandEnv` is a world of the one request engine (``rlmtf.envs.engine``), like the simulator:
the engine plays its days, sessions and requests and this module supplies retrieval, scores, behaviours
and the leave / return model as hooks. So ``simulate_to_parquet``, ``run_parallel``, ``online_ab``, the
progressive training pipeline, the ES algorithm and the paper experiment accept it unchanged. Build one
with ``rlmtf.envs.factory.make_env("kuairand")`` or :meth:`KuaiRandEnv.load`; its configuration is
``config.py``'s :class:`~rlmtf.envs.kuairand.config.KuaiRandEnvConfig`.

**World.** Users 0..27284 are the rows of ``user_features_pure.csv``, items 0..7582 the rows of
``video_features_basic_pure.csv``. Two models fitted on the training days (``fit.py``) play two roles:
the :class:`~rlmtf.envs.kuairand.response.ResponseModel` is the users' truth, the :class:`~rlmtf.envs.kuairand.
mtl.KuaiRandMTL` the platform's imperfect ranking model.

**A request** (one user, one session, request index t):

1. *Retrieval*: ``n_candidates`` = 100 items (duplicates possible, never shown twice in one list):
   ``interest_share`` = 50% from the user's tags (a tag drawn from the user's tag distribution, then a
   uniform item carrying that tag), ``popular_share`` = 30% in proportion to training-day impressions
   (+ ``popular_prior`` each), the rest uniform over the catalogue. The user's tag distribution is
   ``training-day views per tag + pre_weight * pre-period (before 2022-04-25) watched videos per tag +
   tag_prior * the catalogue-wide view share of the tag``; it is what the platform knows, not the truth.
2. *Ranking inputs*: the MTL model's 5 scores (``rlmtf.core.fusion.MTL_TASKS``) for every candidate.
3. *Policy*: sees the :class:`~rlmtf.policy.base.RequestObs` below and returns actions; the candidates
   are ranked by the fused score (``rlmtf.core.fusion``) and the top ``list_len`` = 5 are shown, exactly as
   in the simulator (``rank_shown``).
4. *Behaviour* of each shown item, from the response model (draws are counter-based, see below): the
   watch ratio (zero-play mass + log-normal mixture), watch time = ratio * duration, **valid = long
   view** (play >= min(duration, 18 s), KuaiRand's definition), finish = ratio >= 1, then like, follow,
   comment and **share = forward** given the realised watch. **collect does not exist in KuaiRand: it is
   always 0.** click is not modelled by the response model: it is drawn from the log's P(is_click |
   long view) = 0.997 and P(is_click | no long view) = 0.192. Rewards are ``rlmtf.core.reward.item_reward``.

**Observations.** ``user_profile`` = the 146 encoded user features + the user's 10 training-day
statistics (``features.STAT_NAMES``); ``user_history`` = the behaviour history updated inside the
simulated sessions, as in the simulator (recent tags: an exponential average over long-viewed items'
tags, long-view / watch-ratio / like rates, today's sessions and minutes, last session length, long-term
engagement), initialised from the user's training-day statistics; ``context`` = hour of day (sin, cos),
request index / 10, session index / max_sessions_per_day; ``item_features`` = the 75 encoded video
features + the video's 10 training-day statistics. ``true_scores`` (the response model's P(long view),
E[watch time] / 120 s, P(finish), P(like), P(forward)) are computed for every candidate only for a
policy that ranks by them (the oracle; slow: about 70 us per pair), and logged for shown items only
when ``cfg.log_true_scores`` (off by default: it halves the speed).

**Leave and return model.** KuaiRand-Pure has no sessions; the environment defines them from the log
(``usage.py``: 30-minute gaps between one user's training-day impressions) and treats **one logged
impression as one request**: the log holds only the "pure" videos, a thinned sample of each feed, so a
request of ``list_len`` items stands for one logged impression (users see ``list_len`` times as many
videos a day as the log records). From the data (training days, per user row, shrunk towards the
log-wide value with the pseudo-counts named in the config):

- ``P(active on a day) = (active_days + active_smoothing * 0.326) / (10 + active_smoothing)``
  (the log's 88,992 active user-days / (27,285 users * 10 days) = 0.326);
- sessions per active day ``s_u = (sessions + sessions_smoothing * 1.589) / (active_days +
  sessions_smoothing)`` (log-wide 1.589, close to geometric: P(>= k+1 | >= k) = 0.36, 0.38, 0.40), so
  after each session the user opens another one that day with ``r_u = 1 - 1 / s_u``, at most
  ``max_sessions_per_day`` = 13 (the log's maximum);
- requests per session ``m_u = (views + length_smoothing * 1.215) / (sessions + length_smoothing)``
  (log-wide mean 1.215 impressions per session, median 1, 83.7% of sessions have one), so the base
  per-request leave probability is ``1 / m_u`` (a geometric session length with that mean).

Assumptions (not identified by the log, whose raw correlation even goes the other way: a session ends
after 86% of long views and 81% of other impressions, confounded by who watches long):

- ``logit P(leave after request t) = logit(1 / m_u) + leave_offset + leave_no_long_view * (no long view
  among the shown items - q_u) - leave_like * (at least one like - k_u)``, with ``leave_no_long_view`` =
  1.0 and ``leave_like`` = 0.7 logits. ``q_u = (1 - lv_u)^l`` and ``k_u = 1 - (1 - like_u)^l`` centre the
  terms at what lists of the user's logged long-view / like rates would give; ``leave_offset`` (+0.12) is
  calibrated (:func:`calibrate_offsets`, full fitted models, all 27,285 users x 2 days) so that the
  baseline policy reproduces the log's mean session length, 1.215 requests (the baseline shows better
  lists than the log: about 46% long views against 31%); sessions are cut at ``max_requests`` = 30;
- ``logit P(another session today) = logit(r_u) + return_offset + return_long_view * (long-view share of
  the session's items - lv_u)`` with ``return_long_view`` = 1.0; ``return_offset`` (-0.15) is calibrated
  so that the baseline policy reproduces the log's 1.589 sessions per active user-day;
- whether a user opens the app on a day does not depend on the policy (10 logged days are too few to
  estimate a cross-day retention effect), so policies move UVC / UDT through what is shown, session
  lengths and same-day returns;
- the hour of a session follows the log's hour-of-day histogram of session starts (Beijing time); the
  response model has no time features, so the hour is context only;
- ``RunResult.clickbait_shown`` is always 0 (KuaiRand has no clickbait trait).

**Randomness** is counter-based (``rlmtf.core.rng``) with the simulator's keys: who is active (user,
day), sessions' hours and returns (user, day, session), candidates and the leave draw (user, day,
session, request), and every behaviour of a shown item (request key, item id). The same seed gives
identical results, and policies run on one seed face common random numbers.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit, logit, ndtri
from torch import nn

from rlmtf.core import rng as crng
from rlmtf.core.config_io import ConfigError
from rlmtf.core.fusion import MTL_TASKS
from rlmtf.core.schema import FeatureGroup, FeatureSpec
from rlmtf.envs.engine import (
    CONTEXT_GROUP,
    RETRIEVAL_BUCKETS,
    Environment,
    RankingScores,
    UserState,
    retrieval_table,
)
from rlmtf.envs.kuairand.config import KuaiRandEnvConfig
from rlmtf.envs.kuairand.features import STAT_NAMES
from rlmtf.envs.kuairand.fit import FittedKuaiRand
from rlmtf.envs.kuairand.paths import resolve_data_dir
from rlmtf.envs.kuairand.response import BEHAVIOURS, long_view_rule, watch_inputs
from rlmtf.envs.kuairand.split_input import SplitInput, flatten
from rlmtf.envs.kuairand.usage import UsageStats, load_usage, save_usage, usage_stats
from rlmtf.policy.base import Policy

# stream ids of the KuaiRand draws (the engine's session-level streams are 1..4)
_S_CAND = 201
_S_COMPONENT, _S_RATIO, _S_ZERO, _S_CLICK = 211, 212, 213, 214
_S_BEHAVIOUR = {b: 220 + j for j, b in enumerate(BEHAVIOURS)}
_TRUTH_CHUNK = 512
_POP_BUCKETS = 1 << 20

__all__ = ["KuaiRandEnv", "KuaiRandUserState"]


class KuaiRandEnv(Environment):
    """Sessions of the real KuaiRand-Pure users over the real video pool (module docstring)."""

    name = "kuairand"

    def __init__(self, fitted: FittedKuaiRand, usage: UsageStats, cfg: KuaiRandEnvConfig | None = None):
        cfg = cfg or KuaiRandEnvConfig()
        cfg.validate()
        b = fitted.features
        self.fitted, self.builder, self.response, self.mtl_model = fitted, b, fitted.response, fitted.mtl
        if usage.n_users != b.n_users:
            raise ValueError(f"usage statistics cover {usage.n_users} users, the fitted models {b.n_users}")
        for name, given, real in (("n_users", cfg.n_users, b.n_users), ("n_items", cfg.n_items, b.n_items)):
            if given not in (0, real):
                raise ConfigError(f"{name} = {given}, but KuaiRand-Pure has {real} (leave it 0)")
        self.cfg = dataclasses.replace(cfg, n_users=b.n_users, n_items=b.n_items)
        self.usage = usage
        n_u, n_i = b.n_users, b.n_items
        # observable features: static + training-day statistics
        ustats = b.groups(np.arange(n_u), np.zeros(n_u, np.int64), ("user_stats",))["user_stats"]
        istats = b.groups(np.zeros(n_i, np.int64), np.arange(n_i), ("item_stats",))["item_stats"]
        user_blocks = {"user": b.t["user_x"].astype(np.float32), "user_stats": ustats}
        item_blocks = {"item": b.t["item_x"].astype(np.float32), "item_stats": istats}
        self.profile_table = np.ascontiguousarray(np.concatenate([user_blocks["user"], ustats], 1))
        self.item_table = np.ascontiguousarray(np.concatenate([item_blocks["item"], istats], 1))
        self.duration_s = b.t["item_duration_s"].astype(np.float64)
        mh = b.t["item_tags"].astype(np.float32)
        self.n_tags = mh.shape[1]
        self.item_tag_weight = mh / np.maximum(mh.sum(1, keepdims=True), 1.0)  # (I, T) rows sum to 1 (or 0)
        self.spec = FeatureSpec(
            user_profile=FeatureGroup(tuple((f"user:{n}", 1) for n in b.names("user"))
                                      + tuple((f"user_stats:{n}", 1) for n in STAT_NAMES)),
            user_history=FeatureGroup((("recent_tags", self.n_tags), ("long_view_rate", 1), ("watch_ratio", 1),
                                       ("like_rate", 1), ("sessions_today", 1), ("minutes_today", 1),
                                       ("last_session_length", 1), ("long_term_engagement", 1))),
            context=CONTEXT_GROUP,
            item_features=FeatureGroup(tuple((f"item:{n}", 1) for n in b.names("item"))
                                       + tuple((f"item_stats:{n}", 1) for n in STAT_NAMES)),
            action_dim=cfg.action_space.dim)
        # users' logged rates (shrunk), for the history's start and the leave / return centring
        col = {n: j for j, n in enumerate(STAT_NAMES)}
        self.user_lv_rate = expit(ustats[:, col["logit_long_view"]].astype(np.float64))
        self.user_like_rate = expit(ustats[:, col["logit_like"]].astype(np.float64))
        self.user_watch_ratio = ustats[:, col["mean_ratio"]].astype(np.float64)
        # retrieval tables
        tag_views = b.t["user_tag_tot"][:, :, 0].astype(np.float64)  # (U, T) training views per tag
        if "pre_tag_counts" in b.t:
            tag_views_pre = b.t["pre_tag_counts"][:, 0, :].astype(np.float64)
        else:
            tag_views_pre = np.zeros_like(tag_views)
        global_share = tag_views.sum(0) + 1e-3
        self.global_tag_share = global_share / global_share.sum()
        self._tag_views, self._tag_views_pre = tag_views, tag_views_pre
        tags, items = np.nonzero(mh.T)  # sorted by tag
        self.by_tag = items.astype(np.int64)
        self.tag_count = np.bincount(tags, minlength=self.n_tags)
        self.tag_start = np.concatenate([[0], np.cumsum(self.tag_count)[:-1]])
        self.item_views = b.t["item_tot"][:, 0].astype(np.float64)
        # the models, with their first layers split into per-user and per-item parts
        mn, rn = self.mtl_model.net, self.response.net
        mods = flatten(mn.bottom)
        self._mtl = SplitInput(b, self.mtl_model.cfg.groups, mn.norm, mods[0], [*mods[1:], mn.heads, nn.Sigmoid()],
                                user_blocks, item_blocks)
        mods = flatten(rn.trunk)
        self._trunk = SplitInput(b, self.response.cfg.groups, rn.norm, mods[0], mods[1:], user_blocks, item_blocks)
        self.watch_time_cap_s = float(self.mtl_model.cfg.watch_time_cap_s)
        s = usage.summary
        self.p_click = (float(s["p_click_given_no_long_view"]), float(s["p_click_given_long_view"]))
        h = usage.hour_hist.astype(np.float64) + 1e-9
        self.hour_cdf = np.cumsum(h) / h.sum()
        self._derive()

    # --- construction -------------------------------------------------------------------------------------

    def _derive(self) -> None:
        """Per-user tables that depend on the config (recomputed by :meth:`with_config`)."""
        cfg, u = self.cfg, self.usage
        s = u.summary
        r, sc, dc = cfg.retrieval, cfg.session, cfg.days
        n_days = float(s["train_days"])
        self.p_active_table = ((u.active_days + dc.active_smoothing * s["active_day_share"])
                               / (n_days + dc.active_smoothing))
        spd = (u.sessions + dc.sessions_smoothing * s["sessions_per_active_day"]) / (u.active_days +
                                                                                      dc.sessions_smoothing)
        self.return_logit = logit(np.clip(1.0 - 1.0 / np.maximum(spd, 1.0), 1e-3, 0.99))
        m = (u.views + sc.length_smoothing * s["session_length_mean"]) / (u.sessions + sc.length_smoothing)
        l = cfg.list_len
        q_no_lv = (1.0 - self.user_lv_rate) ** l
        k_like = 1.0 - (1.0 - self.user_like_rate) ** l
        self.leave_logit = (logit(np.clip(1.0 / np.maximum(m, 1.0), 1e-3, 1 - 1e-3))
                            - sc.leave_no_long_view * q_no_lv + sc.leave_like * k_like)
        counts = self._tag_views + r.pre_weight * self._tag_views_pre + r.tag_prior * self.global_tag_share
        counts *= self.tag_count > 0  # a tag no video carries cannot be retrieved
        self.user_tag_dist = counts / counts.sum(1, keepdims=True)  # (U, T)
        self._tag_table = retrieval_table(self.user_tag_dist)  # (U, 256) tag ids, in units of 1/256
        pop = self.item_views + r.popular_prior
        cdf = np.cumsum(pop) / pop.sum()
        # popularity draws by lookup: bucket j of 2^20 holds the item whose CDF interval contains its midpoint
        self._pop_table = np.minimum(np.searchsorted(cdf, (np.arange(_POP_BUCKETS) + 0.5) / _POP_BUCKETS,
                                                     side="right"), len(pop) - 1).astype(np.int32)
        n = r.n_candidates
        n_int = int(round(n * r.interest_share))
        n_pop = min(int(round(n * r.popular_share)), n - n_int)
        self._slot_kind = np.repeat(np.array([0, 1, 2], np.int8), [n_int, n_pop, n - n_int - n_pop])

    def with_config(self, cfg: KuaiRandEnvConfig) -> KuaiRandEnv:
        """The same world (fitted models, tables) under another config; cheap (no model work)."""
        cfg.validate()
        env = copy.copy(self)
        env.cfg = dataclasses.replace(cfg, n_users=self.cfg.n_users, n_items=self.cfg.n_items)
        env._derive()
        return env

    @classmethod
    def load(cls, models_dir: str | os.PathLike[str], cfg: KuaiRandEnvConfig | None = None,
             data_dir: str | os.PathLike[str] | None = None, log: Callable[[str], None] = print) -> KuaiRandEnv:
        """The environment of fitted models in ``models_dir`` (see :func:`make_env` for fitting them)."""
        from rlmtf.envs.kuairand.fit import load_fitted

        models_dir = Path(models_dir)
        fitted = load_fitted(models_dir)
        usage = load_usage(models_dir)
        if usage is None:
            usage = _usage_from_data(data_dir, models_dir, log)
        return cls(fitted, usage, cfg)

    # --- the pieces of a request --------------------------------------------------------------------------

    def retrieve(self, user: np.ndarray, req_key: np.ndarray) -> np.ndarray:
        """Candidates (B, N) item rows: slot kinds interest / popular / random (module docstring)."""
        n, n_i = self._slot_kind.size, self.cfg.n_items
        u1, u2 = crng.uniform_pair(crng.key(req_key[:, None], np.arange(n)), _S_CAND)  # (B, N)
        kind = self._slot_kind[None, :]
        tag = self._tag_table[user[:, None], np.minimum(u1 * RETRIEVAL_BUCKETS, RETRIEVAL_BUCKETS - 1)
                              .astype(np.intp)]
        pos = np.minimum((u2 * self.tag_count[tag]).astype(np.int64), self.tag_count[tag] - 1)
        interest = self.by_tag[self.tag_start[tag] + pos]
        popular = self._pop_table[(u1 * _POP_BUCKETS).astype(np.intp)]
        rand = np.minimum((u1 * n_i).astype(np.int64), n_i - 1)
        return np.where(kind == 0, interest, np.where(kind == 1, popular, rand)).astype(np.int64)

    def mtl_scores(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The platform's MTL scores (B, M, 5) in ``MTL_TASKS`` order for user rows (B,) and items (B, M)."""
        b, m = items.shape
        return self._mtl(user, items).numpy().reshape(b, m, len(MTL_TASKS))

    def true_scores(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The response model's task values (B, M, 5): P(long view), min(E[watch s] / cap, 1), P(finish),
        P(like), P(forward). About 70 us per pair."""
        b, m = items.shape
        h = self._trunk(user, items)
        return self._truth_from_trunk(h, items.reshape(-1)).reshape(b, m, len(MTL_TASKS))

    @torch.no_grad()
    def _truth_from_trunk(self, h: torch.Tensor, items: np.ndarray) -> np.ndarray:
        dur = self.duration_s[items]
        out = np.empty((len(items), len(MTL_TASKS)), np.float32)
        j_like, j_fwd = BEHAVIOURS.index("like"), BEHAVIOURS.index("forward")
        for s in range(0, len(items), _TRUTH_CHUNK):
            sl = slice(s, s + _TRUTH_CHUNK)
            o = self.response.outputs_from_trunk(h[sl], torch.as_tensor(dur[sl], dtype=torch.float32))
            beh = o["behaviours"].numpy()
            out[sl, 0] = o["p_long_view_watch"].numpy()
            out[sl, 1] = np.minimum(o["expected_ratio"].numpy() * dur[sl] / self.watch_time_cap_s, 1.0)
            out[sl, 2] = o["p_finish"].numpy()
            out[sl, 3] = beh[:, j_like]
            out[sl, 4] = beh[:, j_fwd]
        return out

    @torch.no_grad()
    def respond(self, user: np.ndarray, items: np.ndarray, keys: np.ndarray, with_truth: bool = False
                ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Draw the behaviours of shown items (B, l) from the response model with counter-based uniforms
        keyed by ``keys`` (B, l); also their true scores (B, l, 5) when ``with_truth``.

        The same procedure as :meth:`ResponseModel.sample` (component, log-normal ratio, zero play, then the
        interactions given the realised watch), with one uniform per decision from ``rlmtf.core.rng``."""
        rc, net = self.response.cfg, self.response.net
        b, l = items.shape
        flat = items.reshape(-1)
        k = keys.reshape(-1)
        h = self._trunk(user, items)  # (n, H)
        z, ml, mu, sd = (t.double().numpy() for t in net.mixture(h))
        pi = np.exp(ml - ml.max(1, keepdims=True))
        pi /= pi.sum(1, keepdims=True)
        comp = (crng.uniform(k, _S_COMPONENT)[:, None] > np.cumsum(pi, 1)).sum(1).clip(max=pi.shape[1] - 1)
        rows = np.arange(len(flat))
        y = mu[rows, comp] + sd[rows, comp] * ndtri(np.clip(crng.uniform(k, _S_RATIO), 1e-12, 1 - 1e-12))
        zero = crng.uniform(k, _S_ZERO) < expit(z)
        ratio = np.where(zero, 0.0, np.clip(np.exp(y), rc.min_ratio, rc.max_ratio))
        dur = self.duration_s[flat]
        lv = long_view_rule(ratio, dur)
        g = watch_inputs(torch.as_tensor(ratio, dtype=torch.float32), torch.as_tensor(lv, dtype=torch.float32),
                         rc.min_ratio)
        p = torch.sigmoid(net.behaviour_logits(h, g[:, None]))[:, 0].double().numpy()  # (n, nb)
        hit = {name: crng.uniform(k, _S_BEHAVIOUR[name]) < p[:, j] for j, name in enumerate(BEHAVIOURS)}
        p_click = np.where(lv, self.p_click[1], self.p_click[0])
        watch = ratio * dur

        def shaped(x, dtype):
            return np.asarray(x).astype(dtype).reshape(b, l)

        fb = {"click": shaped(crng.uniform(k, _S_CLICK) < p_click, np.int8),
              "watch_time": shaped(watch, np.float64), "watch_ratio": shaped(ratio, np.float64),
              "valid": shaped(lv, np.int8), "finish": shaped(ratio >= 1.0, np.int8),
              "like": shaped(hit["like"], np.int8), "share": shaped(hit["forward"], np.int8),
              "collect": np.zeros((b, l), np.int8), "follow": shaped(hit["follow"], np.int8),
              "comment": shaped(hit["comment"], np.int8)}
        truth = self._truth_from_trunk(h, flat).reshape(b, l, -1) if with_truth else None
        return fb, truth

    def hour_angle(self, u: np.ndarray) -> np.ndarray:
        """Uniforms -> hour of day (as an angle) from the log's histogram of session starts."""
        j = np.minimum(np.searchsorted(self.hour_cdf, u, side="right"), 23)
        lo = np.where(j > 0, self.hour_cdf[np.maximum(j - 1, 0)], 0.0)
        frac = np.clip((u - lo) / np.maximum(self.hour_cdf[j] - lo, 1e-12), 0.0, 1.0)
        return (j + frac) / 24.0 * 2 * np.pi

    # --- the day (engine hooks) ---------------------------------------------------------------------------

    def user_state(self, user_ids: np.ndarray) -> KuaiRandUserState:
        return KuaiRandUserState(self, user_ids)

    def p_active(self, st: KuaiRandUserState) -> np.ndarray:
        return st.p_active

    def session_hour(self, u: np.ndarray) -> np.ndarray:
        return self.hour_angle(u)

    def new_sessions(self, n_slots: int) -> None:
        return None  # the leave and return model needs no session state beyond the engine's

    def start_sessions(self, sessions: None, slots: np.ndarray, g: np.ndarray, st: KuaiRandUserState) -> None:
        pass  # nothing to reset: see new_sessions

    def close_sessions(self, sessions: None, slots: np.ndarray, g: np.ndarray, k: np.ndarray, length: np.ndarray,
                       valid_in_session: np.ndarray, st: KuaiRandUserState) -> np.ndarray:
        """P(another session today) rises with the session's long-view share (module docstring)."""
        st.end_sessions(g, length, valid_in_session)
        share = valid_in_session / np.maximum(length * self.cfg.list_len, 1)
        dc = self.cfg.days
        return expit(st.return_logit[g] + dc.return_offset + dc.return_long_view * (share - st.base_lv[g]))

    # --- the request (engine hooks) -----------------------------------------------------------------------

    def ranking_scores(self, user: np.ndarray, cand: np.ndarray, day: int, policy: Policy) -> RankingScores:
        """The MTL model's scores; the response model's task values only for a policy that ranks by them."""
        truth = self.true_scores(user, cand) if policy.score_source == "true" else None
        return RankingScores(mtl=self.mtl_scores(user, cand), truth=truth)

    def draw_feedback(self, scores: RankingScores, user: np.ndarray, items: np.ndarray, shown: np.ndarray,
                      keys: np.ndarray, sessions: None, a: np.ndarray, log_truth: bool
                      ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        log_truth = log_truth and self.cfg.log_true_scores
        fb, truth_shown = self.respond(user, items, keys, with_truth=log_truth and scores.truth is None)
        logged = None
        if log_truth:
            logged = scores.truth
            if logged is None:
                logged = np.zeros((*shown.shape[:1], scores.mtl.shape[1], len(MTL_TASKS)), np.float32)
                np.put_along_axis(logged, shown[..., None], truth_shown, 1)
        return fb, logged

    def update_session(self, sessions: None, a: np.ndarray, g: np.ndarray, user: np.ndarray, t: np.ndarray,
                       items: np.ndarray, fb: dict[str, np.ndarray], st: KuaiRandUserState) -> np.ndarray:
        """Leave is more likely after a request without a long view, less after a like (module docstring)."""
        sc = self.cfg.session
        no_lv = (fb["valid"].sum(1) == 0).astype(np.float64)
        liked = (fb["like"].sum(1) > 0).astype(np.float64)
        st.update_history(g, self.item_tag_weight[items], fb)
        return expit(st.leave_logit[g] + sc.leave_offset + sc.leave_no_long_view * no_lv - sc.leave_like * liked)

    def leave_logits(self, sessions: None, a: np.ndarray, g: np.ndarray, user: np.ndarray, t: np.ndarray,
                     items: np.ndarray, fb: dict[str, np.ndarray], st: KuaiRandUserState) -> np.ndarray:
        """In-order consumption: the leave logit after each item j, from items 1..j (no long view among
        them yet, a like among them), (b, l)."""
        sc = self.cfg.session
        no_lv = (np.cumsum(fb["valid"], 1) == 0).astype(np.float64)
        liked = (np.cumsum(fb["like"], 1) > 0).astype(np.float64)
        return st.leave_logit[g][:, None] + sc.leave_offset + sc.leave_no_long_view * no_lv - sc.leave_like * liked


class KuaiRandUserState(UserState):
    """The engine's per-user state, its history started from the user's training-day statistics, plus the
    per-user tables of the day and leave model."""

    def __init__(self, env: KuaiRandEnv, user_ids: np.ndarray):
        super().__init__(user_ids, recent=env.user_tag_dist[user_ids].astype(np.float32),
                         valid_rate=env.user_lv_rate[user_ids].copy(),
                         watch_ratio=env.user_watch_ratio[user_ids].copy(),
                         like_rate=env.user_like_rate[user_ids].copy())
        self.p_active = env.p_active_table[user_ids]
        self.return_logit = env.return_logit[user_ids]
        self.leave_logit = env.leave_logit[user_ids]
        self.base_lv = env.user_lv_rate[user_ids]


def _usage_from_data(data_dir: str | os.PathLike[str] | None, models_dir: Path | None,
                     log: Callable[[str], None]) -> UsageStats:
    from rlmtf.envs.kuairand.data import load_kuairand

    d = resolve_data_dir(data_dir)
    log(f"KuaiRand environment: computing usage statistics (sessions, active days) from {d}")
    usage = usage_stats(load_kuairand(d))
    if models_dir is not None:
        try:
            save_usage(models_dir, usage)
        except OSError as e:  # a read-only model directory: keep them in memory
            log(f"  (not cached: {e})")
    return usage
