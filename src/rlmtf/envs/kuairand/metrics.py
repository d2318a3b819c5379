"""Held-out metrics of the fitted models: AUC, calibration by decile, expected calibration error, PIT."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties count half); NaN when only one class is present."""
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(s, np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-count bins of the predictions: count, mean predicted, observed rate (low to high)."""
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    order = np.argsort(p, kind="stable")
    return [{"n": int(len(b)), "predicted": float(p[b].mean()), "observed": float(y[b].mean())}
            for b in np.array_split(order, n_bins) if len(b)]


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: sum_b n_b / N * |mean predicted_b - observed_b| over equal-count bins."""
    bins = calibration_bins(y, p, n_bins)
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] / n * abs(b["predicted"] - b["observed"]) for b in bins)) if n else float("nan")


def binary_report(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict:
    """AUC, ECE, base rate, mean prediction and the calibration bins of one binary target."""
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    return {"auc": auc(y, p), "ece": ece(y, p, n_bins), "rate": float(y.mean()), "mean_predicted": float(p.mean()),
            "positives": int(y.sum()), "rows": int(len(y)), "deciles": calibration_bins(y, p, n_bins)}


def pit_histogram(pit: np.ndarray, n_bins: int = 10) -> dict:
    """Fractions of probability-integral-transform values per bin (uniform = calibrated) and the KS distance."""
    pit = np.sort(np.asarray(pit, np.float64).ravel())
    frac = np.histogram(pit, bins=n_bins, range=(0.0, 1.0))[0] / max(len(pit), 1)
    n = len(pit)
    ks = float(np.max(np.maximum(np.arange(1, n + 1) / n - pit, pit - np.arange(n) / n))) if n else float("nan")
    return {"fractions": [float(f) for f in frac], "max_abs_deviation": float(np.max(np.abs(frac - 1 / n_bins))),
            "ks": ks}
