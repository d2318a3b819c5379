"""Leakage-free history features of a user-item pair, computed from the training days only.

Feature groups (columns of :meth:`FeatureBuilder.matrix`, names from :meth:`FeatureBuilder.names`):

- ``user`` / ``item``: the encoded static features of ``data.py``;
- ``user_stats`` / ``item_stats``: the entity's views per day (log1p) and its shrunk rates
  ``(sum + a * prior) / (n + a)`` of long_view, like, follow, comment, forward, zero play and finish
  (as logits), its mean watch ratio (capped at ``ratio_cap``) and mean log1p play seconds;
- ``cross``: the user's affinity to the item's tags from the training days: share of the user's
  views in those tags, long_view / like rates and mean watch ratio in those tags (shrunk towards the
  user's own rates with ``tag_smoothing``), log1p views in those tags;
- ``pre``: the user's pre-period history (before 2022-04-25): share of the last-50 watched /
  long-viewed / liked lists in the item's tags, log1p history length and list lengths, a has-history flag.

**Leakage.** Test rows (2022-05-05..08) and serving use statistics of all 10 training days. A training
row of day d uses the statistics of the other 9 training days (leave-one-day-out): its own label, and
every label of the same session, never enters its features, so the model does not learn to trust
statistics that contain the answer; views are counted per day so 9 and 10 days are on one scale.
The official per-video statistics are not used at all (they cover the test days).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from rlmtf.envs.kuairand.data import Interactions, KuaiRandData

GROUPS: tuple[str, ...] = ("user", "item", "user_stats", "item_stats", "cross", "pre")
#: Columns of the per-row sums the statistics are built from.
SUMS: tuple[str, ...] = ("n", "n_ratio", "long_view", "like", "follow", "comment", "forward", "zero_play", "finish",
                         "ratio", "log1p_play")
_RATES = (("long_view", "n"), ("like", "n"), ("follow", "n"), ("comment", "n"), ("forward", "n"),
          ("zero_play", "n"), ("finish", "n_ratio"))
_MEANS = (("ratio", "n_ratio"), ("log1p_play", "n"))
STAT_NAMES: tuple[str, ...] = ("log1p_views_per_day", *(f"logit_{c}" for c, _ in _RATES),
                               *(f"mean_{c}" for c, _ in _MEANS))
#: Columns of the per-(user, tag) sums.
TAG_SUMS: tuple[str, ...] = ("n", "n_ratio", "long_view", "like", "ratio")
CROSS_NAMES: tuple[str, ...] = ("tag_view_share", "tag_logit_long_view", "tag_logit_like", "tag_mean_ratio",
                                "tag_log1p_views")
PRE_NAMES: tuple[str, ...] = ("pre_watch_tag_share", "pre_long_watch_tag_share", "pre_like_tag_share",
                              "pre_log1p_history_len", "pre_log1p_watch_len", "pre_long_watch_fraction", "pre_has")
_EPS = 1e-5
_CHUNK = 16384


@dataclass(frozen=True)
class FeatureConfig:
    """How the history statistics are smoothed."""

    smoothing: float = 20.0
    """Pseudo-count a of the user and item rates' shrinkage towards the global training rate."""
    tag_smoothing: float = 5.0
    """Pseudo-count of the user-tag rates' shrinkage towards the user's own rate."""
    ratio_cap: float = 3.0
    """Watch ratios are capped here inside the mean-watch-ratio statistics (p99 is about 2)."""


def row_sums(x: Interactions, ratio_cap: float) -> np.ndarray:
    """(n, len(SUMS)) float64 per-row contributions to the sums."""
    known = x.ratio_known
    ratio = np.nan_to_num(x.watch_ratio.astype(np.float64), nan=0.0)
    cols = {"n": np.ones(len(x)), "n_ratio": known, "long_view": x.long_view, "like": x.like, "follow": x.follow,
            "comment": x.comment, "forward": x.forward, "zero_play": x.play_time_ms == 0,
            "finish": known & (x.play_time_ms >= x.duration_ms), "ratio": np.minimum(ratio, ratio_cap),
            "log1p_play": np.log1p(x.play_time_ms / 1000.0)}
    return np.stack([np.asarray(cols[c], np.float64) for c in SUMS], 1)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


