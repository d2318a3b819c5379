"""Off-policy evaluation in the paper experiment: can the logs rank the methods the way the online A/B does?

Per seed (``run_ope_stage``), a separate **OPE set** is logged: ``Preset.ope_sessions`` sessions of the
setting's exploration around the hand-set baseline (the box of progressive training's first round, on
days and a seed no method trained on). Every method's final policy is evaluated on it with
``rlmtf.eval.ope.evaluate_ope`` (``docs/design.md#off-policy-evaluation``), and each estimate becomes an
*estimated lift over the baseline*, in the units of the online metrics (per user-day):

- ``fqe``: FQE's value of the policy over FQE's value of the logging policy's mean action (the baseline's
  action), paired over the bootstrap members;
- ``dm``: the first-order direct method's lift over the logged mean (``rlmtf.eval.ope.first_order_dm``);
- ``dr``, ``snipw``, ``ipw``: the importance-weighted estimate over the logged mean per user-day (the
  kernel-smoothed baseline's value: with the default bandwidth the baseline's weight is 1 everywhere);
  the interval is the estimate's bootstrap interval over the logged mean (the logged mean's own noise is
  not in it). Item-level policies get no importance-weighted estimate (the OPE set explores per user),
  and IPW and SNIPW are left out where no logged episode has a positive weight (effective sample size
  below 1: they would be 0 by construction).

``ope_tables`` then compares these with the online A/B across methods and seeds: for every estimate and
every online metric (UVC, UDT, reward per user-day) the Spearman and Kendall rank correlation over all
(method, seed) points, and whether the sign of each method's mean estimated lift agrees with the online
lift's wherever the online interval excludes 0. Weighted GAUC (its difference from the baseline's) is
ranked the same way, as the paper's offline metric to beat.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ESTIMATORS", "OPE_ONLINE", "estimated_lifts", "ope_markdown", "ope_tables", "run_ope_stage"]

#: The estimates reported, best-founded first.
ESTIMATORS = ("fqe", "dm", "dr", "snipw", "ipw")
#: The online metrics they are compared with (per user-day).
OPE_ONLINE = ("uvc", "udt", "reward")
_LABEL = {"fqe": "FQE", "dm": "DM (first order)", "dr": "DR", "snipw": "SNIPW", "ipw": "IPW",
          "weighted_gauc": "weighted GAUC"}


def run_ope_stage(sim, base, policies: dict[str, Any], setting, *, sessions: int, steps: int, hidden: tuple[int, ...],
                  seed: int, out: Path, workers: int = 1, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Log the OPE set into ``out/ope_logs``, evaluate ``policies`` (method -> policy) on it, write
    ``out/ope.json``; return method -> estimated lifts (:func:`estimated_lifts`)."""
    import json

    from rlmtf.data.io import read_logs
    from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
    from rlmtf.eval.fqe import FQEConfig
    from rlmtf.eval.ope import OPEConfig, evaluate_ope
    from rlmtf.pipelines.ptm import PTMConfig

    per = setting.per or "request"
    data = out / "ope_logs"
    log(f"seed {seed}: logging the OPE set ({sessions} sessions, the baseline explored per {per})")
    box = PTMConfig.box  # progressive training's first-round box
    simulate_to_parquet(sim, behaviour_policy(base, "uniform", per, lower_b=-box, upper_b=box, seed=seed + 40_000,
                                              edge=setting.edge), data, seed=seed + 40_000, sessions=sessions,
                        start_day=2000, overwrite=True, workers=workers)
    logs = read_logs(data)
    methods = list(policies)
    cfg = OPEConfig(episode="day", fqe=FQEConfig(steps=steps, hidden=hidden, seed=seed))
    doc = evaluate_ope([policies[m] for m in methods], logs, cfg, space_dim=sim.cfg.action_space.dim,
                       log=lambda s: log(f"seed {seed}: OPE: {s}"))
    doc["methods"] = methods
    (out / "ope.json").write_text(json.dumps(doc, indent=2, default=float))
    return estimated_lifts(doc)


def estimated_lifts(doc: dict) -> dict[str, dict]:
    """method -> ``"<estimator>.<metric>"`` -> ``{"value", "ci_low", "ci_high"}`` (lifts over the baseline)
    from an ``ope.json`` document (module docstring)."""
    out: dict[str, dict] = {}
    logged = doc["logged"]
    for method, entry in zip(doc["methods"], doc["policies"], strict=True):
        lifts: dict[str, dict] = {}
        for metric in OPE_ONLINE:
            if metric in entry["fqe"]:
                f = entry["fqe"][metric]["lift"]
                lifts[f"fqe.{metric}"] = {"value": f["mean"], "ci_low": f["ci_low"], "ci_high": f["ci_high"]}
            dm = (entry.get("dm") or {}).get(metric)
            if dm is not None:
                lifts[f"dm.{metric}"] = {"value": dm["lift"]["mean"], "ci_low": dm["lift"]["ci_low"],
                                         "ci_high": dm["lift"]["ci_high"]}
            iw = (entry.get("is") or {}).get(metric)
            if iw is None:
                continue
            ref = logged[metric]
            # without one logged episode of positive weight IPW and SNIPW are 0 by construction, not estimates
            for est in [k for k in (("dr", "snipw", "ipw") if iw["ess"] >= 1 else ("dr",)) if k in iw]:
                lifts[f"{est}.{metric}"] = {k: iw[est][k] / ref - 1.0 for k in ("value", "ci_low", "ci_high")}
        out[method] = lifts
    return out


