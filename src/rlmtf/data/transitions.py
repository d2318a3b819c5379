"""The request-level view of logged data that every RL algorithm shares (``docs/design.md#request-level-transitions``).

One *transition* is one request t of a session: the l shown items with their enhanced states
``s_tj``, the logged actions ``a_tj`` with the exploration box ``(mu_bp, lower_b, upper_b)``, the item
rewards ``r_tj``, and a pointer to the session's next request t+1. A :class:`RequestBatch` carries the
current and the next request side by side, so a critic's list-level TD target (Formula 7) is::

    y_i = sum_j r_tj                                                     # batch.reward          (B,)
          + gamma * (1 - done_t)                                         # batch.done            (B,)
          * sum_j' [ Q'_i(s_(t+1)j', mu'(s_(t+1)j'))                     # batch.next_enhanced_state (B, l, Des)
                     - delta * d(mu'(s_(t+1)j'), mu_bp(s_(t+1)j')) ]     # batch.next_mu_bp/next_lower_b/next_upper_b
    L_critic_i = ( sum_j Q^i(s_tj, a_tj) - y_i )^2                       # batch.enhanced_state, batch.action

User-level methods (IntegratedRL-MTF and the baselines, ``docs/design.md#integratedrl-mtf`` and
``docs/design.md#baselines``) use ``user_state`` / ``next_user_state`` (B, Dus) and the request reward ``reward``
instead. For the last request of a session (``done = 1``) the "next" request is the request itself; its
value is masked by ``1 - done``.

Layout: ``user_state = user_profile ++ user_history ++ context`` (taken from the request's position-0
row) and ``enhanced_state = user_state ++ item_features ++ mtl_scores`` per shown item, in the order of
:mod:`rlmtf.core.schema`. Requests are sorted by (session_id, t); items within a request by position.
Everything is built with vectorised numpy (lexsort, reshape, fancy indexing): no per-row Python objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from rlmtf.data.io import LogDataError, LoggedData

if TYPE_CHECKING:
    import torch

    Array: TypeAlias = np.ndarray | torch.Tensor

__all__ = ["CANDIDATE_FIELDS", "NEXT_FIELDS", "REQUEST_FIELDS", "RequestBatch", "Transitions", "build_transitions",
           "group_requests"]

#: Fields of a :class:`RequestBatch` that describe the request itself (one row per request of a dataset).
REQUEST_FIELDS = ("user_state", "enhanced_state", "action", "mu_bp", "lower_b", "upper_b", "item_reward", "reward",
                  "done", "gap")
#: Fields a batch also carries for the session's next request, as ``next_<field>``.
NEXT_FIELDS = ("user_state", "enhanced_state", "mu_bp", "lower_b", "upper_b")
#: Optional fields, present when the logs carry the candidate sample (``docs/design.md#the-candidate-sample``):
#: per request, l candidates drawn uniformly from all it ranked, as enhanced states (B, l, Des) with the
#: behaviour policy's box for them (B, l, A).
CANDIDATE_FIELDS = ("candidate_state", "candidate_mu_bp", "candidate_lower_b", "candidate_upper_b")

_USER_GROUPS = ("user_profile", "user_history", "context")
_ITEM_GROUPS = ("item_features", "mtl_scores")
_BOX = ("action", "mu_bp", "lower_b", "upper_b")
_NEEDED = ("session_id", "user_id", "t", "day", "position", "reward", "done", *_USER_GROUPS, *_ITEM_GROUPS, *_BOX)


def _request_name(data: LoggedData, row: int) -> str:
    c = data.columns
    return f"request (session_id={int(c['session_id'][row])}, t={int(c['t'][row])})"


def group_requests(data: LoggedData) -> np.ndarray:
    """Sort rows into requests and check the request structure; return ``(R, l)`` global row indices.

    Rows are ordered by (session_id, t, position) with a stable lexsort. Raises
    :class:`LogDataError` (naming a file, row and column, and the session id and t) unless every
    request has exactly ``list_len`` rows with positions 0..l-1, the t of every session run 0..T-1
    without gaps, a session has one user_id, and ``done`` is the same on all rows of a request and
    true exactly on the last request of each session.
    """
    c = data.columns
    missing = [n for n in ("session_id", "user_id", "t", "position", "done") if n not in c]
    if missing:
        raise LogDataError(f"column '{missing[0]}' was not loaded; build transitions from read_logs(path)")
    n, ll = len(data), data.meta.list_len
    sid, t, pos = c["session_id"], c["t"], c["position"]
    order = np.lexsort((pos, t, sid))  # last key is the primary one
    if n == 0:
        return np.zeros((0, ll), dtype=np.int64)
    s_o, t_o = sid[order], t[order]

    # requests = runs of equal (session_id, t)
    starts = np.flatnonzero(np.r_[True, (s_o[1:] != s_o[:-1]) | (t_o[1:] != t_o[:-1])])
    sizes = np.diff(np.r_[starts, n])
    bad = np.flatnonzero(sizes != ll)
    if bad.size:
        row = int(order[starts[bad[0]]])
        raise LogDataError(
            f"{data.locate(row)}, column 'position': {_request_name(data, row)} has {sizes[bad[0]]} rows, "
            f"expected list_len={ll}"
        )
    rows = order.reshape(-1, ll).astype(np.int64, copy=False)  # (R, l)
    pos_r = pos[rows]  # (R, l)
    bad_pos = pos_r != np.arange(ll)
    if bad_pos.any():
        r = int(np.flatnonzero(bad_pos.any(axis=1))[0])
        row = int(rows[r, int(np.argmax(bad_pos[r]))])
        raise LogDataError(
            f"{data.locate(row)}, column 'position': {_request_name(data, row)} has positions "
            f"{pos_r[r].tolist()}, expected 0..{ll - 1}"
        )

    first = rows[:, 0]  # (R,)
    s_r, t_r = sid[first], t[first]
    new_session = np.r_[True, s_r[1:] != s_r[:-1]]  # (R,)
    session_start = np.maximum.accumulate(np.where(new_session, np.arange(len(first)), 0))
    expected_t = np.arange(len(first)) - session_start
    bad = np.flatnonzero(t_r != expected_t)
    if bad.size:
        r = int(bad[0])
        row = int(first[r])
        after = "as its first request" if new_session[r] else f"after t={int(t_r[r - 1])}"
        raise LogDataError(
            f"{data.locate(row)}, column 't': session_id={int(s_r[r])} has t={int(t_r[r])} {after}; "
            "t must run 0..T-1 without gaps"
        )

    user = c["user_id"][rows]  # (R, l)
    bad = np.flatnonzero((user != user[session_start, :1]).any(axis=1))
    if bad.size:
        r = int(bad[0])
        j = int(np.argmax(user[r] != user[session_start[r], 0]))
        raise LogDataError(
            f"{data.locate(int(rows[r, j]))}, column 'user_id': session_id={int(s_r[r])} has user_id "
            f"{int(user[r, j])} at t={int(t_r[r])} but {int(user[session_start[r], 0])} at t=0"
        )

    done = c["done"][rows]  # (R, l)
    mixed = np.flatnonzero(done.min(axis=1) != done.max(axis=1))
    if mixed.size:
        r = int(mixed[0])
        row = int(rows[r, int(np.argmax(done[r] != done[r, 0]))])
        raise LogDataError(
            f"{data.locate(row)}, column 'done': {_request_name(data, row)} has done=True on some rows "
            "and done=False on others"
        )
    last = np.r_[new_session[1:], True]  # (R,) last request of its session
    bad = np.flatnonzero(done[:, 0] != last)
    if bad.size:
        r = int(bad[0])
        row = int(first[r])
        what = (f"done=False on the last request (session_id={int(s_r[r])} has T={int(t_r[r]) + 1})"
                if last[r] else f"done=True but session_id={int(s_r[r])} continues at t={int(t_r[r]) + 1}")
        raise LogDataError(f"{data.locate(row)}, column 'done': {what}")
    return rows


@dataclass
class RequestBatch:
    """A batch of B requests and their next requests; see the module docstring for use.

    The one batch every sampler returns and every algorithm's ``update`` takes. Its fields are numpy
    arrays, or float32 tensors already on the training device when a sampler gathered them there
    (:class:`rlmtf.data.samplers.DeviceSampler`); :meth:`to_torch` gives the same numbers either way.
    """

    user_state: Array  # (B, Dus)
    enhanced_state: Array  # (B, l, Des)
    action: Array  # (B, l, A) logged action a_tj
    mu_bp: Array  # (B, l, A)
    lower_b: Array  # (B, l, A)
    upper_b: Array  # (B, l, A)
    item_reward: Array  # (B, l) r_tj
    reward: Array  # (B,) r_t = sum_j r_tj
    done: Array  # (B,) 1.0 on an episode's last request
    gap: Array  # (B,) 1.0 where the next request opens the user's next session (day episodes only)
    next_user_state: Array  # (B, Dus)
    next_enhanced_state: Array  # (B, l, Des)
    next_mu_bp: Array  # (B, l, A)
    next_lower_b: Array  # (B, l, A)
    next_upper_b: Array  # (B, l, A)
    candidate_state: Array | None = None  # (B, l, Des), with the candidate sample (CANDIDATE_FIELDS)
    candidate_mu_bp: Array | None = None  # (B, l, A)
    candidate_lower_b: Array | None = None  # (B, l, A)
    candidate_upper_b: Array | None = None  # (B, l, A)

    def __len__(self) -> int:
        return len(self.reward)

    @classmethod
    def gather(cls, data: Mapping[str, Array], next_index: Array, idx: Array) -> RequestBatch:
        """The requests ``idx`` of ``data`` (every :data:`REQUEST_FIELDS` array of a dataset and, where it has
        them, the :data:`CANDIDATE_FIELDS`; all numpy or all tensors on one device) with their next requests
        ``next_index[idx]``."""
        nxt = next_index[idx]
        return cls(**{name: data[name][idx] for name in REQUEST_FIELDS},
                   **{f"next_{name}": data[name][nxt] for name in NEXT_FIELDS},
                   **{name: data[name][idx] for name in CANDIDATE_FIELDS if name in data})

    @classmethod
    def concat(cls, parts: Sequence[RequestBatch]) -> RequestBatch:
        """The batches ``parts`` (all numpy or all tensors) as one, requests in the given order."""
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0].reward, np.ndarray):
            cat = np.concatenate
        else:
            import torch

            cat = torch.cat
        return cls(**{f.name: None if getattr(parts[0], f.name) is None else cat([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})

    def to_torch(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Every field as a float32 tensor on ``device``, keyed by field name (fields that are tensors there
        already are handed over without a copy; absent optional fields are left out)."""
        import torch  # lazily: reading and validating logs does not need torch

        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                out[f.name] = v.to(device, torch.float32)
            else:
                out[f.name] = torch.from_numpy(np.asarray(v, dtype=np.float32)).to(device)
        return out


