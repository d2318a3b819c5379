"""The user-session simulator: the stand-in for the live platform (``docs/design.md#the-simulator``).

One :class:`Simulator` holds a world (users, items, the behaviour model and the imperfect MTL
model, all fixed by ``world_seed``); the engine (``rlmtf.envs.engine``) plays days of sessions for a set
of users under a fusion policy, vectorised over up to ``max_concurrent_sessions`` concurrent sessions,
calling the hooks of this world:

1. **Days.** A user opens the app on a day with a probability that rises with activity and with
   long-term satisfaction; after each session they open another one that day with a probability
   that rises with how satisfied they left (``DayConfig``).
2. **Requests.** Each request retrieves ``n_candidates`` items (a mix of the user's interests and
   the catalogue), the MTL model scores them, the policy fuses the scores and the top ``list_len``
   are shown. The user reacts to each (``behaviour.py``); rewards follow ``docs/design.md#reward``.
3. **Session state.** Satisfaction S moves toward the mean satisfaction of the shown items;
   fatigue F grows with repeated categories and clickbait and decays; after each request the user
   leaves with probability ``sigmoid(leave_bias - leave_satisfaction*S + leave_fatigue*F -
   patience + leave_per_request*t)`` (``SessionConfig``). Fatigue also lowers engagement. Under in-order
   consumption (``consumption.mode``) the same logit, after each item of the list, gives the hazard of
   leaving there (``rlmtf.envs.consumption``).
4. **History.** The observable behaviour history (recent categories, valid/watch/like rates,
   today's sessions and minutes) is updated after every request and persists across sessions.

All randomness is counter-based (``rlmtf.core.rng``): the same seed gives identical data, and policies run
on the same seed face common random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from rlmtf.core import rng as crng
from rlmtf.envs.consumption import item_mean, prefix_mean
from rlmtf.envs.engine import (
    RETRIEVAL_BUCKETS,
    Environment,
    RankingScores,
    RunResult,
    UserState,
    retrieval_table,
)
from rlmtf.envs.sim import ops
from rlmtf.envs.sim.behaviour import BehaviourModel
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.mtl import MTLModel
from rlmtf.envs.sim.world import feature_spec, make_items, make_users
from rlmtf.policy.base import Policy

# stream ids of the simulator's retrieval draws (the engine's session-level streams are 1..4)
_S_CAT, _S_ITEM = 5, 6

__all__ = ["RunResult", "SimSessions", "SimUserState", "Simulator"]


class SimUserState(UserState):
    """The engine's per-user state plus what the simulator's days depend on: activity and the base and
    long-term satisfaction. The history starts from the user's observed top interests and typical rates."""

    def __init__(self, sim: Simulator, user_ids: np.ndarray):
        users = sim.users
        k = max(sim.cfg.users.observed_top_k, 1)
        n = user_ids.size
        super().__init__(user_ids, recent=(users.observed_interest[user_ids] / k).astype(np.float32),
                         valid_rate=np.full(n, 0.3), watch_ratio=np.full(n, 0.35), like_rate=np.full(n, 0.02))
        self.activity = users.activity[user_ids]
        self.base_sat = users.base_satisfaction[user_ids]
        self.long_term_sat = self.base_sat.copy()


@dataclass
class SimSessions:
    """Per-slot session state: satisfaction S, fatigue F and the categories of the previous list."""

    sat: np.ndarray  # (n_slots,)
    fatigue: np.ndarray  # (n_slots,)
    prev_cat: np.ndarray  # (n_slots, C) bool


