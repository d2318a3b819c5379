"""``report.html``: one self-contained file (figures embedded as PNG data URIs) for the paper experiment.

Sections: the tables (1-6 and the offline/online agreement), weighted GAUC with error bars, online
lifts with 95% intervals, off-policy estimates against the online lifts, the progressive-training curve
per round, the training curves of every method, and the action distributions of the exploration data
(the paper's Figure 2).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np

from rlmtf.pipelines.paper import LABELS, METHODS
from rlmtf.pipelines.tables import preset_note, tables_markdown

#: the methods trained by progressive training (the first: IntegratedRL-MTF, the others Enhanced-State RL)
PTM_KINDS = ("integrated", "esrl", "esrl_residual", "esrl_list")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img_file(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def fig_gauc(tables: dict) -> str:
    """Bars from 0.5 (a random ranking), so that their lengths compare; the value at the end of each."""
    plt = _plt()
    rows = [e for e in tables["table1"]] + [e for e in tables["table3"] if e["method"] in PTM_KINDS[1:]]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    y = np.arange(len(rows))
    means = np.array([e["mean"] for e in rows])
    err = np.array([e["std"] if e["std"] is not None and np.isfinite(e["std"]) else 0.0 for e in rows])
    ax.barh(y, means - 0.5, left=0.5, xerr=err, color=["C3" if e["method"] in PTM_KINDS[1:] else
                                                       "C7" if e["method"] == "baseline" else "C0" for e in rows],
            alpha=0.8, capsize=3)
    for yi, m, s in zip(y, means, err, strict=True):
        ax.text(m + s + 0.002, yi, f"{m:.4f}", va="center", fontsize=7)
    ax.set_yticks(y, [e["label"] if e["method"] != "baseline" else "hand-set baseline" for e in rows])
    hi = float(np.nanmax(means + err))
    ax.set_xlim(0.5, max(hi + 0.25 * (hi - 0.5), 0.52))
    ax.invert_yaxis()
    ax.set_xlabel("weighted GAUC (mean ± sd over seeds; the axis starts at 0.5, a random ranking)")
    ax.set_title("Offline: weighted GAUC on the baseline-logged test set")
    return _png(fig)


def fig_lifts(tables: dict) -> str | None:
    entries = tables["table2"] + tables["table4"]
    if not entries:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.45 * max(3, len(entries) // 2) + 1.2), sharey=True)
    for ax, metric in zip(axes, ("uvc_lift", "udt_lift"), strict=True):
        es = [e for e in entries if e["metric"] == metric]
        y = np.arange(len(es))
        m = np.array([100 * e["mean"] for e in es])
        lo = m - np.array([100 * e["ci_low"] for e in es])
        hi = np.array([100 * e["ci_high"] for e in es]) - m
        colors = ["C3" if e["table"] == "4" else "C0" for e in es]
        for yi, mi, l_, h_, c in zip(y, m, lo, hi, colors, strict=True):
            ax.errorbar([mi], [yi], xerr=[[l_], [h_]], fmt="o", color=c, capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [f"{e['label']} vs {LABELS.get(e['control'], e['control'])}" for e in es])
        ax.set_xlabel(f"{metric.removesuffix('_lift').upper()} lift (%), 95% CI")
    axes[0].invert_yaxis()
    fig.suptitle("Simulated online A/B: lifts (blue: Table 2 vs ES; red: Table 4 vs IntegratedRL-MTF)")
    fig.tight_layout()
    return _png(fig)


def fig_ptm(results) -> str | None:
    kinds = [k for k in PTM_KINDS if all(k in r.ptm for r in results)]
    if not kinds:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, k in enumerate(kinds):
        rounds = [row["round"] for row in results[0].ptm[k]]
        g = np.array([[row["weighted_gauc"] for row in r.ptm[k]] for r in results])
        u = np.array([[100 * row["uvc_lift"] for row in r.ptm[k]] for r in results])
        for a, v in ((a1, g), (a2, u)):
            mean = v.mean(0)
            a.plot(rounds, mean, "o-", color=f"C{i}", label=LABELS[k])
            if len(results) > 1:
                a.fill_between(rounds, v.min(0), v.max(0), color=f"C{i}", alpha=0.15)
    a1.set_xlabel("round (0 = hand-set baseline)")
    a1.set_ylabel("weighted GAUC")
    a2.set_xlabel("round")
    a2.set_ylabel("UVC lift over the baseline (%)")
    a2.axhline(0, color="k", lw=0.8)
    a1.legend(fontsize=8)
    fig.suptitle("Progressive training: each round explores around the previous round's policy")
    fig.tight_layout()
    return _png(fig)


def fig_ptm_actions(results) -> str | None:
    """Mean action of each round's policy on the test set: where progressive training moves the policy."""
    from rlmtf.core.fusion import ActionSpace

    kinds = [k for k in PTM_KINDS if all(k in r.ptm for r in results)
             and all("mean_action" in row for row in results[0].ptm[k])]
    if not kinds:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds) + 2.0, 3.2), squeeze=False, sharey=True,
                             layout="constrained")
    for j, (ax, k) in enumerate(zip(axes[0], kinds, strict=True)):
        m = np.mean([[row["mean_action"] for row in r.ptm[k]] for r in results], axis=0)  # (rounds + 1, A)
        space = ActionSpace(parameterisation="relative" if m.shape[1] == ActionSpace().dim - 1 else "paper")
        labels = [n.replace(":", " ") for n in space.names()]
        im = ax.imshow(m.T, aspect="auto", cmap="coolwarm", vmin=-1, vmax=1)
        ax.set_yticks(range(m.shape[1]), labels[: m.shape[1]], fontsize=7)
        ax.tick_params(axis="y", labelleft=j == 0)  # one set of row labels, left of the first panel
        ax.set_xticks(range(m.shape[0]), [str(row["round"]) for row in results[0].ptm[k]])
        ax.set_xlabel("round (0 = hand-set baseline)")
        ax.set_title(LABELS[k], fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="mean action on the test set")
    fig.suptitle("Where progressive training moves the policy (the bound penalty keeps each round near the "
                 "previous round's exploration box)", fontsize=10)
    return _png(fig)


