"""Compare methods of two finished paper experiments seed by seed, as if they had been one run.

The online A/B of ``rlmtf experiment paper`` is a function of the experiment seed (its users, days and A/B
seed), so two runs of the same preset and setting face the same users with common random numbers; this
script checks that (the hand-set baseline's per-user outcomes must be identical in both runs, seed by
seed), pools the runs' per-user outcomes and computes every method's lift over every other, as the
experiment's Tables 4 and 5 do (per-user pairs of every seed pooled, 95% CIs). Use it to add a method to
a finished experiment without rerunning the others.

``--pool``: the runs hold the same methods on *different* seeds (e.g. seeds 0-2, 3-5, 6-8 of one commit); their
seeds are put together, as if one run had had them all.

    python experiments/compare_runs.py --runs runs/dm_gate_sim runs/esrl_residual_improved \
        --out runs/compare_residual
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from rlmtf.core.provenance import file_logger, write_summary
from rlmtf.pipelines.paper import LABELS, SeedResult, lift_entry, load_seed_result

METRICS = ("uvc", "udt", "reward")


def merged(runs: list[Path], finished_only: bool = False) -> list[SeedResult]:
    """Per seed: the per-user outcomes of every run's methods in one SeedResult (baseline checked equal);
    ``finished_only``: leave out the seeds some run has not finished (else that is an error)."""
    seeds = sorted({p.name for r in runs for p in r.glob("seed_*")})
    out = []
    for name in seeds:
        parts = [load_seed_result(r / name) for r in runs]
        if any(p is None for p in parts):
            if finished_only:
                continue
            raise SystemExit(f"{name}: not finished in every run (--finished-only leaves it out)")
        base = parts[0].per_user["baseline"]
        for r, p in zip(runs[1:], parts[1:], strict=True):
            for m in METRICS:
                if not np.array_equal(p.per_user["baseline"][m], base[m]):
                    raise SystemExit(f"{r}/{name}: the baseline's per-user {m} differs from {runs[0]}'s: "
                                     "not the same A/B (preset, setting, environment or seed)")
        per_user, gauc = {}, {}
        for r, p in zip(runs, parts, strict=True):
            twice = sorted(set(p.per_user) & set(per_user) - {"baseline"})
            if twice:
                raise SystemExit(f"{r}/{name}: {', '.join(twice)} also in an earlier run: compare runs of other "
                                 "methods")
            per_user.update(p.per_user)
            gauc.update(p.gauc)
        out.append(SeedResult(seed=parts[0].seed, gauc=gauc, per_user=per_user, ptm={}, runs={}))
    return out


def pooled(runs: list[Path]) -> list[SeedResult]:
    """Every finished seed of every run (a seed may be in one run only)."""
    out, where = [], {}
    for r in runs:
        for d in sorted(r.glob("seed_*"), key=lambda d: int(d.name.split("_", 1)[1])):
            res = load_seed_result(d)
            if res is None:
                continue
            if d.name in where:
                raise SystemExit(f"{d.name} is in {where[d.name]} and {r}: --pool puts different seeds together")
            where[d.name] = r
            out.append(res)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--finished-only", action="store_true", help="compare on the seeds every run has finished")
    ap.add_argument("--pool", action="store_true", help="the runs hold different seeds of the same methods")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    log = file_logger(a.out / "log.txt")
    results = pooled(a.runs) if a.pool else merged(a.runs, a.finished_only)
    if not results:
        raise SystemExit("no seed finished in every run")
    methods = [m for m in results[0].per_user if all(m in r.per_user for r in results)]
    rows = []
    for method, control in itertools.permutations(methods, 2):
        for metric in METRICS:
            e = lift_entry("compare", method, control, metric, results, None)
            rows.append(e)
            seeds = ", ".join(f"{x:+.2%}" for x in e["per_seed"])
            log(f"{LABELS.get(method, method)} vs {LABELS.get(control, control)}: {metric} {e['mean']:+.2%} "
                f"[{e['ci_low']:+.2%}, {e['ci_high']:+.2%}] (per seed {seeds})")
    write_summary(a.out, {"runs": [str(r) for r in a.runs], "out": a.out, "finished_only": a.finished_only,
                          "pool": a.pool},
                  {"seeds": [r.seed for r in results], "methods": methods}, rows, log)


if __name__ == "__main__":
    main()
