"""The paper's whole experiment (its section 4, Tables 1-4) on the simulator, over several seeds.

For every seed:

1. log a **test set** with the hand-set baseline policy (no exploration) on later days;
2. **IntegratedRL-MTF with PTM**: 5 rounds of progressive exploration (round 1 around the baseline,
   round k around round k-1's policy), training after each round with a warm start
   (``docs/design.md#progressive-training``); the 5 rounds' logs are the *training data* of the offline baselines;
3. **Enhanced-State RL with PTM**: the same 5 rounds, exploring per user-item pair around its own
   item-level policy;
4. **IntegratedRL-MTF w/o PTM**: trained once on round 1's data (one round of exploration around the
   baseline) for as many steps as PTM takes in total;
5. **DDPG, CQL+SAC, BCQ (BatchRL-MTF), IQL** on all 5 rounds' logs, same user state, networks and
   steps; **ES** online in the simulator (CMA-ES, instant reward); the **CMA-ES fixed fusion** (one fusion
   for everybody maximising weighted GAUC on the same logs, the classical approach);
6. weighted GAUC of every method on the test set (Tables 1 and 3); off-policy estimates of every method's
   lift on a separate exploration log (``rlmtf.pipelines.ope_stage``, Table 6 and the estimates' rank
   agreement with the A/B); a simulated online A/B test of every method on the same users with common
   random numbers (Tables 2 and 4, and Table 5: every method against the hand-set baseline and against the
   CMA-ES fixed fusion).

Everything runs in one of two settings (``rlmtf.pipelines.settings``): ``paper`` (the papers' choices) or
``improved`` (the relative action space, the user-day objective, per-day exploration and gated progressive
training).

Across seeds, GAUC gets mean, standard deviation, a t-interval and a paired t-test against the table's
reference; online lifts pool the per-user pairs of every seed (each seed's A/B pairs the same users)
for the interval and the p-value, and report the spread of the per-seed lifts. The output directory
holds ``tables.md``, ``tables.csv``, ``tables.json``, ``report.html`` and one directory per seed with
every run (config, metrics.jsonl, checkpoint, policy).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlmtf.eval.online import METRICS
from rlmtf.eval.stats import paired_lift, paired_t_p, t_interval
from rlmtf.pipelines.settings import SETTINGS, Setting
from rlmtf.pipelines.tables import tables_markdown, write_outputs

__all__ = ["LABELS", "METHODS", "PRESETS", "Preset", "SeedResult", "build_tables", "finish", "gauc_entry",
           "lift_entry", "load_seed_result", "rank_agreement", "render", "run_paper", "run_seed", "tables_markdown",
           "write_outputs"]

#: (key, label) in the order of the paper's Table 1, then the paper's method.
METHODS: tuple[tuple[str, str], ...] = (
    ("fixed", "CMA-ES fixed fusion"),
    ("es", "ES"),
    ("ddpg", "DDPG"),
    ("cql_sac", "CQL+SAC"),
    ("bcq", "BatchRL-MTF (BCQ)"),
    ("iql", "IQL"),
    ("integrated_once", "IntegratedRL-MTF w/o PTM"),
    ("integrated", "IntegratedRL-MTF"),
    ("esrl", "Enhanced-State RL"),
    ("esrl_residual", "Enhanced-State RL (residual)"),
    ("esrl_list", "Enhanced-State RL (residual, list-aware critic)"),
)
#: a method that is another algorithm's variant: method -> (algorithm, config fields)
VARIANT_OF: dict[str, tuple[str, dict]] = {"esrl_residual": ("esrl", {"variant": "residual"}),
                                           "esrl_list": ("esrl", {"variant": "residual", "list_aware": True})}
#: the methods trained by progressive training, in the order they run
PTM_METHODS = ("integrated", "esrl", "esrl_residual", "esrl_list")
LABELS = dict(METHODS)
OFFLINE_BASELINES = ("ddpg", "cql_sac", "bcq", "iql")
TABLE1 = ("es", "ddpg", "cql_sac", "bcq", "iql", "integrated_once", "integrated")
TABLE5_METRICS = ("uvc", "udt", "reward")

#: The paper's published figures (Tencent News; ``docs/design.md#the-paper-experiment``), for the side-by-side columns.
PAPER_GAUC = {"es": 0.7836, "ddpg": 0.7881, "cql_sac": 0.7892, "bcq": 0.7894, "iql": 0.7906,
              "integrated_once": 0.7941, "integrated": 0.7953}
PAPER_GAUC_T3 = {"integrated": 0.7955, "esrl": 0.7982}
PAPER_LIFT_VS_ES = {("ddpg", "uvc"): 0.0139, ("iql", "uvc"): 0.0209, ("integrated", "uvc"): 0.0464,
                    ("integrated", "udt"): 0.0174}
PAPER_LIFT_ESRL = {"uvc": 0.0384, "udt": 0.0058}


@dataclass(frozen=True)
class Preset:
    """Sizes of one experiment. ``smoke`` checks the pipeline in minutes; ``default`` is the CPU-sized
    reproduction RESULTS.md reports; ``full`` is paper-sized (a GPU and hours)."""

    name: str
    rounds: int = 5
    """Rounds of progressive exploration (the paper: 5, one day each)."""
    sessions_per_round: int = 4000
    """Sessions logged per exploration round."""
    test_sessions: int = 3000
    """Sessions of the baseline-logged test set."""
    steps_per_round: int = 600
    """Gradient steps per PTM round; offline methods without PTM get rounds * steps_per_round."""
    hidden: tuple[int, ...] = (64, 64)
    embed_dim: int = 16
    batch_size: int = 256
    ensemble_size: int = 10
    """m, the critics of Enhanced-State RL and IntegratedRL-MTF."""
    warmup_steps: int = 300
    """Behaviour-cloning steps that start Enhanced-State RL and IntegratedRL-MTF at mu_bp."""
    es_generations: int = 30
    es_popsize: int = 12
    es_sessions_per_candidate: int = 64
    online_users: int = 4000
    online_days: int = 2
    ptm_online_users: int = 1000
    """Users of the per-round A/B against the baseline (the PTM curve)."""
    gate_users: int = 2000
    """Users of the gate's A/B (the improved setting's progressive training), held out of exploration."""
    gate_days: int = 2
    eval_every: int = 0
    """Steps between validation GAUCs in the training curves (0: only at the end)."""
    ope_sessions: int = 16_000
    """Sessions of the OPE set (exploration around the baseline) every method is evaluated on off-policy
    (``rlmtf.pipelines.ope_stage``; 0: no off-policy evaluation). One noise per user-day leaves the direct
    method's interval at about +-8% on 16,000 sessions, +-16% on 4,000 (docs/design.md#the-paper-experiment)."""
    ope_steps: int = 4000
    """FQE gradient steps per method."""
    seeds: int = 3
    """Default number of seeds (``--seeds`` overrides)."""

    @property
    def total_steps(self) -> int:
        return self.rounds * self.steps_per_round


