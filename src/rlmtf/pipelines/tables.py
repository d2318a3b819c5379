"""The experiment's tables as text: Markdown (``tables.md``, also printed), CSV and strict JSON, and the
note that says what a preset's numbers are worth."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlmtf.pipelines.ope_stage import ope_markdown

__all__ = ["CSV_COLUMNS", "PRESET_NOTES", "json_safe", "preset_note", "tables_markdown", "write_outputs"]

#: What a preset's numbers are worth, said at the top of tables.md, report.html and the printed tables.
PRESET_NOTES = {
    "smoke": ("The smoke preset checks that the pipeline runs end to end: its networks, data and training are "
              "tiny (150 sessions and 20 steps a round, one seed), so its numbers mean little: which method wins, "
              "how offline and online agree and how far they are from the paper's figures say nothing here. "
              "`rlmtf experiment paper --preset default --seeds 3` is the reproduction (RESULTS.md)."),
}


def preset_note(name: str) -> str | None:
    """The caveat of preset ``name`` (None: its numbers stand on their own)."""
    return PRESET_NOTES.get(name)



def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.2f}%"


def _sd(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def _num(x: float | None, nd: int = 4) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _p(x: float) -> str:
    if not np.isfinite(x):
        return "—"
    return f"{x:.3f}" if x >= 0.001 else (f"{x:.1e}" if x > 0 else "< 1e-300")


def tables_markdown(tables: dict) -> str:
    lines = ["## Table 1: weighted GAUC (baseline-logged test set)", "",
             "| method | weighted GAUC (mean ± sd) | 95% CI over seeds | p vs ES | paper |", "|---|---|---|---|---|"]
    for e in tables["table1"]:
        lines.append(f"| {e['label']} | {_num(e['mean'])} ± {_num(e['std'])} | [{_num(e['ci_low'])}, "
                     f"{_num(e['ci_high'])}] | {_p(e['p_value'])} | {_num(e['paper'])} |")
    if tables["table2"]:
        lines += ["", "## Table 2: simulated online lifts over ES", "",
                  "| method | metric | lift | 95% CI | p | per-seed sd | paper |", "|---|---|---|---|---|---|---|"]
        for e in tables["table2"]:
            lines.append(f"| {e['label']} | {e['metric'].removesuffix('_lift').upper()} | {_pct(e['mean'])} | "
                         f"[{_pct(e['ci_low'])}, {_pct(e['ci_high'])}] | {_p(e['p_value'])} | {_sd(e['std'])} | "
                         f"{_pct(e['paper']) if e['paper'] is not None else '—'} |")
    if tables["table3"]:
        lines += ["", "## Table 3: IntegratedRL-MTF vs Enhanced-State RL, weighted GAUC", "",
                  "| method | weighted GAUC (mean ± sd) | 95% CI | diff | p (paired over seeds) | paper |",
                  "|---|---|---|---|---|---|"]
        for e in tables["table3"]:
            lines.append(f"| {e['label']} | {_num(e['mean'])} ± {_num(e['std'])} | [{_num(e['ci_low'])}, "
                         f"{_num(e['ci_high'])}] | {_num(e.get('diff_vs_reference'))} | {_p(e['p_value'])} | "
                         f"{_num(e['paper'])} |")
    if tables["table4"]:
        lines += ["", "## Table 4: Enhanced-State RL's simulated online lifts over IntegratedRL-MTF", "",
                  "| method | metric | lift | 95% CI | p | per-seed sd | paper |", "|---|---|---|---|---|---|---|"]
        for e in tables["table4"]:
            lines.append(f"| {e['label']} | {e['metric'].removesuffix('_lift')} | {_pct(e['mean'])} | "
                         f"[{_pct(e['ci_low'])}, "
                         f"{_pct(e['ci_high'])}] | {_p(e['p_value'])} | {_sd(e['std'])} | "
                         f"{_pct(e['paper']) if e['paper'] is not None else '—'} |")
    if tables.get("table5"):
        lines += ["", "## Table 5: every method against the hand-set baseline and the CMA-ES fixed fusion", "",
                  "Simulated online lifts, per-user pairs of every seed pooled (95% CI); per-seed sd.", "",
                  "| method | vs | UVC | UDT | reward / user-day |", "|---|---|---|---|---|"]
        rows: dict[tuple[str, str], dict[str, dict]] = {}
        for e in tables["table5"]:
            rows.setdefault((e["label"], e["control"]), {})[e["metric"].removesuffix("_lift")] = e
        for (label, control), cells in rows.items():
            vs = "hand-set baseline" if control == "baseline" else "CMA-ES fixed fusion"
            lines.append(f"| {label} | {vs} | " + " | ".join(
                f"{_pct(c['mean'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]" if c else "—"
                for c in (cells.get(m) for m in ("uvc", "udt", "reward"))) + " |")
    ag = tables["agreement"]
    lines += ["", "## Offline vs online agreement", "",
              (f"Rank correlation between mean weighted GAUC and mean UVC over {len(ag['methods'])} methods: "
              f"Spearman {_num(ag.get('spearman'), 3)} (p {_p(ag.get('spearman_p', float('nan')))}), "
              f"Kendall {_num(ag.get('kendall'), 3)} (p {_p(ag.get('kendall_p', float('nan')))}).")]
    ope = ope_markdown(tables)
    return "\n".join(lines) + "\n" + (f"\n{ope}" if ope else "")


CSV_COLUMNS = ("table", "method", "label", "metric", "control", "reference", "mean", "std", "ci_low", "ci_high",
               "p_value", "n_seeds", "paper")


def write_outputs(out: Path, tables: dict, meta: dict) -> None:
    import csv

    note = preset_note(meta.get("preset", {}).get("name", ""))
    head = f"# {meta['title']}\n\n" + (f"> **Note.** {note}\n\n" if note else "") + f"{meta['subtitle']}\n\n"
    (out / "tables.md").write_text(head + tables_markdown(tables))
    entries = [e for k in ("table1", "table2", "table3", "table4", "table5") for e in tables.get(k, [])]
    with (out / "tables.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for e in entries:
            w.writerow({k: "" if json_safe(e.get(k)) is None else e[k] for k in CSV_COLUMNS})
    doc = {"meta": meta, "entries": entries, "agreement": tables["agreement"],
           "ope": {"table6": tables.get("table6", []), "agreement": tables.get("ope_agreement", [])}}
    # strict JSON: an undefined figure (one seed's sd, a p-value without variation) is null, not NaN
    (out / "tables.json").write_text(json.dumps(json_safe(doc), indent=2, default=_json_default, allow_nan=False))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (numpy's too) replaced by None, for strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
