"""Tests for rlmtf.eval.gauc (weighted GAUC, section 4.1.2 of the Enhanced-State RL paper)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rlmtf.eval import GAUCResult, min_max_normalise, weighted_gauc
from rlmtf.eval.gauc import _segmented_exclusive_cumsum


def brute_force_gauc(users, labels, scores, weights) -> tuple[float, int, int]:
    """O(n^2) reference: the formula written out as a plain double loop per user."""
    by_user: dict = {}
    for u, y, s, w in zip(users.tolist(), labels.tolist(), scores.tolist(), weights.tolist(), strict=True):
        by_user.setdefault(u, []).append((y, s, w))
    num = den = 0.0
    used = skipped = 0
    for rows in by_user.values():
        pos = [(s, w) for y, s, w in rows if y == 1]
        neg = [(s, w) for y, s, w in rows if y == 0]
        sp, sn = sum(w for _, w in pos), sum(w for _, w in neg)
        if sp == 0 or sn == 0:  # one label only (or a class with zero total weight)
            skipped += 1
            continue
        pair_sum = 0.0
        for fp, wp in pos:
            for fn, wn in neg:
                pair_sum += wp * wn * ((1.0 if fp > fn else 0.0) + (0.5 if fp == fn else 0.0))
        w_u = sp + sn
        num += w_u * pair_sum / (sp * sn)
        den += w_u
        used += 1
    return (num / den if used else math.nan), used, skipped


def random_data(seed: int, n: int = 400, n_users: int = 25, n_levels: int = 4):
    """Random users, labels, weights, and scores drawn from only ``n_levels`` values (many ties)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    scores = rng.integers(0, n_levels, n) / n_levels
    # Labels correlated with scores so AUCs are not all ~0.5.
    labels = (rng.random(n) < 0.2 + 0.6 * scores).astype(np.int64)
    weights = rng.uniform(0.1, 3.0, n)
    return users, labels, scores, weights


# --- hand-computed values -----------------------------------------------------------------------


def test_result_type() -> None:
    r = weighted_gauc(np.array([0, 0]), np.array([1, 0]), np.array([0.9, 0.1]))
    assert isinstance(r, GAUCResult)
    assert r == (1.0, 1, 0)


def test_tie_counts_half_unweighted() -> None:
    # pos 0.5; negs 0.5 (tie -> 0.5) and 0.2 (below -> 1): AUC = (0.5 + 1) / (1 * 2) = 0.75
    r = weighted_gauc(np.array([7, 7, 7]), np.array([1, 0, 0]), np.array([0.5, 0.5, 0.2]))
    assert r.gauc == pytest.approx(0.75, abs=1e-15)
    assert (r.n_users, r.n_users_skipped) == (1, 0)


def test_all_scores_tied_gives_half() -> None:
    # every pair tied -> each contributes 0.5 of its weight -> AUC = 0.5 whatever the weights
    r = weighted_gauc(np.zeros(4, int), np.array([1, 0, 1, 0]), np.full(4, 0.3), np.array([1, 2, 3, 4.0]))
    assert r.gauc == pytest.approx(0.5, abs=1e-15)


def test_weights_and_ties_hand_computed() -> None:
    # user A: pos (0.8, w2), pos (0.3, w1); neg (0.5, w3), neg (0.3, w1)
    # pairs: 2*3*1 + 2*1*1 + 1*3*0 + 1*1*0.5 = 6 + 2 + 0 + 0.5 = 8.5
    # denominator: (2 + 1) * (3 + 1) = 12  ->  AUC_A = 8.5 / 12 = 17/24
    users = np.array([0, 0, 0, 0])
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.8, 0.3, 0.5, 0.3])
    weights = np.array([2.0, 1.0, 3.0, 1.0])
    r = weighted_gauc(users, labels, scores, weights)
    assert r.gauc == pytest.approx(17 / 24, abs=1e-15)


def test_one_label_user_is_skipped_and_counted() -> None:
    # user 0 as above (AUC 17/24); user 1 has positives only -> left out, counted as skipped;
    # user 2 has negatives only -> also skipped.
    users = np.array([0, 0, 0, 0, 1, 1, 2])
    labels = np.array([1, 1, 0, 0, 1, 1, 0])
    scores = np.array([0.8, 0.3, 0.5, 0.3, 0.1, 0.9, 0.4])
    weights = np.array([2.0, 1.0, 3.0, 1.0, 5.0, 5.0, 9.0])
    r = weighted_gauc(users, labels, scores, weights)
    assert r.gauc == pytest.approx(17 / 24, abs=1e-15)
    assert (r.n_users, r.n_users_skipped) == (1, 2)


