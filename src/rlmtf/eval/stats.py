"""Statistics for a paired simulated online A/B test over users.

The simulator uses common random numbers, so the same users appear in both arms and the per-user
metrics of control and treatment are paired. :func:`paired_lift` reports the relative lift of the
mean with a delta-method confidence interval that uses the paired covariance, and a paired t-test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

__all__ = ["Lift", "mean_ci", "over_seeds", "paired_lift", "paired_t_p", "t_interval"]


@dataclass(frozen=True)
class Lift:
    """Relative lift of treatment over control, from :func:`paired_lift`."""

    lift: float
    """mean(treatment) / mean(control) - 1."""
    ci_low: float
    """Lower end of the confidence interval of ``lift`` (delta method, normal quantile)."""
    ci_high: float
    """Upper end of the confidence interval of ``lift``."""
    p_value: float
    """Two-sided paired t-test of treatment - control; 1.0 when every difference is exactly 0."""
    diff: float
    """mean(treatment - control)."""
    n: int
    """Number of users (pairs)."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_lift(control: np.ndarray, treatment: np.ndarray, confidence: float = 0.95) -> Lift:
    """Relative lift of mean(treatment) over mean(control) for paired per-user values.

    With R = mean_t / mean_c, the delta method on the ratio of means gives

        var(R) ~= (var_t + R^2 var_c - 2 R cov_tc) / (n mean_c^2)

    (sample variances and covariance, ddof=1), and the interval is lift +- z * sqrt(var(R)) with z
    the normal quantile. The numerator equals the sample variance of t - R c, which is how it is
    computed: it cannot go negative through cancellation and is exactly 0 when t is proportional to c.

    Args:
        control: per-user metric in the control arm.
        treatment: per-user metric in the treatment arm, same users in the same order.
        confidence: two-sided confidence level in (0, 1).

    Raises:
        ValueError: length mismatch, fewer than 2 users, non-finite values, mean(control) == 0,
            or confidence outside (0, 1).
    """
    c = _as_1d_finite(control, "control")
    t = _as_1d_finite(treatment, "treatment")
    if c.size != t.size:
        raise ValueError(f"control has length {c.size} but treatment has length {t.size}")
    n = c.size
    if n < 2:
        raise ValueError(f"need at least 2 users, got n = {n}")
    _check_confidence(confidence)
    mean_c, mean_t = float(c.mean()), float(t.mean())
    if mean_c == 0.0:
        raise ValueError("mean(control) is 0: the relative lift is undefined")

    ratio = mean_t / mean_c
    var_ratio = float(np.var(t - ratio * c, ddof=1)) / (n * mean_c**2)
    half = float(sps.norm.ppf(0.5 + confidence / 2.0)) * math.sqrt(var_ratio)
    lift = ratio - 1.0

    d = t - c
    if not d.any():
        p_value = 1.0
    else:
        p_value = float(sps.ttest_rel(t, c).pvalue)
    return Lift(
        lift=lift, ci_low=lift - half, ci_high=lift + half, p_value=p_value, diff=float(d.mean()), n=n
    )


def mean_ci(x: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): mean of ``x`` with a t-distribution interval, mean +- t_{n-1} s / sqrt(n).

    Raises:
        ValueError: fewer than 2 values, non-finite values, or confidence outside (0, 1).
    """
    a = _as_1d_finite(x, "x")
    if a.size < 2:
        raise ValueError(f"need at least 2 values, got {a.size}")
    _check_confidence(confidence)
    m = float(a.mean())
    half = float(sps.t.ppf(0.5 + confidence / 2.0, a.size - 1)) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return m, m - half, m + half


def over_seeds(x, confidence: float = 0.95) -> dict:
    """A figure over seeds: ``{"mean", "ci_low", "ci_high", "per_seed"}`` (a t-interval of the mean; with one
    seed the interval is that seed's value)."""
    a = _as_1d_finite(np.asarray(x, dtype=np.float64), "x")
    mean, lo, hi = mean_ci(a, confidence) if a.size > 1 else (float(a[0]),) * 3
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "per_seed": a.tolist()}


def _as_1d_finite(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"{name}[{i}] = {a[i].item()!r} is not finite (NaN or inf)")
    return a


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def t_interval(x: np.ndarray) -> tuple[float, float]:
    """The 95% t-interval of the mean of ``x`` (NaNs with fewer than 2 values)."""
    if x.size < 2:
        return float("nan"), float("nan")
    _, lo, hi = mean_ci(np.asarray(x, dtype=np.float64))
    return lo, hi


def paired_t_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test over seeds (NaN with fewer than 2 seeds or no variation; 0 when every seed
    differs by the same non-zero amount)."""
    from scipy import stats as sps

    d = a - b
    if a.size < 2 or not np.any(d):
        return float("nan")
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):
        return 0.0
    return float(sps.ttest_rel(a, b).pvalue)
