"""Progressive Training Mode (the paper's section 3.3.3; ``docs/design.md#progressive-training``).

Round k: explore around mu_bp = policy_(k-1) in the simulator (round 1: the hand-set baseline) for
one simulated "day" of ``sessions_per_round`` sessions, train on that round's data, evaluate, and
make the new policy the next round's behaviour policy. From round 2 on, training warm-starts from
the previous round's networks (actor, critics, targets and optimizers) and runs ``steps`` more
steps on the new round's data only: the newest exploration data describes the newest policy's
neighbourhood, which is what the bound penalty keeps the actor in.

Every round is evaluated by weighted GAUC on a fixed test set logged by the baseline policy and by a
simulated online A/B test against the baseline on fixed users and seed.

**The gate** (``PTMConfig.gate``; off reproduces the paper). The paper makes every round's policy the
next behaviour policy. Each round is then a step to the edge of the exploration box in whatever direction
the critics point, with nothing to stop a bad step, so rounds can drift. With the gate, a round's
candidate becomes the incumbent only if it passes, in order:

1. an offline estimate on held-out user-days of the round's own logs (``holdout_fraction``, never trained
   on), ``gate_offline``: ``"dm"`` (the default) the first-order direct method (``rlmtf.eval.ope.first_order_dm``:
   the user-days' totals of the ``gate_metric`` regressed on the first state and the mean logged noise)
   gives the candidate's lift over the incumbent (the logs' mu_bp) per user-day, whose 95% interval must
   reach above 0 (``gate_screen = "bound"``; ``"sign"``: the point estimate must be > 0): this screens out
   what the logs already call worse and leaves the decision to the A/B. It is the estimate
   that ranked policies best against the A/B (RESULTS.md, off-policy estimates) and the one that does not
   extrapolate by bootstrapping; with fewer held-out days than twice its regressors the user state is cut to
   its leading principal components (:func:`principal_user_state`); an item-level candidate, which it cannot
   estimate, falls back to FQE.
   ``"fqe"`` fits fitted Q evaluation (``rlmtf.eval.fqe``) of the candidate and of the incumbent on the
   held-out days, the lift paired over the bootstrap members (on the few held-out days of a round it
   compounds its own extrapolation at the box's corners: +128% to +238% for candidates at +3.5% to +6.9%
   online in the simulator, -15% for every first-round candidate in the KuaiRand world). ``"critic"``:
   the candidate's own critics' advantage over the logged behaviour, mean minus one standard deviation
   over the critics > 0 (optimistic: those critics trained the candidate). ``"none"``: the A/B only;
2. a simulated A/B against the incumbent on users held out of exploration (the top ``gate_users`` ids of
   the population, a platform's small-traffic test), ``gate_days`` days, a fresh seed per round: the
   lower bound of the one-sided ``gate_confidence`` interval of the ``gate_metric`` lift must be > 0.
   **Sized to its variance** (``gate_mde`` > 0; ``docs/design.md#sizing-the-gates-ab``): the first
   ``gate_days`` are an internal pilot (Wittes and Brittain, 1990) whose only use is its standard error s; if
   s is above mde / (z_confidence + z_power), the A/B runs again on the same users for
   ceil(gate_days x (s / target)^2) days (at most ``gate_max_days``) and decides on that sample alone, so that
   a candidate better by ``gate_mde`` passes with probability ``gate_power``. The pilot never decides, which
   keeps the test's error rate near its nominal level (the effect is not looked at twice).

On rejection the incumbent stays, the exploration box shrinks by ``box_shrink`` and the next round explores
around the incumbent again, training on from the incumbent's networks. ``train_on = "all"`` trains each
round on the logs of every round so far (each row keeps the box it was logged with).

**Steps per round.** ``steps_rule = "horizon"`` trains a round that starts from scratch (the first) for at
least the steps the critics need for the episode's value to propagate (``rlmtf.train.loop.horizon_steps``,
``docs/design.md#how-many-steps``): an undiscounted user-day is ~4,500 steps, far above a session's; warm
-started rounds run ``steps_per_round``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlmtf.algos import algorithm_class
from rlmtf.algos.base import Algorithm
from rlmtf.data.io import LoggedData, concat_logs, read_logs
from rlmtf.data.transitions import build_transitions
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.engine import Environment
from rlmtf.eval.exploration import item_box_for
from rlmtf.eval.offline import evaluate_gauc, mean_policy_action
from rlmtf.eval.online import online_ab
from rlmtf.policy.base import Policy
from rlmtf.policy.fixed import baseline_policy
from rlmtf.train.loop import TrainConfig, horizon_steps, train


@dataclass
class PTMResult:
    """What :func:`run_ptm` produced: one row per round (round 0 = the baseline), the final algorithm,
    and each round's logged-data directory."""

    rows: list[dict]
    algo: Algorithm
    """The final policy's algorithm: the last round's, or with the gate the last accepted round's (None if
    no round was accepted: the baseline stays)."""
    data_dirs: list[Path] = field(default_factory=list)
    incumbent: Policy | None = None
    """The policy serving at the end (with the gate: the last accepted candidate, or the baseline)."""