PRESETS: dict[str, Preset] = {
    "smoke": Preset("smoke", sessions_per_round=150, test_sessions=300, steps_per_round=20, hidden=(32, 32),
                    embed_dim=8, batch_size=64, ensemble_size=4, warmup_steps=20, es_generations=3, es_popsize=6,
                    es_sessions_per_candidate=16, online_users=300, online_days=1, ptm_online_users=150,
                    gate_users=150, gate_days=1, eval_every=50, ope_sessions=150, ope_steps=100, seeds=1),
    "default": Preset("default"),
    "full": Preset("full", sessions_per_round=100_000, test_sessions=50_000, steps_per_round=60_000,
                   hidden=(256, 256), embed_dim=32, batch_size=512, es_generations=300, es_popsize=24,
                   es_sessions_per_candidate=512, online_users=20_000, online_days=7, ptm_online_users=5000,
                   gate_users=10_000, eval_every=5000, seeds=5),
}


def algo_config(kind: str, preset: Preset, setting: Setting = SETTINGS["paper"]) -> Any:
    """The algorithm's default config with the preset's shared sizes and the setting's objective, set wherever
    the field exists."""
    from rlmtf.algos import algorithm_class

    kind, fields = VARIANT_OF.get(kind, (kind, {}))
    config_cls = algorithm_class(kind).config_cls
    want = {**fields, "hidden": preset.hidden, "embed_dim": preset.embed_dim, "batch_size": preset.batch_size,
            "ensemble_size": preset.ensemble_size, "warmup_steps": preset.warmup_steps, "popsize": preset.es_popsize,
            "sessions_per_candidate": preset.es_sessions_per_candidate}
    names = {f.name for f in dataclasses.fields(config_cls)}
    cfg = config_cls(**{k: v for k, v in want.items() if k in names})
    return cfg if kind == "es" else setting.algo_config(cfg)


