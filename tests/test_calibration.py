"""Calibration of the simulator against KuaiRand-Pure (``docs/design.md#calibration-to-kuairand-pure``): the default
config's behaviour rates and watch-ratio quantiles under the baseline policy match the real log."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rlmtf.envs.kuairand.paths import LOG_FILE as KUAIRAND_LOG
from rlmtf.envs.kuairand.paths import default_kuairand_dir
from rlmtf.envs.sim.calibrate import (
    CHECKED_QUANTILES,
    QUANTILE_TOLERANCE,
    RATE_COLUMNS,
    RATE_TOLERANCE,
    BehaviourStats,
    compare,
    real_stats,
    sim_stats,
)
from rlmtf.envs.sim.config import SimConfig

RATES = ("click", "valid", "like", "follow", "comment", "share")


@pytest.fixture(scope="module")
def kuairand_dir() -> Path:
    d = default_kuairand_dir()
    if d is None or not (Path(d) / KUAIRAND_LOG).is_file():
        pytest.skip("KuaiRand-Pure data not found (shared/data/kuairand_pure or $RLMTF_KUAIRAND_DIR)")
    return Path(d)


@pytest.fixture(scope="module")
def real(kuairand_dir) -> BehaviourStats:
    return real_stats(kuairand_dir)


@pytest.fixture(scope="module")
def simulated() -> BehaviourStats:
    return sim_stats(SimConfig(), n_users=3000, seed=2024)


def test_the_promised_tolerances():
    assert RATE_TOLERANCE == pytest.approx(0.30)
    assert QUANTILE_TOLERANCE == pytest.approx(0.10)
    assert set(CHECKED_QUANTILES) == {0.5, 0.75, 0.9}
    assert set(RATE_COLUMNS) == set(RATES)


def test_real_stats_match_the_data_readme(real):
    # data/README.md: click .442, long_view .311, like .0171, follow .0013, comment .0025, forward .0009;
    # watch ratio p50 .092, p75 .549, p90 1.03, mean .344; 228,329 rows
    assert real.rows == 228_329
    assert round(real.rates["click"], 3) == 0.442
    assert round(real.rates["valid"], 3) == 0.311
    assert round(real.rates["like"], 4) == 0.0171
    assert round(real.rates["follow"], 4) == 0.0013
    assert round(real.rates["comment"], 4) == 0.0025
    assert round(real.rates["share"], 4) == 0.0009
    q = real.watch_ratio_quantiles
    assert round(q[0.5], 3) == 0.092
    assert round(q[0.75], 3) == 0.549
    assert round(q[0.9], 2) == 1.03
    assert round(real.watch_ratio_mean, 3) == 0.344


def test_real_stats_missing_dir_names_the_path(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        real_stats(missing)


def test_default_kuairand_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RLMTF_KUAIRAND_DIR", str(tmp_path))
    assert default_kuairand_dir() == tmp_path


def test_simulator_matches_kuairand(simulated, real):
    rows = {r["quantity"]: r for r in compare(simulated, real)}
    assert simulated.rows > 50_000
    for k in RATES:
        sim_v, real_v = simulated.rates[k], real.rates[k]
        assert abs(sim_v - real_v) / real_v <= 0.30, f"{k}: simulated {sim_v:.5f}, real {real_v:.5f}"
        assert rows[f"{k} rate"]["ok"] is True
    for q in (0.5, 0.75, 0.9):
        sim_v, real_v = simulated.watch_ratio_quantiles[q], real.watch_ratio_quantiles[q]
        assert abs(sim_v - real_v) <= 0.10, f"watch ratio p{int(q * 100)}: simulated {sim_v:.3f}, real {real_v:.3f}"
        assert rows[f"watch ratio p{int(q * 100)}"]["ok"] is True


def test_compare_flags_what_is_off(simulated, real):
    """compare's verdicts are computed, not constant: push one rate and one quantile out of tolerance."""
    off = dataclasses.replace(
        simulated,
        rates={**simulated.rates, "like": real.rates["like"] * 1.31},
        watch_ratio_quantiles={**simulated.watch_ratio_quantiles, 0.75: real.watch_ratio_quantiles[0.75] + 0.11},
    )
    rows = {r["quantity"]: r for r in compare(off, real)}
    assert rows["like rate"]["ok"] is False
    assert rows["like rate"]["error"] == pytest.approx(0.31)
    assert rows["watch ratio p75"]["ok"] is False
    assert rows["watch ratio p75"]["error"] == pytest.approx(0.11)
    assert rows["click rate"]["ok"] is (abs(simulated.rates["click"] - real.rates["click"]) / real.rates["click"]
                                        <= 0.30)
    # unchecked quantities carry no verdict
    assert rows["watch ratio p10"]["ok"] is None and rows["watch ratio mean"]["ok"] is None


def test_sim_stats_is_deterministic_and_seeded():
    cfg = dataclasses.replace(SimConfig(), n_users=500, n_items=2000)
    a = sim_stats(cfg, n_users=300, seed=1)
    b = sim_stats(cfg, n_users=300, seed=1)
    c = sim_stats(cfg, n_users=300, seed=2)
    assert a == b
    assert a.rates != c.rates
