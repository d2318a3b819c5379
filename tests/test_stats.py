"""Tests for rlmtf.eval.stats (paired simulated online A/B statistics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from rlmtf.eval import Lift, mean_ci, paired_lift

Z95 = 1.959963984540054  # norm.ppf(0.975)


def test_paired_lift_hand_computed() -> None:
    control = np.array([1.0, 2.0, 3.0, 4.0])
    treatment = np.array([2.0, 2.0, 4.0, 4.0])
    r = paired_lift(control, treatment)
    # mean_c = 2.5, mean_t = 3  ->  lift = 3 / 2.5 - 1 = 0.2; diff = mean([1, 0, 1, 0]) = 0.5
    assert r.lift == pytest.approx(0.2, abs=1e-15)
    assert r.diff == pytest.approx(0.5, abs=1e-15)
    assert r.n == 4
    # var_c = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; var_t = 4 * 1 / 3 = 4/3
    # cov = (1.5 + 0.5 + 0.5 + 1.5) / 3 = 4/3; R = 1.2
    # var(R) = (4/3 + 1.44 * 5/3 - 2.4 * 4/3) / (4 * 2.5^2) = (1.6/3) / 25 = 0.0213333...
    half = Z95 * math.sqrt(1.6 / 3 / 25)
    assert r.ci_low == pytest.approx(0.2 - half, abs=1e-12)
    assert r.ci_high == pytest.approx(0.2 + half, abs=1e-12)
    assert r.ci_low < r.lift < r.ci_high
    assert r.p_value == pytest.approx(sps.ttest_rel(treatment, control).pvalue, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_ci_matches_explicit_delta_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = rng.gamma(2.0, 1.0, 300)
    t = c * rng.lognormal(0.05, 0.3, 300)
    r = paired_lift(c, t, confidence=0.9)
    n, mc, mt = c.size, c.mean(), t.mean()
    ratio = mt / mc
    cov = np.cov(t, c, ddof=1)
    var_ratio = (cov[0, 0] + ratio**2 * cov[1, 1] - 2 * ratio * cov[0, 1]) / (n * mc**2)
    half = sps.norm.ppf(0.95) * math.sqrt(var_ratio)
    assert r.lift == pytest.approx(ratio - 1, abs=1e-14)
    assert r.ci_low == pytest.approx(ratio - 1 - half, abs=1e-12)
    assert r.ci_high == pytest.approx(ratio - 1 + half, abs=1e-12)
    assert r.p_value == pytest.approx(sps.ttest_rel(t, c).pvalue, rel=1e-12)


def test_proportional_treatment_gives_zero_width_ci() -> None:
    control = np.array([1.0, 3.0, 2.0, 8.0, 5.0])
    r = paired_lift(control, 1.1 * control)
    assert r.lift == pytest.approx(0.1, abs=1e-14)
    assert r.ci_high - r.ci_low < 1e-12
    assert r.ci_low <= r.lift + 1e-15 and r.lift <= r.ci_high + 1e-15


def test_identical_arms_p_value_one() -> None:
    x = np.array([1.0, 2.0, 4.0])
    r = paired_lift(x, x.copy())
    assert r.p_value == 1.0
    assert (r.lift, r.diff, r.ci_low, r.ci_high) == (0.0, 0.0, 0.0, 0.0)


def test_to_dict() -> None:
    r = paired_lift(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 3.5]))
    d = r.to_dict()
    assert set(d) == {"lift", "ci_low", "ci_high", "p_value", "diff", "n"}
    assert Lift(**d) == r
    with pytest.raises(AttributeError):
        r.lift = 1.0  # type: ignore[misc]


def test_ci_covers_zero_under_null() -> None:
    # 400 simulated A/B tests with a true lift of 0: paired users (a shared per-user base), both arms
    # from the same distribution. The 95% CI should cover 0 in about 95% of them.
    rng = np.random.default_rng(20240601)
    covered = 0
    reps = 400
    for _ in range(reps):
        base = rng.gamma(2.0, 1.0, 200)
        control = base * rng.lognormal(0.0, 0.5, 200)
        treatment = base * rng.lognormal(0.0, 0.5, 200)
        r = paired_lift(control, treatment)
        covered += r.ci_low <= 0.0 <= r.ci_high
    assert 0.90 * reps <= covered <= 0.99 * reps


def test_mean_ci() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, s = sqrt(5/3), half = t_{3, 0.975} * s / 2
    m, lo, hi = mean_ci(x)
    half = sps.t.ppf(0.975, 3) * math.sqrt(5 / 3) / 2
    assert m == 2.5
    assert lo == pytest.approx(2.5 - half, abs=1e-14)
    assert hi == pytest.approx(2.5 + half, abs=1e-14)
    _, lo90, hi90 = mean_ci(x, confidence=0.9)
    assert lo < lo90 < hi90 < hi


# --- error cases --------------------------------------------------------------------------------


def test_error_length_mismatch() -> None:
    with pytest.raises(ValueError, match=r"control has length 3 but treatment has length 2"):
        paired_lift(np.ones(3), np.ones(2))


def test_error_too_few_users() -> None:
    with pytest.raises(ValueError, match=r"at least 2 users"):
        paired_lift(np.ones(1), np.ones(1))


def test_error_nan_control() -> None:
    with pytest.raises(ValueError, match=r"control\[1\] = nan is not finite"):
        paired_lift(np.array([1.0, np.nan, 2.0]), np.ones(3))


def test_error_nan_treatment() -> None:
    with pytest.raises(ValueError, match=r"treatment\[0\] = nan is not finite"):
        paired_lift(np.ones(3), np.array([np.nan, 1.0, 2.0]))


def test_error_zero_control_mean() -> None:
    with pytest.raises(ValueError, match=r"mean\(control\) is 0"):
        paired_lift(np.array([1.0, -1.0]), np.array([1.0, 2.0]))


def test_error_bad_confidence() -> None:
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        paired_lift(np.ones(3), np.ones(3), confidence=95)


def test_mean_ci_errors() -> None:
    with pytest.raises(ValueError, match=r"at least 2 values"):
        mean_ci(np.array([1.0]))
    with pytest.raises(ValueError, match=r"x\[2\] = inf is not finite"):
        mean_ci(np.array([1.0, 2.0, np.inf]))


def test_over_seeds_by_hand():
    from rlmtf.eval.stats import over_seeds

    d = over_seeds([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert d["mean"] == pytest.approx(2.0) and d["ci_low"] == pytest.approx(2 - half)
    assert d["ci_high"] == pytest.approx(2 + half) and d["per_seed"] == [1.0, 2.0, 3.0]
    assert over_seeds([0.5]) == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "per_seed": [0.5]}
    with pytest.raises(ValueError):
        over_seeds([1.0, float("nan")])


def test_lifts_over_seeds_matches_arms_by_name():
    from rlmtf.eval.online import lifts_over_seeds

    def ab(x, y):
        arm = lambda name, v: {"policy": name, "lifts": {"uvc": {"lift": v}}}  # noqa: E731
        return {"arms": [arm("base", 0.0), arm("a", x), arm("b", y)]}

    second = ab(0.3, 0.1)
    second["arms"][1:] = second["arms"][:0:-1]  # arms in another order: matched by name
    out = lifts_over_seeds([ab(0.1, 0.2), second], metrics=("uvc",))
    assert out["a: uvc"]["per_seed"] == [0.1, 0.3] and out["b: uvc"]["per_seed"] == [0.2, 0.1]
    assert out["a: uvc"]["mean"] == pytest.approx(0.2)


def test_write_summary_records_args_commit_and_the_summary(tmp_path):
    import json
    from pathlib import Path

    from rlmtf.core.provenance import git_commit, write_summary

    lines: list[str] = []
    path = write_summary(tmp_path, {"out": Path("runs/x"), "seeds": [1, 2]}, {"a: uvc": {"mean": 0.01}},
                         [{"seed": 1}], lines.append)
    doc = json.loads(path.read_text())
    assert path == tmp_path / "summary.json" and doc["args"] == {"out": "runs/x", "seeds": [1, 2]}
    assert doc["commit"] == git_commit() and doc["per_seed"] == [{"seed": 1}]
    assert json.loads(lines[0]) == {"a: uvc": {"mean": 0.01}}
