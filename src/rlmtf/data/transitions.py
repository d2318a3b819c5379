"""The request-level view of logged data that every RL algorithm shares (SPEC section 5).

One *transition* is one request t of a session: the l shown items with their enhanced states
``s_tj``, the logged actions ``a_tj`` with the exploration box ``(mu_bp, lower_b, upper_b)``, the item
rewards ``r_tj``, and a pointer to the session's next request t+1. A :class:`RequestBatch` carries the
current and the next request side by side, so a critic's list-level TD target (Formula 7) is::

    y_i = sum_j r_tj                                                     # batch.reward          (B,)
          + gamma * (1 - done_t)                                         # batch.done            (B,)
          * sum_j' [ Q'_i(s_(t+1)j', mu'(s_(t+1)j'))                     # batch.next_enhanced_state (B, l, Des)
                     - delta * d(mu'(s_(t+1)j'), mu_bp(s_(t+1)j')) ]     # batch.next_mu_bp/next_lower_b/next_upper_b
    L_critic_i = ( sum_j Q^i(s_tj, a_tj) - y_i )^2                       # batch.enhanced_state, batch.action

User-level methods (IntegratedRL-MTF and the baselines, SPEC sections 6-7) use ``user_state`` /
``next_user_state`` (B, Dus) and the request reward ``reward`` instead. For the last request of a
session (``done = 1``) the "next" request is the request itself; its value is masked by ``1 - done``.

Layout: ``user_state = user_profile ++ user_history ++ context`` (taken from the request's position-0
row) and ``enhanced_state = user_state ++ item_features ++ mtl_scores`` per shown item, in the order of
:mod:`rlmtf.core.schema`. Requests are sorted by (session_id, t); items within a request by position.
Everything is built with vectorised numpy (lexsort, reshape, fancy indexing): no per-row Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from rlmtf.data.io import LogDataError, LoggedData

if TYPE_CHECKING:
    import torch

__all__ = ["RequestBatch", "Transitions", "build_transitions", "group_requests"]

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
    """A batch of B requests and their next requests (numpy); see the module docstring for use."""

    user_state: np.ndarray  # (B, Dus)
    enhanced_state: np.ndarray  # (B, l, Des)
    action: np.ndarray  # (B, l, A) logged action a_tj
    mu_bp: np.ndarray  # (B, l, A)
    lower_b: np.ndarray  # (B, l, A)
    upper_b: np.ndarray  # (B, l, A)
    item_reward: np.ndarray  # (B, l) r_tj
    reward: np.ndarray  # (B,) r_t = sum_j r_tj
    done: np.ndarray  # (B,) 1.0 on a session's last request
    next_user_state: np.ndarray  # (B, Dus)
    next_enhanced_state: np.ndarray  # (B, l, Des)
    next_mu_bp: np.ndarray  # (B, l, A)
    next_lower_b: np.ndarray  # (B, l, A)
    next_upper_b: np.ndarray  # (B, l, A)

    def __len__(self) -> int:
        return len(self.reward)

    def to_torch(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Every field as a float32 tensor on ``device``, keyed by field name."""
        import torch  # lazily: reading and validating logs does not need torch

        return {f.name: torch.from_numpy(np.asarray(getattr(self, f.name), dtype=np.float32)).to(device)
                for f in fields(self)}


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
    done: np.ndarray  # (R,) float32
    next_index: np.ndarray  # (R,) int64, the session's next request; itself when done
    session_id: np.ndarray  # (R,) int64
    user_id: np.ndarray  # (R,) int64
    t: np.ndarray  # (R,) int32
    day: np.ndarray  # (R,) int32
    row_index: np.ndarray  # (R, l) int64, global rows of LoggedData (e.g. for feedback labels)

    def __len__(self) -> int:
        return len(self.reward)

    def _take(self, idx: np.ndarray) -> Transitions:
        """The requests ``idx`` (whole sessions, in order) with next_index remapped."""
        new_pos = np.full(len(self), -1, dtype=np.int64)
        new_pos[idx] = np.arange(len(idx))
        next_index = new_pos[self.next_index[idx]]
        assert (next_index >= 0).all(), "a subset must contain whole sessions"
        kw = {f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "next_index"}
        return Transitions(next_index=next_index, **kw)

    def select(self, keep: np.ndarray) -> Transitions:
        """The requests where ``keep`` (R,) is true; ``keep`` must hold or drop whole sessions."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"keep must have shape ({len(self)},), got {keep.shape}")
        return self._take(np.flatnonzero(keep))

    def split(self, fraction: float, seed: int = 0) -> tuple[Transitions, Transitions]:
        """Split by session: a random ``fraction`` of the sessions goes to the first part.

        A session never straddles the split, so every next request stays in its part.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        sessions, inverse = np.unique(self.session_id, return_inverse=True)
        n_first = round(fraction * len(sessions))
        chosen = np.zeros(len(sessions), dtype=bool)
        chosen[np.random.default_rng(seed).permutation(len(sessions))[:n_first]] = True
        in_first = chosen[inverse]  # (R,)
        return self._take(np.flatnonzero(in_first)), self._take(np.flatnonzero(~in_first))

    def batch(self, idx: np.ndarray) -> RequestBatch:
        """The requests ``idx`` (any int array) with their next requests."""
        idx = np.asarray(idx, dtype=np.int64)
        nxt = self.next_index[idx]
        return RequestBatch(
            user_state=self.user_state[idx],
            enhanced_state=self.enhanced_state[idx],
            action=self.action[idx],
            mu_bp=self.mu_bp[idx],
            lower_b=self.lower_b[idx],
            upper_b=self.upper_b[idx],
            item_reward=self.item_reward[idx],
            reward=self.reward[idx],
            done=self.done[idx],
            next_user_state=self.user_state[nxt],
            next_enhanced_state=self.enhanced_state[nxt],
            next_mu_bp=self.mu_bp[nxt],
            next_lower_b=self.lower_b[nxt],
            next_upper_b=self.upper_b[nxt],
        )

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
        next_index=np.where(done, idx, idx + 1),  # sorted by (session, t) with no gaps: t+1 is the next row
        session_id=c["session_id"][first].astype(np.int64, copy=False),
        user_id=c["user_id"][first].astype(np.int64, copy=False),
        t=c["t"][first].astype(np.int32, copy=False),
        day=c["day"][first].astype(np.int32, copy=False),
        row_index=rows,
    )