def fig_ope(tables: dict) -> str | None:
    """Estimated against online UVC lift per method, one panel per estimate, both intervals drawn."""
    rows = [r for r in tables.get("table6", []) if r["metric"] == "uvc" and r["online"] is not None]
    panels = [est for est in ("fqe", "dm", "dr", "snipw") if any(est in r for r in rows)]
    if not rows or not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, est in zip(axes[0], panels, strict=True):
        pts = [r for r in rows if est in r]
        for i, r in enumerate(pts):
            on, e = r["online"], r[est]
            x, y = 100 * on["mean"], 100 * e["mean"]
            ax.errorbar([x], [y], xerr=[[x - 100 * on["ci_low"]], [100 * on["ci_high"] - x]],
                        yerr=[[y - 100 * e["ci_low"]], [100 * e["ci_high"] - y]], fmt="o", color=f"C{i % 10}",
                        capsize=2, label=r["label"])
        lim = [min(0.0, *(100 * min(r["online"]["ci_low"], r[est]["ci_low"]) for r in pts)),
               max(0.0, *(100 * max(r["online"]["ci_high"], r[est]["ci_high"]) for r in pts))]
        ax.plot(lim, lim, color="k", lw=0.6, ls="--")
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(0, color="k", lw=0.6)
        ag = next((a for a in tables.get("ope_agreement", []) if a["estimate"] == est and a["metric"] == "uvc"), None)
        ax.set_title(f"{est.upper()}" + (f" (Spearman {ag['spearman']:+.2f})" if ag else ""))
        ax.set_xlabel("online UVC lift over baseline (%)")
        ax.set_ylabel("estimated UVC lift (%)")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _png(fig)


def _read_metrics(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    if not f.is_file():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def fig_training(results) -> str | None:
    r0 = results[0]
    runs = [(m, Path(r0.runs[m])) for m, _ in METHODS if m in r0.runs]
    if not runs:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    cols = 4
    n_rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 2.6 * n_rows), squeeze=False)
    for ax, (m, run) in zip(axes.flat, runs, strict=False):
        rec = _read_metrics(run)
        if not rec:
            ax.set_visible(False)
            continue
        steps = [r["step"] for r in rec]
        keys = sorted({k for r in rec for k in r if k.startswith(("losses/", "es/fitness"))})
        for k in keys[:4]:
            v = np.array([r.get(k, np.nan) for r in rec], dtype=float)
            ax.plot(steps, v, label=k.split("/", 1)[1], lw=1)
        # one scale for every loss panel: symmetric log (losses span decades and some, e.g. -Q, are negative);
        # ES's fitness (reward per session, in a narrow range) on a linear one
        if m != "es":
            ax.set_yscale("symlog", linthresh=1e-2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(LABELS[m] + (" (last PTM round)" if m in PTM_KINDS else ""), fontsize=9)
        ax.set_xlabel("generation" if m == "es" else "step", fontsize=8)
        ax.set_ylabel("fitness (linear)" if m == "es" else "loss (symlog)", fontsize=8)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(runs):]:
        ax.set_visible(False)
    fig.suptitle(f"Training curves (seed {r0.seed})")
    fig.tight_layout()
    return _png(fig)