@dataclass(frozen=True)
class PTMConfig:
    rounds: int = 5
    sessions_per_round: int = 5000
    """Exploration sessions logged per round (one simulated day)."""
    steps_per_round: int = 2000
    test_sessions: int = 3000
    """Sessions of the baseline-logged test set for the weighted GAUC."""
    online_users: int = 2000
    online_days: int = 2
    seed: int = 0
    workers: int = 1
    """Processes for simulation."""
    gate: bool = False
    """Accept a round's candidate only if it passes the offline and the online test (module docstring)."""
    gate_metric: str = "uvc"
    """The online test's metric: uvc, udt, sessions or reward (per user-day)."""
    gate_users: int = 2000
    """Users of the online test: the top ids of the population, never used for exploration."""
    gate_days: int = 1
    gate_confidence: float = 0.95
    """One-sided confidence of the online test's lower bound."""
    gate_mde: float = 0.0
    """Relative lift the gate's A/B should detect (e.g. 0.01); > 0 sizes the A/B's days to the pilot's
    variance (module docstring), 0 keeps ``gate_days``."""
    gate_power: float = 0.8
    """``gate_mde`` > 0: the probability that a candidate better by ``gate_mde`` passes the A/B."""
    gate_max_days: int = 8
    """``gate_mde`` > 0: the most days the sized A/B runs (the cost cap of a small-traffic test)."""
    holdout_fraction: float = 0.1
    """Share of a round's user-days held out of training for the offline estimate (gated runs)."""
    gate_offline: str = "dm"
    """The gate's offline estimate: "dm" (the first-order direct method; FQE for an item-level candidate),
    "fqe", "critic" (the candidate's critics, a stand-in) or "none"."""
    gate_fqe_steps: int = 4000
    """FQE gradient steps per fit of the offline estimate."""
    gate_screen: str = "bound"
    """How the offline estimate rejects: "bound" when its 95% interval lies wholly below 0 (the logs call the
    candidate worse), "sign" when its point estimate is <= 0 (the rule before: on a round's few hundred
    held-out days the interval is +-20-60%, so the sign rejects about half of the candidates that are better)."""
    steps_rule: str = "fixed"
    """"fixed": every round trains ``steps_per_round``; "horizon": a round trained from scratch at least the
    steps its episode needs to propagate (module docstring)."""
    box_shrink: float = 0.5
    """The exploration box's width is multiplied by this after a rejected round."""
    box: float = 0.15
    """Half-width of the first round's exploration box around mu_bp."""
    train_on: str = "round"
    """"round": train each round on its own logs (the paper); "all": on the logs of every round so far."""
    per: str | None = None
    """Exploration noise per "request", "item" or "day" (a user's whole day), or "request+item" / "day+item"
    (that plus small per-item noise of ``item_box``: the residual variant's data); None: per item for
    Enhanced-State RL, per request for IntegratedRL-MTF (the paper's)."""
    item_box: float = 0.05
    """Half-width of the per-item noise of "request+item" / "day+item" (it does not shrink with the box)."""
    item_keep: float = 0.0
    """> 0: before each round the per-item noise (the box of ``per="item"``, ``item_box`` of "+item") is cut to
    the widest half-width that keeps this share of the behaviour policy's top l shown
    (:func:`rlmtf.eval.exploration.item_box_for`; ``docs/design.md#what-exploring-costs-the-list``)."""
    edge: str = "clip"
    """Exploration at the action space's edge: "clip" (the paper) or "shift" the box inside (a dimension at
    an edge can come back; ``rlmtf.policy.explore.UniformExploration``)."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.sessions_per_round < 1 or self.gate_users < 2 or self.gate_days < 1:
            raise ValueError("rounds, sessions_per_round and gate_days must be >= 1, gate_users >= 2")
        if self.gate_metric not in ("uvc", "udt", "sessions", "reward"):
            raise ValueError(f"gate_metric must be uvc, udt, sessions or reward, got {self.gate_metric!r}")
        if not 0.5 < self.gate_confidence < 1 or not 0 < self.box_shrink <= 1 or not 0 < self.box <= 1:
            raise ValueError("gate_confidence must be in (0.5, 1), box_shrink in (0, 1], box in (0, 1]")
        if self.gate_mde < 0 or not 0.5 <= self.gate_power < 1 or (self.gate_mde > 0
                                                                     and self.gate_max_days < self.gate_days):
            raise ValueError(f"gate_mde must be >= 0, gate_power in [0.5, 1) and gate_max_days >= gate_days, got "
                             f"{self.gate_mde}, {self.gate_power}, {self.gate_max_days} (gate_days {self.gate_days})")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.train_on not in ("round", "all"):
            raise ValueError(f"train_on must be 'round' or 'all', got {self.train_on!r}")
        if self.edge not in ("clip", "shift"):
            raise ValueError(f"edge must be clip or shift, got {self.edge!r}")
        if self.per not in (None, "request", "item", "day", "request+item", "day+item"):
            raise ValueError(f"per must be request, item, day, request+item or day+item, got {self.per!r}")
        if not 0 <= self.item_keep < 1:
            raise ValueError(f"item_keep must be in [0, 1), got {self.item_keep}")
        if not 0 <= self.item_box <= 1:
            raise ValueError(f"item_box must be in [0, 1], got {self.item_box}")
        if self.gate_screen not in ("bound", "sign"):
            raise ValueError(f"gate_screen must be bound or sign, got {self.gate_screen!r}")
        if self.gate_offline not in ("dm", "fqe", "critic", "none") or self.gate_fqe_steps < 1:
            raise ValueError(f"gate_offline must be dm, fqe, critic or none and gate_fqe_steps >= 1, got "
                             f"{self.gate_offline!r}, {self.gate_fqe_steps}")
        if self.steps_rule not in ("fixed", "horizon"):
            raise ValueError(f"steps_rule must be fixed or horizon, got {self.steps_rule!r}")


def run_ptm(algo: str, sim: Environment, out: str | Path, cfg: PTMConfig = PTMConfig(),
            algo_cfg: Any = None, train_cfg: TrainConfig = TrainConfig(),
            log: Callable[[str], None] = print, progress=None, test_dir: Path | None = None,
            on_step: Callable[[int, int, dict], None] | None = None) -> PTMResult:
    """Run the rounds; write ``ptm.json``, ``ptm.csv`` and ``ptm.png`` into ``out``.

    ``test_dir``: an existing baseline-logged test set to evaluate on (default: log one in ``out/test``).
    ``progress(sessions, rows)`` follows each round's exploration; ``on_step(round, step, metrics)`` its
    training (metrics at logged steps, else ``{}``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    space = sim.cfg.action_space
    base = baseline_policy(space)
    per = cfg.per or ("item" if algo == "esrl" else "request")
    log_candidates = bool(getattr(algo_cfg, "candidate_sample", False))  # the algorithm trains on the sample
    test_dir = Path(test_dir) if test_dir is not None else out / "test"
    if not (test_dir / "_meta.json").is_file():
        simulate_to_parquet(sim, base, test_dir, seed=cfg.seed + 10_000, sessions=cfg.test_sessions,
                            start_day=1000, overwrite=True, workers=cfg.workers)
    test = read_logs(test_dir)
    base_gauc = evaluate_gauc(base, test, space).gauc
    rows: list[dict] = [{"round": 0, "policy": "baseline", "weighted_gauc": base_gauc, "uvc_lift": 0.0,
                         "udt_lift": 0.0, "mean_action": mean_policy_action(base, test).round(4).tolist()}]
    behaviour: Policy = base
    prev = incumbent_algo = None
    box = cfg.box
    data_dirs: list[Path] = []
    logs_so_far: list[LoggedData] = []
    n_users = sim.cfg.n_users
    gate_ids = np.arange(n_users - cfg.gate_users, n_users) if cfg.gate else None
    explore_ids = np.arange(n_users - cfg.gate_users) if cfg.gate else None
    if gate_ids is not None and gate_ids[0] < 1:
        raise ValueError(f"gate_users={cfg.gate_users} leaves no user of the {n_users} to explore with")
    for k in range(1, cfg.rounds + 1):
        rd = out / f"round_{k}"
        round_box, item_box, noise = box, cfg.item_box, None
        if cfg.item_keep > 0 and per in ("item", "request+item", "day+item"):  # per-item noise that keeps the list
            noise = item_box_for(sim, behaviour, cfg.item_keep, box if per == "item" else cfg.item_box,
                                seed=cfg.seed + 50_000 + k)
            round_box, item_box = (noise["box"], item_box) if per == "item" else (box, noise["box"])
            log(f"round {k}/{cfg.rounds}: per-item noise +-{noise['box']:.3g} keeps {noise['top_l_kept']:.1%} of "
                f"{behaviour.name}'s top {sim.cfg.list_len} (target {cfg.item_keep:.0%})")
        log(f"round {k}/{cfg.rounds}: exploring around {behaviour.name} (box +-{round_box:.3g})")
        simulate_to_parquet(sim, behaviour_policy(behaviour, "uniform", per, lower_b=-round_box, upper_b=round_box,
                                                  seed=cfg.seed + k, edge=cfg.edge, item_box=item_box),
                            rd / "data", seed=cfg.seed + k,
                            sessions=cfg.sessions_per_round, start_day=k - 1, overwrite=True, workers=cfg.workers,
                            progress=progress, users=explore_ids, log_candidates=log_candidates)
        data_dirs.append(rd / "data")
        round_logs = full_round = read_logs(rd / "data")
        held_out = None
        if cfg.gate and cfg.holdout_fraction > 0 and cfg.gate_offline != "none":
            trans = build_transitions(round_logs).day_episodes()  # whole user-days: the online metrics' unit
            held_out, kept = trans.split(cfg.holdout_fraction, seed=cfg.seed + k)
            round_logs = round_logs.take(np.unique(kept.row_index.reshape(-1)))
        logs_so_far.append(round_logs)
        data: LoggedData | Path = concat_logs(logs_so_far) if cfg.train_on == "all" else round_logs
        log(f"round {k}/{cfg.rounds}: training {algo} ({'warm start' if prev else 'from the behaviour policy'}"
            f"{', on every round so far' if cfg.train_on == 'all' else ''})")
        steps = cfg.steps_per_round
        if cfg.steps_rule == "horizon" and prev is None:
            steps = max(steps, horizon_steps(data if isinstance(data, LoggedData) else read_logs(data),
                                             train_cfg.episode, algo_cfg or algorithm_class(algo).config_cls()))
        prev = train(algo, data, rd / "run", cfg=TrainConfig(**{**asdict(train_cfg), "seed": cfg.seed + k,
                                                                "steps": steps}),
                     algo_cfg=algo_cfg, space=space, warm_start_from=prev,
                     on_step=None if on_step is None else (lambda step, m, k=k: on_step(k, step, m)))
        policy = prev.policy(name=f"{algo}-round{k}")
        gauc = evaluate_gauc(policy, test, space).gauc
        ab = online_ab([base, policy], sim, users=cfg.online_users, days=cfg.online_days, seed=cfg.seed + 20_000,
                       workers=cfg.workers)
        arm = ab.arms[1]
        row = {"round": k, "policy": policy.name, "weighted_gauc": gauc, "box": round_box, "steps": steps,
               **({} if noise is None else {"item_noise": noise}),
               "mean_action": mean_policy_action(policy, test).round(4).tolist()}
        for m in ("uvc", "udt"):
            lift = arm.lifts[m]
            row.update({f"{m}_lift": lift["lift"], f"{m}_ci": [lift["ci_low"], lift["ci_high"]],
                        m: arm.means[m]["mean"]})
        accepted = True
        if cfg.gate:
            accepted = _gate(cfg, k, sim, policy, behaviour, prev, held_out, full_round, gate_ids, row, log)
        row["accepted"] = accepted
        rows.append(row)
        log(f"round {k}: weighted GAUC {gauc:.4f}, UVC {row['uvc_lift']:+.2%}, UDT {row['udt_lift']:+.2%} vs baseline"
            + ("" if not cfg.gate else f"; {'accepted' if accepted else 'rejected'}"))
        if accepted:
            behaviour, incumbent_algo = policy, prev
        else:  # the incumbent stays; explore closer to it, train on from its networks
            box *= cfg.box_shrink
            prev = incumbent_algo
    (out / "ptm.json").write_text(json.dumps({"algo": algo, "config": asdict(cfg), "rounds": rows}, indent=2))
    _write_csv(out / "ptm.csv", rows)
    plot_ptm(rows, out / "ptm.png", title=f"Progressive training: {algo}")
    final = incumbent_algo if cfg.gate else prev
    return PTMResult(rows=rows, algo=final, data_dirs=data_dirs, incumbent=behaviour)


def _offline_dm(cfg: PTMConfig, k: int, candidate: Policy, held_out, logs: LoggedData, dim: int) -> dict | None:
    """The first-order direct method's lift of the candidate over the incumbent (the logs' mu_bp) in the gate
    metric per user-day on the held-out days, with its bootstrap interval; None for an item-level candidate."""
    from rlmtf.eval.fqe import metric_rewards, policy_actions
    from rlmtf.eval.ope import first_order_dm

    acts = policy_actions(candidate, logs, held_out, dim)
    if acts.shape[1] != 1:
        return None
    days = int(np.unique(held_out.episode_id).size)
    state_dim = held_out.user_state.shape[1]
    reduced = ""
    if days < 2 * (1 + state_dim + dim):  # (almost) as many unknowns as days: the state's leading components
        keep = days // 2 - 1 - dim
        if keep < 1:
            return {"estimate": f"first-order DM: {days} held-out user-days are too few for its {1 + dim} "
                                "regressors beside the state (fewer than twice as many); the A/B decides",
                    "name": "DM", "skipped": True}
        held_out = principal_user_state(held_out, keep)
        reduced = f", the {state_dim}-dimensional user state reduced to its {keep} principal components"
    m = cfg.gate_metric
    lift = first_order_dm(held_out, {m: metric_rewards(held_out, logs)[m]}, acts, seed=cfg.seed + 40_000 + k)[m]["lift"]
    return {"estimate": f"first-order DM lift in {m} per user-day over the incumbent on {days} held-out user-days"
                        + reduced, "name": "DM", "mean": float(lift["mean"]), "ci_low": float(lift["ci_low"]),
            "ci_high": float(lift["ci_high"])}


def principal_user_state(t, keep: int):
    """``t`` with its user state replaced by the projections on the ``keep`` leading principal components of
    the episodes' first (standardised) states: the DM's state regressors cut to what a few hundred days can
    fit. The action columns, which the DM estimates, are untouched."""
    import dataclasses

    first = np.r_[True, t.episode_id[1:] != t.episode_id[:-1]]
    st = t.user_state.astype(np.float64)
    mean, sd = st[first].mean(0), np.maximum(st[first].std(0), 1e-8)
    _, _, vt = np.linalg.svd((st[first] - mean) / sd, full_matrices=False)
    proj = ((st - mean) / sd) @ vt[:keep].T
    return dataclasses.replace(t, user_state=proj.astype(np.float32))


def _offline_fqe(cfg: PTMConfig, k: int, candidate: Policy, held_out, logs: LoggedData, dim: int) -> dict:
    """FQE of the candidate and of the incumbent (the logs' mu_bp) on the held-out days: the candidate's lift in
    the gate metric per user-day, paired over the bootstrap members."""
    from rlmtf.eval.fqe import FQEConfig, fit_fqe, policy_actions

    acts = policy_actions(candidate, logs, held_out, dim)
    ref = held_out.mu_bp[:, :1] if acts.shape[1] == 1 else held_out.mu_bp
    fcfg = FQEConfig(steps=cfg.gate_fqe_steps, seed=cfg.seed + 40_000 + k)
    m = cfg.gate_metric
    cand, inc = (fit_fqe(held_out, logs, a, fcfg, metrics=(m,)).members[m] for a in (acts, np.ascontiguousarray(ref)))
    lift = cand / inc - 1.0
    days = int(np.unique(held_out.episode_id).size)
    return {"estimate": f"FQE lift in {m} per user-day over the incumbent on {days} held-out user-days",
            "name": "FQE", "mean": float(lift.mean()), "sd": float(lift.std(ddof=1)), "candidate": float(cand.mean()),
            "incumbent": float(inc.mean())}


def _gate(cfg: PTMConfig, k: int, sim: Environment, candidate: Policy, incumbent: Policy, algo: Algorithm,
          held_out, logs: LoggedData, gate_ids: np.ndarray, row: dict, log: Callable[[str], None]) -> bool:
    """The offline, then the online test of round k's candidate against the incumbent (module docstring);
    records both in ``row``."""
    est = None
    if held_out is not None and len(held_out) and cfg.gate_offline in ("dm", "fqe"):
        dim = sim.cfg.action_space.dim
        est = _offline_dm(cfg, k, candidate, held_out, logs, dim) if cfg.gate_offline == "dm" else None
        if est is None:
            est = _offline_fqe(cfg, k, candidate, held_out, logs, dim)
        row["offline"] = est
        if est.get("skipped"):
            log(f"round {k}: offline test skipped: {est['estimate']}")
            est = None
    if est is not None:
        lo, hi = (est["ci_low"], est["ci_high"]) if "ci_low" in est else (est["mean"] - 1.96 * est["sd"],
                                                                          est["mean"] + 1.96 * est["sd"])
        said = f"{est['name']} lift {est['mean']:+.2%} (95% interval {lo:+.2%} .. {hi:+.2%})"
        if (hi if cfg.gate_screen == "bound" else est["mean"]) <= 0:
            log(f"round {k}: offline {said}: " + ("the logs call it worse" if cfg.gate_screen == "bound"
                                                  else "<= 0") + ": rejected")
            row["gate"] = "offline"
            return False
        log(f"round {k}: offline {said}: on to the A/B")
    elif held_out is not None and len(held_out) and cfg.gate_offline == "critic":
        adv = algo.behaviour_advantage(held_out)  # (m,)
        lcb = float(adv.mean() - adv.std())
        row["offline"] = {"estimate": "critic advantage over the behaviour (stand-in)", "mean": float(adv.mean()),
                          "lcb": lcb}
        if lcb <= 0:
            log(f"round {k}: offline estimate {adv.mean():+.3f} (mean - sd over critics {lcb:+.3f}) <= 0: rejected")
            row["gate"] = "offline"
            return False
    def ab(days: int) -> dict:
        return online_ab([incumbent, candidate], sim, users=gate_ids, days=days, seed=cfg.seed + 30_000 + k,
                         workers=cfg.workers, confidence=2 * cfg.gate_confidence - 1).arms[1].lifts[cfg.gate_metric]

    lift = ab(cfg.gate_days)
    days, pilot = cfg.gate_days, None
    if cfg.gate_mde > 0:
        pilot = gate_ab_size(lift, cfg)
        if pilot["days"] > days:
            log(f"round {k}: gate pilot ({days} days) standard error {pilot['se']:.2%} > {pilot['target_se']:.2%} "
                f"for a {cfg.gate_mde:.1%} lift at {cfg.gate_power:.0%} power: the A/B runs {pilot['days']} days")
            days = pilot["days"]
            lift = ab(days)
    row["gate_ab"] = {"metric": cfg.gate_metric, "lift": lift["lift"], "ci_low": lift["ci_low"],
                      "ci_high": lift["ci_high"], "users": int(gate_ids.size), "days": days}
    if pilot is not None:
        row["gate_ab"]["pilot"] = pilot
    ok = lift["ci_low"] > 0
    row["gate"] = "passed" if ok else "online"
    log(f"round {k}: gate A/B vs the incumbent: {cfg.gate_metric} {lift['lift']:+.2%} "
        f"(one-sided {cfg.gate_confidence:.0%} lower bound {lift['ci_low']:+.2%})")
    return ok


def gate_ab_size(pilot: dict, cfg: PTMConfig) -> dict:
    """The days the gate's A/B needs (module docstring) from its pilot's lift (``lift``, ``ci_low`` of the
    one-sided ``gate_confidence`` bound, on ``cfg.gate_days`` days): the pilot's standard error, the target
    standard error mde / (z_confidence + z_power) and the days that reach it under the 1 / days law
    (between ``gate_days`` and ``gate_max_days``)."""
    from scipy.stats import norm

    z_conf = float(norm.ppf(cfg.gate_confidence))
    se = max(float(pilot["lift"] - pilot["ci_low"]), 0.0) / z_conf
    target = cfg.gate_mde / (z_conf + float(norm.ppf(cfg.gate_power)))
    need = int(np.ceil(cfg.gate_days * (se / target) ** 2)) if se > 0 else cfg.gate_days
    return {"days_pilot": cfg.gate_days, "lift": float(pilot["lift"]), "se": se, "target_se": target,
            "days_needed": need, "days": int(min(max(need, cfg.gate_days), cfg.gate_max_days))}


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = ["round", "policy", "weighted_gauc", "uvc_lift", "udt_lift"]
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def plot_ptm(rows: list[dict], path: Path, title: str = "Progressive training") -> None:
    """Every round: weighted GAUC, the online lift over the baseline with its CI (hollow markers: rounds
    the gate rejected) and, for gated runs, the gate's A/B lift over the incumbent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = any("gate" in r for r in rows)
    k = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 3 if gated else 2, figsize=(13.5 if gated else 9, 3.3))
    a1, a2 = axes[0], axes[1]
    a1.plot(k, [r["weighted_gauc"] for r in rows], "o-")
    a1.set_xlabel("round (0 = baseline)")
    a1.set_ylabel("weighted GAUC (baseline-logged test set)")
    for key, label, c in (("uvc_lift", "UVC", "C0"), ("udt_lift", "UDT", "C1")):
        a2.plot(k, [100 * r[key] for r in rows], "-", color=c, label=label, alpha=0.6)
        for r in rows:
            filled = r.get("accepted", True)
            a2.plot([r["round"]], [100 * r[key]], "o", color=c, mfc=c if filled else "white")
    for r in rows[1:]:
        for key, c in (("uvc", "C0"), ("udt", "C1")):
            lo, hi = r[f"{key}_ci"]
            a2.plot([r["round"]] * 2, [100 * lo, 100 * hi], color=c, alpha=0.5)
    a2.axhline(0, color="k", lw=0.8)
    a2.set_xlabel("round (hollow: rejected by the gate)" if gated else "round")
    a2.set_ylabel("online lift over baseline (%), 95% CI")
    a2.legend()
    if gated:
        a3 = axes[2]
        labelled = False
        for r in rows[1:]:
            off = r.get("offline", {})
            if "mean" in off and "name" in off:  # DM / FQE: the same lift (the stand-in's advantage: other units)
                a3.plot([r["round"] - 0.12], [100 * off["mean"]], "D", color="C7", ms=4,
                        label=None if labelled else f"offline {off['name']} estimate")
                if "ci_low" in off:
                    a3.plot([r["round"] - 0.12] * 2, [100 * off["ci_low"], 100 * off["ci_high"]], color="C7", alpha=0.5)
                labelled = True
            g = r.get("gate_ab")
            if g is None:  # rejected offline: no A/B
                a3.plot([r["round"]], [0], "x", color="C3")
                continue
            c = "C2" if r.get("accepted") else "C3"
            a3.plot([r["round"]], [100 * g["lift"]], "o", color=c)
            a3.plot([r["round"]] * 2, [100 * g["ci_low"], 100 * g["ci_high"]], color=c, alpha=0.6)
        a3.axhline(0, color="k", lw=0.8)
        a3.set_xlabel("round (green: accepted, red: rejected, x: offline)")
        if labelled:
            a3.legend(fontsize=7)
        metric = next((r["gate_ab"]["metric"] for r in rows if "gate_ab" in r), "uvc")
        a3.set_ylabel(f"gate: {metric.upper()} lift over incumbent (%)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
