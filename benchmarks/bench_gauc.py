"""Benchmark: vectorised ``weighted_gauc`` against a per-user loop over sklearn's ``roc_auc_score``.

Both compute the weighted GAUC of section 4.1.2 of the Enhanced-State RL paper on the same random
data (scores with ties, weights in [1, 5]) and must agree to 1e-9.

    python benchmarks/bench_gauc.py                      # 10M rows, 100k users, loop over all users
    python benchmarks/bench_gauc.py --loop-users 2000    # loop (and its comparison) on 2000 users only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import sklearn
from sklearn.metrics import roc_auc_score

from rlmtf.eval.gauc import weighted_gauc


def make_data(rows: int, users: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random users, labels correlated with the scores, scores on a 1e-3 grid (ties), weights in [1, 5]."""
    rng = np.random.default_rng(seed)
    user_ids = rng.integers(0, users, rows, dtype=np.int64)
    scores = np.round(rng.random(rows), 3)
    labels = (rng.random(rows) < 0.1 + 0.5 * scores).astype(np.int8)
    weights = rng.uniform(1.0, 5.0, rows)
    return user_ids, labels, scores, weights


def best_of(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(best wall time in s, result of the last call)."""
    best, result = float("inf"), float("nan")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def sklearn_loop_gauc(
    user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> tuple[float, float]:
    """(seconds spent grouping rows by user, GAUC) from a Python loop of roc_auc_score per user."""
    t0 = time.perf_counter()
    order = np.argsort(user_ids, kind="stable")
    u, y, s, w = user_ids[order], labels[order], scores[order], weights[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [u.size]))
    group_s = time.perf_counter() - t0
    num = den = 0.0
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        y_u = y[a:b]
        n_pos = int(y_u.sum())
        if n_pos == 0 or n_pos == b - a:  # one label only: left out, as in weighted_gauc
            continue
        w_u = w[a:b]
        total = float(w_u.sum())
        num += total * roc_auc_score(y_u, s[a:b], sample_weight=w_u)
        den += total
    return group_s, num / den


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument(
        "--loop-users", type=int, default=0, help="run the sklearn loop on the first N users (0: all)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)

    user_ids, labels, scores, weights = make_data(args.rows, args.users, args.seed)

    t_vec_full, gauc_full = best_of(lambda: weighted_gauc(user_ids, labels, scores, weights).gauc, 3)

    # The side-by-side comparison runs on the users the loop covers (all of them by default).
    if args.loop_users > 0:
        first = np.unique(user_ids)[: args.loop_users]
        m = np.isin(user_ids, first)
        sub = (user_ids[m], labels[m], scores[m], weights[m])
        t_vec, gauc_vec = best_of(lambda: weighted_gauc(*sub).gauc, 3)
    else:
        sub = (user_ids, labels, scores, weights)
        t_vec, gauc_vec = t_vec_full, gauc_full
    n_loop_users = int(np.unique(sub[0]).size)

    t0 = time.perf_counter()
    group_s, gauc_loop = sklearn_loop_gauc(*sub)
    t_loop = time.perf_counter() - t0

    diff = abs(gauc_vec - gauc_loop)
    res = {
        "rows": args.rows,
        "users": args.users,
        "seed": args.seed,
        "weighted_gauc_s_full": t_vec_full,
        "gauc_full": gauc_full,
        "compare_rows": int(sub[0].size),
        "compare_users": n_loop_users,
        "weighted_gauc_s": t_vec,
        "sklearn_loop_s": t_loop,
        "sklearn_loop_grouping_s": group_s,
        "speedup": t_loop / t_vec,
        "gauc_vectorised": gauc_vec,
        "gauc_sklearn_loop": gauc_loop,
        "abs_diff": diff,
        "agree_1e-9": diff <= 1e-9,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, python {platform.python_version()}, "
            f"cpus {os.cpu_count()}"
        )
        print(f"data: {args.rows:,} rows, {args.users:,} users (seed {args.seed})")
        print(f"weighted_gauc, all rows (best of 3):  {t_vec_full:8.3f} s   GAUC = {gauc_full:.12f}")
        print(f"side by side on {res['compare_rows']:,} rows / {n_loop_users:,} users:")
        print(f"  weighted_gauc (best of 3):          {t_vec:8.3f} s   GAUC = {gauc_vec:.12f}")
        print(
            f"  sklearn roc_auc_score loop (1 run): {t_loop:8.3f} s   GAUC = {gauc_loop:.12f}"
            f"   (of which grouping {group_s:.3f} s)"
        )
        print(
            f"  speedup: {t_loop / t_vec:.1f}x   |diff| = {diff:.2e}  ({'OK' if diff <= 1e-9 else 'MISMATCH'})"
        )
    return 0 if diff <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
