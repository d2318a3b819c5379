"""Calibration of the KuaiRand environment's leave and return offsets to the log's usage (session length,
sessions per active user-day)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from rlmtf.envs.engine import RunResult
from rlmtf.envs.kuairand.env import KuaiRandEnv
from rlmtf.policy.base import Policy


def usage_of_run(r: RunResult) -> dict[str, float]:
    """The calibrated quantities of a run: mean requests per session, sessions per active user-day, the
    share of user-days with a session, and the long-view rate of the shown items."""
    active = r.sessions > 0
    return {"session_length": r.session_length,
            "sessions_per_active_day": float(r.sessions.sum() / max(active.sum(), 1)),
            "active_day_share": float(active.mean()), "long_view_rate": float(r.valid.sum() / max(r.items.sum(), 1))}


def baseline_usage(env: KuaiRandEnv, policy: Policy | None = None, *, users: int = 5000, days: int = 1,
                   seed: int = 0) -> dict[str, float]:
    """:func:`usage_of_run` of ``policy`` (default: the baseline) over users 0..users-1."""
    from rlmtf.policy.fixed import baseline_policy

    pol = policy or baseline_policy(env.cfg.action_space)
    return usage_of_run(env.run(pol, seed=seed, days=days, users=np.arange(min(users, env.cfg.n_users))))


def calibrate_offsets(env: KuaiRandEnv, *, users: int = 30_000, days: int = 2, seed: int = 0, rounds: int = 5,
                      log: Callable[[str], None] = print) -> tuple[float, float]:
    """``(session.leave_offset, days.return_offset)`` at which the baseline policy reproduces the log's mean
    session length and sessions per active user-day (``env.usage.summary``), by secant steps on each
    offset in turn (the two barely interact). The defaults were set with this on the full fitted models."""
    s = env.usage.summary
    targets = {"session_length": float(s["session_length_mean"]),
               "sessions_per_active_day": float(s["sessions_per_active_day"])}
    off = {"leave": env.cfg.session.leave_offset, "return": env.cfg.days.return_offset}

    def measure(o: dict[str, float]) -> dict[str, float]:
        cfg = dataclasses.replace(env.cfg, session=dataclasses.replace(env.cfg.session, leave_offset=o["leave"]),
                                  days=dataclasses.replace(env.cfg.days, return_offset=o["return"]))
        m = baseline_usage(env.with_config(cfg), users=users, days=days, seed=seed)
        log(f"leave_offset {o['leave']:+.4f}, return_offset {o['return']:+.4f}: session length "
            f"{m['session_length']:.4f} (log {targets['session_length']:.4f}), sessions / active day "
            f"{m['sessions_per_active_day']:.4f} (log {targets['sessions_per_active_day']:.4f})")
        return m

    for _ in range(2):
        for name, metric, first_step in (("leave", "session_length", -0.3),
                                         ("return", "sessions_per_active_day", 0.3)):
            x0, step = off[name], first_step
            f0 = measure(off)[metric] - targets[metric]
            for _ in range(rounds):
                if abs(f0) < 0.002 * targets[metric]:
                    break
                off[name] = x0 + step
                f1 = measure(off)[metric] - targets[metric]
                if f1 == f0:
                    break
                step = float(np.clip(-f1 * (off[name] - x0) / (f1 - f0), -2.0, 2.0))
                x0, f0 = off[name], f1
            off[name] = x0
    return off["leave"], off["return"]


def fit_in_order(env: KuaiRandEnv, *, users: int = 30_000, days: int = 2, seed: int = 0,
                 log: Callable[[str], None] = print) -> dict[str, float]:
    """The in-order consumption offsets of this world (:func:`rlmtf.envs.consumption.calibrate_offsets`): the
    baseline policy consumes as many items per session, and opens as many sessions per user-day, as with
    every list consumed (where :func:`calibrate_offsets` matched the log). The defaults were set with this on
    the full fitted models."""
    from rlmtf.envs.consumption import calibrate_offsets
    from rlmtf.policy.fixed import baseline_policy

    return calibrate_offsets(lambda c: env.with_config(dataclasses.replace(env.cfg, consumption=c)),
                             baseline_policy(env.cfg.action_space), np.arange(min(users, env.cfg.n_users)),
                             seed=seed, days=days, log=log)
