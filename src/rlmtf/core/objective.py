"""What a policy is trained to maximise: the episode, its discounts and the value of a return visit
(``docs/design.md#the-objective``).

The paper's episode is the **session**: the critics estimate the discounted sum of request rewards
``sum_t gamma^t r_t`` until the user leaves. That objective never sees whether the user comes back: a
fusion that keeps each session a little longer but leaves users less satisfied (fewer sessions a day)
scores higher on it while the day's valid views fall. The **day** episode continues a session's last
request into the user's next session of the same day and ends only at the day's end:

- inside a session, one request to the next is discounted by ``gamma``;
- from a session's last request to the next session's first request by ``session_gamma``;
- a session's last request earns ``return_bonus`` extra when the user opens another session that day
  (in units of the request reward, which the reward weights already set).

``Objective()`` is the paper's (session, gamma 0.9). ``rlmtf analyze objective`` measures how well each
candidate's gradient agrees with UVC, UDT and the reward per user-day before anything is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EPISODES", "Objective", "propagation_steps", "request_values", "user_day_values"]

EPISODES = ("session", "day")


@dataclass(frozen=True)
class Objective:
    """The episode and its discounts (module docstring)."""

    episode: str = "session"
    """"session" (the paper: terminal when the user leaves) or "day" (terminal at the end of the user's day)."""
    gamma: float = 0.9
    """Discount from one request to the next inside a session."""
    session_gamma: float = 1.0
    """Day episode: discount from a session's last request to the first request of the user's next session."""
    return_bonus: float = 0.0
    """Day episode: added to the reward of a session's last request when the user opens another session."""

    def __post_init__(self) -> None:
        if self.episode not in EPISODES:
            raise ValueError(f"episode must be one of {', '.join(EPISODES)}, got {self.episode!r}")
        for name in ("gamma", "session_gamma"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        if not (isinstance(self.return_bonus, int | float) and np.isfinite(self.return_bonus)):
            raise ValueError(f"return_bonus must be a finite number, got {self.return_bonus!r}")
        if self.episode == "session" and (self.session_gamma != 1.0 or self.return_bonus != 0.0):
            raise ValueError("session_gamma and return_bonus belong to the day episode (episode='day')")

    @property
    def label(self) -> str:
        if self.episode == "session":
            return f"session(gamma={self.gamma:g})"
        extra = f", bonus={self.return_bonus:g}" if self.return_bonus else ""
        return f"day(gamma={self.gamma:g}, session_gamma={self.session_gamma:g}{extra})"

    @classmethod
    def parse(cls, text: str) -> Objective:
        """``session``, ``session:gamma=0.9``, ``day:gamma=0.9,session_gamma=0.8,return_bonus=1`` ..."""
        episode, _, rest = text.strip().partition(":")
        kw: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in ("gamma", "session_gamma", "return_bonus"):
                raise ValueError(f"objective {text!r}: expected key=value with a key of gamma, session_gamma or "
                                 f"return_bonus, got {part!r}")
            try:
                kw[key] = float(value)
            except ValueError:
                raise ValueError(f"objective {text!r}: {key} must be a number, got {value!r}") from None
        return cls(episode=episode.strip(), **kw)


def propagation_steps(episode_lengths: np.ndarray, tau: float, gamma: float = 1.0, quantile: float = 0.9) -> int:
    """Gradient steps a critic trained from scratch needs before its value at an episode's first request
    has seen the episode's end (``docs/design.md#how-many-steps``).

    A one-step TD target reads the value one request deeper from the target network, which follows the
    critic with Polyak rate ``tau``: news from ``h`` requests ahead reaches the first request after about
    ``h / tau`` steps. ``h`` is the ``quantile`` of the episodes' lengths in requests, capped at the
    discount's horizon ``1 / (1 - gamma)`` (rewards further ahead hardly count): a session with gamma 0.9
    needs ~``min(len, 10) / tau`` steps, an undiscounted user-day of 24 requests ~4,800 at tau 0.005."""
    lengths = np.asarray(episode_lengths, dtype=np.float64)
    if lengths.size == 0 or not np.all(lengths >= 1):
        raise ValueError("episode_lengths must be a non-empty array of counts >= 1")
    if not 0 < tau <= 1 or not 0 < gamma <= 1 or not 0 < quantile <= 1:
        raise ValueError(f"tau and gamma must be in (0, 1] and quantile in (0, 1], got {tau}, {gamma}, {quantile}")
    h = float(np.quantile(lengths, quantile))
    if gamma < 1:
        h = min(h, 1.0 / (1.0 - gamma))
    return int(np.ceil(h / tau - 1e-9))  # 1 / (1 - 0.8) is 5.000000000000001 in floating point


def _next_in_day(session_id: np.ndarray, max_sessions_per_day: int) -> np.ndarray:
    """For requests sorted by (session_id, t): does the user open another session that day after this
    request's session? (Session ids are ``(day * n_users + user) * max_sessions_per_day + k``.)"""
    day_user = session_id // max_sessions_per_day
    sessions, first = np.unique(session_id, return_index=True)
    s_day_user = day_user[first]
    has_next = np.r_[s_day_user[1:] == s_day_user[:-1], False]  # (S,) a later session of the same user-day
    return has_next[np.searchsorted(sessions, session_id)]


def request_values(session_id: np.ndarray, t: np.ndarray, reward: np.ndarray, objective: Objective,
                   max_sessions_per_day: int) -> tuple[np.ndarray, np.ndarray]:
    """Per request (sorted by (session_id, t); whole sessions and, for the day episode, whole user-days):
    its discount from the start of its episode and its reward under ``objective`` (the return bonus
    added). The episode's value is ``sum(discount * reward)`` over its requests."""
    session_id, t = np.asarray(session_id, np.int64), np.asarray(t, np.int64)
    reward = np.asarray(reward, np.float64).copy()
    n = session_id.size
    if n == 0:
        return np.zeros(0), reward
    if objective.episode == "session":
        return np.power(objective.gamma, t, dtype=np.float64), reward
    last = np.r_[session_id[1:] != session_id[:-1], True]
    nxt = _next_in_day(session_id, max_sessions_per_day)
    reward += objective.return_bonus * (last & nxt)
    day_user = session_id // max_sessions_per_day
    new_day = np.r_[True, day_user[1:] != day_user[:-1]]
    new_session = np.r_[True, session_id[1:] != session_id[:-1]]
    step = np.where(new_session, objective.session_gamma, objective.gamma)  # discount into this request
    step[new_day] = 1.0
    log_step = np.log(np.maximum(step, 1e-300))
    cum = np.cumsum(log_step)
    start = np.maximum.accumulate(np.where(new_day, np.arange(n), 0))
    disc = np.exp(cum - cum[start])
    zero_before = np.cumsum(step == 0)  # exact zeros after a zero discount (gamma = 0), not 1e-300 ** k
    disc[zero_before - zero_before[start] > 0] = 0.0
    return disc, reward


def user_day_values(session_id: np.ndarray, t: np.ndarray, reward: np.ndarray, objective: Objective,
                    max_sessions_per_day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(day_user, value, episodes)`` per user-day: the summed episode values of the user's day under
    ``objective`` and the number of episodes (sessions, or 1 for the day episode). ``day_user`` is
    ``session_id // max_sessions_per_day``. Requests sorted by (session_id, t)."""
    disc, rew = request_values(session_id, t, reward, objective, max_sessions_per_day)
    day_user = np.asarray(session_id, np.int64) // max_sessions_per_day
    keys, inv = np.unique(day_user, return_inverse=True)
    value = np.bincount(inv, weights=disc * rew, minlength=keys.size)
    if objective.episode == "session":
        first = np.r_[True, session_id[1:] != session_id[:-1]] if len(session_id) else np.zeros(0, bool)
        episodes = np.bincount(inv, weights=first.astype(np.float64), minlength=keys.size)
    else:
        episodes = np.ones(keys.size)
    return keys, value, episodes