@dataclass
class Transitions:
    """All requests of a dataset as contiguous arrays, sorted by (session_id, t)."""

    user_state: np.ndarray  # (R, Dus) float32
    enhanced_state: np.ndarray  # (R, l, Des) float32
    action: np.ndarray  # (R, l, A) float32
    mu_bp: np.ndarray  # (R, l, A) float32
    lower_b: np.ndarray  # (R, l, A) float32
    upper_b: np.ndarray  # (R, l, A) float32
    item_reward: np.ndarray  # (R, l) float32
    reward: np.ndarray  # (R,) float32, sum over the l items
    done: np.ndarray  # (R,) float32, 1.0 on the last request of an episode (a session, or a user-day)
    gap: np.ndarray  # (R,) float32, 1.0 where the next request opens the user's next session (day episodes)
    next_index: np.ndarray  # (R,) int64, the episode's next request; itself when done
    session_id: np.ndarray  # (R,) int64
    user_id: np.ndarray  # (R,) int64
    t: np.ndarray  # (R,) int32
    day: np.ndarray  # (R,) int32
    row_index: np.ndarray  # (R, l) int64, global rows of LoggedData (e.g. for feedback labels)
    episode: str = "session"
    """"session" (the paper: terminal when the user leaves) or "day" (:meth:`day_episodes`)."""
    candidate_state: np.ndarray | None = None  # (R, l, Des) float32, with the candidate sample (CANDIDATE_FIELDS)
    candidate_mu_bp: np.ndarray | None = None  # (R, l, A) float32
    candidate_lower_b: np.ndarray | None = None  # (R, l, A) float32
    candidate_upper_b: np.ndarray | None = None  # (R, l, A) float32

    @property
    def has_candidates(self) -> bool:
        """Whether the requests carry the candidate sample."""
        return self.candidate_state is not None

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def episode_id(self) -> np.ndarray:
        """(R,) the episode of each request: its session, or for day episodes its first session's id."""
        if self.episode == "session":
            return self.session_id
        new = np.r_[True, (self.user_id[1:] != self.user_id[:-1]) | (self.day[1:] != self.day[:-1])]
        return self.session_id[np.maximum.accumulate(np.where(new, np.arange(len(self)), 0))]

    def day_episodes(self, return_bonus: float = 0.0) -> Transitions:
        """The same requests linked into day episodes (``rlmtf.core.objective``): a session's last request
        continues into the user's next session of the same day (``gap`` = 1 there, for the session
        discount), an episode ends at the user's last session of the day, and a session's last request
        earns ``return_bonus`` more (spread over its items) when another session follows.

        Needs session ids that order one user's sessions of a day consecutively, as the environments'
        ``(day * n_users + user) * max_sessions + k`` do; the requests of a user-day must be contiguous."""
        if self.episode == "day":
            raise ValueError("these transitions are already linked into day episodes")
        n = len(self)
        if n == 0:
            return dataclasses.replace(self, episode="day")
        key = np.stack([self.day.astype(np.int64), self.user_id], 1)
        new_day = np.r_[True, (key[1:] != key[:-1]).any(1)]
        day_start = np.flatnonzero(new_day)
        if np.unique(key[day_start], axis=0).shape[0] != day_start.size:
            raise LogDataError("day episodes need each user-day's sessions to be consecutive in session_id order "
                               "(as the environments number them); these logs interleave them")
        last_in_day = np.r_[new_day[1:], True]
        session_end = self.done > 0
        cont = session_end & ~last_in_day  # a session's last request with a later session that day
        idx = np.arange(n, dtype=np.int64)
        bonus = np.float32(return_bonus) * cont.astype(np.float32)
        item_reward = self.item_reward + (bonus / np.float32(self.item_reward.shape[1]))[:, None]
        return dataclasses.replace(
            self, episode="day", done=last_in_day.astype(np.float32), gap=cont.astype(np.float32),
            next_index=np.where(last_in_day, idx, idx + 1), item_reward=item_reward.astype(np.float32),
            reward=(self.reward + bonus).astype(np.float32))

    def _take(self, idx: np.ndarray) -> Transitions:
        """The requests ``idx`` (whole sessions, in order) with next_index remapped."""
        new_pos = np.full(len(self), -1, dtype=np.int64)
        new_pos[idx] = np.arange(len(idx))
        next_index = new_pos[self.next_index[idx]]
        assert (next_index >= 0).all(), "a subset must contain whole sessions"
        kw = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[idx]
              for f in fields(self) if f.name not in ("next_index", "episode")}
        return Transitions(next_index=next_index, episode=self.episode, **kw)

    def select(self, keep: np.ndarray) -> Transitions:
        """The requests where ``keep`` (R,) is true; ``keep`` must hold or drop whole episodes."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"keep must have shape ({len(self)},), got {keep.shape}")
        return self._take(np.flatnonzero(keep))

    def split(self, fraction: float, seed: int = 0) -> tuple[Transitions, Transitions]:
        """Split by episode: a random ``fraction`` of the episodes (sessions, or user-days) goes to the first
        part. An episode never straddles the split, so every next request stays in its part.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        sessions, inverse = np.unique(self.episode_id, return_inverse=True)
        n_first = round(fraction * len(sessions))
        chosen = np.zeros(len(sessions), dtype=bool)
        chosen[np.random.default_rng(seed).permutation(len(sessions))[:n_first]] = True
        in_first = chosen[inverse]  # (R,)
        return self._take(np.flatnonzero(in_first)), self._take(np.flatnonzero(~in_first))

    def batch(self, idx: np.ndarray) -> RequestBatch:
        """The requests ``idx`` (any int array) with their next requests."""
        return RequestBatch.gather(self.arrays(), self.next_index, np.asarray(idx, dtype=np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-request arrays a batch is gathered from (:data:`REQUEST_FIELDS`, and the
        :data:`CANDIDATE_FIELDS` when present), by name (no copies)."""
        names = (*REQUEST_FIELDS, *CANDIDATE_FIELDS) if self.has_candidates else REQUEST_FIELDS
        return {name: getattr(self, name) for name in names}

    def batches(
        self, batch_size: int = 256, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> Iterator[RequestBatch]:
        """One epoch: every request exactly once (the last batch may be short unless ``drop_last``).

        The order is a fixed function of ``seed`` (or the stored order when ``shuffle=False``).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])

    def sample(self, batch_size: int, rng: np.random.Generator) -> RequestBatch:
        """``batch_size`` requests drawn uniformly with replacement (for step-based training)."""
        if len(self) == 0:
            raise ValueError("cannot sample from empty transitions")
        return self.batch(rng.integers(0, len(self), size=batch_size))


