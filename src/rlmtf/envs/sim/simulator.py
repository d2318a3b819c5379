"""The user-session simulator: the stand-in for the live platform (SPEC section 10).

One :class:`Simulator` holds a world (users, items, the behaviour model and the imperfect MTL
model, all fixed by ``world_seed``). :meth:`Simulator.run` plays days of sessions for a set of users
under a fusion policy, vectorised over up to ``max_concurrent_sessions`` concurrent sessions:

1. **Days.** A user opens the app on a day with a probability that rises with activity and with
   long-term satisfaction; after each session they open another one that day with a probability
   that rises with how satisfied they left (``DayConfig``).
2. **Requests.** Each request retrieves ``n_candidates`` items (a mix of the user's interests and
   the catalogue), the MTL model scores them, the policy fuses the scores and the top ``list_len``
   are shown. The user reacts to each (``behaviour.py``); rewards follow SPEC section 3.
3. **Session state.** Satisfaction S moves toward the mean satisfaction of the shown items;
   fatigue F grows with repeated categories and clickbait and decays; after each request the user
   leaves with probability ``sigmoid(leave_bias - leave_satisfaction*S + leave_fatigue*F -
   patience + leave_per_request*t)`` (``SessionConfig``). Fatigue also lowers engagement.
4. **History.** The observable behaviour history (recent categories, valid/watch/like rates,
   today's sessions and minutes) is updated after every request and persists across sessions.

All randomness is counter-based (``rng.py``): the same seed gives identical data, and policies run
on the same seed face common random numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from rlmtf.core import rng as crng
from rlmtf.core.fusion import fused_log_score, rank_top_l
from rlmtf.core.reward import item_reward
from rlmtf.envs.sim import ops
from rlmtf.envs.sim.behaviour import BehaviourModel
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.mtl import MTLModel
from rlmtf.envs.sim.world import feature_spec, make_items, make_users
from rlmtf.policy.base import Policy, RequestObs, check_actions

# stream ids of session-level draws
_S_ACTIVE, _S_RETURN, _S_HOUR, _S_LEAVE, _S_CAT, _S_ITEM = 1, 2, 3, 4, 5, 6

Sink = Callable[[int, dict[str, np.ndarray]], None]
Progress = Callable[[int, int], None]  # (sessions finished in this call, rows shown in this call)


@dataclass
class RunResult:
    """Outcome of :meth:`Simulator.run`, per user and day (arrays (U, D), users in ``user_ids`` order)."""

    user_ids: np.ndarray
    days: np.ndarray
    valid: np.ndarray  # valid consumptions
    watch_time: np.ndarray  # seconds
    sessions: np.ndarray
    requests: np.ndarray
    reward: np.ndarray
    items: np.ndarray  # shown user-item pairs
    clickbait_shown: np.ndarray  # sum of the clickbait trait over shown items
    n_sessions: int = 0
    n_rows: int = 0
    session_lengths: list[np.ndarray] = field(default_factory=list)

    @property
    def session_length(self) -> float:
        lens = np.concatenate(self.session_lengths) if self.session_lengths else np.zeros(0)
        return float(lens.mean()) if lens.size else float("nan")


class Simulator:
    """A seeded, vectorised short-video platform. See the module docstring for the mechanisms."""

    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg = cfg or SimConfig()
        world_rng = np.random.default_rng(cfg.world_seed)
        self.items = make_items(cfg, world_rng)
        self.users = make_users(cfg, world_rng)
        self.behaviour = BehaviourModel(cfg, self.users, self.items)
        self.mtl = MTLModel(cfg, self.users, self.items, world_rng)
        self.spec = feature_spec(cfg)
        self._onehot = np.eye(cfg.n_categories, dtype=np.float32)
        self._retrieval_table = _retrieval_table(cfg.retrieval.interest_mix * self.users.interest
                                                 + (1 - cfg.retrieval.interest_mix) * self.items.category_share)

    # --- public ----------------------------------------------------------------------------------

    def run(self, policy: Policy, *, seed: int, days: int | None = 1, users: np.ndarray | None = None,
            max_sessions: int | None = None, start_day: int = 0, sink: Sink | None = None,
            progress: Progress | None = None, log_true_scores: bool = True) -> RunResult:
        """Simulate ``days`` days of ``users`` (default: all), or fewer if ``max_sessions`` is reached.

        Each of up to ``max_concurrent_sessions`` slots plays one user's sessions of a day back to
        back; a freed slot takes the next user. ``sink(day, columns)`` receives logged rows (the
        SPEC section 11 columns as numpy arrays) of whole sessions only, sorted by (session, t,
        position).

        ``max_sessions``: no new user is admitted once that many sessions have started, but admitted
        users play out their day, so the data holds whole user-days (every session of the day, not
        just first sessions) and at least ``max_sessions`` sessions. To keep the overshoot small, fewer
        sessions run concurrently when the budget is small (about max_sessions / 8, at least 64).
        """
        cfg = self.cfg
        if days is None and max_sessions is None:
            raise ValueError("give days, max_sessions or both")
        if days is not None and days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        user_ids = np.arange(cfg.n_users, dtype=np.int64) if users is None else np.asarray(users, np.int64)
        if user_ids.size == 0 or user_ids.min() < 0 or user_ids.max() >= cfg.n_users:
            raise ValueError(f"user ids must lie in [0, {cfg.n_users}) and not be empty")
        n_days = days if days is not None else 1_000_000
        st = self._user_state(user_ids)
        metrics = ("valid", "watch_time", "sessions", "requests", "reward", "items", "clickbait_shown")
        per_day: list[dict[str, np.ndarray]] = []
        result = RunResult(user_ids=user_ids, days=np.zeros(0, np.int64),
                           **{k: np.zeros((user_ids.size, 0)) for k in metrics})
        budget = [max_sessions if max_sessions is not None else np.iinfo(np.int64).max]
        for d in range(n_days):
            if budget[0] <= 0:
                break
            acc = {k: np.zeros(user_ids.size) for k in metrics}
            self._day(policy, seed, start_day + d, st, acc, result, budget, sink, progress, log_true_scores).run()
            per_day.append(acc)
            if days is None and d >= 29 and not any(a["sessions"].any() for a in per_day[-30:]):
                raise RuntimeError(f"no user opened a session in 30 simulated days; {max_sessions} sessions cannot "
                                   "be reached (check the days config: active_bias, n_users)")
        result.days = np.arange(start_day, start_day + len(per_day))
        for name in metrics:
            setattr(result, name, np.stack([a[name] for a in per_day], 1))
        return result

    # --- hooks: another environment (``rlmtf.envs.kuairand.env``) subclasses Simulator and _Day -----------

    def _user_state(self, user_ids: np.ndarray) -> _UserState:
        """Per-user state that persists across the sessions and days of one :meth:`run`."""
        return _UserState(self, user_ids)

    def _day(self, policy: Policy, seed: int, day: int, st, acc: dict[str, np.ndarray], result: RunResult,
             budget: list, sink: Sink | None, progress: Progress | None, log_true: bool) -> _Day:
        """The object that plays one day (its ``run()``)."""
        return _Day(self, policy, seed, day, st, acc, result, budget, sink, progress, log_true)

    # --- pieces used by _Day -----------------------------------------------------------------------

    def retrieve(self, user: np.ndarray, req_key: np.ndarray) -> np.ndarray:
        """Candidates (B, N): a category from the user's retrieval distribution (interest_mix * true
        interest + (1 - interest_mix) * catalogue shares, in units of 1/256), then a uniform item of it."""
        cfg, it = self.cfg, self.items
        n = cfg.retrieval.n_candidates
        u_cat, u_item = crng.uniform_pair(crng.key(req_key[:, None], np.arange(n)), _S_CAT)  # (B, N)
        cat = self._retrieval_table[user[:, None], (u_cat * _RETRIEVAL_BUCKETS).astype(np.intp)]  # (B, N)
        pos = (u_item * it.category_count[cat]).astype(np.int64)
        return it.by_category[it.category_start[cat] + pos]


class _Day:
    """One simulated day: slots of concurrent sessions, refilled from a queue of active users.

    The slot machinery (queue, admission, session budget, session ids, buffered sink) is generic; the
    world-specific parts are the hooks ``_p_active``, ``_init_slots``, ``_reset_slots``, ``_draw_hour``,
    ``_close_sessions`` and ``_step``, which an environment subclass overrides."""

    def __init__(self, sim: Simulator, policy: Policy, seed: int, day: int, st: _UserState,
                 acc: dict[str, np.ndarray], result: RunResult, budget: list, sink: Sink | None,
                 progress: Progress | None, log_true: bool):
        self.sim, self.cfg, self.policy, self.seed, self.day = sim, sim.cfg, policy, seed, day
        self.st, self.acc, self.result, self.budget = st, acc, result, budget
        self.sink, self.progress, self.log_true = sink, progress, log_true
        st.new_day()
        self.queue = np.flatnonzero(crng.uniform(crng.key(seed, st.user_ids, day), _S_ACTIVE) < self._p_active())
        self.next_in_queue = 0
        n_slots = min(self.cfg.max_concurrent_sessions, max(self.queue.size, 1))
        if budget[0] < np.iinfo(np.int64).max:  # a session budget: bound the overshoot of whole user-days
            n_slots = min(n_slots, max(64, int(budget[0]) // 8))
        self.g = np.full(n_slots, -1, np.int64)  # index into the run's users; -1 = free slot
        self.k = np.zeros(n_slots, np.int64)  # session index of the day
        self.t = np.zeros(n_slots, np.int64)  # request index in the session
        self.hour = np.zeros(n_slots)
        self._init_slots(n_slots)
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffer_rows = 0
        self.finished_sessions: list[np.ndarray] = []

    # world-specific hooks ----------------------------------------------------------------------------

    def _p_active(self) -> np.ndarray:
        """P(each user of the run opens the app today), (U,)."""
        dc, st = self.cfg.days, self.st
        return expit(dc.active_bias + dc.active_activity * (st.activity - 0.5)
                     + dc.active_satisfaction * (st.long_term_sat - st.base_sat))

    def _init_slots(self, n_slots: int) -> None:
        """Allocate the per-slot session state."""
        self.sat = np.zeros(n_slots)
        self.fatigue = np.zeros(n_slots)
        self.prev_cat = np.zeros((n_slots, self.cfg.n_categories), dtype=bool)
        self.valid_in_session = np.zeros(n_slots)

    def _reset_slots(self, slots: np.ndarray, g: np.ndarray) -> None:
        """Session state at the start of a session of users g in the given slots."""
        sc, st = self.cfg.session, self.st
        self.sat[slots] = (1 - sc.start_carry) * st.base_sat[g] + sc.start_carry * st.long_term_sat[g]
        self.fatigue[slots] = 0.0
        self.prev_cat[slots] = False
        self.valid_in_session[slots] = 0.0

    def _draw_hour(self, g: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Hour of day of session k of users g, as an angle in [0, 2 pi)."""
        return crng.uniform(crng.key(self.seed, self.st.user_ids[g], self.day, k), _S_HOUR) * 2 * np.pi

    def _close_sessions(self, slots: np.ndarray, g: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Update the users' state at the end of sessions k in the given slots; return P(another session today)."""
        dc, st = self.cfg.days, self.st
        sat = self.sat[slots]
        st.end_sessions(g, sat, self.t[slots], self.valid_in_session[slots], self.cfg.session.long_term_rate)
        return expit(dc.return_bias + dc.return_satisfaction * (sat - st.base_sat[g])
                     + dc.return_activity * (st.activity[g] - 0.5) - dc.return_per_session * k)

    # session bookkeeping ---------------------------------------------------------------------------

    def _start(self, slots: np.ndarray, g: np.ndarray, k: np.ndarray) -> None:
        """Open session k for users g in the given slots (counted against the session budget)."""
        self.budget[0] -= slots.size
        st = self.st
        self.g[slots], self.k[slots], self.t[slots] = g, k, 0
        self._reset_slots(slots, g)
        self.hour[slots] = self._draw_hour(g, k)
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
        p_ret = self._close_sessions(slots, g, k)
        self.result.session_lengths.append(self.t[slots].copy())
        self.result.n_sessions += slots.size
        back = crng.uniform(crng.key(self.seed, st.user_ids[g], self.day, k), _S_RETURN) < p_ret
        back &= k + 1 < self.cfg.days.max_sessions_per_day
        self.g[slots] = -1
        self._start(slots[back], g[back], k[back] + 1)
        free = slots[self.g[slots] < 0]
        if free.size and self.budget[0] > 0:
            self._admit(free)

    # the day ----------------------------------------------------------------------------------------

    def run(self) -> None:
        self._admit(np.arange(self.g.size))
        while (self.g >= 0).any():
            a = np.flatnonzero(self.g >= 0)
            done, rows = self._step(a)
            if self.progress is not None:
                self.progress(int(done.sum()), rows)
            if done.any():
                ended = a[done]
                if self.sink is not None:
                    self.finished_sessions.append(self._session_id(ended))
                self._end(ended)
            if self.sink is not None and self.buffer_rows >= 200_000:
                self._flush(final=False)
        if self.sink is not None:
            self._flush(final=True)

    def _session_id(self, slots: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        uid = self.st.user_ids[self.g[slots]]
        day_user = np.int64(self.day) * cfg.n_users + uid
        return (day_user * cfg.days.max_sessions_per_day + self.k[slots]).astype(np.int64)

    def _flush(self, final: bool) -> None:
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

    def _step(self, a: np.ndarray) -> tuple[np.ndarray, int]:
        """One request for the sessions in slots ``a``; returns which of them ended and rows shown."""
        sim, cfg, sc, beh, st = self.sim, self.cfg, self.cfg.session, self.sim.behaviour, self.st
        l = cfg.list_len
        g = self.g[a]
        u = st.user_ids[g]
        t, k = self.t[a], self.k[a]
        b = a.size
        req_key = crng.key(self.seed, u, self.day, k, t)
        cand = sim.retrieve(u, req_key)  # (b, N)
        resp0 = beh.response(u, cand, None)  # truth at fatigue 0, for the MTL model
        truth = beh.true_scores(resp0)  # (b, N, K)
        mtl = sim.mtl.scores(truth, u, cand, np.full(b, self.day))
        context = np.column_stack([np.sin(self.hour[a]), np.cos(self.hour[a]), t / 10.0,
                                   k / cfg.days.max_sessions_per_day]).astype(np.float32)
        obs = RequestObs(user_id=u, request_key=req_key, user_profile=sim.users.profile[u],
                         user_history=st.history(g), context=context, item_id=cand,
                         item_table=sim.items.features, mtl_scores=mtl,
                         true_scores=truth, session_id=self._session_id(a))
        dec = self.policy.decide(obs)
        action = check_actions(dec.action, obs, dec.level, self.policy.name)
        shown = rank_shown(self.policy, obs, action, l, cfg.action_space, truth)  # (b, l)
        items = np.take_along_axis(cand, shown, 1)
        r = resp0.take(shown)
        # fatigue lowers engagement on what is actually shown
        fatigue = self.fatigue[a][:, None].astype(np.float32)
        r.p_engage = ops.sigmoid(ops.logit(r.p_engage, eps=1e-7) - np.float32(cfg.behaviour.engage_fatigue) * fatigue)
        fb = beh.sample(r, crng.key(req_key[:, None], items))
        rew = item_reward(fb, cfg.reward)  # (b, l)

        # session state: satisfaction, fatigue, leave
        susc = sim.users.susceptibility[u][:, None]
        inter = fb["share"] + fb["collect"] + fb["follow"] + fb["comment"]
        item_sat = (sc.sat_watch * np.minimum(fb["watch_ratio"], 1.2) + sc.sat_like * fb["like"]
                    + sc.sat_interact * inter - sc.sat_clickbait * fb["clickbait"] * fb["engaged"] * susc
                    - sc.sat_invalid * (1 - fb["valid"]))
        self.sat[a] = (1 - sc.satisfaction_rate) * self.sat[a] + sc.satisfaction_rate * item_sat.mean(1)
        cats = sim.items.category[items]  # (b, l)
        cat_oh = sim._onehot[cats]  # (b, l, C)
        seen_before = np.take_along_axis(self.prev_cat[a], cats, 1)
        dup_in_list = (np.cumsum(cat_oh, 1) * cat_oh).sum(-1) > 1  # category already earlier in this list
        repeat = (seen_before | dup_in_list).mean(1)
        self.fatigue[a] = (sc.fatigue_decay * self.fatigue[a] + sc.fatigue_repeat * repeat
                           + sc.fatigue_clickbait * fb["clickbait"].mean(1))
        self.prev_cat[a] = cat_oh.any(1)
        p_leave = expit(sc.leave_bias - sc.leave_satisfaction * self.sat[a] + sc.leave_fatigue * self.fatigue[a]
                        - sim.users.patience[u] + sc.leave_per_request * t)
        leave = crng.uniform(req_key, _S_LEAVE) < p_leave
        done = leave | (t + 1 >= sc.max_requests)
        observe = getattr(self.policy, "observe", None)
        if observe is not None:  # e.g. a ranking service that wants the feedback
            observe(obs, items, fb, done)

        # observable history and per-user-day metrics
        st.update_history(g, cat_oh, fb)
        self.valid_in_session[a] += fb["valid"].sum(1)
        acc = self.acc
        for name, v in (("valid", fb["valid"].sum(1)), ("watch_time", fb["watch_time"].sum(1)),
                        ("reward", rew.sum(1)), ("clickbait_shown", fb["clickbait"].sum(1))):
            acc[name][g] += v  # g is unique within a step, so fancy-index += is exact
        acc["requests"][g] += 1
        acc["items"][g] += l
        self.result.n_rows += b * l
        if self.sink is not None:
            self.buffer.append(_log_rows(self.day, self._session_id(a), u, t, items, obs, dec, action, shown, fb,
                                         rew, done, truth if self.log_true else None))
            self.buffer_rows += b * l
        self.t[a] += 1
        return done, b * l


def rank_shown(policy: Policy, obs: RequestObs, action: np.ndarray, l: int, space, truth: np.ndarray | None
               ) -> np.ndarray:
    """Positions (b, l) in ``obs.item_id`` of the items shown: the policy's own ranking service if it has
    one (``rank_remote``), else the top l by the fused score of the MTL scores (or of ``truth`` for a
    policy whose ``score_source`` is "true"), never showing one item twice in a list."""
    remote = getattr(policy, "rank_remote", None)
    if remote is not None:  # the ranking happens elsewhere (a ranking service); it returns the shown lists
        return remote(obs, l)  # (b, l)
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


def _log_rows(day, session_id, u, t, items, obs: RequestObs, dec, action, shown, fb, rew, done, truth):
    """Columns of SPEC section 11 for the shown items of b requests (b * l rows)."""
    b, l = items.shape

    def rep(x):  # request-level -> row-level
        return np.repeat(x, l, axis=0)

    def per_item(x):  # (A,), (b, A) or (b, N, A) -> (b*l, A) for the shown items
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            return np.ascontiguousarray(np.broadcast_to(x, (b * l, x.shape[0])))
        if x.ndim == 2:
            return rep(x)
        return np.take_along_axis(x, shown[..., None], 1).reshape(b * l, -1)

    def shown_of(x):  # (b, N, D) -> (b*l, D)
        return np.take_along_axis(x, shown[..., None], 1).reshape(b * l, -1).astype(np.float32)

    cols = {
        "day": np.full(b * l, day, np.int32),
        "session_id": rep(session_id),
        "user_id": rep(u),
        "t": rep(t.astype(np.int32)),
        "position": np.tile(np.arange(l, dtype=np.int32), b),
        "item_id": items.reshape(-1),
        "user_profile": rep(obs.user_profile),
        "user_history": rep(obs.user_history),
        "context": rep(obs.context),
        "item_features": obs.item_table[items.reshape(-1)] if obs.item_features_ is None
        else shown_of(obs.item_features),
        "mtl_scores": shown_of(obs.mtl_scores),
        "mu_bp": per_item(dec.mu_bp),
        "lower_b": per_item(dec.lower_b),
        "upper_b": per_item(dec.upper_b),
        "action": per_item(action),
        "reward": rew.reshape(-1).astype(np.float32),
        "done": rep(done),
    }
    for name in ("click", "valid", "finish", "like", "share", "collect", "follow", "comment"):
        cols[name] = fb[name].reshape(-1).astype(np.int8)
    cols["watch_time"] = fb["watch_time"].reshape(-1).astype(np.float32)
    cols["watch_ratio"] = fb["watch_ratio"].reshape(-1).astype(np.float32)
    if truth is not None:
        cols["true_scores"] = shown_of(truth)
    return cols


_RETRIEVAL_BUCKETS = 256


def _retrieval_table(p: np.ndarray) -> np.ndarray:
    """(U, 256) lookup tables: row u holds category c in round(256 * p[u, c]) slots (largest-remainder
    rounding, so every row has exactly 256), making category sampling one gather."""
    m = _RETRIEVAL_BUCKETS
    counts = np.floor(p * m).astype(np.int64)
    deficit = m - counts.sum(1)
    rank = np.argsort(np.argsort(-(p * m - counts), axis=1, kind="stable"), axis=1, kind="stable")
    counts += rank < deficit[:, None]
    cats = np.tile(np.arange(p.shape[1], dtype=np.int16), p.shape[0])
    return np.repeat(cats, counts.ravel()).reshape(p.shape[0], m)


def _duplicates(cand: np.ndarray) -> np.ndarray:
    """(B, N) mask of candidates whose item id already occurs earlier in the row."""
    order = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, order, 1)
    dup_sorted = np.zeros_like(s, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    out = np.zeros_like(dup_sorted)
    np.put_along_axis(out, order, dup_sorted, 1)
    return out


class _UserState:
    """Per-user state that persists across sessions and days (index = position in ``user_ids``)."""

    def __init__(self, sim: Simulator, user_ids: np.ndarray):
        self.user_ids = user_ids
        users = sim.users
        self.activity = users.activity[user_ids]
        self.base_sat = users.base_satisfaction[user_ids]
        self.long_term_sat = self.base_sat.copy()
        k = max(sim.cfg.users.observed_top_k, 1)
        self.recent_cat = (users.observed_interest[user_ids] / k).astype(np.float32)
        n = user_ids.size
        self.valid_rate = np.full(n, 0.3)
        self.watch_ratio = np.full(n, 0.35)
        self.like_rate = np.full(n, 0.02)
        self.sessions_today = np.zeros(n)
        self.minutes_today = np.zeros(n)
        self.last_len = np.zeros(n)
        self.long_term_eng = np.zeros(n)

    def new_day(self) -> None:
        self.sessions_today[:] = 0
        self.minutes_today[:] = 0

    def history(self, g: np.ndarray) -> np.ndarray:
        """Observable behaviour history (b, H), in the order of ``user_history_group``."""
        return np.column_stack([self.recent_cat[g], self.valid_rate[g], self.watch_ratio[g], self.like_rate[g],
                                self.sessions_today[g] / 4.0, self.minutes_today[g] / 30.0, self.last_len[g] / 10.0,
                                self.long_term_eng[g] / 10.0]).astype(np.float32)

    def update_history(self, g: np.ndarray, cat_oh: np.ndarray, fb: dict[str, np.ndarray]) -> None:
        valid = fb["valid"].astype(np.float32)
        n_valid = valid.sum(1)
        # recent categories: an exponential moving average over validly watched items
        decay = (0.9 ** n_valid)[:, None]
        self.recent_cat[g] = decay * self.recent_cat[g] + (1 - decay) * (
            (cat_oh * valid[..., None]).sum(1) / np.maximum(n_valid, 1)[:, None])
        self.valid_rate[g] = 0.9 * self.valid_rate[g] + 0.1 * valid.mean(1)
        self.watch_ratio[g] = 0.9 * self.watch_ratio[g] + 0.1 * np.minimum(fb["watch_ratio"], 2.0).mean(1)
        self.like_rate[g] = 0.9 * self.like_rate[g] + 0.1 * fb["like"].mean(1)
        self.minutes_today[g] += fb["watch_time"].sum(1) / 60.0

    def end_sessions(self, idx, sat, length, valid_in_session, rate: float) -> None:
        self.long_term_sat[idx] = (1 - rate) * self.long_term_sat[idx] + rate * sat
        self.last_len[idx] = length
        self.long_term_eng[idx] = 0.7 * self.long_term_eng[idx] + 0.3 * valid_in_session
