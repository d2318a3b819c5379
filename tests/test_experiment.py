"""The paper experiment: aggregation over seeds by hand, the tables and report files, and the smoke
preset end to end through the CLI (``rlmtf demo`` runs it)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from rlmtf.eval.stats import paired_lift
from rlmtf.pipelines.paper import (
    METHODS,
    SeedResult,
    build_tables,
    gauc_entry,
    lift_entry,
    rank_agreement,
    tables_markdown,
    write_outputs,
)
from rlmtf.pipelines.report import _md_table_to_html


def fake_results(n_seeds: int = 3, n_users: int = 50) -> list[SeedResult]:
    """Seeds where method i has GAUC 0.6 + 0.01 i + noise and UVC proportional to (1 + 0.02 i)."""
    out = []
    rng = np.random.default_rng(0)
    for s in range(n_seeds):
        base = rng.uniform(5, 15, n_users)
        gauc, per_user = {}, {}
        # the paper's methods first (their indices fix the hand-computed values), then the fixed fusion
        for i, (m, _) in enumerate([*(x for x in METHODS if x[0] != "fixed"), ("baseline", ""), ("fixed", "")]):
            gauc[m] = 0.6 + 0.01 * i + 0.001 * s
            uvc = base * (1 + 0.02 * i) + rng.normal(0, 0.1, n_users)
            per_user[m] = {"uvc": uvc, "udt": 2 * uvc, "sessions": np.ones(n_users), "reward": uvc,
                           "session_length": np.full(n_users, 3.0)}
        out.append(SeedResult(seed=s, gauc=gauc, per_user=per_user, ptm={}, runs={}))
    return out


def test_gauc_entry_by_hand():
    res = fake_results(3)
    e = gauc_entry("1", "ddpg", "es", res, 0.7881)
    x = np.array([0.61, 0.611, 0.612])
    assert e["mean"] == pytest.approx(x.mean())
    assert e["std"] == pytest.approx(x.std(ddof=1))
    half = sps.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
    assert (e["ci_low"], e["ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half))
    assert e["diff_vs_reference"] == pytest.approx(0.01)
    # a constant difference over seeds: the paired t statistic is infinite, p = 0
    assert e["p_value"] == pytest.approx(0.0, abs=1e-12)
    assert e["paper"] == 0.7881 and e["per_seed"] == pytest.approx(list(x))
    one = gauc_entry("1", "ddpg", "es", res[:1], None)
    assert math.isnan(one["std"]) and math.isnan(one["ci_low"]) and math.isnan(one["p_value"])


def test_lift_entry_pools_users_over_seeds():
    res = fake_results(2)
    e = lift_entry("2", "iql", "es", "uvc", res, 0.0209)
    c = np.concatenate([r.per_user["es"]["uvc"] for r in res])
    t = np.concatenate([r.per_user["iql"]["uvc"] for r in res])
    want = paired_lift(c, t)
    assert e["mean"] == pytest.approx(want.lift) and e["ci_low"] == pytest.approx(want.ci_low)
    assert e["p_value"] == pytest.approx(want.p_value) and e["n_users"] == 100
    per_seed = [r.per_user["iql"]["uvc"].mean() / r.per_user["es"]["uvc"].mean() - 1 for r in res]
    assert e["per_seed"] == pytest.approx(per_seed)
    assert e["std"] == pytest.approx(np.std(per_seed, ddof=1))
    # iql is method index 4, es index 0: about +8%
    assert 0.07 < e["mean"] < 0.09


def test_rank_agreement_by_hand():
    res = fake_results(1)
    ag = rank_agreement(res, ["es", "ddpg", "iql", "esrl"])  # GAUC and UVC both increase with the index
    assert ag["spearman"] == pytest.approx(1.0) and ag["kendall"] == pytest.approx(1.0)
    for m in ("es", "ddpg"):  # swap the UVC order of two methods: one discordant pair of six
        res[0].per_user[m]["uvc"] = res[0].per_user[m]["uvc"].copy()
    res[0].per_user["es"]["uvc"], res[0].per_user["ddpg"]["uvc"] = res[0].per_user["ddpg"]["uvc"], \
        res[0].per_user["es"]["uvc"]
    ag = rank_agreement(res, ["es", "ddpg", "iql", "esrl"])
    assert ag["kendall"] == pytest.approx((5 - 1) / 6)
    assert ag["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))


def test_tables_and_files(tmp_path):
    res = fake_results(3)
    tables = build_tables(res)
    assert [e["method"] for e in tables["table1"]] == ["es", "ddpg", "cql_sac", "bcq", "iql", "integrated_once",
                                                       "integrated", "baseline"]
    assert len(tables["table2"]) == 2 * 6 and {e["control"] for e in tables["table2"]} == {"es"}
    assert [e["method"] for e in tables["table3"]] == ["integrated", "esrl", "esrl_residual", "esrl_list"]
    assert {e["metric"] for e in tables["table4"]} >= {"uvc_lift", "udt_lift"}
    # Table 5: every method against the baseline, and every method but the fixed fusion against it
    t5 = {(e["method"], e["control"], e["metric"]): e for e in tables["table5"]}
    n_methods = len(METHODS)
    assert len(t5) == len(tables["table5"]) == (n_methods + n_methods - 1) * 3
    assert ("fixed", "fixed", "uvc_lift") not in t5 and ("fixed", "baseline", "uvc_lift") in t5
    want = lift_entry("5", "integrated", "fixed", "reward", res, None)
    assert t5[("integrated", "fixed", "reward_lift")]["mean"] == pytest.approx(want["mean"])
    assert "fixed" not in tables["agreement"]["methods"]
    md = tables_markdown(tables)
    for label in ("BatchRL-MTF (BCQ)", "Table 4", "Table 5", "CMA-ES fixed fusion", "Spearman", "0.7953"):
        assert label in md
    meta = {"title": "t", "subtitle": "s"}
    write_outputs(tmp_path, tables, meta)
    rows = list(csv.DictReader((tmp_path / "tables.csv").open()))
    doc = json.loads((tmp_path / "tables.json").read_text())
    n = sum(len(tables[k]) for k in ("table1", "table2", "table3", "table4", "table5"))
    assert len(rows) == len(doc["entries"]) == n
    keyset = {(e["table"], e["method"], e["metric"], e.get("control")) for e in doc["entries"]}
    assert len(keyset) == n  # one entry per table, method, metric and control
    html = _md_table_to_html(md)
    assert html.count("<table>") == 5 and "<td>BatchRL-MTF (BCQ)</td>" in html


def test_without_es_there_is_no_table_2():
    res = fake_results(1)
    for r in res:
        del r.gauc["es"]
    tables = build_tables(res)
    assert tables["table2"] == [] and all(e["method"] != "es" for e in tables["table1"])


def _cli(*args, timeout=900):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, "-m", "rlmtf.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.mark.parametrize("args, message", [
    (("--preset", "huge"), "unknown --preset 'huge'"),
    (("--methods", "es,foo"), "unknown method(s) ['foo']"),
    (("--env", "nowhere"), "unknown environment 'nowhere'"),
    (("--preset", "smoke", "--seeds", "0"), "seeds must be >= 1"),
    (("--preset", "smoke", "--ope-sessions", "-1"), "--ope-sessions must be >= 0"),
])
def test_experiment_cli_rejects_bad_options(tmp_path, args, message):
    p = _cli("experiment", "paper", "--out", tmp_path / "x", *args)
    assert p.returncode == 2, p.stderr
    assert message in " ".join(p.stderr.split()), p.stderr


def test_demo_runs_the_smoke_experiment_end_to_end(tmp_path):
    out = tmp_path / "demo"
    p = _cli("demo", "--out", out, "--threads", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("tables.md", "tables.csv", "tables.json", "report.html", "config.json", "sim_config.toml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "tables.json").read_text())
    methods = {m for m, _ in METHODS}
    t1 = {e["method"]: e for e in doc["entries"] if e["table"] == "1"}
    esrl = {"esrl", "esrl_residual", "esrl_list"}
    assert set(t1) == (methods - esrl - {"fixed"}) | {"baseline"}
    assert all(0.3 < e["mean"] < 0.8 for e in t1.values())
    t2 = {(e["method"], e["metric"]) for e in doc["entries"] if e["table"] == "2"}
    assert t2 == {(m, k) for m in methods - esrl - {"es", "fixed"} for k in ("uvc_lift", "udt_lift")}
    t3 = {e["method"] for e in doc["entries"] if e["table"] == "3"}
    assert t3 == {"integrated"} | esrl
    t5 = {(e["method"], e["control"]) for e in doc["entries"] if e["table"] == "5"}
    assert ("integrated", "fixed") in t5 and ("fixed", "baseline") in t5
    t4 = [e for e in doc["entries"] if e["table"] == "4"]
    assert t4 and all(e["control"] == "integrated" and np.isfinite(e["mean"]) for e in t4)
    assert {e["method"] for e in t4} == esrl
    assert -1 <= doc["agreement"]["spearman"] <= 1
    # Table 6: every method estimated off-policy (FQE at least), beside its online lift; the agreement table
    t6 = doc["ope"]["table6"]
    assert {r["method"] for r in t6} == methods and all("fqe" in r and r["online"] for r in t6)
    assert all(-1 <= e["spearman"] <= 1 for e in doc["ope"]["agreement"])
    assert (out / "seed_0" / "ope.json").is_file() and "Table 6" in (out / "tables.md").read_text()
    # every method left a run directory with metrics and a loadable policy
    seed_dir = out / "seed_0"
    for m in ("es", "ddpg", "cql_sac", "bcq", "iql", "integrated_once"):
        assert (seed_dir / m / "metrics.jsonl").stat().st_size > 0, m
        assert (seed_dir / m / "policy" / "policy.json").is_file(), m
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)  # self-contained: no external resources
    assert "Table 1" in p.stdout and "Enhanced-State RL" in p.stdout
    # the tables can be rebuilt from the seed directories alone, identically
    (out / "tables.json").rename(out / "first.json")
    r = _cli("experiment", "render", out)
    assert r.returncode == 0, r.stderr[-2000:]
    first, again = (json.loads((out / f).read_text()) for f in ("first.json", "tables.json"))
    assert again["entries"] == first["entries"] and again["agreement"] == first["agreement"]
    nothing = _cli("experiment", "render", tmp_path)
    assert nothing.returncode == 2 and "not an experiment directory" in nothing.stderr


def test_improved_setting_runs_in_its_action_space_with_the_gate(tmp_path):
    """The improved setting: policies in the relative space, gated progressive training (each round's row says
    whether it was accepted), the user-day objective in the runs' configs; the paper setting refuses an
    environment of the other space."""
    import dataclasses

    from rlmtf.envs.factory import with_action_space
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.pipelines.paper import PRESETS, run_paper, run_seed

    sim = Simulator(with_action_space(dataclasses.replace(SimConfig(), n_users=600, n_items=2000), "relative"))
    preset = dataclasses.replace(PRESETS["smoke"], rounds=2, online_users=200)
    from rlmtf.pipelines.settings import SETTINGS

    # the preset's steps: the horizon rule would train each method for thousands (tests/test_ptm_gate.py checks it)
    setting = dataclasses.replace(SETTINGS["improved"], steps="fixed")
    tables = run_paper(tmp_path / "imp", preset=preset, seeds=1, sim=sim, methods=("fixed", "integrated", "iql"),
                       setting=setting, log=lambda s: None)
    cfg = json.loads((tmp_path / "imp" / "config.json").read_text())
    assert cfg["setting"]["name"] == "improved" and cfg["setting"]["action_space"] == "relative"
    res = json.loads((tmp_path / "imp" / "seed_0" / "result.json").read_text())
    assert [("accepted" in row) for row in res["ptm"]["integrated"][1:]] == [True, True]
    iql_cfg = json.loads((tmp_path / "imp" / "seed_0" / "iql" / "config.json").read_text())
    assert json.dumps(iql_cfg).count('"episode": "day"') >= 1
    pol = json.loads((tmp_path / "imp" / "seed_0" / "iql" / "policy" / "policy.json").read_text())
    assert pol["action_space"]["parameterisation"] == "relative"
    assert {(e["method"], e["control"]) for e in tables["table5"]} >= {("integrated", "fixed"), ("iql", "baseline")}
    with pytest.raises(ValueError, match="'paper' setting runs in the 'paper' action space"):
        run_seed(sim, preset, 0, tmp_path / "p", methods=("fixed",))
