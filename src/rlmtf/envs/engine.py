"""One engine for every environment: days of sessions of requests, vectorised over concurrent sessions.

An environment (:class:`Environment`) is a world, the users and items, plus this engine. The engine
owns what every world does the same way; a world supplies the rest through a small set of hooks:

1. **Days** (:meth:`Environment.run`). Each user of the run opens the app on a day with probability
   ``p_active`` (hook); up to ``max_concurrent_sessions`` slots each play one user's sessions of the
   day back to back, a freed slot takes the next active user, and after each session the user opens
   another one that day with the probability ``close_sessions`` (hook) returns, at most
   ``days.max_sessions_per_day``. A session budget (``max_sessions``) admits users until that many
   sessions have started and lets admitted users play out their day, so data hold whole user-days.
2. **A request** (:meth:`DayRun.step`): retrieve candidates (``retrieve``), score them with the
   platform's MTL model (``ranking_scores``), build the :class:`~rlmtf.policy.base.RequestObs`
   (profile, the observable history of :class:`UserState`, the context: hour of day, request and session
   index), let the policy decide, rank (:func:`rank_shown`: the fused score's top ``list_len``, or the
   policy's own ranking service), draw the user's feedback on the shown items (``draw_feedback``), reward
   them (``rlmtf.core.reward.item_reward``), update the session state and the history and get the leave
   probability (``update_session``), draw leave, tell the policy (``Policy.observe``), accumulate the
   per-user-day metrics and log the rows (:func:`log_rows`, the columns of the logged-data schema,
   ``docs/design.md#logged-data``). With ``consumption.mode = "in_order"`` (``rlmtf.envs.consumption``)
   the user watches the list in rank order and may leave after any item (``leave_logits``): the items
   after that one are unseen, get no feedback and are logged with ``seen = 0``.
3. **Randomness** is counter-based (``rlmtf.core.rng``) and keyed by what it decides: who is active
   (seed, user, day), a session's hour and return (seed, user, day, session), the request key (seed,
   user, day, session, request) for candidates and the leave draw, (request, item) for behaviours and
   (request, position) for in-order leave.
   The same seed gives identical data, and policies run on one seed face common random numbers.

The worlds: ``rlmtf.envs.sim.simulator.Simulator`` (synthetic, calibrated to KuaiRand-Pure) and
``rlmtf.envs.kuairand.env.KuaiRandEnv`` (the real KuaiRand-Pure users and videos, fitted behaviour).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit, logit

from rlmtf.core import rng as crng
from rlmtf.core.fusion import fused_log_score, rank_top_l
from rlmtf.core.reward import item_reward
from rlmtf.core.schema import FeatureGroup, FeatureSpec
from rlmtf.envs.consumption import item_hazard, item_mean, mask_unseen, seen_prefix
from rlmtf.envs.rows import log_rows
from rlmtf.policy.base import Policy, RequestObs, check_actions, space_of

# stream ids of the draws the engine makes (worlds use other ids for theirs)
S_ACTIVE, S_RETURN, S_HOUR, S_LEAVE, S_ITEM_LEAVE, S_CANDIDATE = 1, 2, 3, 4, 9, 10
#: Resolution of the per-user retrieval lookup tables (:func:`retrieval_table`).
RETRIEVAL_BUCKETS = 256
#: The context every environment observes: hour of day (sin, cos), request index / 10, session index / max.
CONTEXT_GROUP = FeatureGroup((("hour_sin", 1), ("hour_cos", 1), ("request_index", 1), ("session_index", 1)))
#: Logged rows buffered before whole sessions are handed to the sink.
_FLUSH_ROWS = 200_000

Sink = Callable[[int, dict[str, np.ndarray]], None]
Progress = Callable[[int, int], None]  # (sessions finished in this call, rows shown in this call)
METRICS = ("valid", "watch_time", "sessions", "requests", "reward", "items", "clickbait_shown")


@dataclass
class RunResult:
    """Outcome of :meth:`Environment.run`, per user and day (arrays (U, D), users in ``user_ids`` order)."""

    user_ids: np.ndarray
    days: np.ndarray
    valid: np.ndarray  # valid consumptions
    watch_time: np.ndarray  # seconds
    sessions: np.ndarray
    requests: np.ndarray
    reward: np.ndarray
    items: np.ndarray  # consumed user-item pairs (the shown ones, or the seen ones under in-order consumption)
    clickbait_shown: np.ndarray  # sum of the clickbait trait over shown items (0 where a world has none)
    n_sessions: int = 0
    n_rows: int = 0
    session_lengths: list[np.ndarray] = field(default_factory=list)

    @property
    def session_length(self) -> float:
        lens = np.concatenate(self.session_lengths) if self.session_lengths else np.zeros(0)
        return float(lens.mean()) if lens.size else float("nan")


@dataclass
class RankingScores:
    """What the ranking stage scores for (B, N) candidates: the MTL scores the fusion ranks by, the exact task
    probabilities where the world computed them (``truth``), and anything the world keeps for the feedback."""

    mtl: np.ndarray  # (B, N, K)
    truth: np.ndarray | None = None  # (B, N, K)
    cache: Any = None


class UserState:
    """Per-user state that persists across the sessions and days of one run (index = position in
    ``user_ids``): the observable behaviour history both worlds keep in the same way. A world's subclass
    adds what its day and session hooks need.

    ``recent`` is an interest vector (categories or tags) that moves, after each request, toward the
    validly watched items' ``item_weights`` (exponential average, weight 0.9 per valid view); the rates are
    exponential averages (0.9 per request) of the valid / watch-ratio / like rates of the shown items."""

    def __init__(self, user_ids: np.ndarray, recent: np.ndarray, valid_rate: np.ndarray, watch_ratio: np.ndarray,
                 like_rate: np.ndarray):
        self.user_ids = user_ids
        self.recent = recent.astype(np.float32)
        self.valid_rate, self.watch_ratio, self.like_rate = valid_rate, watch_ratio, like_rate
        n = user_ids.size
        self.sessions_today = np.zeros(n)
        self.minutes_today = np.zeros(n)
        self.last_len = np.zeros(n)
        self.long_term_eng = np.zeros(n)

    def new_day(self) -> None:
        self.sessions_today[:] = 0
        self.minutes_today[:] = 0

    def history(self, g: np.ndarray) -> np.ndarray:
        """Observable behaviour history (b, H), in the order of the feature spec's ``user_history``."""
        return np.column_stack([self.recent[g], self.valid_rate[g], self.watch_ratio[g], self.like_rate[g],
                                self.sessions_today[g] / 4.0, self.minutes_today[g] / 30.0, self.last_len[g] / 10.0,
                                self.long_term_eng[g] / 10.0]).astype(np.float32)

    def update_history(self, g: np.ndarray, item_weights: np.ndarray, fb: dict[str, np.ndarray]) -> None:
        """After one request of users g: ``item_weights`` (b, l, C) of the shown items, ``fb`` their feedback
        (the rates are means over the consumed items: :func:`~rlmtf.envs.consumption.item_mean`)."""
        valid = fb["valid"].astype(np.float32)
        n_valid = valid.sum(1)
        decay = (0.9 ** n_valid)[:, None].astype(np.float32)
        self.recent[g] = decay * self.recent[g] + (1 - decay) * (
            (item_weights * valid[..., None]).sum(1) / np.maximum(n_valid, 1)[:, None])
        self.valid_rate[g] = 0.9 * self.valid_rate[g] + 0.1 * item_mean(valid, fb)
        self.watch_ratio[g] = 0.9 * self.watch_ratio[g] + 0.1 * item_mean(np.minimum(fb["watch_ratio"], 2.0), fb)
        self.like_rate[g] = 0.9 * self.like_rate[g] + 0.1 * item_mean(fb["like"], fb)
        self.minutes_today[g] += fb["watch_time"].sum(1) / 60.0

    def end_sessions(self, g: np.ndarray, length: np.ndarray, valid_in_session: np.ndarray) -> None:
        self.last_len[g] = length
        self.long_term_eng[g] = 0.7 * self.long_term_eng[g] + 0.3 * valid_in_session


