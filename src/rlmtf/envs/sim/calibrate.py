"""Calibration of the simulator against the real KuaiRand-Pure log.

The simulated quantities are measured on the items the baseline policy shows, the real ones on
every logged impression of ``log_standard_20220425_to_20220508_pure.parquet``. Mapping of columns:

=============  ===========================  ============================================
simulated      KuaiRand-Pure                note
=============  ===========================  ============================================
click          is_click
valid          long_view                    the simulator's valid view is watch > 10 s
like           is_like
follow         is_follow
comment        is_comment
share          is_forward
watch_ratio    play_time_ms / duration_ms   rows with duration_ms = 0 are left out
=============  ===========================  ============================================

``collect`` has no KuaiRand counterpart and is not calibrated. :func:`fit_behaviour` moves the
behaviour intercepts until the simulated rates and quantiles match (a few fixed-point rounds of
logit-difference updates); its result is what the defaults in ``config.py`` were set from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import logit

from rlmtf.envs.kuairand.paths import LOG_FILE
from rlmtf.envs.sim.config import SimConfig

#: simulated behaviour -> KuaiRand column
RATE_COLUMNS: dict[str, str] = {"click": "is_click", "valid": "long_view", "like": "is_like",
                                "follow": "is_follow", "comment": "is_comment", "share": "is_forward"}
QUANTILES: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
#: Tolerances the project promises: relative for rates, absolute for watch-ratio quantiles.
RATE_TOLERANCE = 0.30
QUANTILE_TOLERANCE = 0.10
CHECKED_QUANTILES = (0.5, 0.75, 0.9)


@dataclass
class BehaviourStats:
    rates: dict[str, float]
    watch_ratio_quantiles: dict[float, float]
    watch_ratio_mean: float
    rows: int

    def to_dict(self) -> dict:
        return {"rates": self.rates, "watch_ratio_quantiles": {str(q): v for q, v in
                                                               self.watch_ratio_quantiles.items()},
                "watch_ratio_mean": self.watch_ratio_mean, "rows": self.rows}


def real_stats(data_dir: str | Path) -> BehaviourStats:
    """Rates and watch-ratio quantiles of the KuaiRand-Pure log in ``data_dir``."""
    import pyarrow.parquet as pq

    path = Path(data_dir) / LOG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"KuaiRand-Pure log not found: {path} (set RLMTF_KUAIRAND_DIR or pass --data-dir)")
    cols = [*RATE_COLUMNS.values(), "play_time_ms", "duration_ms"]
    table = pq.read_table(path, columns=cols)
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    d = {c: table.column(c).to_numpy() for c in cols}
    rates = {sim: float(np.mean(d[real])) for sim, real in RATE_COLUMNS.items()}
    ok = d["duration_ms"] > 0
    ratio = d["play_time_ms"][ok] / d["duration_ms"][ok]
    return BehaviourStats(rates, {q: float(np.quantile(ratio, q)) for q in QUANTILES}, float(ratio.mean()),
                          int(table.num_rows))


def sim_stats(cfg: SimConfig, n_users: int = 2000, seed: int = 12345, days: int = 1) -> BehaviourStats:
    """The same statistics on the items the baseline policy shows in the simulator."""
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.policy.fixed import baseline_policy

    sim = Simulator(cfg)
    chunks: list[dict[str, np.ndarray]] = []
    keep = [*RATE_COLUMNS, "watch_ratio"]
    in_order = cfg.consumption.mode == "in_order"
    sim.run(baseline_policy(cfg.action_space), seed=seed, days=days, users=np.arange(min(n_users, cfg.n_users)),
            sink=lambda day, cols: chunks.append({k: cols[k] for k in keep + ["seen"] * in_order}),
            log_true_scores=False)
    c = {k: np.concatenate([x[k] for x in chunks]) for k in keep + ["seen"] * in_order}
    if in_order:  # the rates of what users saw: an unseen item has no feedback
        seen = c.pop("seen").astype(bool)
        c = {k: v[seen] for k, v in c.items()}
    ratio = c["watch_ratio"].astype(np.float64)
    return BehaviourStats({k: float(c[k].mean()) for k in RATE_COLUMNS},
                          {q: float(np.quantile(ratio, q)) for q in QUANTILES}, float(ratio.mean()), int(ratio.size))


def compare(sim: BehaviourStats, real: BehaviourStats) -> list[dict]:
    """Rows of (quantity, simulated, real, error, tolerance, ok) for the checked quantities."""
    rows = []
    for k in RATE_COLUMNS:
        rel = abs(sim.rates[k] - real.rates[k]) / real.rates[k]
        rows.append({"quantity": f"{k} rate", "simulated": sim.rates[k], "real": real.rates[k],
                     "error": rel, "tolerance": RATE_TOLERANCE, "kind": "relative", "ok": rel <= RATE_TOLERANCE})
    for q in QUANTILES:
        err = abs(sim.watch_ratio_quantiles[q] - real.watch_ratio_quantiles[q])
        checked = q in CHECKED_QUANTILES
        rows.append({"quantity": f"watch ratio p{int(q * 100)}", "simulated": sim.watch_ratio_quantiles[q],
                     "real": real.watch_ratio_quantiles[q], "error": err,
                     "tolerance": QUANTILE_TOLERANCE if checked else None, "kind": "absolute",
                     "ok": err <= QUANTILE_TOLERANCE if checked else None})
    rows.append({"quantity": "watch ratio mean", "simulated": sim.watch_ratio_mean, "real": real.watch_ratio_mean,
                 "error": abs(sim.watch_ratio_mean - real.watch_ratio_mean), "tolerance": None, "kind": "absolute",
                 "ok": None})
    return rows


def fit_behaviour(cfg: SimConfig, real: BehaviourStats, rounds: int = 8, n_users: int = 1500,
                  seed: int = 12345, damping: float = 0.8, log=print) -> SimConfig:
    """Fixed-point fit of the behaviour intercepts to the real rates and watch-ratio quantiles.

    Each round simulates the baseline policy and moves: engage_bias by the logit gap of the valid
    rate; click/like/share/follow/comment biases by their logit gaps; the engaged watch-ratio median
    by the mean log gap of the p75 and p90 quantiles and its sigma by the gap in log(p90/p75). The
    skip distribution (which sets p10-p50) is
    left as configured: it is identified by the lower quantiles alone and moving it together with
    the engagement rate makes the iteration unstable.
    """
    b = cfg.behaviour
    for r in range(rounds):
        s = sim_stats(dataclasses.replace(cfg, behaviour=b), n_users=n_users, seed=seed)

        def gap(k: str, s: BehaviourStats = s) -> float:
            return damping * (logit(np.clip(real.rates[k], 1e-6, 1)) - logit(np.clip(s.rates[k], 1e-6, 1 - 1e-6)))

        q = s.watch_ratio_quantiles
        rq = real.watch_ratio_quantiles
        b = dataclasses.replace(
            b,
            engage_bias=b.engage_bias + gap("valid"),
            click_bias=b.click_bias + gap("click"),
            like_bias=b.like_bias + gap("like"),
            share_bias=b.share_bias + gap("share"),
            follow_bias=b.follow_bias + gap("follow"),
            comment_bias=b.comment_bias + gap("comment"),
            engaged_ratio_median=b.engaged_ratio_median * float(np.exp(0.5 * damping * (
                np.log(rq[0.9] / max(q[0.9], 1e-6)) + np.log(rq[0.75] / max(q[0.75], 1e-6))))),
            engaged_ratio_sigma=b.engaged_ratio_sigma * float(np.exp(0.5 * damping * (
                np.log(np.log(rq[0.9] / rq[0.75])) - np.log(max(np.log(q[0.9] / max(q[0.75], 1e-6)), 1e-3))))),
        )
        worst = max(abs(s.rates[k] - real.rates[k]) / real.rates[k] for k in RATE_COLUMNS)
        log(f"round {r + 1}/{rounds}: worst rate error {worst:.1%}, p50 {q[0.5]:.3f} p75 {q[0.75]:.3f} "
            f"p90 {q[0.9]:.3f}")
    return dataclasses.replace(cfg, behaviour=b)


def session_stats(cfg: SimConfig, n_users: int = 3000, seed: int = 12345, days: int = 2) -> list[dict]:
    """The baseline policy's session statistics with every list consumed ("all") and in order (the config's
    in-order offsets), common random numbers: rows of (quantity, all, in_order, relative gap)."""
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.policy.fixed import baseline_policy

    out = {}
    for mode in ("all", "in_order"):
        c = dataclasses.replace(cfg, consumption=dataclasses.replace(cfg.consumption, mode=mode))
        r = Simulator(c).run(baseline_policy(c.action_space), seed=seed, days=days,
                             users=np.arange(min(n_users, c.n_users)), log_true_scores=False)
        out[mode] = {"consumed items per session": r.items.sum() / max(r.sessions.sum(), 1),
                     "requests per session": r.requests.sum() / max(r.sessions.sum(), 1),
                     "sessions per user-day": r.sessions.mean(),
                     "UVC (valid views per user-day)": r.valid.mean(),
                     "valid views per consumed item": r.valid.sum() / max(r.items.sum(), 1),
                     "watch minutes per user-day": r.watch_time.mean() / 60.0}
    return [{"quantity": k, "all": float(v), "in_order": float(out["in_order"][k]),
             "gap": float(out["in_order"][k] / v - 1)} for k, v in out["all"].items()]


def fit_in_order(cfg: SimConfig, n_users: int = 5000, seed: int = 12345, days: int = 2, log=print) -> dict[str, float]:
    """The in-order offsets of ``cfg``'s world (:func:`rlmtf.envs.consumption.calibrate_offsets`)."""
    from rlmtf.envs.consumption import calibrate_offsets
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.policy.fixed import baseline_policy

    return calibrate_offsets(lambda c: Simulator(dataclasses.replace(cfg, consumption=c)),
                             baseline_policy(cfg.action_space), np.arange(min(n_users, cfg.n_users)), seed=seed,
                             days=days, log=log)