class FeatureBuilder:
    """Feature matrices for any (user row, item row) pair; training rows leave their own day out."""

    def __init__(self, cfg: FeatureConfig, tables: dict[str, np.ndarray], names: dict[str, tuple[str, ...]],
                 n_days: int, day_parts: dict[str, np.ndarray | sp.csr_matrix] | None = None):
        self.cfg, self.t, self._names, self.n_days = cfg, tables, names, n_days
        self.day_parts = day_parts  # only while fitting: per-day sums for leave-one-day-out
        s = tables["user_tot"].sum(0)
        self.prior = {c: float(s[SUMS.index(c)] / max(s[SUMS.index(d)], 1.0)) for c, d in (*_RATES, *_MEANS)}
        mh = tables["item_tags"]
        self._mh_norm = mh / np.maximum(mh.sum(1, keepdims=True), 1.0)  # (I, T) mean over the item's tags
        self._no_tags = mh.sum(1) == 0  # (I,)

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: KuaiRandData, cfg: FeatureConfig = FeatureConfig()) -> FeatureBuilder:
        """Sum the training days of ``data`` per user, item, (user, tag) and (entity, day)."""
        x = data.train
        n_u, n_i, n_t = len(data.users.ids), len(data.items.ids), data.item_tags.shape[1]
        n_days = int(x.day.max()) + 1 if len(x) else 1
        y = row_sums(x, cfg.ratio_cap)  # (n, S)
        user_day = np.zeros((n_u, n_days, len(SUMS)))
        item_day = np.zeros((n_i, n_days, len(SUMS)))
        np.add.at(user_day, (x.user, x.day), y)
        np.add.at(item_day, (x.item, x.day), y)
        # (user, tag) sums: every row contributes its tag sums to each of its item's tags
        yt = y[:, [SUMS.index(c) for c in TAG_SUMS]]  # (n, C)
        r, t = np.nonzero(data.item_tags[x.item])  # rows, tags
        n_c = len(TAG_SUMS)
        cols = (t[:, None] * n_c + np.arange(n_c)).ravel()
        vals = yt[r].ravel()
        ut_day = sp.coo_matrix((vals, (np.repeat(x.user[r] * n_days + x.day[r], n_c), cols)),
                               shape=(n_u * n_days, n_t * n_c)).tocsr()
        ut_tot = np.asarray(sp.coo_matrix((vals, (np.repeat(x.user[r], n_c), cols)),
                                          shape=(n_u, n_t * n_c)).todense()).reshape(n_u, n_t, n_c)
        tables = {"user_x": data.users.x, "item_x": data.items.x, "item_tags": data.item_tags,
                  "item_duration_s": data.item_duration_s, "user_tot": user_day.sum(1),
                  "item_tot": item_day.sum(1), "user_tag_tot": ut_tot}
        if data.pre_history is not None:
            tables |= {"pre_tag_counts": data.pre_history.tag_counts, "pre_list_len": data.pre_history.list_len,
                       "pre_history_len": data.pre_history.history_len}
        names = {"user": data.users.names, "item": data.items.names, "tags": data.tag_names}
        return cls(cfg, tables, names, n_days, {"user": user_day, "item": item_day, "user_tag": ut_day})

    @property
    def has_pre(self) -> bool:
        return "pre_tag_counts" in self.t

    def names(self, group: str) -> tuple[str, ...]:
        return {"user": self._names["user"], "item": self._names["item"], "user_stats": STAT_NAMES,
                "item_stats": STAT_NAMES, "cross": CROSS_NAMES, "pre": PRE_NAMES}[group]

    def feature_names(self, groups: tuple[str, ...]) -> list[str]:
        return [f"{g}:{n}" for g in groups for n in self.names(g)]

    def columns(self, groups: tuple[str, ...], within: tuple[str, ...] = GROUPS) -> np.ndarray:
        """Column indices of ``groups`` inside a matrix built with ``within``."""
        start = np.cumsum([0, *(len(self.names(g)) for g in within)])
        unknown = [g for g in groups if g not in within]
        if unknown:
            raise ValueError(f"feature group(s) {unknown} not among {within}")
        return np.concatenate([np.arange(start[within.index(g)], start[within.index(g) + 1]) for g in groups])

    @property
    def n_users(self) -> int:
        return len(self.t["user_x"])

    @property
    def n_items(self) -> int:
        return len(self.t["item_x"])

    @property
    def tag_names(self) -> tuple[str, ...]:
        return self._names["tags"]

    def item_duration_s(self, i: np.ndarray) -> np.ndarray:
        return self.t["item_duration_s"][i]

    # --- features -------------------------------------------------------------------------------------
    def _sums(self, kind: str, rows: np.ndarray, day: np.ndarray | None) -> np.ndarray:
        s = self.t[f"{kind}_tot"][rows]
        if day is not None:
            s = s - self.day_parts[kind][rows, day]
        return s

    def _stats(self, s: np.ndarray, days: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        a = self.cfg.smoothing
        out = [np.log1p(s[:, 0] / days)]
        p: dict[str, np.ndarray] = {}
        for c, d in _RATES:
            p[c] = (s[:, SUMS.index(c)] + a * self.prior[c]) / (s[:, SUMS.index(d)] + a)
            out.append(_logit(p[c]))
        for c, d in _MEANS:
            p[c] = (s[:, SUMS.index(c)] + a * self.prior[c]) / (s[:, SUMS.index(d)] + a)
            out.append(p[c])
        return np.stack(out, 1), p

    def _cross(self, u: np.ndarray, i: np.ndarray, day: np.ndarray | None, user_n: np.ndarray,
               user_p: dict[str, np.ndarray]) -> np.ndarray:
        ut = self.t["user_tag_tot"][u]  # (B, T, C)
        if day is not None:
            part = self.day_parts["user_tag"][u * self.n_days + day]
            ut = ut - np.asarray(part.todense()).reshape(ut.shape)
        c = {k: ut[..., j] for j, k in enumerate(TAG_SUMS)}  # each (B, T)
        w = self._mh_norm[i]  # (B, T)
        none = self._no_tags[i]
        a = self.cfg.tag_smoothing

        def tag_mean(num: str, den: str, target: np.ndarray) -> np.ndarray:
            r = (c[num] + a * target[:, None]) / (c[den] + a)
            return np.where(none, target, (w * r).sum(1))

        return np.stack([(w * c["n"]).sum(1) / (user_n + 1.0),
                         _logit(tag_mean("long_view", "n", user_p["long_view"])),
                         _logit(tag_mean("like", "n", user_p["like"])),
                         tag_mean("ratio", "n_ratio", user_p["ratio"]),
                         np.log1p((w * c["n"]).sum(1))], 1)

    def _pre(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        if not self.has_pre:
            return np.zeros((len(u), len(PRE_NAMES)))
        counts, lens, hist = self.t["pre_tag_counts"][u], self.t["pre_list_len"][u], self.t["pre_history_len"][u]
        w = self._mh_norm[i][:, None, :]  # (B, 1, T)
        share = (w * counts).sum(-1) / (lens + 1.0)  # (B, 3)
        return np.concatenate([share, np.stack([np.log1p(hist), np.log1p(lens[:, 0]),
                                                lens[:, 1] / (lens[:, 0] + 1.0), (hist > 0).astype(np.float64)], 1)], 1)

    def groups(self, u: np.ndarray, i: np.ndarray, groups: tuple[str, ...] = GROUPS,
               day: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each requested group's (B, D_g) float32 block. ``day`` (training rows only) leaves that day out."""
        u, i = np.asarray(u, np.int64), np.asarray(i, np.int64)
        if day is not None:
            if self.day_parts is None:
                raise ValueError("leave-one-day-out features need the fitted day parts (only while fitting)")
            day = np.asarray(day, np.int64)
        days = float(self.n_days - (day is not None))
        out: dict[str, np.ndarray] = {}
        us, up = self._stats(self._sums("user", u, day), days)
        if "user" in groups:
            out["user"] = self.t["user_x"][u]
        if "item" in groups:
            out["item"] = self.t["item_x"][i]
        if "user_stats" in groups:
            out["user_stats"] = us
        if "item_stats" in groups:
            out["item_stats"] = self._stats(self._sums("item", i, day), days)[0]
        if "cross" in groups:
            out["cross"] = self._cross(u, i, day, self._sums("user", u, day)[:, 0], up)
        if "pre" in groups:
            out["pre"] = self._pre(u, i)
        return {g: out[g].astype(np.float32) for g in groups}

    def matrix(self, u: np.ndarray, i: np.ndarray, groups: tuple[str, ...] = GROUPS,
               day: np.ndarray | None = None) -> np.ndarray:
        """(B, F) float32 features of the pairs, groups concatenated in the given order (chunked)."""
        u, i = np.asarray(u, np.int64).ravel(), np.asarray(i, np.int64).ravel()
        parts = []
        for s in range(0, len(u), _CHUNK):
            sl = slice(s, s + _CHUNK)
            g = self.groups(u[sl], i[sl], groups, None if day is None else np.asarray(day).ravel()[sl])
            parts.append(np.concatenate([g[k] for k in groups], 1))
        if not parts:
            return np.zeros((0, len(self.feature_names(groups))), np.float32)
        return np.concatenate(parts, 0)

    # --- persistence ----------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Serving tables (for safetensors, dtypes kept so a reload computes identical features) and JSON
        metadata; the per-day parts are not kept."""
        tensors = {k: np.ascontiguousarray(v) for k, v in self.t.items() if k != "user_tag_tot"}
        ut = self.t["user_tag_tot"]
        nz = np.nonzero(ut.any(-1))  # (user, tag) pairs with a view: stored sparse
        tensors |= {"user_tag_index": np.stack(nz, 1).astype(np.int64),
                    "user_tag_values": ut[nz]}
        meta = {"config": asdict(self.cfg), "n_days": self.n_days, "user_tag_shape": list(ut.shape),
                "names": {k: list(v) for k, v in self._names.items()}, "prior": self.prior}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, np.ndarray], meta: dict) -> FeatureBuilder:
        t = dict(tensors)
        ut = np.zeros(meta["user_tag_shape"])
        idx = t.pop("user_tag_index")
        ut[idx[:, 0], idx[:, 1]] = t.pop("user_tag_values")
        t["user_tag_tot"] = ut
        return cls(FeatureConfig(**meta["config"]), t, {k: tuple(v) for k, v in meta["names"].items()},
                   int(meta["n_days"]))
