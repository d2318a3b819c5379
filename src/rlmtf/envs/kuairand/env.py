"""A second environment grounded in the real KuaiRand-Pure log: real users, real items, fitted behaviour.

:class:`KuaiRandEnv` is a drop-in replacement for :class:`rlmtf.envs.sim.simulator.Simulator` (it subclasses it
and reuses its day / slot / session-budget / logging machinery): same ``run`` signature and
:class:`~rlmtf.envs.sim.simulator.RunResult`, a ``spec``, and a ``cfg`` with the fields callers read
(``n_users``, ``list_len``, ``action_space``, ``reward``, ``max_concurrent_sessions``,
``days.max_sessions_per_day``, ``to_dict()``). So ``simulate_to_parquet``, ``run_parallel``,
``online_ab``, ``run_ptm``, the ES algorithm and ``run_paper`` accept it unchanged. Build one with
:func:`make_env` (``make_env("kuairand")``) or :meth:`KuaiRandEnv.load`.

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
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit, logit, ndtri
from torch import nn

from rlmtf.core import rng as crng
from rlmtf.core.config_io import ConfigError, load_config_file, to_dict
from rlmtf.core.fusion import MTL_TASKS, ActionSpace
from rlmtf.core.nets import standardise
from rlmtf.core.reward import RewardWeights, item_reward
from rlmtf.core.schema import FeatureGroup, FeatureSpec
from rlmtf.envs.kuairand.features import STAT_NAMES, FeatureBuilder
from rlmtf.envs.kuairand.fit import FittedKuaiRand
from rlmtf.envs.kuairand.paths import resolve_data_dir
from rlmtf.envs.kuairand.response import BEHAVIOURS, long_view_rule, watch_inputs
from rlmtf.envs.kuairand.usage import UsageStats, load_usage, save_usage, usage_stats
from rlmtf.envs.sim.simulator import (
    _RETRIEVAL_BUCKETS,
    _S_HOUR,
    _S_LEAVE,
    RunResult,
    Simulator,
    _Day,
    _log_rows,
    _retrieval_table,
    rank_shown,
)
from rlmtf.envs.sim.world import CONTEXT_GROUP
from rlmtf.policy.base import Policy, RequestObs, check_actions

# stream ids of the KuaiRand draws (the simulator's session-level streams 1..6 are reused by _Day)
_S_CAND = 201
_S_COMPONENT, _S_RATIO, _S_ZERO, _S_CLICK = 211, 212, 213, 214
_S_BEHAVIOUR = {b: 220 + j for j, b in enumerate(BEHAVIOURS)}
_TRUTH_CHUNK = 512
_PAIR_CHUNK = 8192
_POP_BUCKETS = 1 << 20


# --- configuration --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetrievalConfig:
    """Where the candidates come from (see the module docstring)."""

    n_candidates: int = 100
    interest_share: float = 0.5
    """Share of candidates drawn from the user's tags."""
    popular_share: float = 0.3
    """Share drawn in proportion to training-day impressions; the rest are uniform over the catalogue."""
    tag_prior: float = 2.0
    """Pseudo-views of the catalogue-wide tag distribution added to each user's tag counts (> 0)."""
    pre_weight: float = 0.5
    """Weight of a pre-period watched video's tags relative to a training-day view's."""
    popular_prior: float = 1.0
    """Pseudo-impressions added to every item in the popularity draw (cold items stay reachable)."""


@dataclass(frozen=True)
class SessionConfig:
    """The per-request leave model (see the module docstring; numbers marked *data* come from the log)."""

    leave_offset: float = 0.12
    """Calibrated (``calibrate_offsets``) so the baseline policy's mean session length is the log's 1.215
    requests, with the full fitted models."""
    leave_no_long_view: float = 1.0
    """Assumption: + this on the leave logit after a request whose shown items had no long view."""
    leave_like: float = 0.7
    """Assumption: - this on the leave logit after a request with at least one like."""
    length_smoothing: float = 5.0
    """Pseudo-sessions of the log-wide mean length (*data*: 1.215) in each user's mean session length."""
    max_requests: int = 30
    """Sessions are cut after this many requests."""


