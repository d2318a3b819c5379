"""Render the summary of experiments/esrl_vs_integrated.py as Markdown tables (for RESULTS.md).

    python experiments/render_esrl_results.py runs/esrl_vs_integrated/summary.json
"""

from __future__ import annotations

import json
import sys


def fmt_lift(v: dict) -> str:
    return f"{100 * v['lift']:+.2f}% [{100 * v['ci'][0]:+.2f}, {100 * v['ci'][1]:+.2f}] p={v['p']:.2g}"


def main(path: str) -> None:
    s = json.load(open(path))
    summ, per_seed = s["summary"], s["per_seed"]
    seeds = [r["seed"] for r in per_seed]
    print(f"Seeds {seeds}; commit `{s['commit']}`; arguments: `{json.dumps(s['args'])}`\n")
    print("### Weighted GAUC on the baseline-logged test set (Table 3)\n")
    print("| policy | mean | sd | 95% CI over seeds | per seed |")
    print("|---|---:|---:|---|---|")
    for k, v in summ["gauc"].items():
        print(f"| {k} | {v['mean']:.4f} | {v['sd']:.4f} | [{v['ci_low']:.4f}, {v['ci_high']:.4f}] | "
              + ", ".join(f"{x:.4f}" for x in v["values"]) + " |")
    for title, prefix in (("Simulated online A/B, control IntegratedRL-MTF (Table 4)", "online"),
                          ("Simulated online A/B, control IntegratedRL-MTF without PTM", "online_ptm")):
        if prefix not in per_seed[0]:
            continue
        print(f"\n### {title}\n")
        control = per_seed[0][prefix]["control"]
        print("| arm vs " + control + " | metric | mean lift over seeds | per seed: lift [95% CI] p |")
        print("|---|---|---:|---|")
        for key, v in summ["lifts"].items():
            arm, metric = key.split(": ")
            if not arm.endswith(f"vs {control}"):
                continue
            mean = f"{100 * v['lift']['mean']:+.2f}% (sd {100 * v['lift']['sd']:.2f})"
            print(f"| {arm.split(' vs ')[0]} | {metric} | {mean} | "
                  + "; ".join(fmt_lift(x) for x in v["per_seed"]) + " |")
    if "ptm_rounds" not in per_seed[0]:
        return
    print("\n### Progressive training rounds (IntegratedRL-MTF; lifts over the baseline policy)\n")
    print("| seed | round | weighted GAUC | UVC lift | UDT lift |")
    print("|---|---:|---:|---:|---:|")
    for r in per_seed:
        for row in r["ptm_rounds"]:
            print(f"| {r['seed']} | {row['round']} | {row['weighted_gauc']:.4f} | {100 * row['uvc_lift']:+.2f}% | "
                  f"{100 * row['udt_lift']:+.2f}% |")


if __name__ == "__main__":
    main(sys.argv[1])