@dataclass
class SeedResult:
    seed: int
    gauc: dict[str, float]
    per_user: dict[str, dict[str, np.ndarray]]  # method -> metric -> per-user values (same users per method)
    ptm: dict[str, list[dict]]  # "integrated" / "esrl" -> PTM rows
    runs: dict[str, str]  # method -> run directory (metrics.jsonl)
    seconds: dict[str, float] = field(default_factory=dict)
    ope: dict[str, dict] = field(default_factory=dict)  # method -> estimated lifts (rlmtf.pipelines.ope_stage)


def run_seed(sim, preset: Preset, seed: int, out: Path, *, methods: tuple[str, ...], workers: int = 1,
             log: Callable[[str], None] = print, device: str = "cpu",
             setting: Setting = SETTINGS["paper"]) -> SeedResult:
    """Everything for one seed in ``setting`` (``sim``'s action space must be the setting's); writes
    ``out/result.json`` (and per-user metrics as ``online.npz``)."""
    from rlmtf.data import concat_logs, read_logs
    from rlmtf.envs.collect import simulate_to_parquet
    from rlmtf.eval.offline import evaluate_gauc
    from rlmtf.eval.online import online_ab
    from rlmtf.pipelines.fixed_search import FixedSearchConfig, fixed_search
    from rlmtf.pipelines.ptm import PTMConfig, run_ptm
    from rlmtf.policy.fixed import baseline_policy
    from rlmtf.train.loop import TrainConfig, horizon_steps, train

    out.mkdir(parents=True, exist_ok=True)
    space = sim.cfg.action_space
    if space.parameterisation != setting.action_space:
        raise ValueError(f"the {setting.name!r} setting runs in the {setting.action_space!r} action space, the "
                         f"environment's is {space.parameterisation!r}")
    base = baseline_policy(space)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    test_dir = out / "test"
    log(f"seed {seed}: logging the test set ({preset.test_sessions} sessions, baseline policy)")
    simulate_to_parquet(sim, base, test_dir, seed=seed + 10_000, sessions=preset.test_sessions, start_day=1000,
                        overwrite=True, workers=workers)
    test = read_logs(test_dir)
    seconds["test_set"] = time.perf_counter() - t

    train_cfg = TrainConfig(steps=preset.steps_per_round, seed=seed, device=device, eval_every=preset.eval_every,
                            log_every=max(1, min(50, preset.steps_per_round // 4)),
                            checkpoint_every=max(preset.total_steps, 1), episode=setting.episode)
    ptm_base = PTMConfig(rounds=preset.rounds, sessions_per_round=preset.sessions_per_round, steps_per_round=
                         preset.steps_per_round, test_sessions=preset.test_sessions,
                         online_users=min(preset.ptm_online_users, sim.cfg.n_users), online_days=1, seed=seed,
                         workers=workers, gate_users=min(preset.gate_users, sim.cfg.n_users // 2),
                         gate_days=preset.gate_days)
    policies: dict[str, Any] = {}
    data_dirs: list[Path] = []
    ptm_rows: dict[str, list[dict]] = {}
    runs: dict[str, str] = {}
    for kind in PTM_METHODS:
        needs_data = set(methods) & {*OFFLINE_BASELINES, "integrated_once", "es"}  # the PTM rounds' logs
        if kind not in methods and not (kind == "integrated" and needs_data):
            continue
        t = time.perf_counter()
        log(f"seed {seed}: {LABELS[kind]} with progressive training ({preset.rounds} rounds)")
        ptm_cfg = dataclasses.replace(ptm_base, **setting.ptm_fields(kind))
        res = run_ptm(VARIANT_OF.get(kind, (kind,))[0], sim, out / f"ptm_{kind}", ptm_cfg,
                      algo_config(kind, preset, setting), train_cfg, log=log, test_dir=test_dir)
        ptm_rows[kind] = res.rows
        policies[kind] = res.incumbent  # the paper: the last round's; gated: the last accepted (or the baseline)
        policies[kind].name = LABELS[kind]
        accepted = [row["round"] for row in res.rows if row.get("accepted")]
        runs[kind] = str(out / f"ptm_{kind}" / f"round_{accepted[-1] if accepted else preset.rounds}" / "run")
        seconds[kind] = time.perf_counter() - t
        if kind == "integrated":
            data_dirs = res.data_dirs

    def once_cfg(kind: str, data) -> TrainConfig:
        """The offline methods' budget: the PTM's total steps (and, with the horizon rule, at least the
        steps their episode needs from scratch)."""
        steps = preset.total_steps
        if setting.steps == "horizon":
            steps = max(steps, horizon_steps(data, setting.episode, algo_config(kind, preset, setting)))
        return dataclasses.replace(train_cfg, steps=steps)

    if "integrated_once" in methods:
        t = time.perf_counter()
        cfg1 = once_cfg("integrated", read_logs(data_dirs[0]))
        log(f"seed {seed}: {LABELS['integrated_once']} (round 1 data, {cfg1.steps} steps)")
        algo = train("integrated", data_dirs[0], out / "integrated_once", cfg=cfg1,
                     algo_cfg=algo_config("integrated", preset, setting), space=space)
        policies["integrated_once"] = algo.policy(name=LABELS["integrated_once"])
        runs["integrated_once"] = str(out / "integrated_once")
        seconds["integrated_once"] = time.perf_counter() - t
    pooled = concat_logs([read_logs(d) for d in data_dirs]) if set(methods) & {*OFFLINE_BASELINES, "fixed"} else None
    if "fixed" in methods:
        t = time.perf_counter()
        log(f"seed {seed}: {LABELS['fixed']} (weighted GAUC on {preset.rounds} rounds of logs)")
        policies["fixed"], _ = fixed_search(pooled, base.action, FixedSearchConfig(seed=seed), space)
        policies["fixed"].name = LABELS["fixed"]
        (out / "fixed").mkdir(exist_ok=True)
        policies["fixed"].save(out / "fixed" / "policy.json", space)
        seconds["fixed"] = time.perf_counter() - t
    if set(methods) & set(OFFLINE_BASELINES):
        for kind in OFFLINE_BASELINES:
            if kind not in methods:
                continue
            t = time.perf_counter()
            cfg_k = once_cfg(kind, pooled)
            log(f"seed {seed}: {LABELS[kind]} ({preset.rounds} rounds of logs, {cfg_k.steps} steps)")
            algo = train(kind, pooled, out / kind, cfg=cfg_k, algo_cfg=algo_config(kind, preset, setting),
                         space=space)
            policies[kind] = algo.policy(name=LABELS[kind])
            runs[kind] = str(out / kind)
            seconds[kind] = time.perf_counter() - t
    if "es" in methods:
        t = time.perf_counter()
        log(f"seed {seed}: ES (CMA-ES online, {preset.es_generations} generations)")
        # the logged data only supplies the input standardisation and the validation set
        algo = train("es", read_logs(data_dirs[0] if data_dirs else test_dir), out / "es",
                     cfg=dataclasses.replace(train_cfg, steps=preset.es_generations, log_every=1, eval_every=0,
                                             checkpoint_every=preset.es_generations, episode="session"),
                     algo_cfg=algo_config("es", preset), space=space, sim=sim)
        policies["es"] = algo.policy(name=LABELS["es"])
        runs["es"] = str(out / "es")
        seconds["es"] = time.perf_counter() - t

    order = [m for m, _ in METHODS if m in policies]
    t = time.perf_counter()
    gauc = {m: evaluate_gauc(policies[m], test, space).gauc for m in order}
    gauc["baseline"] = evaluate_gauc(base, test, space).gauc
    seconds["gauc"] = time.perf_counter() - t
    log(f"seed {seed}: weighted GAUC " + ", ".join(f"{LABELS.get(m, m)} {v:.4f}" for m, v in gauc.items()))

    ope: dict[str, dict] = {}
    if preset.ope_sessions > 0:
        from rlmtf.pipelines.ope_stage import run_ope_stage

        t = time.perf_counter()
        ope = run_ope_stage(sim, base, {m: policies[m] for m in order}, setting, sessions=preset.ope_sessions,
                            steps=preset.ope_steps, hidden=preset.hidden, seed=seed, out=out, workers=workers, log=log)
        seconds["ope"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"seed {seed}: online A/B, {len(order) + 1} arms x {preset.online_users} users x {preset.online_days} days")
    ab = online_ab([policies[m] for m in order] + [base], sim, users=min(preset.online_users, sim.cfg.n_users),
                   days=preset.online_days, seed=seed + 20_000, workers=workers)
    seconds["online"] = time.perf_counter() - t
    per_user = {m: ab.per_user[i] for i, m in enumerate([*order, "baseline"])}
    np.savez_compressed(out / "online.npz", **{f"{m}.{k}": v for m, d in per_user.items() for k, v in d.items()})
    res = SeedResult(seed=seed, gauc=gauc, per_user=per_user, ptm=ptm_rows, runs=runs, seconds=seconds, ope=ope)
    (out / "result.json").write_text(json.dumps({"seed": seed, "gauc": gauc, "ptm": ptm_rows, "runs": runs,
                                                 "seconds": seconds, "ope": ope, "online": ab.to_dict()}, indent=2,
                                                default=float))
    return res


def load_seed_result(seed_dir: Path) -> SeedResult | None:
    """A finished seed's result from its directory (``result.json`` + ``online.npz``), or None."""
    rj, npz = seed_dir / "result.json", seed_dir / "online.npz"
    if not rj.is_file() or not npz.is_file():
        return None
    d = json.loads(rj.read_text())
    per_user: dict[str, dict[str, np.ndarray]] = {}
    with np.load(npz) as z:
        for key in z.files:
            m, metric = key.rsplit(".", 1)
            per_user.setdefault(m, {})[metric] = z[key]
    return SeedResult(seed=int(d["seed"]), gauc=d["gauc"], per_user=per_user, ptm=d["ptm"], runs=d["runs"],
                      seconds=d.get("seconds", {}), ope=d.get("ope", {}))


# --- aggregation over seeds -----------------------------------------------------------------------------

def gauc_entry(table: str, method: str, reference: str | None, results: list[SeedResult],
               paper: float | None) -> dict:
    x = np.array([r.gauc[method] for r in results])
    lo, hi = t_interval(x)
    e = {"table": table, "method": method, "label": LABELS.get(method, method), "metric": "weighted_gauc",
         "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else float("nan"),
         "ci_low": lo, "ci_high": hi, "n_seeds": int(x.size), "per_seed": x.tolist(), "paper": paper,
         "reference": reference, "p_value": float("nan")}
    if reference is not None and reference != method:
        e["p_value"] = paired_t_p(x, np.array([r.gauc[reference] for r in results]))
        e["diff_vs_reference"] = float((x - np.array([r.gauc[reference] for r in results])).mean())
    return e


def lift_entry(table: str, method: str, control: str, metric: str, results: list[SeedResult],
               paper: float | None) -> dict:
    """The lift of ``method`` over ``control`` in ``metric``: per-user pairs of every seed pooled for the
    interval and p-value; the per-seed lifts for the spread."""
    cs, ts, per_seed = [], [], []
    for r in results:
        c, t = r.per_user[control][metric], r.per_user[method][metric]
        ok = np.isfinite(c) & np.isfinite(t)
        cs.append(c[ok])
        ts.append(t[ok])
        per_seed.append(float(t[ok].mean() / c[ok].mean() - 1.0))
    lift = paired_lift(np.concatenate(cs), np.concatenate(ts))
    ps = np.array(per_seed)
    return {"table": table, "method": method, "label": LABELS.get(method, method), "metric": f"{metric}_lift",
            "control": control, "mean": lift.lift, "std": float(ps.std(ddof=1)) if ps.size > 1 else float("nan"),
            "ci_low": lift.ci_low, "ci_high": lift.ci_high, "p_value": lift.p_value, "n_users": lift.n,
            "n_seeds": int(ps.size), "per_seed": ps.tolist(), "paper": paper}


def rank_agreement(results: list[SeedResult], methods: list[str]) -> dict:
    """Spearman and Kendall rank correlation between mean weighted GAUC and mean UVC across methods."""
    from scipy import stats as sps

    g = np.array([np.mean([r.gauc[m] for r in results]) for m in methods])
    u = np.array([np.mean([r.per_user[m]["uvc"].mean() for r in results]) for m in methods])
    if len(methods) < 3:
        return {"methods": methods, "spearman": float("nan"), "kendall": float("nan"), "note": "fewer than 3 methods"}
    sp = sps.spearmanr(g, u)
    kt = sps.kendalltau(g, u)
    return {"methods": methods, "gauc": g.tolist(), "uvc": u.tolist(), "spearman": float(sp.statistic),
            "spearman_p": float(sp.pvalue), "kendall": float(kt.statistic), "kendall_p": float(kt.pvalue)}


def build_tables(results: list[SeedResult]) -> dict:
    """Every table as a list of entries (one per method and metric), plus the agreement."""
    have = [m for m, _ in METHODS if all(m in r.gauc for r in results)]
    t1 = [gauc_entry("1", m, "es" if "es" in have else None, results, PAPER_GAUC.get(m)) for m in TABLE1 if m in have]
    t1.append(gauc_entry("1", "baseline", None, results, None))
    t2 = []
    if "es" in have:
        for m in TABLE1:
            if m in have and m != "es":
                for metric in ("uvc", "udt"):
                    t2.append(lift_entry("2", m, "es", metric, results, PAPER_LIFT_VS_ES.get((m, metric))))
    t3, t4 = [], []
    if "integrated" in have and "esrl" in have:
        t3 = [gauc_entry("3", "integrated", None, results, PAPER_GAUC_T3["integrated"]),
              gauc_entry("3", "esrl", "integrated", results, PAPER_GAUC_T3["esrl"])]
        t4 = [lift_entry("4", "esrl", "integrated", metric, results, PAPER_LIFT_ESRL.get(metric))
              for metric in METRICS]
    for variant in ("esrl_residual", "esrl_list"):  # the variants beside the paper's actor
        if "integrated" in have and variant in have:
            t3 = (t3 or [gauc_entry("3", "integrated", None, results, PAPER_GAUC_T3["integrated"])]) + [
                gauc_entry("3", variant, "integrated", results, None)]
            t4 += [lift_entry("4", variant, "integrated", metric, results, None) for metric in METRICS]
    t5 = [lift_entry("5", m, control, metric, results, None) for m in have
          for control in ("baseline", "fixed") if control != m and (control == "baseline" or "fixed" in have)
          for metric in TABLE5_METRICS]
    from rlmtf.pipelines.ope_stage import ope_tables

    return {"table1": t1, "table2": t2, "table3": t3, "table4": t4, "table5": t5,
            "agreement": rank_agreement(results, [m for m in have if m != "fixed"]),
            **ope_tables(results, have, t5, LABELS)}


def run_paper(out: str | Path, *, preset: str | Preset = "default", seeds: int | None = None, first_seed: int = 0,
              sim=None, methods: tuple[str, ...] | None = None, workers: int = 1, device: str = "cpu",
              env: str = "sim", resume: bool = False, log: Callable[[str], None] = print,
              setting: str | Setting = "paper") -> dict:
    """Run the experiment in ``setting`` (a name of ``rlmtf.pipelines.settings.SETTINGS``, or a Setting;
    ``sim`` must be in its action space);
    write tables and ``report.html`` into ``out``; return the tables.

    ``resume``: reuse every seed that already finished in ``out`` (its ``result.json`` and ``online.npz``)."""
    from rlmtf.core.provenance import git_commit
    from rlmtf.envs.sim.config import to_toml
    from rlmtf.envs.sim.simulator import Simulator

    p = PRESETS[preset] if isinstance(preset, str) else preset
    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    n_seeds = p.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {n_seeds}")
    methods = tuple(methods) if methods else tuple(m for m, _ in METHODS)
    unknown = [m for m in methods if m not in LABELS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(LABELS)}")
    if isinstance(setting, str) and setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    st = SETTINGS[setting] if isinstance(setting, str) else setting
    if sim is None:
        from rlmtf.envs.factory import with_action_space
        from rlmtf.envs.sim.config import SimConfig

        sim = Simulator(with_action_space(SimConfig(), st.action_space))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sim_config.toml").write_text(to_toml(sim.cfg))
    t0 = time.perf_counter()
    meta = {"title": "Enhanced-State RL for multi-task fusion: the paper's experiment on the simulator",
            "preset": dataclasses.asdict(p), "seeds": list(range(first_seed, first_seed + n_seeds)), "env": env,
            "methods": list(methods), "commit": git_commit(), "device": device, "workers": workers,
            "setting": dataclasses.asdict(st),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    results = []
    for s in meta["seeds"]:
        done = load_seed_result(out / f"seed_{s}") if resume else None
        if done is not None and set(methods) <= set(done.gauc):
            log(f"seed {s}: already finished in {out / f'seed_{s}'}; reusing it")
            results.append(done)
            continue
        results.append(run_seed(sim, p, s, out / f"seed_{s}", methods=methods, workers=workers, log=log,
                                device=device, setting=st))
    meta["seconds"] = time.perf_counter() - t0
    return finish(out, results, meta, log)


def finish(out: Path, results: list[SeedResult], meta: dict, log: Callable[[str], None] = print) -> dict:
    """Tables (Markdown, CSV, JSON) and ``report.html`` from finished seeds."""
    from rlmtf.pipelines.report import write_report

    n_seeds = len(results)
    tables = build_tables(results)
    meta["seeds"] = [r.seed for r in results]
    setting = meta.get("setting", {}).get("name", "paper")
    meta["subtitle"] = (f"Setting `{setting}`, preset `{meta['preset']['name']}`, {n_seeds} seed(s), "
                        f"env `{meta['env']}`, commit "
                        f"`{meta['commit']}`, {meta['seconds'] / 60:.1f} min.")
    write_outputs(out, tables, meta)
    write_report(out / "report.html", tables, results, meta, out)
    files = [f for f in ("report.html", "tables.md", "tables.csv", "tables.json", "action_distributions.png",
                         "config.json", "sim_config.toml") if (out / f).is_file()]
    seeds = ", ".join(f"seed_{r.seed}" for r in results)
    log(f"wrote {', '.join(files)} into {out}, and per seed ({seeds}) the test set and every method's run "
        f"(config.json, metrics.jsonl, checkpoint/, policy/); progressive training's per-round data and policies "
        f"are in seed_N/ptm_<method>/round_K/{{data,run/policy}} ({meta['seconds'] / 60:.1f} min)")
    tables["preset"] = meta["preset"]["name"]
    return tables


def render(out: str | Path, log: Callable[[str], None] = print) -> dict:
    """Rebuild the tables and report of ``out`` from the seeds that finished there (e.g. while a long run
    is still going, or after one was interrupted)."""
    out = Path(out)
    if not (out / "config.json").is_file():
        raise FileNotFoundError(f"{out}: no config.json; not an experiment directory")
    meta = json.loads((out / "config.json").read_text())
    dirs = sorted(out.glob("seed_*"), key=lambda d: int(d.name.split("_", 1)[1]))
    results = [r for r in (load_seed_result(d) for d in dirs) if r is not None]
    if not results:
        raise FileNotFoundError(f"{out}: no finished seed yet (a seed_N directory with result.json and online.npz)")
    seconds = sum(sum(r.seconds.values()) for r in results)
    meta["seconds"] = seconds
    return finish(out, results, meta, log)