@dataclass(frozen=True)
class DayConfig:
    """Active days and sessions per day (see the module docstring)."""

    active_smoothing: float = 2.0
    """Pseudo-days of the log-wide active share (*data*: 0.326) in each user's P(active)."""
    sessions_smoothing: float = 2.0
    """Pseudo active days of the log-wide sessions per active day (*data*: 1.589) in each user's rate."""
    return_long_view: float = 1.0
    """Assumption: + this * (the session's long-view share - the user's logged rate) on the return logit."""
    return_offset: float = -0.15
    """Calibrated (``calibrate_offsets``) so the baseline policy's sessions per active user-day are the log's
    1.589, with the full fitted models."""
    max_sessions_per_day: int = 13
    """*Data*: the most sessions one user had on one training day."""


@dataclass(frozen=True)
class KuaiRandEnvConfig:
    """Everything the KuaiRand environment does beyond the fitted models. ``n_users`` / ``n_items`` are
    filled from the data (leave them 0 in a config file)."""

    env: str = "kuairand"
    n_users: int = 0
    n_items: int = 0
    list_len: int = 5
    """l, the number of items shown per request."""
    max_concurrent_sessions: int = 2048
    """Sessions simulated together in one vectorised batch (memory, not semantics)."""
    log_true_scores: bool = False
    """Log the response model's task probabilities of shown items (``true_scores``); about halves the speed."""
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    days: DayConfig = field(default_factory=DayConfig)
    reward: RewardWeights = field(default_factory=RewardWeights)
    action_space: ActionSpace = field(default_factory=ActionSpace)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validate(self) -> None:
        r = self.retrieval
        problems = []
        if self.env != "kuairand":
            problems.append(f"env must be 'kuairand', got {self.env!r}")
        if not 1 <= self.list_len <= r.n_candidates:
            problems.append(f"list_len must be in [1, n_candidates={r.n_candidates}], got {self.list_len}")
        if self.max_concurrent_sessions < 1:
            problems.append("max_concurrent_sessions must be >= 1")
        if min(r.interest_share, r.popular_share) < 0 or r.interest_share + r.popular_share > 1:
            problems.append("retrieval shares must be >= 0 and sum to <= 1")
        if r.tag_prior <= 0 or r.popular_prior <= 0 or r.pre_weight < 0:
            problems.append("retrieval tag_prior and popular_prior must be > 0, pre_weight >= 0")
        if self.session.max_requests < 1 or self.days.max_sessions_per_day < 1:
            problems.append("session.max_requests and days.max_sessions_per_day must be >= 1")
        if min(self.session.length_smoothing, self.days.active_smoothing, self.days.sessions_smoothing) <= 0:
            problems.append("smoothing pseudo-counts must be > 0")
        if problems:
            raise ConfigError("KuaiRand environment config: " + "; ".join(problems))


def load_env_config(path: str | os.PathLike[str] | None) -> KuaiRandEnvConfig:
    """Defaults overridden by a TOML / YAML / JSON file of the same nesting (like ``load_sim_config``)."""
    return load_config_file(KuaiRandEnvConfig, path, "env config")


# --- fast model evaluation --------------------------------------------------------------------------------

_USER_GROUPS, _ITEM_GROUPS, _PAIR_GROUPS = ("user", "user_stats"), ("item", "item_stats"), ("cross", "pre")


def _flatten(mods) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in mods:
        out += _flatten(m) if isinstance(m, nn.Sequential) else [m]
    return out