class Simulator(Environment):
    """A seeded, vectorised short-video platform. See the module docstring for the mechanisms."""

    name = "sim"

    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg = cfg or SimConfig()
        world_rng = np.random.default_rng(cfg.world_seed)
        self.items = make_items(cfg, world_rng)
        self.users = make_users(cfg, world_rng)
        self.behaviour = BehaviourModel(cfg, self.users, self.items)
        self.mtl = MTLModel(cfg, self.users, self.items, world_rng)
        self.spec = feature_spec(cfg)
        self.profile_table = self.users.profile
        self.item_table = self.items.features
        self._onehot = np.eye(cfg.n_categories, dtype=np.float32)
        self._retrieval_table = retrieval_table(cfg.retrieval.interest_mix * self.users.interest
                                                + (1 - cfg.retrieval.interest_mix) * self.items.category_share)

    # --- the day -----------------------------------------------------------------------------------------

    def user_state(self, user_ids: np.ndarray) -> SimUserState:
        return SimUserState(self, user_ids)

    def p_active(self, st: SimUserState) -> np.ndarray:
        dc = self.cfg.days
        return expit(dc.active_bias + dc.active_activity * (st.activity - 0.5)
                     + dc.active_satisfaction * (st.long_term_sat - st.base_sat))

    def session_hour(self, u: np.ndarray) -> np.ndarray:
        return u * 2 * np.pi

    def new_sessions(self, n_slots: int) -> SimSessions:
        return SimSessions(sat=np.zeros(n_slots), fatigue=np.zeros(n_slots),
                           prev_cat=np.zeros((n_slots, self.cfg.n_categories), dtype=bool))

    def start_sessions(self, sessions: SimSessions, slots: np.ndarray, g: np.ndarray, st: SimUserState) -> None:
        """A session starts at the base satisfaction pulled toward the long-term one, without fatigue."""
        sc = self.cfg.session
        sessions.sat[slots] = (1 - sc.start_carry) * st.base_sat[g] + sc.start_carry * st.long_term_sat[g]
        sessions.fatigue[slots] = 0.0
        sessions.prev_cat[slots] = False

    def close_sessions(self, sessions: SimSessions, slots: np.ndarray, g: np.ndarray, k: np.ndarray,
                       length: np.ndarray, valid_in_session: np.ndarray, st: SimUserState) -> np.ndarray:
        """The long-term satisfaction moves toward the session's; a satisfied user comes back sooner."""
        dc, rate = self.cfg.days, self.cfg.session.long_term_rate
        sat = sessions.sat[slots]
        st.long_term_sat[g] = (1 - rate) * st.long_term_sat[g] + rate * sat
        st.end_sessions(g, length, valid_in_session)
        return expit(dc.return_bias + dc.return_satisfaction * (sat - st.base_sat[g])
                     + dc.return_activity * (st.activity[g] - 0.5) - dc.return_per_session * k)

    # --- the request -------------------------------------------------------------------------------------

    def retrieve(self, user: np.ndarray, req_key: np.ndarray) -> np.ndarray:
        """Candidates (B, N): a category from the user's retrieval distribution (interest_mix * true
        interest + (1 - interest_mix) * catalogue shares, in units of 1/256), then a uniform item of it."""
        cfg, it = self.cfg, self.items
        n = cfg.retrieval.n_candidates
        u_cat, u_item = crng.uniform_pair(crng.key(req_key[:, None], np.arange(n)), _S_CAT)  # (B, N)
        cat = self._retrieval_table[user[:, None], (u_cat * RETRIEVAL_BUCKETS).astype(np.intp)]  # (B, N)
        pos = (u_item * it.category_count[cat]).astype(np.int64)
        return it.by_category[it.category_start[cat] + pos]

    def ranking_scores(self, user: np.ndarray, cand: np.ndarray, day: int, policy: Policy) -> RankingScores:
        """The MTL model's scores of the exact task probabilities (at fatigue 0), kept for the feedback."""
        resp0 = self.behaviour.response(user, cand, None)  # truth at fatigue 0, for the MTL model
        truth = self.behaviour.true_scores(resp0)  # (b, N, K)
        mtl = self.mtl.scores(truth, user, cand, np.full(user.size, day))
        return RankingScores(mtl=mtl, truth=truth, cache=resp0)

    def draw_feedback(self, scores: RankingScores, user: np.ndarray, items: np.ndarray, shown: np.ndarray,
                      keys: np.ndarray, sessions: SimSessions, a: np.ndarray, log_truth: bool
                      ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        r = scores.cache.take(shown)
        # fatigue lowers engagement on what is actually shown
        fatigue = sessions.fatigue[a][:, None].astype(np.float32)
        r.p_engage = ops.sigmoid(ops.logit(r.p_engage, eps=1e-7)
                                 - np.float32(self.cfg.behaviour.engage_fatigue) * fatigue)
        return self.behaviour.sample(r, keys), (scores.truth if log_truth else None)

    def update_session(self, sessions: SimSessions, a: np.ndarray, g: np.ndarray, user: np.ndarray, t: np.ndarray,
                       items: np.ndarray, fb: dict[str, np.ndarray], st: SimUserState) -> np.ndarray:
        """Satisfaction moves toward the consumed items' mean; fatigue grows with repeated categories and
        clickbait; P(leave) = sigmoid(leave_bias - leave_satisfaction S + leave_fatigue F - patience +
        leave_per_request t)."""
        item_sat, repeat, cat_oh = self._item_terms(sessions, a, user, items, fb)
        sc = self.cfg.session
        sessions.sat[a] = (1 - sc.satisfaction_rate) * sessions.sat[a] + sc.satisfaction_rate * item_mean(item_sat, fb)
        sessions.fatigue[a] = (sc.fatigue_decay * sessions.fatigue[a] + sc.fatigue_repeat * item_mean(repeat, fb)
                               + sc.fatigue_clickbait * item_mean(fb["clickbait"], fb))
        seen = fb["seen"].astype(bool)[..., None] if "seen" in fb else True
        sessions.prev_cat[a] = (cat_oh.astype(bool) & seen).any(1)
        st.update_history(g, cat_oh, fb)
        return expit(self._leave_logit(sessions.sat[a], sessions.fatigue[a], user, t))

    def leave_logits(self, sessions: SimSessions, a: np.ndarray, g: np.ndarray, user: np.ndarray, t: np.ndarray,
                     items: np.ndarray, fb: dict[str, np.ndarray], st: SimUserState) -> np.ndarray:
        """The leave logit after each item j: S and F moved as :meth:`update_session` moves them, with the
        means over the list taken over items 1..j, (b, l)."""
        item_sat, repeat, _ = self._item_terms(sessions, a, user, items, fb)
        sc = self.cfg.session
        sat = (1 - sc.satisfaction_rate) * sessions.sat[a][:, None] + sc.satisfaction_rate * prefix_mean(item_sat)
        fatigue = (sc.fatigue_decay * sessions.fatigue[a][:, None] + sc.fatigue_repeat * prefix_mean(repeat)
                   + sc.fatigue_clickbait * prefix_mean(fb["clickbait"]))
        return self._leave_logit(sat, fatigue, user[:, None], t[:, None])

    def _item_terms(self, sessions: SimSessions, a: np.ndarray, user: np.ndarray, items: np.ndarray,
                    fb: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per shown item: its satisfaction (b, l), whether its category repeats one just seen or earlier in
        the list (b, l), and the category one-hot (b, l, C)."""
        sc = self.cfg.session
        susc = self.users.susceptibility[user][:, None]
        inter = fb["share"] + fb["collect"] + fb["follow"] + fb["comment"]
        item_sat = (sc.sat_watch * np.minimum(fb["watch_ratio"], 1.2) + sc.sat_like * fb["like"]
                    + sc.sat_interact * inter - sc.sat_clickbait * fb["clickbait"] * fb["engaged"] * susc
                    - sc.sat_invalid * (1 - fb["valid"]))
        cats = self.items.category[items]  # (b, l)
        cat_oh = self._onehot[cats]  # (b, l, C)
        seen_before = np.take_along_axis(sessions.prev_cat[a], cats, 1)
        dup_in_list = (np.cumsum(cat_oh, 1) * cat_oh).sum(-1) > 1  # category already earlier in this list
        return item_sat, (seen_before | dup_in_list).astype(np.float64), cat_oh

    def _leave_logit(self, sat: np.ndarray, fatigue: np.ndarray, user: np.ndarray, t: np.ndarray) -> np.ndarray:
        sc = self.cfg.session
        return (sc.leave_bias - sc.leave_satisfaction * sat + sc.leave_fatigue * fatigue - self.users.patience[user]
                + sc.leave_per_request * t)