class Environment(ABC):
    """A world of users and items played by the engine (module docstring).

    A world sets ``name``, ``cfg`` (with ``n_users``, ``list_len``, ``max_concurrent_sessions``, ``reward``,
    ``action_space``, ``consumption``, ``session.max_requests``, ``days.max_sessions_per_day`` and
    ``to_dict()``), ``spec`` (its
    :class:`~rlmtf.core.schema.FeatureSpec`), ``profile_table`` (U, P) and ``item_table`` (I, F), and
    implements the hooks below. Everything that plays an environment (collection, the A/B test, ES, PTM,
    the paper experiment) uses :meth:`run`, ``cfg`` and ``spec`` only."""

    name: str = "env"
    cfg: Any
    spec: FeatureSpec
    profile_table: np.ndarray
    item_table: np.ndarray

    def run(self, policy: Policy, *, seed: int, days: int | None = 1, users: np.ndarray | None = None,
            max_sessions: int | None = None, start_day: int = 0, sink: Sink | None = None,
            progress: Progress | None = None, log_true_scores: bool = True, log_candidates: bool = False
            ) -> RunResult:
        """Simulate ``days`` days of ``users`` (default: all), or fewer if ``max_sessions`` is reached.

        ``sink(day, columns)`` receives logged rows (the logged-data columns as numpy arrays) of whole
        sessions only, sorted by (session, t, position). ``max_sessions``: no new user is admitted once that
        many sessions have started, but admitted users play out their day, so the data hold whole user-days
        and at least ``max_sessions`` sessions; to keep the overshoot small, fewer sessions run concurrently
        when the budget is small (about max_sessions / 8, at least 64). ``log_true_scores``: log the exact
        task probabilities of shown items where the world computes them. ``log_candidates``: log the candidate
        sample too (``rlmtf.core.schema.CANDIDATE_COLUMNS``): per request, list_len candidates drawn uniformly
        without replacement from all it ranked, one beside each shown row (a draw that changes nothing else)."""
        cfg = self.cfg
        if days is None and max_sessions is None:
            raise ValueError("give days, max_sessions or both")
        if days is not None and days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        if sink is not None and space_of(policy, cfg.action_space) != cfg.action_space:
            raise ValueError(f"{policy.name}: acts in the {space_of(policy, cfg.action_space).parameterisation!r} "
                             f"action space, the environment logs actions of the {cfg.action_space.parameterisation!r} "
                             "one (set action_space in the environment config to log this policy)")
        user_ids = np.arange(cfg.n_users, dtype=np.int64) if users is None else np.asarray(users, np.int64)
        if user_ids.size == 0 or user_ids.min() < 0 or user_ids.max() >= cfg.n_users:
            raise ValueError(f"user ids must lie in [0, {cfg.n_users}) and not be empty")
        n_days = days if days is not None else 1_000_000
        st = self.user_state(user_ids)
        per_day: list[dict[str, np.ndarray]] = []
        result = RunResult(user_ids=user_ids, days=np.zeros(0, np.int64),
                           **{k: np.zeros((user_ids.size, 0)) for k in METRICS})
        budget = [max_sessions if max_sessions is not None else np.iinfo(np.int64).max]
        for d in range(n_days):
            if budget[0] <= 0:
                break
            acc = {k: np.zeros(user_ids.size) for k in METRICS}
            DayRun(self, policy, seed, start_day + d, st, acc, result, budget, sink, progress, log_true_scores,
                   log_candidates).run()
            per_day.append(acc)
            if days is None and d >= 29 and not any(a["sessions"].any() for a in per_day[-30:]):
                raise RuntimeError(f"no user opened a session in 30 simulated days; {max_sessions} sessions cannot "
                                   "be reached (check the days config: active_bias, n_users)")
        result.days = np.arange(start_day, start_day + len(per_day))
        for name in METRICS:
            setattr(result, name, np.stack([a[name] for a in per_day], 1))
        return result

    # --- hooks: the day --------------------------------------------------------------------------------

    @abstractmethod
    def user_state(self, user_ids: np.ndarray) -> UserState:
        """The per-user state of a run over ``user_ids`` (its history starts from what the world knows)."""

    @abstractmethod
    def p_active(self, st: UserState) -> np.ndarray:
        """P(each user of the run opens the app today), (U,)."""

    @abstractmethod
    def session_hour(self, u: np.ndarray) -> np.ndarray:
        """Uniform draws -> the hour of day of sessions, as an angle in [0, 2 pi)."""

    @abstractmethod
    def new_sessions(self, n_slots: int) -> Any:
        """The world's per-slot session state for ``n_slots`` concurrent sessions (None if it keeps none)."""

    @abstractmethod
    def start_sessions(self, sessions: Any, slots: np.ndarray, g: np.ndarray, st: UserState) -> None:
        """Session state at the start of a session of users g (indices into the run's users) in ``slots``."""

    @abstractmethod
    def close_sessions(self, sessions: Any, slots: np.ndarray, g: np.ndarray, k: np.ndarray, length: np.ndarray,
                       valid_in_session: np.ndarray, st: UserState) -> np.ndarray:
        """Update the users' state at the end of their k-th session of the day (``length`` requests); return
        P(another session today), (b,)."""

    # --- hooks: the request ----------------------------------------------------------------------------

    @abstractmethod
    def retrieve(self, user: np.ndarray, req_key: np.ndarray) -> np.ndarray:
        """Candidates (b, N) item ids of users (b,) for requests keyed ``req_key`` (b,)."""

    @abstractmethod
    def ranking_scores(self, user: np.ndarray, cand: np.ndarray, day: int, policy: Policy) -> RankingScores:
        """The MTL scores of the candidates (and the true ones where computed, e.g. for a policy whose
        ``score_source`` is "true")."""

    @abstractmethod
    def draw_feedback(self, scores: RankingScores, user: np.ndarray, items: np.ndarray, shown: np.ndarray,
                      keys: np.ndarray, sessions: Any, a: np.ndarray, log_truth: bool
                      ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The behaviours (b, l) on the shown ``items`` (positions ``shown`` among the candidates), drawn with
        counter-based uniforms keyed by ``keys`` (b, l); and, when ``log_truth``, the true task scores of the
        candidates to log (b, N, K), or None."""

    @abstractmethod
    def update_session(self, sessions: Any, a: np.ndarray, g: np.ndarray, user: np.ndarray, t: np.ndarray,
                       items: np.ndarray, fb: dict[str, np.ndarray], st: UserState) -> np.ndarray:
        """After request t of the sessions in slots ``a``: update the session state and the users' history;
        return P(the user leaves after this request), (b,). Under in-order consumption ``fb`` has ``seen``
        (b, l) and every mean over the list is over the seen items (``rlmtf.envs.consumption.item_mean``)."""

    def leave_logits(self, sessions: Any, a: np.ndarray, g: np.ndarray, user: np.ndarray, t: np.ndarray,
                     items: np.ndarray, fb: dict[str, np.ndarray], st: UserState) -> np.ndarray:
        """In-order consumption: the logit of P(leave) after each item j of request t, (b, l), from the
        session state as :meth:`update_session` would leave it had the request ended after item j (no
        state is changed here)."""
        raise NotImplementedError(f"{self.name}: this world has no in-order consumption (leave_logits)")


class DayRun:
    """One day: slots of concurrent sessions, refilled from a queue of active users (module docstring)."""

    def __init__(self, env: Environment, policy: Policy, seed: int, day: int, st: UserState,
                 acc: dict[str, np.ndarray], result: RunResult, budget: list, sink: Sink | None,
                 progress: Progress | None, log_true: bool, log_candidates: bool = False):
        self.env, self.cfg, self.policy, self.seed, self.day = env, env.cfg, policy, seed, day
        self.st, self.acc, self.result, self.budget = st, acc, result, budget
        self.sink, self.progress, self.log_true, self.log_candidates = sink, progress, log_true, log_candidates
        st.new_day()
        self.queue = np.flatnonzero(crng.uniform(crng.key(seed, st.user_ids, day), S_ACTIVE) < env.p_active(st))
        self.next_in_queue = 0
        n_slots = min(self.cfg.max_concurrent_sessions, max(self.queue.size, 1))
        if budget[0] < np.iinfo(np.int64).max:  # a session budget: bound the overshoot of whole user-days
            n_slots = min(n_slots, max(64, int(budget[0]) // 8))
        self.g = np.full(n_slots, -1, np.int64)  # index into the run's users; -1 = free slot
        self.k = np.zeros(n_slots, np.int64)  # session index of the day
        self.t = np.zeros(n_slots, np.int64)  # request index in the session
        self.hour = np.zeros(n_slots)
        self.valid_in_session = np.zeros(n_slots)
        self.sessions = env.new_sessions(n_slots)
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffer_rows = 0
        self.finished_sessions: list[np.ndarray] = []

    # --- sessions -------------------------------------------------------------------------------------

    def _start(self, slots: np.ndarray, g: np.ndarray, k: np.ndarray) -> None:
        """Open session k for users g in the given slots (counted against the session budget)."""
        self.budget[0] -= slots.size
        st = self.st
        self.g[slots], self.k[slots], self.t[slots] = g, k, 0
        self.env.start_sessions(self.sessions, slots, g, st)
        self.valid_in_session[slots] = 0.0
        self.hour[slots] = self.env.session_hour(crng.uniform(crng.key(self.seed, st.user_ids[g], self.day, k), S_HOUR))
        st.sessions_today[g] += 1
        self.acc["sessions"][g] += 1

    def _admit(self, slots: np.ndarray) -> None:
        """Give free slots to the next users of the queue while the session budget lasts."""
        n = min(slots.size, self.queue.size - self.next_in_queue, max(int(self.budget[0]), 0))
        g = self.queue[self.next_in_queue: self.next_in_queue + n]
        self.next_in_queue += n
        self._start(slots[:n], g, np.zeros(n, np.int64))

    def _end(self, slots: np.ndarray) -> None:
        """Close sessions, decide who opens another one today, refill the rest from the queue."""
        st = self.st
        g, k = self.g[slots], self.k[slots]
        p_ret = self.env.close_sessions(self.sessions, slots, g, k, self.t[slots], self.valid_in_session[slots], st)
        if self.cfg.consumption.mode == "in_order" and self.cfg.consumption.return_offset:
            p_ret = expit(logit(p_ret) + self.cfg.consumption.return_offset)
        self.result.session_lengths.append(self.t[slots].copy())
        self.result.n_sessions += slots.size
        back = crng.uniform(crng.key(self.seed, st.user_ids[g], self.day, k), S_RETURN) < p_ret
        back &= k + 1 < self.cfg.days.max_sessions_per_day
        self.g[slots] = -1
        self._start(slots[back], g[back], k[back] + 1)
        free = slots[self.g[slots] < 0]
        if free.size and self.budget[0] > 0:
            self._admit(free)

    def _session_id(self, slots: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        uid = self.st.user_ids[self.g[slots]]
        day_user = np.int64(self.day) * cfg.n_users + uid
        return (day_user * cfg.days.max_sessions_per_day + self.k[slots]).astype(np.int64)

    # --- the day --------------------------------------------------------------------------------------

    def run(self) -> None:
        self._admit(np.arange(self.g.size))
        while (self.g >= 0).any():
            a = np.flatnonzero(self.g >= 0)
            done, rows = self.step(a)
            if self.progress is not None:
                self.progress(int(done.sum()), rows)
            if done.any():
                ended = a[done]
                if self.sink is not None:
                    self.finished_sessions.append(self._session_id(ended))
                self._end(ended)
            if self.sink is not None and self.buffer_rows >= _FLUSH_ROWS:
                self._flush(final=False)
        if self.sink is not None:
            self._flush(final=True)

    def _flush(self, final: bool) -> None:
        """Hand the rows of finished sessions to the sink, sorted by (session, t, position)."""
        if not self.buffer:
            return
        cols = {key_: np.concatenate([d[key_] for d in self.buffer]) for key_ in self.buffer[0]}
        if final:
            keep = np.zeros(cols["session_id"].size, dtype=bool)
        else:
            finished = np.concatenate(self.finished_sessions) if self.finished_sessions else np.zeros(0, np.int64)
            keep = ~np.isin(cols["session_id"], finished)
        out = ~keep
        if out.any():
            order = np.flatnonzero(out)
            order = order[np.lexsort((cols["position"][order], cols["t"][order], cols["session_id"][order]))]
            self.sink(self.day, {key_: np.ascontiguousarray(v[order]) for key_, v in cols.items()})
        self.buffer = [{key_: v[keep] for key_, v in cols.items()}] if keep.any() else []
        self.buffer_rows = int(keep.sum())
        self.finished_sessions = []

    def step(self, a: np.ndarray) -> tuple[np.ndarray, int]:
        """One request for the sessions in slots ``a``; returns which of them ended and the rows shown."""
        env, cfg, st = self.env, self.cfg, self.st
        l = cfg.list_len
        g = self.g[a]
        u = st.user_ids[g]
        t, k = self.t[a], self.k[a]
        b = a.size
        req_key = crng.key(self.seed, u, self.day, k, t)
        cand = env.retrieve(u, req_key)  # (b, N)
        scores = env.ranking_scores(u, cand, self.day, self.policy)
        context = np.column_stack([np.sin(self.hour[a]), np.cos(self.hour[a]), t / 10.0,
                                   k / cfg.days.max_sessions_per_day]).astype(np.float32)
        obs = RequestObs(user_id=u, request_key=req_key, user_profile=env.profile_table[u],
                         user_history=st.history(g), context=context, item_id=cand, item_table=env.item_table,
                         mtl_scores=scores.mtl, true_scores=scores.truth, session_id=self._session_id(a),
                         user_day_key=crng.key(self.seed, u, self.day))
        dec = self.policy.decide(obs)
        space = space_of(self.policy, cfg.action_space)
        action = check_actions(dec.action, obs, dec.level, self.policy.name, space.dim)
        shown = rank_shown(self.policy, obs, action, l, space, scores.truth)  # (b, l)
        items = np.take_along_axis(cand, shown, 1)
        fb, logged_truth = env.draw_feedback(scores, u, items, shown, crng.key(req_key[:, None], items),
                                             self.sessions, a, self.sink is not None and self.log_true)
        in_order = cfg.consumption.mode == "in_order"
        if in_order:  # the list is watched in rank order; the items after the one the user left on are unseen
            hazard = item_hazard(env.leave_logits(self.sessions, a, g, u, t, items, fb, st),
                                 cfg.consumption.leave_offset)  # (b, l)
            seen, left = seen_prefix(hazard, crng.uniform(crng.key(req_key[:, None], np.arange(l)), S_ITEM_LEAVE))
            fb = mask_unseen(fb, seen)
        rew = item_reward(fb, cfg.reward)  # (b, l)
        p_leave = env.update_session(self.sessions, a, g, u, t, items, fb, st)
        leave = left if in_order else crng.uniform(req_key, S_LEAVE) < p_leave
        done = leave | (t + 1 >= cfg.session.max_requests)
        self.policy.observe(obs, items, fb, done)

        self.valid_in_session[a] += fb["valid"].sum(1)
        sums = [("valid", fb["valid"].sum(1)), ("watch_time", fb["watch_time"].sum(1)), ("reward", rew.sum(1))]
        if "clickbait" in fb:
            sums.append(("clickbait_shown", fb["clickbait"].sum(1)))
        acc = self.acc
        for name, v in sums:
            acc[name][g] += v  # g is unique within a step, so fancy-index += is exact
        acc["requests"][g] += 1
        acc["items"][g] += fb["seen"].sum(1) if in_order else l
        self.result.n_rows += b * l
        if self.sink is not None:
            sample = candidate_sample(req_key, cand.shape[1], l) if self.log_candidates else None
            self.buffer.append(log_rows(self.day, self._session_id(a), u, t, items, obs, dec, action, shown, fb,
                                        rew, done, logged_truth, sample))
            self.buffer_rows += b * l
        self.t[a] += 1
        return done, b * l


# --- ranking and logging ---------------------------------------------------------------------------------

def rank_shown(policy: Policy, obs: RequestObs, action: np.ndarray, l: int, space, truth: np.ndarray | None
               ) -> np.ndarray:
    """Positions (b, l) in ``obs.item_id`` of the items shown: the policy's own ranking (``Policy.rank``, e.g.
    a ranking service) if it has one, else the top l by the fused score of the MTL scores (or of ``truth`` for
    a policy whose ``score_source`` is "true"), never showing one item twice in a list."""
    remote = policy.rank(obs, l)
    if remote is not None:  # the ranking happened elsewhere; it returned the shown lists
        return remote  # (b, l)
    cand = obs.item_id
    ranked = truth if policy.score_source == "true" else obs.mtl_scores
    if ranked is None:
        raise ValueError(f"{policy.name}: ranks by the true scores, which this environment did not compute")
    log_score = fused_log_score(ranked, action if action.ndim == 3 else action[:, None, :], space)  # (b, N)
    shown = rank_top_l(log_score, l)  # (b, l)
    # retrieval can return an item twice; if a shown list repeats one, rank that row without repeats
    top = np.sort(np.take_along_axis(cand, shown, 1), 1)
    rep_rows = np.flatnonzero((top[:, 1:] == top[:, :-1]).any(1))
    if rep_rows.size:
        ls = np.where(_duplicates(cand[rep_rows]), -np.inf, log_score[rep_rows])
        shown[rep_rows] = rank_top_l(ls, l)
    return shown


def candidate_sample(req_key: np.ndarray, n: int, l: int) -> np.ndarray:
    """Positions (b, l) of ``l`` of a request's ``n`` candidates drawn uniformly without replacement (keyed on the
    request, so the same request draws the same sample whatever the policy)."""
    u = crng.uniform(crng.key(req_key[:, None], np.arange(n)), S_CANDIDATE)  # (b, n)
    return np.argsort(u, axis=1, kind="stable")[:, :l]


def _duplicates(cand: np.ndarray) -> np.ndarray:
    """(B, N) mask of candidates whose item id already occurs earlier in the row."""
    order = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, order, 1)
    dup_sorted = np.zeros_like(s, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    out = np.zeros_like(dup_sorted)
    np.put_along_axis(out, order, dup_sorted, 1)
    return out


def retrieval_table(p: np.ndarray) -> np.ndarray:
    """(U, 256) lookup tables: row u holds category c in round(256 * p[u, c]) slots (largest-remainder
    rounding, so every row has exactly 256), making a draw from p[u] one gather."""
    m = RETRIEVAL_BUCKETS
    counts = np.floor(p * m).astype(np.int64)
    deficit = m - counts.sum(1)
    rank = np.argsort(np.argsort(-(p * m - counts), axis=1, kind="stable"), axis=1, kind="stable")
    counts += rank < deficit[:, None]
    cats = np.tile(np.arange(p.shape[1], dtype=np.int16), p.shape[0])
    return np.repeat(cats, counts.ravel()).reshape(p.shape[0], m)
