"""How often and how long KuaiRand-Pure users come back: the usage statistics the environment is calibrated to.

KuaiRand-Pure logs impressions with a timestamp but no session id. A **session** here is a maximal run of
one user's training-day impressions (2022-04-25..05-04) with gaps of at most ``SESSION_GAP_MIN`` = 30
minutes (timestamps ``time_ms``). Per user row (the order of ``user_features_pure.csv``) the module counts

- ``views``: training-day impressions;
- ``active_days``: training days with at least one impression (of ``N_TRAIN_DAYS`` = 10);
- ``sessions``: 30-minute-gap sessions (a session is counted on the day it starts);

and over the whole training log: the mean / median session length in impressions, the share of one-
impression sessions, sessions per active user-day, the hour-of-day histogram of sessions' first
impressions (Beijing time, UTC+8), and P(is_click | long_view) / P(is_click | no long_view).

On the shared copy: 141,258 sessions, mean length 1.215 impressions (median 1; 83.7% have one impression),
88,992 active user-days with 1.59 sessions and 1.93 impressions each, 24,076 users with training views
(3.70 active days each; 3,209 users have none). The log records only the 7,583 "pure" videos, a thinned
sample of what users watched, so these are lengths and counts *of logged impressions*.

:func:`usage_stats` computes them from :class:`~rlmtf.envs.kuairand.data.KuaiRandData`; :func:`save_usage` /
:func:`load_usage` keep them beside the fitted models (``usage.safetensors`` + ``usage.json``, no pickle).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from rlmtf.envs.kuairand.data import N_TRAIN_DAYS, KuaiRandData

SESSION_GAP_MIN = 30.0
USAGE_FILES = ("usage.safetensors", "usage.json")
_BEIJING_OFFSET_H = 8
USAGE_VERSION = 1


@dataclass
class UsageStats:
    """Per-user usage counts (arrays over user rows) and whole-log summaries."""

    views: np.ndarray  # (U,) float64 training-day impressions
    active_days: np.ndarray  # (U,) float64
    sessions: np.ndarray  # (U,) float64 30-minute-gap sessions
    hour_hist: np.ndarray  # (24,) float64 sessions starting in each hour (Beijing time)
    summary: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.views)


def sessions_of(user: np.ndarray, time_ms: np.ndarray, gap_min: float = SESSION_GAP_MIN) -> np.ndarray:
    """Session index (0..S-1) of each impression, sessions split at user changes and gaps > ``gap_min``;
    rows in any order (returned in the input order)."""
    order = np.lexsort((time_ms, user))
    u, t = user[order], time_ms[order]
    new = np.ones(len(u), dtype=bool)
    new[1:] = (u[1:] != u[:-1]) | (np.diff(t) > gap_min * 60_000)
    sid = np.empty(len(u), np.int64)
    sid[order] = np.cumsum(new) - 1
    return sid


def usage_stats(data: KuaiRandData, gap_min: float = SESSION_GAP_MIN) -> UsageStats:
    """The statistics of the module docstring from the training days of ``data``."""
    x = data.train
    n_u = len(data.users.ids)
    if len(x) == 0:
        raise ValueError("no training rows: usage statistics need the 2022-04-25..05-04 log")
    sid = sessions_of(x.user, x.time_ms, gap_min)
    n_s = int(sid.max()) + 1
    length = np.bincount(sid, minlength=n_s)
    first = np.full(n_s, -1, np.int64)
    order = np.lexsort((x.time_ms, sid))
    is_first = np.ones(len(order), dtype=bool)
    is_first[1:] = sid[order][1:] != sid[order][:-1]
    first[sid[order][is_first]] = order[is_first]
    s_user, s_day = x.user[first], x.day[first]
    hour = ((x.time_ms[first] // 3_600_000) + _BEIJING_OFFSET_H) % 24
    views = np.bincount(x.user, minlength=n_u).astype(np.float64)
    sessions = np.bincount(s_user, minlength=n_u).astype(np.float64)
    user_day = np.unique(x.user * N_TRAIN_DAYS + x.day)
    active_days = np.bincount(user_day // N_TRAIN_DAYS, minlength=n_u).astype(np.float64)
    sess_user_day = np.unique(s_user * N_TRAIN_DAYS + s_day)
    lv = x.long_view.astype(bool)
    summary = {
        "gap_min": gap_min, "train_days": N_TRAIN_DAYS, "impressions": int(len(x)), "sessions": n_s,
        "session_length_mean": float(length.mean()), "session_length_median": float(np.median(length)),
        "session_length_p90": float(np.quantile(length, 0.9)), "one_impression_share": float((length == 1).mean()),
        "active_user_days": int(len(user_day)), "sessions_per_active_day": float(n_s / max(len(sess_user_day), 1)),
        "impressions_per_active_day": float(len(x) / max(len(user_day), 1)),
        "max_sessions_per_day": int(np.bincount(s_user * N_TRAIN_DAYS + s_day).max()),
        "users": n_u, "users_with_views": int((views > 0).sum()),
        "active_day_share": float(active_days.sum() / (n_u * N_TRAIN_DAYS)),
        "mean_active_days_of_active_users": float(active_days[views > 0].mean()),
        "p_click_given_long_view": float(x.click[lv].mean()) if lv.any() else 1.0,
        "p_click_given_no_long_view": float(x.click[~lv].mean()) if (~lv).any() else 0.0,
        "long_view_rate": float(lv.mean()),
        "version": USAGE_VERSION,
    }
    return UsageStats(views=views, active_days=active_days, sessions=sessions,
                      hour_hist=np.bincount(hour, minlength=24).astype(np.float64), summary=summary)


def save_usage(out_dir: str | os.PathLike[str], u: UsageStats) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(getattr(u, k)) for k in ("views", "active_days", "sessions", "hour_hist")}
    tmp = out / "usage.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / "usage.safetensors")
    tmp = out / "usage.json.tmp"
    tmp.write_text(json.dumps({"summary": u.summary,
                               "note": "Derived from KuaiRand-Pure (CC BY-SA 4.0); see rlmtf.envs.kuairand.usage."},
                              indent=1))
    os.replace(tmp, out / "usage.json")


def load_usage(out_dir: str | os.PathLike[str]) -> UsageStats | None:
    """The saved statistics, or None if ``out_dir`` has none (or an older version)."""
    out = Path(out_dir)
    if not all((out / f).is_file() for f in USAGE_FILES):
        return None
    meta = json.loads((out / "usage.json").read_text())
    if meta.get("summary", {}).get("version") != USAGE_VERSION:
        return None
    t = load_file(str(out / "usage.safetensors"))
    return UsageStats(views=t["views"], active_days=t["active_days"], sessions=t["sessions"],
                      hour_hist=t["hour_hist"], summary=meta["summary"])


__all__ = ["SESSION_GAP_MIN", "UsageStats", "load_usage", "save_usage", "sessions_of", "usage_stats"]