def test_user_weight_is_total_weight() -> None:
    # user A: AUC 17/24, W_A = 2 + 1 + 3 + 1 = 7
    # user C: pos 0.1 below neg 0.9 -> AUC 0, W_C = 1 + 1 = 2
    # GAUC = (7 * 17/24 + 2 * 0) / (7 + 2) = 119/216  (an unweighted mean would give 17/48)
    users = np.array([0, 0, 0, 0, 5, 5])
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.8, 0.3, 0.5, 0.3, 0.1, 0.9])
    weights = np.array([2.0, 1.0, 3.0, 1.0, 1.0, 1.0])
    r = weighted_gauc(users, labels, scores, weights)
    assert r.gauc == pytest.approx(119 / 216, abs=1e-15)
    assert (r.n_users, r.n_users_skipped) == (2, 0)


def test_default_weights_are_one() -> None:
    # user 0: pos 0.9 over negs 0.1 and 0.5 -> AUC 1, W = 3
    # user 1: pos 0.2 below neg 0.6 -> AUC 0, W = 2  ->  GAUC = 3 / 5 = 0.6
    users = np.array([0, 0, 0, 1, 1])
    labels = np.array([1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.6])
    assert weighted_gauc(users, labels, scores).gauc == pytest.approx(0.6, abs=1e-15)
    assert weighted_gauc(users, labels, scores, np.ones(5)).gauc == weighted_gauc(users, labels, scores).gauc


def test_zero_weight_class_counts_as_absent() -> None:
    # user 1's only positive has weight 0 -> AUC_1 = 0/0, so it is skipped; user 0 gives AUC 1.
    users = np.array([0, 0, 1, 1])
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.1, 0.9])
    weights = np.array([1.0, 1.0, 0.0, 4.0])
    assert weighted_gauc(users, labels, scores, weights) == (1.0, 1, 1)


