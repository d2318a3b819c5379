"""The logged rows of a request: the columns of the logged-data schema (``docs/design.md#logged-data``) for the
shown items of a batch of requests, built by the engine (``rlmtf.envs.engine``) after the users reacted."""

from __future__ import annotations

import numpy as np

from rlmtf.policy.base import Decision, RequestObs


def log_rows(day: int, session_id: np.ndarray, u: np.ndarray, t: np.ndarray, items: np.ndarray, obs: RequestObs,
             dec: Decision, action: np.ndarray, shown: np.ndarray, fb: dict[str, np.ndarray], rew: np.ndarray,
             done: np.ndarray, truth: np.ndarray | None, sample: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The logged-data columns (``docs/design.md#logged-data``) of the shown items of b requests (b * l rows);
    ``sample`` (b, l): positions in ``obs.item_id`` of the candidate sample, one beside each shown row."""
    b, l = items.shape

    def rep(x):  # request-level -> row-level
        return np.repeat(x, l, axis=0)

    def per_item(x, at=shown):  # (A,), (b, A) or (b, N, A) -> (b*l, A) for the items at ``at``
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            return np.ascontiguousarray(np.broadcast_to(x, (b * l, x.shape[0])))
        if x.ndim == 2:
            return rep(x)
        return np.take_along_axis(x, at[..., None], 1).reshape(b * l, -1)

    def shown_of(x, at=shown):  # (b, N, D) -> (b*l, D)
        return np.take_along_axis(x, at[..., None], 1).reshape(b * l, -1).astype(np.float32)

    def features_of(at):  # the item features at ``at``, from the catalogue when the request carries none
        if obs.item_features_ is None:
            return obs.item_table[np.take_along_axis(obs.item_id, at, 1).reshape(-1)]
        return shown_of(obs.item_features, at)

    cols = {
        "day": np.full(b * l, day, np.int32),
        "session_id": rep(session_id),
        "user_id": rep(u),
        "t": rep(t.astype(np.int32)),
        "position": np.tile(np.arange(l, dtype=np.int32), b),
        "item_id": items.reshape(-1),
        "user_profile": rep(obs.user_profile),
        "user_history": rep(obs.user_history),
        "context": rep(obs.context),
        "item_features": features_of(shown),
        "mtl_scores": shown_of(obs.mtl_scores),
        "mu_bp": per_item(dec.mu_bp),
        "lower_b": per_item(dec.lower_b),
        "upper_b": per_item(dec.upper_b),
        "action": per_item(action),
        "reward": rew.reshape(-1).astype(np.float32),
        "done": rep(done),
    }
    for name in ("click", "valid", "finish", "like", "share", "collect", "follow", "comment"):
        cols[name] = fb[name].reshape(-1).astype(np.int8)
    cols["watch_time"] = fb["watch_time"].reshape(-1).astype(np.float32)
    cols["watch_ratio"] = fb["watch_ratio"].reshape(-1).astype(np.float32)
    if "seen" in fb:  # in-order consumption
        cols["seen"] = fb["seen"].reshape(-1).astype(np.int8)
    if truth is not None:
        cols["true_scores"] = shown_of(truth)
    if sample is not None:
        cols["candidate_item_features"] = features_of(sample)
        cols["candidate_mtl_scores"] = shown_of(obs.mtl_scores, sample)
        for name in ("mu_bp", "lower_b", "upper_b"):
            cols[f"candidate_{name}"] = per_item(getattr(dec, name), sample)
    return cols