def build_transitions(data: LoggedData) -> Transitions:
    """Group logged rows into requests (see :func:`group_requests` for the checks) and build arrays."""
    missing = [n for n in _NEEDED if n not in data.columns]
    if missing:
        raise LogDataError(f"column '{missing[0]}' was not loaded; build transitions from read_logs(path)")
    c = data.columns
    rows = group_requests(data)  # (R, l)
    n_req, ll = rows.shape
    first = rows[:, 0]  # (R,) the position-0 row carries the request's user state

    dims = {g: c[g].shape[1] for g in (*_USER_GROUPS, *_ITEM_GROUPS)}
    d_us = sum(dims[g] for g in _USER_GROUPS)
    d_es = d_us + sum(dims[g] for g in _ITEM_GROUPS)
    user_state = np.empty((n_req, d_us), dtype=np.float32)  # (R, Dus)
    enhanced_state = np.empty((n_req, ll, d_es), dtype=np.float32)  # (R, l, Des)
    start = 0
    for g in _USER_GROUPS:  # fill slice by slice: no concatenated (N, Des) temporary
        sl = slice(start, start + dims[g])
        user_state[:, sl] = c[g][first]
        enhanced_state[:, :, sl] = c[g][rows]
        start = sl.stop
    for g in _ITEM_GROUPS:
        sl = slice(start, start + dims[g])
        enhanced_state[:, :, sl] = c[g][rows]
        start = sl.stop

    item_reward = c["reward"][rows].astype(np.float32, copy=False)  # (R, l)
    done = c["done"][first]  # (R,) bool, checked consistent by group_requests
    idx = np.arange(n_req, dtype=np.int64)
    candidates = {}
    if "candidate_mtl_scores" in c:  # the candidate sample: the request's user state beside each drawn candidate
        cand_state = np.empty_like(enhanced_state)
        cand_state[:, :, :d_us] = enhanced_state[:, :, :d_us]
        cand_state[:, :, d_us:] = np.concatenate([c["candidate_item_features"][rows],
                                                  c["candidate_mtl_scores"][rows]], -1)
        candidates = {"candidate_state": cand_state,
                      **{f"candidate_{n}": c[f"candidate_{n}"][rows] for n in ("mu_bp", "lower_b", "upper_b")}}
    return Transitions(
        user_state=user_state,
        enhanced_state=enhanced_state,
        action=c["action"][rows],
        mu_bp=c["mu_bp"][rows],
        lower_b=c["lower_b"][rows],
        upper_b=c["upper_b"][rows],
        item_reward=item_reward,
        reward=item_reward.sum(axis=1, dtype=np.float64).astype(np.float32),
        done=done.astype(np.float32),
        gap=np.zeros(n_req, np.float32),
        next_index=np.where(done, idx, idx + 1),  # sorted by (session, t) with no gaps: t+1 is the next row
        session_id=c["session_id"][first].astype(np.int64, copy=False),
        user_id=c["user_id"][first].astype(np.int64, copy=False),
        t=c["t"][first].astype(np.int32, copy=False),
        day=c["day"][first].astype(np.int32, copy=False),
        row_index=rows,
        **candidates,
    )
