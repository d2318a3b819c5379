"""Re-estimate a finished paper experiment's methods off-policy with the importance-weighted estimators and the
first-order direct method of the current code, on each seed's own OPE set, without refitting FQE.

For each ``seed_N`` of ``--out``: every method's saved final policy (a gated progressive method that accepted
no round is the hand-set baseline; the CMA-ES fixed fusion only where the seed saved it, ``fixed/policy.json``)
is evaluated on ``seed_N/ope_logs`` by ``rlmtf.eval.ope.evaluate_ope(..., with_fqe=False)`` (IPW, SNIPW, the
first-order DM); the seed's recorded FQE and DR lifts (``ope.json``) are kept beside them. Then the
experiment's Table 6 and the rank agreement with the seed's online A/B are rebuilt
(``rlmtf.pipelines.ope_stage``) and written to ``--out/ope_rerun.md`` and ``ope_rerun.json``.

    python experiments/ope_rerun.py --out runs/paper_ope2/improved
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rlmtf.algos.registry import load_policy
from rlmtf.core.provenance import file_logger, git_commit
from rlmtf.data.io import read_logs
from rlmtf.eval.ope import OPEConfig, evaluate_ope
from rlmtf.pipelines.ope_stage import estimated_lifts, ope_markdown
from rlmtf.pipelines.paper import LABELS, build_tables, load_seed_result
from rlmtf.policy.fixed import baseline_policy


def seed_policies(seed_dir: Path, res, space) -> dict:
    pols = {}
    for method, run in res.runs.items():
        rows = res.ptm.get(method)
        if rows and any("accepted" in r for r in rows[1:]) and not any(r.get("accepted") for r in rows[1:]):
            pols[method] = baseline_policy(space)  # gated, nothing accepted: the baseline kept serving
        else:
            pols[method] = load_policy(str(Path(run) / "policy"), space)
    if (seed_dir / "fixed" / "policy.json").is_file():
        pols["fixed"] = load_policy(str(seed_dir / "fixed" / "policy.json"), space)
    for m, p in pols.items():
        p.name = LABELS.get(m, m)
    return pols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a finished paper-experiment directory")
    a = ap.parse_args()
    torch.set_num_threads(1)
    log = file_logger(a.out / "ope_rerun.log")
    results = []
    for seed_dir in sorted(a.out.glob("seed_*"), key=lambda d: int(d.name.split("_", 1)[1])):
        res = load_seed_result(seed_dir)
        if res is None or not (seed_dir / "ope.json").is_file():
            continue
        logs = read_logs(seed_dir / "ope_logs")
        space = logs.meta.action_space
        pols = seed_policies(seed_dir, res, space)
        doc = evaluate_ope(list(pols.values()), logs, OPEConfig(), space_dim=space.dim, with_fqe=False,
                           log=lambda s, d=seed_dir.name: log(f"{d}: {s}"))
        doc["methods"] = list(pols)
        (seed_dir / "ope_rerun.json").write_text(json.dumps(doc, indent=2, default=float))
        new = estimated_lifts(doc)
        old = res.ope
        res.ope = {m: {**{k: v for k, v in old.get(m, {}).items() if k.split(".")[0] in ("fqe", "dr")},
                       **{k: v for k, v in new[m].items() if k.split(".")[0] in ("dm", "snipw", "ipw")}}
                   for m in new}
        results.append(res)
    if not results:
        raise SystemExit(f"{a.out}: no finished seed with an OPE set")
    tables = build_tables(results)
    md = ope_markdown(tables)
    (a.out / "ope_rerun.md").write_text(f"# Off-policy estimates re-run (commit {git_commit()})\n\n{md}")
    (a.out / "ope_rerun.json").write_text(json.dumps({"commit": git_commit(), "table6": tables["table6"],
                                                      "agreement": tables["ope_agreement"]}, indent=2, default=float))
    print(md)


if __name__ == "__main__":
    main()
