"""How a user consumes a shown list: all of it, or in rank order with a chance to leave after every item.

``mode = "all"`` (the papers' assumption, and this project's original one): every shown item is watched,
and the user decides to leave after the request, with the world's request-level leave probability p.

``mode = "in_order"`` (``docs/design.md#in-order-consumption``): the user swipes through the list in rank
order. After item j the world gives the leave logit of its session state as it would be had the request
ended there (its satisfaction and fatigue after items 1..j: :meth:`rlmtf.envs.engine.Environment.leave_logits`),
and the user leaves with the per-item hazard

    h_j = 1 - (1 - sigmoid(logit_j)) ** (1 / l)

so that a request whose state does not move within it is left with the same probability p as under
``"all"`` (1 - (1 - h)^l = p): the session length in requests stays where the world was calibrated, and
what changes is *where* in the list a user leaves. Items after the one the user left on are *unseen*:
they get no feedback (every behaviour 0, no watch time, no reward), the session state and the history
are updated from the seen items only, and the logs mark them ``seen = 0``. So what is ranked lower is
seen less, a shown item's position matters, and the same list in another order gives other outcomes.

The first item is always seen (the user leaves *after* an item). The per-item leave draws are keyed by
(request, position), so that policies on one seed face common random numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import expit

MODES = ("all", "in_order")


@dataclass(frozen=True)
class ConsumptionConfig:
    """How shown lists are consumed (module docstring)."""

    mode: Literal["all", "in_order"] = "all"
    """all: every shown item is watched, leave is drawn after the request; in_order: the user watches in
    rank order and may leave after any item (``docs/design.md#in-order-consumption``)."""
    leave_offset: float = 0.0
    """in_order: added to every per-item leave logit. Leaving mid-list leaves the rest of that list unseen,
    so at an offset of 0 a session holds fewer consumed items than under "all"; calibrated
    (:func:`calibrate_offsets`, ``rlmtf sim calibrate --fit-in-order``) so that the baseline policy consumes as
    many items per session as under "all"."""
    return_offset: float = 0.0
    """in_order: added to the logit of P(another session today). A user who leaves mid-list leaves after
    an item that disappointed (the hazard rises with it), so sessions end less satisfied and fewer follow;
    calibrated with ``leave_offset`` so that the baseline policy opens as many sessions per user-day as
    under "all" (both worlds' session statistics were calibrated under "all")."""

    def check(self) -> list[str]:
        """Problems with the values, as messages naming the key."""
        if self.mode not in MODES:
            return [f"consumption.mode must be one of {', '.join(MODES)}, got {self.mode!r}"]
        return []


def item_hazard(logits: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """Per-item leave hazards (b, l) from the leave logits after each item (b, l): 1 - (1 - p)^(1/l) with
    p = sigmoid(logit + offset)."""
    l = logits.shape[1]
    return -np.expm1(np.log1p(-expit(logits + offset)) / l)


def seen_prefix(hazard: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which items are seen and who leaves, from hazards (b, l) and uniforms (b, l): the user leaves after
    the first item j with u_j < h_j, so items 1..j are seen (all of them if no draw hits). Returns
    (seen (b, l) bool, left (b,) bool)."""
    hit = u < hazard  # (b, l)
    left = hit.any(1)
    first = np.where(left, hit.argmax(1), hazard.shape[1] - 1)  # index of the last seen item
    seen = np.arange(hazard.shape[1])[None, :] <= first[:, None]
    return seen, left


def mask_unseen(fb: dict[str, np.ndarray], seen: np.ndarray) -> dict[str, np.ndarray]:
    """The feedback of unseen items set to nothing (0 / False, dtypes kept), plus ``fb["seen"]`` (b, l) int8."""
    out = {k: np.where(seen, v, np.zeros((), v.dtype)) if np.shape(v) == seen.shape else v for k, v in fb.items()}
    out["seen"] = seen.astype(np.int8)
    return out


def item_mean(x: np.ndarray, fb: dict[str, np.ndarray]) -> np.ndarray:
    """Mean over the consumed items of each request: x (b, l) -> (b,). Every item when ``fb`` has no
    ``seen`` (mode "all"), else the seen ones (at least the first)."""
    if "seen" not in fb:
        return x.mean(1)
    seen = fb["seen"]
    return (x * seen).sum(1) / np.maximum(seen.sum(1), 1)


def prefix_mean(x: np.ndarray) -> np.ndarray:
    """Mean of items 1..j for every j: x (b, l) -> (b, l) (what a request's mean would be, ended at j)."""
    return np.cumsum(x, 1) / np.arange(1, x.shape[1] + 1)



def usage(env, policy, users: np.ndarray, seed: int, days: int) -> tuple[float, float]:
    """(consumed items per session, sessions per user-day) of ``policy`` in ``env``."""
    r = env.run(policy, seed=seed, days=days, users=users, log_true_scores=False)
    return float(r.items.sum() / max(r.sessions.sum(), 1)), float(r.sessions.mean())


def calibrate_offsets(make_env: Callable[[ConsumptionConfig], Any], policy, users: np.ndarray, seed: int = 12345,
                      days: int = 2, tol: float = 0.002, max_iter: int = 12,
                      log: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """The in-order ``leave_offset`` and ``return_offset`` at which ``policy`` consumes as many items per
    session, and opens as many sessions per user-day, as under "all".

    ``make_env(consumption)`` builds the world with that consumption config. Each round moves both offsets
    by a secant step on the log gap of its own target (items per session for the leave offset, sessions per
    user-day for the return offset; each mostly moves its own), under common random numbers (``users``,
    ``seed``, ``days`` fixed), until both gaps are below ``tol`` (relative). Returns the offsets, the targets,
    the values reached and the values at offsets 0 (what in-order consumption alone does)."""
    items_all, sess_all = usage(make_env(ConsumptionConfig("all")), policy, users, seed, days)
    target = np.log([items_all, sess_all])

    def gaps(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        v = usage(make_env(ConsumptionConfig("in_order", float(x[0]), float(x[1]))), policy, users, seed, days)
        log(f"leave_offset {x[0]:+.4f}, return_offset {x[1]:+.4f}: {v[0]:.3f} items per session (target "
            f"{items_all:.3f}), {v[1]:.4f} sessions per user-day (target {sess_all:.4f})")
        return np.log(v) - target, v

    x0 = np.zeros(2)
    g0, at_zero = gaps(x0)
    x1 = np.where(g0 < 0, np.array([-0.25, 0.25]), np.array([0.25, -0.25]))  # leave lower / return higher
    g1, v1 = gaps(x1)
    for _ in range(max_iter):
        if np.all(np.abs(g1) < tol):
            break
        slope = np.where(np.abs(g1 - g0) > 1e-12, (g1 - g0) / np.where(x1 != x0, x1 - x0, 1.0), np.nan)
        step = np.where(np.isfinite(slope) & (slope != 0), -g1 / slope, 0.0)
        x0, g0 = x1, g1
        x1 = x1 + np.clip(step, -0.5, 0.5)
        g1, v1 = gaps(x1)
    return {"leave_offset": float(x1[0]), "return_offset": float(x1[1]),
            "target_items_per_session": items_all, "target_sessions_per_user_day": sess_all,
            "items_per_session": v1[0], "sessions_per_user_day": v1[1],
            "items_per_session_at_offsets_0": at_zero[0], "sessions_per_user_day_at_offsets_0": at_zero[1]}
