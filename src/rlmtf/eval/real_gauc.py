"""Weighted GAUC of a fusion policy on the **real** KuaiRand-Pure interactions
(``docs/design.md#weighted-gauc-on-the-real-kuairand-pure-log``, real labels).

The simulator's offline metric (``rlmtf.eval.offline``) scores logged *simulated* samples. Here the
samples are the real impressions of a KuaiRand-Pure split (default: the 4 test days 2022-05-05..08, which
neither the fitted models nor the KuaiRand environment's training data ever saw), and a policy trained in
the KuaiRand environment (``make_env("kuairand")``) is applied to each of them as it would be at serving
time:

**Observation** (a :class:`~rlmtf.policy.base.RequestObs` in the environment's
:attr:`~rlmtf.envs.kuairand.env.KuaiRandEnv.spec`): one logged row (user u, video i) is one request with one
candidate, i (the environment, too, treats one logged impression as one request). What the policy sees
is the environment's representation of u at a *neutral point*, the first request of the user's first
session of a simulated day:

- ``user_profile``: u's encoded features + u's training-day statistics (``KuaiRandEnv.profile_table``),
  i.e. the user as known at the end of the training days;
- ``user_history``: the environment's initial behaviour history of u (recent tags = u's training-day /
  pre-period tag distribution, long-view / watch-ratio / like rates = u's training-day rates, sessions
  today = 1, minutes today = last session length = long-term engagement = 0), exactly what
  ``KuaiRandEnv`` shows at the first request of the first session of a run;
- ``context``: the row's real hour of day (Beijing time, UTC+8, as the environment's hour histogram),
  request index 0 and session index 0. The log has no request / session ids, and the behaviour history
  a real position inside a session would need (minutes watched today, ...) is not reconstructible from
  the thinned log without mixing real and simulated quantities, so every row is evaluated at the same
  neutral point; only the hour and the user-item pair vary;
- ``item_features``: i's encoded features + i's training-day statistics (``KuaiRandEnv.item_table``);
- ``mtl_scores``: the fitted MTL model's 5 scores of (u, i) (``KuaiRandMTL.scores``, order
  ``rlmtf.core.fusion.MTL_TASKS``).

**Request grouping**: each row is its own request (N = 1 candidate). A deterministic user-level policy's
action depends only on (user, hour) and an item-level policy's action only on the row's enhanced state,
so grouping rows of the same (user_id, time_ms) (3,037 of the 56,658 test rows share a timestamp with
another row of the same user) would not change any action. The request key is ``key(user, time_ms)``,
so a stochastic policy (``random``) draws one action for all rows of the same logged moment.

**Score and metric**: the fused log score ``sum_k power_k * log(score_k + bias_k)`` (Formula 1) of the
policy's action on the row's MTL scores, min-max normalised over the split (a monotone map, as in
``rlmtf.eval.offline``), ranked per user by :func:`rlmtf.eval.gauc.weighted_gauc` with

- label = ``long_view`` (KuaiRand's valid view: play >= min(duration, 18 s); the environment's
  ``valid``). :attr:`RealGAUCResult.gauc_play10s` also reports label = play time > 10 s
  (the simulator's label, ``docs/design.md#weighted-gauc``);
- weight = r + 1, r = :func:`rlmtf.core.reward.item_reward` of the real behaviours: watch_time = play_time_ms
  / 1000 s, valid = long_view, like = is_like, share = is_forward, follow = is_follow, comment =
  is_comment, collect = 0 (KuaiRand has no collect). Play times are not capped (the log's maximum is
  about 15 minutes).

Users with one label only are left out and counted (``n_users_skipped``).

**Caveats**: the training split (``split="train"``, used to tune fixed fusions) is in-sample for the MTL
model and for the user / item statistics in the observation (computed over all 10 training days, the
row's own day included); the test split is clean. A policy trained on another feature spec (the default
simulator's) is refused with an error naming the groups that differ; a policy that ranks by the
simulator's true probabilities (``oracle``) is refused (the real log has none).

API: :class:`RealGAUCEvaluator` (prepare a split once, then :meth:`~RealGAUCEvaluator.policy_gauc`,
:meth:`~RealGAUCEvaluator.fixed_gauc`, :meth:`~RealGAUCEvaluator.score_gauc`,
:meth:`~RealGAUCEvaluator.paired_bootstrap`, :meth:`~RealGAUCEvaluator.as_logged` for
``rlmtf.pipelines.fixed_search``) and the one-call :func:`real_gauc`, :func:`score_gauc`, :func:`fixed_gauc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rlmtf.core import rng as crng
from rlmtf.core.fusion import MTL_TASKS, ActionSpace, fused_log_score
from rlmtf.core.reward import RewardWeights, item_reward
from rlmtf.core.schema import DatasetMeta, FeatureSpec
from rlmtf.data.io import LoggedData
from rlmtf.envs.kuairand.data import KuaiRandData
from rlmtf.envs.kuairand.env import KuaiRandEnv
from rlmtf.envs.kuairand.fit import FittedKuaiRand
from rlmtf.envs.kuairand.paths import KuaiRandDataError
from rlmtf.eval.gauc import min_max_normalise, weighted_gauc
from rlmtf.policy.base import Policy, RequestObs, check_actions, space_of

__all__ = ["PLAY_THRESHOLD_S", "SPLITS", "BootstrapDiff", "RealGAUCEvaluator", "RealGAUCResult", "RealRows",
           "check_policy_spec", "fixed_gauc", "policy_feature_spec", "real_gauc", "real_rows", "score_gauc"]

SPLITS = ("train", "test")
#: The second label: play time above this many seconds (the simulator's "watch time > 10 s",
#: ``docs/design.md#weighted-gauc``).
PLAY_THRESHOLD_S = 10.0
_MS_PER_HOUR = 3_600_000
_BEIJING_OFFSET_H = 8  # as rlmtf.envs.kuairand.usage (the environment's hour-of-day histogram)


# --- the rows ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RealRows:
    """The real impressions of one split, with what every evaluation needs (arrays of n rows)."""

    split: str
    user: np.ndarray  # (n,) int64 user rows (= KuaiRand user_id, the rows of user_features_pure.csv)
    item: np.ndarray  # (n,) int64 video rows
    time_ms: np.ndarray  # (n,) int64
    mtl_scores: np.ndarray  # (n, 5) float32, MTL_TASKS order
    long_view: np.ndarray  # (n,) int8: the label
    play10s: np.ndarray  # (n,) int8: play time > PLAY_THRESHOLD_S, the second label
    reward: np.ndarray  # (n,) float64 r of the real behaviours

    def __len__(self) -> int:
        return len(self.user)

    @property
    def weight(self) -> np.ndarray:
        """Sample weight r + 1 (``docs/design.md#weighted-gauc``)."""
        return self.reward + 1.0

    @property
    def hour_angle(self) -> np.ndarray:
        """Hour of day (Beijing time) of each row as an angle in [0, 2 pi), the environment's context."""
        hours = ((self.time_ms / _MS_PER_HOUR) + _BEIJING_OFFSET_H) % 24.0
        return hours / 24.0 * 2 * np.pi


def _check_compatible(fitted: FittedKuaiRand, data: KuaiRandData) -> None:
    b = fitted.features
    for what, n_data, n_fit in (("users", len(data.users.ids), b.n_users), ("videos", len(data.items.ids),
                                                                              b.n_items)):
        if n_data != n_fit:
            raise KuaiRandDataError(f"the data has {n_data} {what} but the fitted models {n_fit}: they come from "
                                    "different KuaiRand-Pure files")


def real_rows(fitted: FittedKuaiRand, data: KuaiRandData, split: str = "test",
              reward: RewardWeights = RewardWeights()) -> RealRows:
    """The rows of ``split`` ("train": 2022-04-25..05-04, "test": 05-05..08) with their MTL scores, labels and
    real rewards (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_compatible(fitted, data)
    x = getattr(data, split)
    if len(x) == 0:
        raise ValueError(f"the {split} split of {data.root} has no rows")
    scores = np.ascontiguousarray(fitted.mtl.scores(x.user, x.item), dtype=np.float32)
    n = len(x)
    behaviours = {"watch_time": x.play_time_ms / 1000.0, "valid": x.long_view, "like": x.like, "share": x.forward,
                  "collect": np.zeros(n, np.int8), "follow": x.follow, "comment": x.comment}
    return RealRows(split=split, user=np.asarray(x.user, np.int64), item=np.asarray(x.item, np.int64),
                    time_ms=np.asarray(x.time_ms, np.int64), mtl_scores=scores,
                    long_view=np.asarray(x.long_view, np.int8),
                    play10s=(x.play_time_ms > PLAY_THRESHOLD_S * 1000).astype(np.int8),
                    reward=item_reward(behaviours, reward))


# --- results ----------------------------------------------------------------------------------------------

@dataclass
class RealGAUCResult:
    """Weighted GAUC of one ranking on the real interactions of a split."""

    policy: str
    gauc: float
    """Label long_view (the primary metric)."""
    n_users: int
    n_users_skipped: int
    rows: int
    split: str = "test"
    gauc_play10s: float = float("nan")
    """The same ranking against label play time > 10 s."""
    n_users_play10s: int = 0
    n_users_skipped_play10s: int = 0
    level: str = "user"
    """user / item (a policy's action level), or score (one MTL score)."""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BootstrapDiff:
    """Paired user-bootstrap of GAUC(a) - GAUC(b) on the same rows."""

    diff: float
    """GAUC(a) - GAUC(b) on the full sample."""
    ci_low: float
    ci_high: float
    """Percentile interval of the bootstrap differences."""
    p_value: float
    """Two-sided: 2 * min(share of replicates <= 0, share >= 0), floored at 1 / n_boot."""
    n_boot: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# --- feature-spec checks ----------------------------------------------------------------------------------

def policy_feature_spec(policy: Policy) -> FeatureSpec | None:
    """The feature spec a policy was trained on (trained algorithms and their exploration wrappers), or None
    for policies that read no features (fixed fusions)."""
    seen = 0
    p: object | None = policy
    while p is not None and seen < 8:
        spec = getattr(p, "spec", None)
        if spec is None:
            spec = getattr(getattr(p, "algo", None), "spec", None)
        if isinstance(spec, FeatureSpec):
            return spec
        p, seen = getattr(p, "base", None), seen + 1
    return None


def _spec_difference(got: FeatureSpec, want: FeatureSpec) -> str:
    parts = []
    for g in ("user_profile", "user_history", "context", "item_features"):
        a, b = getattr(got, g), getattr(want, g)
        if a != b:
            how = f"{a.dim} vs {b.dim} dims" if a.dim != b.dim else "same size, other features"
            parts.append(f"{g} ({how})")
    if got.mtl_tasks != want.mtl_tasks:
        parts.append(f"mtl_tasks ({list(got.mtl_tasks)} vs {list(want.mtl_tasks)})")
    if got.action_dim != want.action_dim:
        parts.append(f"action_dim ({got.action_dim} vs {want.action_dim})")
    return ", ".join(parts) or "unknown"


def check_policy_spec(policy: Policy, spec: FeatureSpec) -> None:
    """Refuse a policy trained on another feature spec than the KuaiRand environment's, naming what differs."""
    got = policy_feature_spec(policy)
    if got is not None and got != spec:
        raise ValueError(
            f"policy {policy.name!r}: feature spec mismatch: it was trained on a feature spec that differs from "
            f"the KuaiRand environment's in {_spec_difference(got, spec)} (policy vs environment). It was "
            "probably trained on data of another environment (e.g. the default simulator); train it on "
            "exploration data of the KuaiRand environment (make_env('kuairand'), `--env kuairand`)")
    if policy.score_source != "mtl":
        raise ValueError(f"policy {policy.name!r} ranks by the simulator's true scores ({policy.score_source!r}); "
                         "the real KuaiRand log has no true probabilities, only MTL scores")


# --- the evaluator ----------------------------------------------------------------------------------------

class RealGAUCEvaluator:
    """Weighted GAUC of rankings on the real interactions of one KuaiRand-Pure split (module docstring).

    ``fitted`` is the environment policies were trained in (:class:`KuaiRandEnv`, e.g. from ``make_env``) or
    its fitted models (:class:`FittedKuaiRand`; the environment is then built with the default config and
    usage statistics of ``data``'s training days, which do not enter the observation). ``space`` and
    ``reward`` default to the environment's ``cfg.action_space`` and ``cfg.reward``."""

    def __init__(self, fitted: FittedKuaiRand | KuaiRandEnv, data: KuaiRandData, *, split: str = "test",
                 space: ActionSpace | None = None, reward: RewardWeights | None = None, batch_rows: int = 16384):
        if isinstance(fitted, KuaiRandEnv):
            env = fitted
        elif isinstance(fitted, FittedKuaiRand):
            from rlmtf.envs.kuairand.usage import usage_stats

            _check_compatible(fitted, data)
            env = KuaiRandEnv(fitted, usage_stats(data))
        else:
            raise TypeError(f"fitted must be a FittedKuaiRand or a KuaiRandEnv, got {type(fitted).__name__}")
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self.space = env.cfg.action_space if space is None else space
        self.reward = env.cfg.reward if reward is None else reward
        self.env, self.batch_rows = env, batch_rows
        self.rows = real_rows(env.fitted, data, split, self.reward)
        # the environment's initial user state at the first request of the first session of a day
        all_users = np.arange(env.cfg.n_users)
        st = env.user_state(all_users)
        st.sessions_today[:] = 1
        self.user_history = np.ascontiguousarray(st.history(all_users), dtype=np.float32)  # (U, H)
        self._hour = self.rows.hour_angle

    @property
    def spec(self) -> FeatureSpec:
        return self.env.spec

    @property
    def split(self) -> str:
        return self.rows.split

    def __len__(self) -> int:
        return len(self.rows)

    # --- observations and scores ------------------------------------------------------------------------

    def observe(self, idx: np.ndarray) -> RequestObs:
        """The observation of rows ``idx``: one request per row, its item the only candidate."""
        r, env = self.rows, self.env
        idx = np.asarray(idx, np.int64)
        u, hour = r.user[idx], self._hour[idx]
        b = len(idx)
        context = np.column_stack([np.sin(hour), np.cos(hour), np.zeros(b), np.zeros(b)]).astype(np.float32)
        return RequestObs(user_id=u, request_key=crng.key(u, r.time_ms[idx]), user_profile=env.profile_table[u],
                          user_history=self.user_history[u], context=context, item_id=r.item[idx][:, None],
                          mtl_scores=r.mtl_scores[idx][:, None, :], item_table=env.item_table)

    def actions(self, policy: Policy) -> np.ndarray:
        """The policy's action (n, A) on every row (user- or item-level alike: one candidate per request)."""
        check_policy_spec(policy, self.spec)
        n = len(self.rows)
        dim = space_of(policy, self.space).dim
        out = np.empty((n, dim), np.float32)
        for lo in range(0, n, self.batch_rows):
            idx = np.arange(lo, min(lo + self.batch_rows, n))
            obs = self.observe(idx)
            try:
                a = np.asarray(policy.act(obs))
            except RuntimeError as e:  # a network fed inputs of the wrong width
                raise ValueError(f"policy {policy.name!r} cannot act on the KuaiRand observations (feature spec "
                                 f"user state {self.spec.user_state_dim}, enhanced state "
                                 f"{self.spec.enhanced_state_dim} dims): {e}") from e
            a = check_actions(a, obs, "item" if a.ndim == 3 else "user", policy.name, dim)
            out[idx] = a.reshape(len(idx), dim)
        return out

    def log_scores_of_actions(self, actions: np.ndarray, space: ActionSpace | None = None) -> np.ndarray:
        """log(final score) (n,) of per-row actions (n, A), or of one action (A,) for every row, in ``space``
        (default: the environment's)."""
        a = np.asarray(actions, np.float64)
        space = space or self.space
        dim = space.dim
        if a.shape not in ((dim,), (len(self.rows), dim)):
            raise ValueError(f"actions must have shape ({dim},) or ({len(self.rows)}, {dim}), got {a.shape}")
        if not np.isfinite(a).all() or (np.abs(a) > 1 + 1e-6).any():
            raise ValueError("actions must be finite and in [-1, 1]")
        return fused_log_score(self.rows.mtl_scores.astype(np.float64), a, space)

    def predictions(self, policy: Policy) -> np.ndarray:
        """The policy's min-max normalised fused scores (n,) in row order."""
        return min_max_normalise(self.log_scores_of_actions(self.actions(policy), space_of(policy, self.space)))

    # --- metrics ------------------------------------------------------------------------------------------

    def result(self, pred: np.ndarray, name: str, level: str = "user") -> RealGAUCResult:
        """Both GAUCs of a prediction (n,) (any scores: only the order within each user matters)."""
        r = self.rows
        pred = np.asarray(pred, np.float64)
        if pred.shape != (len(r),):
            raise ValueError(f"pred must have shape ({len(r)},), got {pred.shape}")
        w = r.weight
        g = weighted_gauc(r.user, r.long_view, pred, w)
        g10 = weighted_gauc(r.user, r.play10s, pred, w)
        return RealGAUCResult(policy=name, gauc=float(g.gauc), n_users=g.n_users, n_users_skipped=g.n_users_skipped,
                              rows=len(r), split=r.split, gauc_play10s=float(g10.gauc), n_users_play10s=g10.n_users,
                              n_users_skipped_play10s=g10.n_users_skipped, level=level)

    def policy_gauc(self, policy: Policy) -> RealGAUCResult:
        level = "item" if policy.level == "item" else "user"
        return self.result(self.predictions(policy), policy.name, level)

    def fixed_gauc(self, action: np.ndarray, name: str = "fixed") -> RealGAUCResult:
        """GAUC of one fixed action (A,) for every row (the fast path: no observations)."""
        return self.result(min_max_normalise(self.log_scores_of_actions(action)), name, "user")

    def score_gauc(self, task: str | int) -> RealGAUCResult:
        """GAUC of ranking by one MTL score alone (a task name of ``MTL_TASKS`` or its index)."""
        k = MTL_TASKS.index(task) if isinstance(task, str) and task in MTL_TASKS else task
        if not isinstance(k, int | np.integer) or not 0 <= int(k) < len(MTL_TASKS):
            raise ValueError(f"unknown MTL task {task!r}; known: {', '.join(MTL_TASKS)}")
        pred = min_max_normalise(self.rows.mtl_scores[:, int(k)].astype(np.float64))
        return self.result(pred, f"mtl:{MTL_TASKS[int(k)]}", "score")

    def paired_bootstrap(self, pred_a: np.ndarray | Sequence[np.ndarray], pred_b: np.ndarray, *,
                         label: str = "long_view", n_boot: int = 200, seed: int = 0) -> BootstrapDiff:
        """GAUC(pred_a) - GAUC(pred_b) with a percentile interval over users resampled with replacement.

        ``pred_a`` may be a list of predictions (e.g. one per training seed): the statistic is then the mean
        over the list of GAUC(a_k) - GAUC(b), every replicate resampling the same users for all of them.
        A user drawn c times enters the GAUC with weight c * W_u and an unchanged AUC_u, which is exactly
        multiplying the user's sample weights by c: each replicate is one ``weighted_gauc`` call per ranking."""
        r = self.rows
        y = {"long_view": r.long_view, "play10s": r.play10s}.get(label)
        if y is None:
            raise ValueError(f"label must be long_view or play10s, got {label!r}")
        if n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {n_boot}")
        many = [np.asarray(p, np.float64) for p in (pred_a if isinstance(pred_a, list | tuple) else [pred_a])]
        for p in [*many, np.asarray(pred_b)]:
            if p.shape != (len(r),):
                raise ValueError(f"predictions must have shape ({len(r)},), got {p.shape}")
        users, inv = np.unique(r.user, return_inverse=True)
        w = r.weight
        rng = np.random.default_rng(seed)

        def diff(ww: np.ndarray) -> float:
            base = weighted_gauc(r.user, y, pred_b, ww).gauc
            return float(np.mean([weighted_gauc(r.user, y, p, ww).gauc for p in many])) - base

        diffs = np.empty(n_boot)
        for j in range(n_boot):
            c = rng.multinomial(len(users), np.full(len(users), 1.0 / len(users))).astype(np.float64)
            diffs[j] = diff(w * c[inv])
        lo, hi = np.quantile(diffs, [0.025, 0.975])
        p = 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())
        return BootstrapDiff(diff=diff(w), ci_low=float(lo), ci_high=float(hi),
                             p_value=float(min(max(p, 1.0 / n_boot), 1.0)), n_boot=n_boot)

    def as_logged(self) -> LoggedData:
        """The split as an in-memory :class:`LoggedData` holding the columns ``rlmtf.pipelines.fixed_search`` reads
        (user_id, valid = long_view, reward = the real reward, mtl_scores), for tuning a fixed fusion."""
        r = self.rows
        n = len(r)
        cols = {"user_id": r.user, "valid": r.long_view, "reward": r.reward.astype(np.float32),
                "mtl_scores": r.mtl_scores}
        meta = DatasetMeta(feature_spec=self.spec, list_len=1,
                           info={"source": "KuaiRand-Pure real interactions", "split": r.split})
        return LoggedData(meta=meta, columns=cols, files=[f"kuairand:{r.split}"], file_index=np.zeros(n, np.int32),
                          file_row=np.arange(n, dtype=np.int64))


# --- one-call helpers -------------------------------------------------------------------------------------

def real_gauc(policy: Policy, fitted: FittedKuaiRand | KuaiRandEnv, data: KuaiRandData, *, split: str = "test",
              space: ActionSpace | None = None, reward: RewardWeights | None = None) -> RealGAUCResult:
    """Weighted GAUC of ``policy`` on the real interactions of ``split`` (module docstring). To evaluate
    several rankings on one split, build one :class:`RealGAUCEvaluator` instead (the MTL scores are computed
    once)."""
    return RealGAUCEvaluator(fitted, data, split=split, space=space, reward=reward).policy_gauc(policy)


def score_gauc(task: str, fitted: FittedKuaiRand | KuaiRandEnv, data: KuaiRandData, *,
               split: str = "test") -> RealGAUCResult:
    """Weighted GAUC of ranking by the single MTL score ``task``."""
    return RealGAUCEvaluator(fitted, data, split=split).score_gauc(task)


def fixed_gauc(action: np.ndarray, fitted: FittedKuaiRand | KuaiRandEnv, data: KuaiRandData, *,
               split: str = "test", space: ActionSpace | None = None, name: str = "fixed") -> RealGAUCResult:
    """Weighted GAUC of one fixed action for every row."""
    return RealGAUCEvaluator(fitted, data, split=split, space=space).fixed_gauc(action, name)
