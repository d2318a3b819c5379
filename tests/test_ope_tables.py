"""The paper experiment's off-policy tables (rlmtf.pipelines.ope_stage) by hand: estimated lifts from an
``ope.json`` document, their combination over seeds, the rank agreement with the A/B and the sign count."""

from __future__ import annotations

import numpy as np
import pytest

from rlmtf.pipelines.ope_stage import estimated_lifts, ope_markdown, ope_tables
from rlmtf.pipelines.paper import SeedResult


def _entry(fqe_lift: float, dr: float | None, ess: float = 50.0) -> dict:
    fqe = {m: {"lift": {"mean": fqe_lift, "ci_low": fqe_lift - 0.01, "ci_high": fqe_lift + 0.01}}
           for m in ("uvc", "udt", "reward")}
    iw = None if dr is None else {m: {"dr": {"value": dr, "ci_low": dr - 1, "ci_high": dr + 1},
                                      "snipw": {"value": dr, "ci_low": dr, "ci_high": dr},
                                      "ipw": {"value": dr, "ci_low": dr, "ci_high": dr}, "ess": ess}
                                  for m in ("uvc", "udt", "reward")}
    return {"fqe": fqe, "is": iw}


def test_estimated_lifts_by_hand():
    doc = {"methods": ["a", "b", "c"], "logged": {"uvc": 10.0, "udt": 5.0, "reward": 20.0},
           "policies": [_entry(0.05, 11.0), _entry(-0.02, None), _entry(0.0, 12.0, ess=0.0)]}
    lifts = estimated_lifts(doc)
    assert lifts["a"]["fqe.uvc"] == {"value": 0.05, "ci_low": pytest.approx(0.04), "ci_high": pytest.approx(0.06)}
    assert lifts["a"]["dr.uvc"]["value"] == pytest.approx(0.1) and lifts["a"]["dr.udt"]["value"] == pytest.approx(1.2)
    assert lifts["a"]["dr.uvc"]["ci_low"] == pytest.approx(0.0)
    assert lifts["a"]["ipw.reward"]["value"] == pytest.approx(-0.45)
    assert set(lifts["b"]) == {"fqe.uvc", "fqe.udt", "fqe.reward"}  # an item-level policy: no weights
    assert "dr.uvc" in lifts["c"] and "ipw.uvc" not in lifts["c"]  # no supported episode: IPW/SNIPW left out


def _seed(seed: int, online: dict[str, float], est: dict[str, float]) -> SeedResult:
    """Per-user metrics whose ratio of means is 1 + the online lift; the estimates as FQE lifts."""
    base = np.full(10, 10.0)
    per_user = {"baseline": {m: base for m in ("uvc", "udt", "reward")}}
    for m, lift in online.items():
        per_user[m] = {k: base * (1 + lift) for k in ("uvc", "udt", "reward")}
    ope = {m: {f"fqe.{k}": {"value": v, "ci_low": v - 0.02, "ci_high": v + 0.02} for k in ("uvc", "udt", "reward")}
           for m, v in est.items()}
    gauc = {m: 0.6 - v for m, v in est.items()} | {"baseline": 0.6}  # GAUC ranks them backwards
    return SeedResult(seed=seed, gauc=gauc, per_user=per_user, ptm={}, runs={}, ope=ope)


def test_agreement_and_signs_by_hand():
    online = {"a": 0.03, "b": -0.02, "c": 0.001, "d": 0.05}
    seeds = [_seed(0, online, {"a": 0.02, "b": -0.01, "c": 0.005, "d": 0.04}),
             _seed(1, online, {"a": 0.01, "b": -0.03, "c": -0.001, "d": 0.03})]
    t5 = [{"method": m, "metric": "uvc_lift", "control": "baseline", "mean": v, "ci_low": v - 0.005,
           "ci_high": v + 0.005} for m, v in online.items()]
    out = ope_tables(seeds, ["a", "b", "c", "d"], t5, {"a": "A"})
    row = next(r for r in out["table6"] if r["method"] == "a" and r["metric"] == "uvc")
    assert row["label"] == "A" and row["fqe"]["mean"] == pytest.approx(0.015)
    # the interval of the mean of two estimates with se 0.02 / 1.96 each: 1.96 * sqrt(2) * se / 2
    assert row["fqe"]["ci_high"] - row["fqe"]["mean"] == pytest.approx(0.02 * np.sqrt(2) / 2)
    fqe = next(e for e in out["ope_agreement"] if e["estimate"] == "fqe" and e["metric"] == "uvc")
    # 8 (method, seed) points, each seed's estimate against the same online lift
    from scipy import stats

    xs = [0.02, -0.01, 0.005, 0.04, 0.01, -0.03, -0.001, 0.03]
    ys = [0.03, -0.02, 0.001, 0.05] * 2
    assert fqe["points"] == 8 and fqe["spearman"] == pytest.approx(stats.spearmanr(xs, ys).statistic)
    # signs: a, b, d have online intervals excluding 0 (c's contains it); their mean estimates share the sign
    assert fqe["signs_known"] == 3 and fqe["signs_agree"] == 3
    gauc = next(e for e in out["ope_agreement"] if e["estimate"] == "weighted_gauc" and e["metric"] == "uvc")
    assert gauc["spearman"] == pytest.approx(-fqe["spearman"]) and "signs_known" not in gauc
    md = ope_markdown(out)
    assert "Table 6" in md and "| FQE | UVC | 8 |" in md


def test_no_off_policy_estimates_no_table():
    seeds = [_seed(0, {"a": 0.01}, {})]
    out = ope_tables(seeds, ["a"], [], {})
    assert out == {"table6": [], "ope_agreement": []} and ope_markdown(out) == ""