def test_no_qualifying_user_gives_nan() -> None:
    r = weighted_gauc(np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(r.gauc)
    assert (r.n_users, r.n_users_skipped) == (0, 2)


def test_bool_and_float_labels() -> None:
    users, labels, scores, weights = random_data(3)
    ref = weighted_gauc(users, labels, scores, weights)
    assert weighted_gauc(users, labels.astype(bool), scores, weights) == ref
    assert weighted_gauc(users, labels.astype(np.float32), scores, weights) == ref


# --- reference implementations ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_with_many_ties(seed: int) -> None:
    users, labels, scores, weights = random_data(seed, n=300 + 50 * seed, n_levels=2 + seed % 4)
    weights[::17] = 0.0  # exercise zero weights too
    expected = brute_force_gauc(users, labels, scores, weights)
    got = weighted_gauc(users, labels, scores, weights)
    assert got.gauc == pytest.approx(expected[0], abs=1e-12)
    assert (got.n_users, got.n_users_skipped) == expected[1:]


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_single_user_and_singletons(seed: int) -> None:
    # one big user plus many one-row users (always skipped)
    rng = np.random.default_rng(100 + seed)
    users = np.concatenate([np.zeros(200, int), np.arange(1, 51)])
    labels = rng.integers(0, 2, users.size)
    scores = rng.integers(0, 3, users.size).astype(float)
    weights = rng.uniform(0, 2, users.size)
    expected = brute_force_gauc(users, labels, scores, weights)
    got = weighted_gauc(users, labels, scores, weights)
    assert got.gauc == pytest.approx(expected[0], abs=1e-12)
    assert (got.n_users, got.n_users_skipped) == expected[1:]


@pytest.mark.parametrize("seed", range(3))
def test_matches_sklearn_per_user(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    n = 5000
    users = rng.integers(0, 60, n)
    scores = np.round(rng.random(n), 2)
    labels = (rng.random(n) < scores).astype(int)
    weights = rng.uniform(1.0, 5.0, n)
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if np.unique(labels[m]).size < 2:
            continue
        w_u = weights[m].sum()
        num += w_u * roc_auc_score(labels[m], scores[m], sample_weight=weights[m])
        den += w_u
    assert weighted_gauc(users, labels, scores, weights).gauc == pytest.approx(num / den, abs=1e-12)


# --- invariances and id types -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_min_max_normalise_does_not_change_gauc(seed: int) -> None:
    users, labels, scores, weights = random_data(seed)
    shifted = 3.0 * scores - 7.0  # a different range, same order
    ref = weighted_gauc(users, labels, shifted, weights)
    norm = min_max_normalise(shifted)
    assert norm.min() == 0.0 and norm.max() == 1.0
    assert weighted_gauc(users, labels, norm, weights).gauc == pytest.approx(ref.gauc, abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_row_permutation_does_not_change_gauc(seed: int) -> None:
    users, labels, scores, weights = random_data(seed)
    perm = np.random.default_rng(seed + 50).permutation(users.size)
    ref = weighted_gauc(users, labels, scores, weights)
    got = weighted_gauc(users[perm], labels[perm], scores[perm], weights[perm])
    assert got.gauc == pytest.approx(ref.gauc, abs=1e-14)
    assert got[1:] == ref[1:]


def test_min_max_normalise_values() -> None:
    np.testing.assert_array_equal(min_max_normalise(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(min_max_normalise(np.array([5.0, 5.0, 5.0])), [0.0, 0.0, 0.0])
    assert min_max_normalise(np.array([])).size == 0
    with pytest.raises(ValueError, match=r"x\[1\] = nan is not finite"):
        min_max_normalise(np.array([0.0, np.nan]))


def test_string_user_ids() -> None:
    users, labels, scores, weights = random_data(4)
    names = np.array([f"user-{u:03d}" for u in users])
    assert weighted_gauc(names, labels, scores, weights) == weighted_gauc(users, labels, scores, weights)
    as_object = names.astype(object)
    assert weighted_gauc(as_object, labels, scores, weights) == weighted_gauc(users, labels, scores, weights)


@pytest.mark.parametrize(
    "transform",
    [
        lambda u: u * 10**15 - 5 * 10**17,  # wide, negative int64 range: goes through np.unique
        lambda u: (u + 2**62).astype(np.uint64),
        lambda u: u.astype(np.int8) - 100,
        lambda u: u.astype(np.float64) / 3,
    ],
    ids=["wide-int64", "uint64", "int8", "float"],
)
def test_other_id_types(transform) -> None:
    users, labels, scores, weights = random_data(5)
    ref = weighted_gauc(users, labels, scores, weights)
    assert weighted_gauc(transform(users), labels, scores, weights) == ref


def test_segmented_cumsum_stays_exact_after_a_huge_segment() -> None:
    # The first segment sums to 1e16, where float64 spacing is 2; a plain global cumsum minus the
    # segment offset would lose every 0.1 of the second segment.
    x = np.array([5e15, 5e15, 0.1, 0.1, 0.1, 0.1])
    got = _segmented_exclusive_cumsum(x, np.array([0, 2]))
    np.testing.assert_allclose(got, [0.0, 5e15, 0.0, 0.1, 0.2, 0.3], rtol=1e-15, atol=0)


# --- validation ---------------------------------------------------------------------------------


def _ok():
    return np.array([1, 1, 2]), np.array([1, 0, 1]), np.array([0.3, 0.2, 0.1]), np.array([1.0, 2.0, 3.0])


def test_error_lengths_differ() -> None:
    u, y, s, w = _ok()
    with pytest.raises(ValueError, match=r"scores has length 2 but user_ids has length 3"):
        weighted_gauc(u, y, s[:2], w)


def test_error_weights_length_differs() -> None:
    u, y, s, _ = _ok()
    with pytest.raises(ValueError, match=r"weights has length 4 but user_ids has length 3"):
        weighted_gauc(u, y, s, np.ones(4))


def test_error_empty() -> None:
    with pytest.raises(ValueError, match=r"empty input"):
        weighted_gauc(np.array([], int), np.array([], int), np.array([]))


def test_error_not_1d() -> None:
    u, y, s, w = _ok()
    with pytest.raises(ValueError, match=r"scores must be 1-D"):
        weighted_gauc(u, y, s.reshape(3, 1), w)


def test_error_nan_score() -> None:
    u, y, s, w = _ok()
    s[2] = np.nan
    with pytest.raises(ValueError, match=r"scores\[2\] = nan is not finite"):
        weighted_gauc(u, y, s, w)


def test_error_inf_score() -> None:
    u, y, s, w = _ok()
    s[1] = -np.inf
    with pytest.raises(ValueError, match=r"scores\[1\] = -inf is not finite"):
        weighted_gauc(u, y, s, w)


def test_error_label_not_binary() -> None:
    u, y, s, w = _ok()
    y[1] = 2
    with pytest.raises(ValueError, match=r"labels\[1\] = 2 is not 0 or 1"):
        weighted_gauc(u, y, s, w)


def test_error_label_nan() -> None:
    u, _, s, w = _ok()
    with pytest.raises(ValueError, match=r"labels\[0\] = nan is not 0 or 1"):
        weighted_gauc(u, np.array([np.nan, 0.0, 1.0]), s, w)


def test_error_negative_weight() -> None:
    u, y, s, w = _ok()
    w[2] = -0.5
    with pytest.raises(ValueError, match=r"weights\[2\] = -0.5 is negative"):
        weighted_gauc(u, y, s, w)


def test_error_non_finite_weight() -> None:
    u, y, s, w = _ok()
    w[0] = np.inf
    with pytest.raises(ValueError, match=r"weights\[0\] = inf is not finite"):
        weighted_gauc(u, y, s, w)


def test_error_nan_weight() -> None:
    u, y, s, w = _ok()
    w[1] = np.nan
    with pytest.raises(ValueError, match=r"weights\[1\] = nan is not finite"):
        weighted_gauc(u, y, s, w)