def _combined(values: list[dict]) -> dict:
    """The mean of independent per-seed estimates with the interval of the mean (half-widths as 1.96 se)."""
    v = np.array([x["value"] for x in values])
    se = np.array([(x["ci_high"] - x["ci_low"]) / 3.92 for x in values])
    half = 1.96 * float(np.sqrt((se ** 2).sum())) / len(values)
    return {"mean": float(v.mean()), "ci_low": float(v.mean()) - half, "ci_high": float(v.mean()) + half,
            "per_seed": v.tolist()}


def _online_lift(r, method: str, metric: str) -> float:
    c, t = r.per_user["baseline"][metric], r.per_user[method][metric]
    ok = np.isfinite(c) & np.isfinite(t)
    return float(t[ok].mean() / c[ok].mean() - 1.0)


def ope_tables(results: list, methods: list[str], online: list[dict], labels: dict[str, str]) -> dict:
    """Table 6 (every method's estimated and online lifts) and the estimates' agreement with the A/B.

    ``results``: the seeds (each with ``ope``, ``gauc`` and ``per_user``); ``online``: Table 5's entries
    against the baseline (their pooled intervals decide where the online lift's sign is known)."""
    from scipy import stats as sps

    have = [m for m in methods if all(m in r.ope for r in results)]
    if not have:
        return {"table6": [], "ope_agreement": []}
    on = {(e["method"], e["metric"].removesuffix("_lift")): e for e in online if e["control"] == "baseline"}
    table6 = []
    for m in have:
        for metric in OPE_ONLINE:
            row = {"method": m, "label": labels.get(m, m), "metric": metric, "online": on.get((m, metric))}
            for est in ESTIMATORS:
                key = f"{est}.{metric}"
                if all(key in r.ope[m] for r in results):
                    row[est] = _combined([r.ope[m][key] for r in results])
            table6.append(row)
    agreement = []
    for est in (*ESTIMATORS, "weighted_gauc"):
        for metric in OPE_ONLINE:
            xs, ys = [], []
            for r in results:
                for m in have:
                    if est == "weighted_gauc":
                        x = r.gauc[m] - r.gauc["baseline"]
                    elif f"{est}.{metric}" in r.ope[m]:
                        x = r.ope[m][f"{est}.{metric}"]["value"]
                    else:
                        continue
                    xs.append(x)
                    ys.append(_online_lift(r, m, metric))
            if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:  # no ranking to compare
                continue
            sp, kt = sps.spearmanr(xs, ys), sps.kendalltau(xs, ys)
            entry = {"estimate": est, "label": _LABEL[est], "metric": metric, "points": len(xs),
                     "spearman": float(sp.statistic), "spearman_p": float(sp.pvalue), "kendall": float(kt.statistic),
                     "kendall_p": float(kt.pvalue)}
            if est != "weighted_gauc":
                known = [row for row in table6 if row["metric"] == metric and est in row and row["online"] is not None
                         and (row["online"]["ci_low"] > 0 or row["online"]["ci_high"] < 0)]
                entry["signs_known"] = len(known)
                entry["signs_agree"] = sum(np.sign(row[est]["mean"]) == np.sign(row["online"]["mean"]) for row in known)
            agreement.append(entry)
    return {"table6": table6, "ope_agreement": agreement}


def _pct(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:+.2f}%"


def _num(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:+.3f}"


def ope_markdown(tables: dict) -> str:
    """Table 6 and the agreement table as Markdown ('' without OPE)."""
    if not tables.get("table6"):
        return ""
    lines = ["## Table 6: off-policy estimates against the online A/B (lifts over the hand-set baseline)", "",
             ("Estimated on a separate exploration log around the baseline (docs/design.md#off-policy-evaluation); "
              "the mean over seeds with the interval of the mean; online: Table 5's lift and 95% CI."), "",
             "| method | metric | online | FQE | DM | DR | SNIPW | IPW |", "|---|---|---|---|---|---|---|---|"]

    def cell(c: dict | None) -> str:
        return "—" if not c else f"{_pct(c['mean'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]"

    for row in tables["table6"]:
        lines.append(f"| {row['label']} | {row['metric'].upper()} | {cell(row['online'])} | "
                     + " | ".join(cell(row.get(est)) for est in ESTIMATORS) + " |")
    lines += ["", "## Which offline estimate ranks the methods like the A/B", "",
              ("Rank correlation over every (method, seed) pair between the estimate and the seed's online lift; "
               "signs: methods whose mean estimated lift has the sign of the online lift, of those whose online "
               "interval excludes 0."), "",
              "| estimate | online metric | points | Spearman (p) | Kendall (p) | signs agree |",
              "|---|---|---|---|---|---|"]
    for e in tables["ope_agreement"]:
        signs = f"{e['signs_agree']} / {e['signs_known']}" if "signs_known" in e else "—"
        lines.append(f"| {e['label']} | {e['metric'].upper()} | {e['points']} | {_num(e['spearman'])} "
                     f"({e['spearman_p']:.2g}) | {_num(e['kendall'])} ({e['kendall_p']:.2g}) | {signs} |")
    return "\n".join(lines) + "\n"