class _SplitInput:
    """A network ``rest(first(standardise(x)))`` evaluated with the first linear layer's user and item parts
    precomputed per user and per item: standardisation is per column, so ``first(std(x)) = A_user[u] +
    A_item[i] + W_pair std(x_pair)``. Equal to the network up to float rounding; far cheaper per pair."""

    def __init__(self, builder: FeatureBuilder, groups: tuple[str, ...], norm: nn.Module, first: nn.Linear,
                 rest: list[nn.Module], user_blocks: dict[str, np.ndarray], item_blocks: dict[str, np.ndarray]):
        self.builder, self.rest = builder, list(rest)
        self._bufs: dict[int, torch.Tensor] = {}
        self.pair_groups = tuple(g for g in groups if g in _PAIR_GROUPS)
        cols = np.cumsum([0, *(len(builder.names(g)) for g in groups)])
        span = {g: slice(int(cols[j]), int(cols[j + 1])) for j, g in enumerate(groups)}
        w, mean, std = first.weight.detach(), norm.mean, norm.std

        def part(names: tuple[str, ...], blocks: dict[str, np.ndarray], n: int) -> torch.Tensor:
            acc = torch.zeros(n, w.shape[0])
            for g in names:
                if g in span:
                    s = span[g]
                    x = standardise(torch.as_tensor(blocks[g], dtype=torch.float32), mean[s], std[s])
                    acc += x @ w[:, s].T
            return acc

        with torch.no_grad():
            self.a_user = part(_USER_GROUPS, user_blocks, builder.n_users).contiguous()
            self.a_item = (part(_ITEM_GROUPS, item_blocks, builder.n_items) + first.bias.detach()).contiguous()
            if self.pair_groups:
                idx = np.concatenate([np.arange(span[g].start, span[g].stop) for g in self.pair_groups])
                t = torch.as_tensor(idx)
                self.w_pair, self.pair_mean, self.pair_std = w[:, t].T.contiguous(), mean[t], std[t]
        unknown = set(groups) - set(_USER_GROUPS + _ITEM_GROUPS + _PAIR_GROUPS)
        if unknown:
            raise ValueError(f"feature groups {sorted(unknown)} are not known to the environment")

    @torch.no_grad()
    def __call__(self, u: np.ndarray, i: np.ndarray) -> torch.Tensor:
        """u (B,) user rows, i (B, M) item rows -> (B * M, out) activations of the network."""
        b, m = i.shape
        out = torch.empty(b * m, self.out_dim)
        step = max(1, _PAIR_CHUNK // max(m, 1))  # requests per chunk: activations stay in cache
        for s in range(0, b, step):
            self._chunk(u[s:s + step], i[s:s + step], out[s * m:min(s + step, b) * m])
        return out

    @property
    def out_dim(self) -> int:
        return [mod for mod in self.rest if isinstance(mod, nn.Linear)][-1].out_features \
            if any(isinstance(mod, nn.Linear) for mod in self.rest) else self.a_item.shape[1]

    def _buffer(self, j: int, rows: int, cols: int) -> torch.Tensor:
        """Scratch (rows, cols) reused across calls: fresh large tensors cost page faults on every request."""
        buf = self._bufs.get(j)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = self._bufs[j] = torch.empty(max(rows, _PAIR_CHUNK), cols)
        return buf[:rows]

    def _chunk(self, u: np.ndarray, i: np.ndarray, out: torch.Tensor) -> None:
        b, m = i.shape
        n = b * m
        x = self._buffer(-1, n, self.a_item.shape[1])
        torch.index_select(self.a_item, 0, torch.as_tensor(i.reshape(-1)), out=x)
        x.view(b, m, -1).add_(self.a_user[torch.as_tensor(u)][:, None])
        if self.pair_groups:
            g = self.builder.groups(np.repeat(u, m), i.reshape(-1), self.pair_groups)
            p = torch.as_tensor(np.concatenate([g[k] for k in self.pair_groups], 1))
            x.add_(standardise(p, self.pair_mean, self.pair_std) @ self.w_pair)
        for j, mod in enumerate(self.rest):
            if isinstance(mod, nn.ReLU):
                x.relu_()
            elif isinstance(mod, nn.Sigmoid):
                x.sigmoid_()
            elif isinstance(mod, nn.Linear):
                y = self._buffer(j, n, mod.out_features)
                torch.addmm(mod.bias, x, mod.weight.T, out=y)
                x = y
            else:
                x = mod(x)
        out.copy_(x)


# --- the environment --------------------------------------------------------------------------------------

class KuaiRandEnv(Simulator):
    """Sessions of the real KuaiRand-Pure users over the real video pool (module docstring)."""

    name = "kuairand"

    def __init__(self, fitted: FittedKuaiRand, usage: UsageStats, cfg: KuaiRandEnvConfig | None = None):
        # Simulator.__init__ builds a synthetic world; this environment brings its own, so it is not called.
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
        self.user_profile = np.ascontiguousarray(np.concatenate([user_blocks["user"], ustats], 1))
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
                                       + tuple((f"item_stats:{n}", 1) for n in STAT_NAMES)))
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
        mods = _flatten(mn.bottom)
        self._mtl = _SplitInput(b, self.mtl_model.cfg.groups, mn.norm, mods[0], [*mods[1:], mn.heads, nn.Sigmoid()],
                                user_blocks, item_blocks)
        mods = _flatten(rn.trunk)
        self._trunk = _SplitInput(b, self.response.cfg.groups, rn.norm, mods[0], mods[1:], user_blocks, item_blocks)
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
        self.p_active = (u.active_days + dc.active_smoothing * s["active_day_share"]) / (n_days + dc.active_smoothing)
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
        self._tag_table = _retrieval_table(self.user_tag_dist)  # (U, 256) tag ids, in units of 1/256
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
        tag = self._tag_table[user[:, None], np.minimum(u1 * _RETRIEVAL_BUCKETS, _RETRIEVAL_BUCKETS - 1)
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

    # --- Simulator hooks ----------------------------------------------------------------------------------

    def _user_state(self, user_ids: np.ndarray) -> _KRUserState:
        return _KRUserState(self, user_ids)

    def _day(self, policy: Policy, seed: int, day: int, st, acc: dict[str, np.ndarray], result: RunResult,
             budget: list, sink, progress, log_true: bool) -> _KRDay:
        return _KRDay(self, policy, seed, day, st, acc, result, budget, sink, progress, log_true)


class _KRUserState:
    """Per-user state across the sessions and days of one run (index = position in ``user_ids``)."""

    def __init__(self, env: KuaiRandEnv, user_ids: np.ndarray):
        self.user_ids = user_ids
        self.p_active = env.p_active[user_ids]
        self.return_logit = env.return_logit[user_ids]
        self.leave_logit = env.leave_logit[user_ids]
        self.base_lv = env.user_lv_rate[user_ids]
        self.recent_tags = env.user_tag_dist[user_ids].astype(np.float32)
        self.lv_rate = env.user_lv_rate[user_ids].copy()
        self.watch_ratio = env.user_watch_ratio[user_ids].copy()
        self.like_rate = env.user_like_rate[user_ids].copy()
        n = user_ids.size
        self.sessions_today = np.zeros(n)
        self.minutes_today = np.zeros(n)
        self.last_len = np.zeros(n)
        self.long_term_eng = np.zeros(n)

    def new_day(self) -> None:
        self.sessions_today[:] = 0
        self.minutes_today[:] = 0

    def history(self, g: np.ndarray) -> np.ndarray:
        return np.column_stack([self.recent_tags[g], self.lv_rate[g], self.watch_ratio[g], self.like_rate[g],
                                self.sessions_today[g] / 4.0, self.minutes_today[g] / 30.0, self.last_len[g] / 10.0,
                                self.long_term_eng[g] / 10.0]).astype(np.float32)

    def update_history(self, g: np.ndarray, tag_w: np.ndarray, fb: dict[str, np.ndarray]) -> None:
        lv = fb["valid"].astype(np.float32)
        n_lv = lv.sum(1)
        decay = (0.9 ** n_lv)[:, None].astype(np.float32)
        self.recent_tags[g] = decay * self.recent_tags[g] + (1 - decay) * (
            (tag_w * lv[..., None]).sum(1) / np.maximum(n_lv, 1)[:, None])
        self.lv_rate[g] = 0.9 * self.lv_rate[g] + 0.1 * lv.mean(1)
        self.watch_ratio[g] = 0.9 * self.watch_ratio[g] + 0.1 * np.minimum(fb["watch_ratio"], 2.0).mean(1)
        self.like_rate[g] = 0.9 * self.like_rate[g] + 0.1 * fb["like"].mean(1)
        self.minutes_today[g] += fb["watch_time"].sum(1) / 60.0

    def end_sessions(self, g: np.ndarray, length: np.ndarray, lv_in_session: np.ndarray) -> None:
        self.last_len[g] = length
        self.long_term_eng[g] = 0.7 * self.long_term_eng[g] + 0.3 * lv_in_session


class _KRDay(_Day):
    """One day of the KuaiRand environment: the simulator's slot machinery with KuaiRand's hooks."""

    sim: KuaiRandEnv
    st: _KRUserState

    def _p_active(self) -> np.ndarray:
        return self.st.p_active

    def _init_slots(self, n_slots: int) -> None:
        self.lv_in_session = np.zeros(n_slots)

    def _reset_slots(self, slots: np.ndarray, g: np.ndarray) -> None:
        self.lv_in_session[slots] = 0.0

    def _draw_hour(self, g: np.ndarray, k: np.ndarray) -> np.ndarray:
        return self.sim.hour_angle(crng.uniform(crng.key(self.seed, self.st.user_ids[g], self.day, k), _S_HOUR))

    def _close_sessions(self, slots: np.ndarray, g: np.ndarray, k: np.ndarray) -> np.ndarray:
        st, t = self.st, self.t[slots]
        lv = self.lv_in_session[slots]
        st.end_sessions(g, t, lv)
        share = lv / np.maximum(t * self.cfg.list_len, 1)
        dc = self.cfg.days
        return expit(st.return_logit[g] + dc.return_offset
                     + dc.return_long_view * (share - st.base_lv[g]))

    def _step(self, a: np.ndarray) -> tuple[np.ndarray, int]:
        env, cfg, st = self.sim, self.cfg, self.st
        sc, l = cfg.session, cfg.list_len
        g = self.g[a]
        u = st.user_ids[g]
        t, k = self.t[a], self.k[a]
        b = a.size
        req_key = crng.key(self.seed, u, self.day, k, t)
        cand = env.retrieve(u, req_key)  # (b, N)
        truth = env.true_scores(u, cand) if self.policy.score_source == "true" else None
        context = np.column_stack([np.sin(self.hour[a]), np.cos(self.hour[a]), t / 10.0,
                                   k / cfg.days.max_sessions_per_day]).astype(np.float32)
        obs = RequestObs(user_id=u, request_key=req_key, user_profile=env.user_profile[u],
                         user_history=st.history(g), context=context, item_id=cand, item_table=env.item_table,
                         mtl_scores=env.mtl_scores(u, cand), true_scores=truth, session_id=self._session_id(a))
        dec = self.policy.decide(obs)
        action = check_actions(dec.action, obs, dec.level, self.policy.name)
        shown = rank_shown(self.policy, obs, action, l, cfg.action_space, truth)  # (b, l)
        items = np.take_along_axis(cand, shown, 1)
        log_truth = self.sink is not None and self.log_true and cfg.log_true_scores
        fb, truth_shown = env.respond(u, items, crng.key(req_key[:, None], items),
                                      with_truth=log_truth and truth is None)
        rew = item_reward(fb, cfg.reward)  # (b, l)

        # leave: more likely after a request without a long view, less after a like (module docstring)
        no_lv = (fb["valid"].sum(1) == 0).astype(np.float64)
        liked = (fb["like"].sum(1) > 0).astype(np.float64)
        p_leave = expit(st.leave_logit[g] + sc.leave_offset + sc.leave_no_long_view * no_lv - sc.leave_like * liked)
        leave = crng.uniform(req_key, _S_LEAVE) < p_leave
        done = leave | (t + 1 >= sc.max_requests)
        observe = getattr(self.policy, "observe", None)
        if observe is not None:
            observe(obs, items, fb, done)

        st.update_history(g, env.item_tag_weight[items], fb)
        self.lv_in_session[a] += fb["valid"].sum(1)
        acc = self.acc
        for name, v in (("valid", fb["valid"].sum(1)), ("watch_time", fb["watch_time"].sum(1)),
                        ("reward", rew.sum(1))):
            acc[name][g] += v  # g is unique within a step
        acc["requests"][g] += 1
        acc["items"][g] += l
        self.result.n_rows += b * l
        if self.sink is not None:
            logged = None
            if log_truth:
                logged = truth
                if logged is None:
                    logged = np.zeros((b, cand.shape[1], len(MTL_TASKS)), np.float32)
                    np.put_along_axis(logged, shown[..., None], truth_shown, 1)
            self.buffer.append(_log_rows(self.day, self._session_id(a), u, t, items, obs, dec, action, shown, fb,
                                         rew, done, logged))
            self.buffer_rows += b * l
        self.t[a] += 1
        return done, b * l


# --- calibration -------------------------------------------------------------------------------------------

def usage_of_run(r: RunResult) -> dict[str, float]:
    """The calibrated quantities of a run: mean requests per session, sessions per active user-day, the
    share of user-days with a session, and the long-view rate of the shown items."""
    active = r.sessions > 0
    return {"session_length": r.session_length,
            "sessions_per_active_day": float(r.sessions.sum() / max(active.sum(), 1)),
            "active_day_share": float(active.mean()), "long_view_rate": float(r.valid.sum() / max(r.items.sum(), 1))}


def baseline_usage(env: KuaiRandEnv, policy: Policy | None = None, *, users: int = 5000, days: int = 1,
                   seed: int = 0) -> dict[str, float]:
    """:func:`usage_of_run` of ``policy`` (default: the baseline) over users 0..users-1."""
    from rlmtf.policy.fixed import baseline_policy

    pol = policy or baseline_policy(env.cfg.action_space)
    return usage_of_run(env.run(pol, seed=seed, days=days, users=np.arange(min(users, env.cfg.n_users))))


def calibrate_offsets(env: KuaiRandEnv, *, users: int = 30_000, days: int = 2, seed: int = 0, rounds: int = 5,
                      log: Callable[[str], None] = print) -> tuple[float, float]:
    """``(session.leave_offset, days.return_offset)`` at which the baseline policy reproduces the log's mean
    session length and sessions per active user-day (``env.usage.summary``), by secant steps on each
    offset in turn (the two barely interact). The defaults were set with this on the full fitted models."""
    s = env.usage.summary
    targets = {"session_length": float(s["session_length_mean"]),
               "sessions_per_active_day": float(s["sessions_per_active_day"])}
    off = {"leave": env.cfg.session.leave_offset, "return": env.cfg.days.return_offset}

    def measure(o: dict[str, float]) -> dict[str, float]:
        cfg = dataclasses.replace(env.cfg, session=dataclasses.replace(env.cfg.session, leave_offset=o["leave"]),
                                  days=dataclasses.replace(env.cfg.days, return_offset=o["return"]))
        m = baseline_usage(env.with_config(cfg), users=users, days=days, seed=seed)
        log(f"leave_offset {o['leave']:+.4f}, return_offset {o['return']:+.4f}: session length "
            f"{m['session_length']:.4f} (log {targets['session_length']:.4f}), sessions / active day "
            f"{m['sessions_per_active_day']:.4f} (log {targets['sessions_per_active_day']:.4f})")
        return m

    for _ in range(2):
        for name, metric, first_step in (("leave", "session_length", -0.3),
                                         ("return", "sessions_per_active_day", 0.3)):
            x0, step = off[name], first_step
            f0 = measure(off)[metric] - targets[metric]
            for _ in range(rounds):
                if abs(f0) < 0.002 * targets[metric]:
                    break
                off[name] = x0 + step
                f1 = measure(off)[metric] - targets[metric]
                if f1 == f0:
                    break
                step = float(np.clip(-f1 * (off[name] - x0) / (f1 - f0), -2.0, 2.0))
                x0, f0 = off[name], f1
            off[name] = x0
    return off["leave"], off["return"]


# --- the factory for the CLI -----------------------------------------------------------------------------

#: Bumped when the environment needs differently fitted models (part of the default cache key).
_MODELS_VERSION = "1"


def default_models_dir(data_dir: Path) -> Path:
    """``$RLMTF_KUAIRAND_MODELS``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/rlmtf/kuairand-<hash>``, the
    hash of the data directory's path and file sizes, the default fit config and a version."""
    env = os.environ.get("RLMTF_KUAIRAND_MODELS")
    if env:
        return Path(env)
    from rlmtf.envs.kuairand.fit import FitConfig

    h = hashlib.sha256()
    h.update(str(data_dir.resolve()).encode())
    for p in sorted(data_dir.iterdir()):
        if p.is_file():
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    h.update(json.dumps(dataclasses.asdict(FitConfig()), sort_keys=True, default=str).encode())
    h.update(_MODELS_VERSION.encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rlmtf" / f"kuairand-{h.hexdigest()[:12]}"


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


__all__ = ["DayConfig", "KuaiRandEnv", "KuaiRandEnvConfig", "RetrievalConfig", "SessionConfig",
           "baseline_usage", "calibrate_offsets", "default_models_dir", "load_env_config",
           "usage_of_run"]
