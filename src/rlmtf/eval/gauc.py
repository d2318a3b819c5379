"""Weighted group AUC (GAUC), the offline metric of section 4.1.2 of the Enhanced-State RL paper.

For each user u with at least one positive (label 1) and one negative (label 0) sample:

    AUC_u = sum_{p in pos, n in neg} w_p w_n ([f_p > f_n] + 0.5 [f_p = f_n]) / (sum_pos w_p * sum_neg w_n)
    GAUC  = sum_u W_u AUC_u / sum_u W_u,        W_u = sum of all of u's sample weights

Algorithm (exact, O(n log n), no Python loop over users or rows): sort the rows by (user, score);
collapse each run of equal (user, score) into one group with its positive and negative weight; a
cumulative sum of negative weight, restarted at every user, gives for each group the negative weight
strictly below it; then sum_p w_p * (neg below + 0.5 * neg tied) per user is the numerator of AUC_u.
Per-user sums come from ``np.add.reduceat`` over the user boundaries. Cost at 10M rows is dominated
by one argsort of the scores plus one uint64 value sort (see ``_sort_by_user_then_score``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["GAUCResult", "min_max_normalise", "weighted_gauc"]


class GAUCResult(NamedTuple):
    """Result of :func:`weighted_gauc`."""

    gauc: float
    """Weighted GAUC; ``nan`` when no user has both labels."""
    n_users: int
    """Users that entered the average (both labels present)."""
    n_users_skipped: int
    """Users left out because they have one label only (or one label class has zero total weight)."""


def min_max_normalise(x: np.ndarray) -> np.ndarray:
    """Map ``x`` linearly onto [0, 1]: (x - min) / (max - min); a constant array maps to all zeros.

    The offline evaluation normalises predictions this way over the test set before computing the GAUC
    (``docs/design.md#weighted-gauc``). It is order-preserving (up to float rounding), so it leaves every
    per-user AUC unchanged.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.copy()
    if not np.isfinite(a).all():
        bad = int(np.argmin(np.isfinite(a.ravel())))
        raise ValueError(f"x[{bad}] = {a.ravel()[bad].item()!r} is not finite")
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def weighted_gauc(
    user_ids: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    weights: np.ndarray | None = None,
) -> GAUCResult:
    """Weighted GAUC (section 4.1.2 of the Enhanced-State RL paper); see the module docstring.

    Args:
        user_ids: user of each sample; any integer or string-like 1-D array.
        labels: 0 or 1 per sample (bool, int or float holding 0/1).
        scores: model prediction per sample; finite. Equal scores within a user count 0.5.
        weights: non-negative finite weight per sample; ``None`` means all 1.

    Returns:
        :class:`GAUCResult`. Users with one label only are left out of the average and counted in
        ``n_users_skipped``; a label class whose weights are all zero counts as absent (its AUC_u
        would be 0/0). If no user qualifies, ``gauc`` is ``float('nan')``.

    Raises:
        ValueError: empty input, arrays not 1-D or of different lengths, non-finite scores,
            labels outside {0, 1}, negative or non-finite weights. Value errors name the argument
            and the first bad index.
    """
    users, y, s, w = _validate(user_ids, labels, scores, weights)
    n = s.size

    # At 10M rows, random gathers and fresh memory cost as much as the arithmetic, so large
    # temporaries are freed (del) or reused in place, and the label rides in the sign of the weight
    # (one gather instead of two; a zero weight adds nothing to either class, whatever its sign).
    signed_w = np.where(y, w, -w)
    order, u_s = _sort_by_user_then_score(_user_codes(users), s)
    s_s = s[order]
    signed_w = signed_w[order]
    del order

    # Group boundaries: a user starts where the user changes; a tie run where user or score changes.
    user_change = np.empty(n, dtype=bool)
    user_change[0] = True
    np.not_equal(u_s[1:], u_s[:-1], out=user_change[1:])
    del u_s
    run_change = user_change.copy()
    run_change[1:] |= s_s[1:] != s_s[:-1]
    del s_s
    run_starts = np.flatnonzero(run_change)
    del run_change

    w_part = np.maximum(signed_w, 0.0)
    run_pos = np.add.reduceat(w_part, run_starts)
    np.negative(signed_w, out=signed_w)
    np.maximum(signed_w, 0.0, out=w_part)
    run_neg = np.add.reduceat(w_part, run_starts)
    del w_part, signed_w
    user_first_run = np.flatnonzero(user_change[run_starts])  # index into the runs
    del user_change, run_starts

    # Numerator of AUC_u, per run: pos weight * (neg weight strictly below + 0.5 * tied neg weight).
    run_num = _segmented_exclusive_cumsum(run_neg, user_first_run)
    run_num += 0.5 * run_neg
    run_num *= run_pos

    num_u = np.add.reduceat(run_num, user_first_run)
    pos_u = np.add.reduceat(run_pos, user_first_run)
    neg_u = np.add.reduceat(run_neg, user_first_run)

    ok = (pos_u > 0.0) & (neg_u > 0.0)
    n_ok = int(np.count_nonzero(ok))
    n_skipped = int(user_first_run.size) - n_ok
    if n_ok == 0:
        return GAUCResult(float("nan"), 0, n_skipped)
    pos_ok, neg_ok = pos_u[ok], neg_u[ok]
    auc_u = num_u[ok] / (pos_ok * neg_ok)
    weight_u = pos_ok + neg_ok
    gauc = float(np.dot(weight_u, auc_u) / weight_u.sum())
    return GAUCResult(gauc, n_ok, n_skipped)


def _validate(
    user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check the inputs; return (user_ids, labels as bool, scores as float64, weights as float64)."""
    arrays = {"user_ids": np.asarray(user_ids), "labels": np.asarray(labels), "scores": np.asarray(scores)}
    if weights is not None:
        arrays["weights"] = np.asarray(weights)
    for name, a in arrays.items():
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    n = arrays["user_ids"].size
    for name, a in arrays.items():
        if a.size != n:
            raise ValueError(f"{name} has length {a.size} but user_ids has length {n}")
    if n == 0:
        raise ValueError("empty input: user_ids, labels and scores have length 0")

    s = arrays["scores"].astype(np.float64, copy=False)
    _first_bad(np.isfinite(s), "scores", s, "is not finite")

    lab = arrays["labels"]
    if lab.dtype == np.bool_:
        y = lab
    else:
        y = lab == 1
        _first_bad(y | (lab == 0), "labels", lab, "is not 0 or 1")

    if weights is None:
        w = np.ones(n, dtype=np.float64)
    else:
        w = arrays["weights"].astype(np.float64, copy=False)
        _first_bad(np.isfinite(w), "weights", w, "is not finite")
        _first_bad(w >= 0.0, "weights", w, "is negative")
    return arrays["user_ids"], y, s, w


def _first_bad(ok: np.ndarray, name: str, values: np.ndarray, problem: str) -> None:
    """Raise a ValueError naming ``name`` and the first index where ``ok`` is False."""
    if not ok.all():
        i = int(np.argmin(ok))
        raise ValueError(f"{name}[{i}] = {values[i].tolist()!r} {problem}")


def _sort_by_user_then_score(codes: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, codes[order]): a permutation sorting rows by (user code, score), and the sorted codes.

    The order within tied (user, score) rows is arbitrary: ties are grouped afterwards. ``np.lexsort``
    is slow (two stable argsorts), so instead: argsort the scores once, then sort the uint64 values
    (code << b) | position-in-score-order. A value sort is several times faster than an argsort, and
    the low b bits carry the permutation back while the high bits are the sorted codes. Falls back
    to lexsort if the bits do not fit (only possible beyond 2**32 rows).
    """
    n = s.size
    idx_bits = max(int(n - 1).bit_length(), 1)
    if int(codes.max()).bit_length() + idx_bits > 64:
        order = np.lexsort((s, codes))
        return order, codes[order]
    by_score = np.argsort(s)
    key = codes[by_score]
    key <<= np.uint64(idx_bits)
    sorted_codes = np.arange(n, dtype=np.uint64)
    key |= sorted_codes
    key.sort()
    np.right_shift(key, np.uint64(idx_bits), out=sorted_codes)
    key &= np.uint64((1 << idx_bits) - 1)
    return by_score[key.view(np.int64)], sorted_codes


def _user_codes(user_ids: np.ndarray) -> np.ndarray:
    """Non-negative uint64 codes, one per distinct user (not necessarily dense)."""
    if np.issubdtype(user_ids.dtype, np.integer) and user_ids.dtype != np.uint64:
        lo, hi = int(user_ids.min()), int(user_ids.max())
        # A shift is enough (no unique/sort) when the id range is small enough to pack below.
        if (hi - lo).bit_length() <= 32:
            codes = user_ids.astype(np.int64)  # a copy: shifted in place below
            codes -= lo
            return codes.view(np.uint64)
    _, inverse = np.unique(user_ids, return_inverse=True)
    return inverse.astype(np.uint64).ravel()


def _segmented_exclusive_cumsum(x: np.ndarray, seg_starts: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum of ``x`` restarted at each index in ``seg_starts`` (seg_starts[0] == 0).

    A global float64 cumsum minus its value at the segment start would lose precision for late
    segments (a difference of two large numbers). ``np.cumsum`` is sequential, so the exact rounding
    error of every step is known (Knuth's TwoSum); carrying its cumsum alongside keeps the segmented
    result accurate to a few ulps of the within-segment sum.
    """
    m = x.size
    # hi[i] = fl(hi[i-1] + x[i-1]): the exclusive float64 cumsum, sequential.
    hi = np.empty(m)
    hi[0] = 0.0
    np.cumsum(x[:-1], out=hi[1:])
    # TwoSum of each step: err = (a - (s - bv)) + (b - bv), bv = s - a, with a = hi[i], b = x[i],
    # s = hi[i+1]; then hi[i+1] + err is exactly a + b.
    a, s_, b = hi[:-1], hi[1:], x[:-1]
    bv = np.subtract(s_, a)
    err = np.subtract(s_, bv)
    np.subtract(a, err, out=err)
    np.subtract(b, bv, out=bv)
    err += bv
    del bv
    lo = np.empty(m)
    lo[0] = 0.0
    np.cumsum(err, out=lo[1:])
    del err
    # Subtract each segment's starting value (hi and lo separately, so no large numbers cancel).
    seg_id = np.zeros(m, dtype=np.intp)
    seg_id[seg_starts[1:]] = 1
    np.cumsum(seg_id, out=seg_id)
    hi -= hi[seg_starts][seg_id]
    lo -= lo[seg_starts][seg_id]
    hi += lo
    return hi