def fig_actions(out: Path, results) -> str | None:
    from rlmtf.data import read_logs
    from rlmtf.eval.exploration import plot_action_distributions

    d = out / f"seed_{results[0].seed}" / "ptm_integrated" / "round_1" / "data"
    if not (d / "_meta.json").is_file():
        return None
    png = out / "action_distributions.png"
    plot_action_distributions(read_logs(d), png)
    return _img_file(png)


def _md_table_to_html(md: str) -> str:
    """The pipe tables and headings of :func:`tables_markdown` as HTML."""
    parts: list[str] = []
    rows: list[list[str]] = []

    def flush():
        if rows:
            head, body = rows[0], rows[2:]
            parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) +
                         "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) +
                                                         "</tr>" for r in body) + "</tbody></table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("## "):
            parts.append(f"<h3>{html.escape(line[3:])}</h3>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(parts)


def _code_spans(text: str) -> str:
    """``text`` escaped for HTML, with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}td:first-child,
th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f5f5f5;
padding:0 .2em}.note{color:#555;font-size:.92em}.warn{background:#fff4d6;border:1px solid #e8c15a;
padding:.6em .9em;border-radius:4px}"""


def write_report(path: Path, tables: dict, results, meta: dict, out: Path) -> Path:
    figs = [("Weighted GAUC", fig_gauc(tables),
             ("Mean over seeds with one standard deviation. Higher is better; the hand-set baseline is the policy "
             "that logged the test set.")),
            ("Online lifts", fig_lifts(tables),
             ("Relative lift of the mean per-user metric, 95% interval from per-user pairs pooled over seeds "
             "(common random numbers: every arm serves the same users with the same randomness).")),
            ("Off-policy estimates against the A/B", fig_ope(tables),
             ("Each method's estimated UVC lift over the baseline (mean over seeds, interval of the mean) against its "
              "online lift (95% CI, per-user pairs pooled); the dashed line is where they are equal.")),
            ("Progressive training", fig_ptm(results),
             "Weighted GAUC and online UVC lift over the baseline after each round (band: min-max over seeds)."),
            ("Policy drift over the rounds", fig_ptm_actions(results),
             ("Mean normalised action ([-1, 1]; -1 = the low end of the power or bias range) of each round's policy "
             "on the test set, averaged over seeds.")),
            ("Training curves", fig_training(results),
             ("Losses per logged interval on a symmetric log scale (linear within ±0.01); ES: fitness per "
              "generation, linear.")),
            ("Action distributions (Figure 2)", fig_actions(out, results),
             ("Logged actions of round 1 of progressive exploration: the bounded uniform exploration box against "
             "Gaussian action noise of the same mean."))]
    seconds = meta.get("seconds", float("nan"))
    body = [f"<h1>{html.escape(meta['title'])}</h1>",
            *([f"<p class='warn'><b>Note.</b> {_code_spans(preset_note(meta['preset']['name']) or '')}</p>"]
              if preset_note(meta["preset"]["name"]) else []),
            (f"<p class='note'>Preset <code>{html.escape(meta['preset']['name'])}</code>, seeds "
            f"{html.escape(str(meta['seeds']))}, env <code>{html.escape(meta['env'])}</code>, commit "
            f"<code>{html.escape(str(meta['commit']))}</code>, device {html.escape(meta['device'])}, "
            f"{seconds / 60:.1f} min, started {html.escape(meta['started'])}.</p>"),
            "<h2>Tables</h2>", _md_table_to_html(tables_markdown(tables))]
    for title, src, note in figs:
        if src is None:
            continue
        body += [f"<h2>{html.escape(title)}</h2>", f"<p class='note'>{html.escape(note)}</p>",
                 f"<img alt='{html.escape(title)}' src='{src}'>"]
    body.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(meta["preset"], indent=2)) + "</pre>")
    doc = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>rlmtf: paper experiment</title>"
           f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    path.write_text(doc)
    return path
