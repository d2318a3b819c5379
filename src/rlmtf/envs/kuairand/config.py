"""The KuaiRand environment's configuration: retrieval, the leave and return model, and the shared
settings (``env.py``'s module docstring says what each number means and which come from the log)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rlmtf.core.config_io import ConfigError, load_config_file, to_dict
from rlmtf.core.fusion import ActionSpace
from rlmtf.core.reward import RewardWeights
from rlmtf.envs.consumption import ConsumptionConfig


@dataclass(frozen=True)
class RetrievalConfig:
    """Where the candidates come from (see the module docstring)."""

    n_candidates: int = 100
    interest_share: float = 0.5
    """Share of candidates drawn from the user's tags."""
    popular_share: float = 0.3
    """Share drawn in proportion to training-day impressions; the rest are uniform over the catalogue."""
    tag_prior: float = 2.0
    """Pseudo-views of the catalogue-wide tag distribution added to each user's tag counts (> 0)."""
    pre_weight: float = 0.5
    """Weight of a pre-period watched video's tags relative to a training-day view's."""
    popular_prior: float = 1.0
    """Pseudo-impressions added to every item in the popularity draw (cold items stay reachable)."""


@dataclass(frozen=True)
class SessionConfig:
    """The per-request leave model (see the module docstring; numbers marked *data* come from the log)."""

    leave_offset: float = 0.12
    """Calibrated (``calibrate_offsets``) so the baseline policy's mean session length is the log's 1.215
    requests, with the full fitted models."""
    leave_no_long_view: float = 1.0
    """Assumption: + this on the leave logit after a request whose shown items had no long view."""
    leave_like: float = 0.7
    """Assumption: - this on the leave logit after a request with at least one like."""
    length_smoothing: float = 5.0
    """Pseudo-sessions of the log-wide mean length (*data*: 1.215) in each user's mean session length."""
    max_requests: int = 30
    """Sessions are cut after this many requests."""


@dataclass(frozen=True)
class DayConfig:
    """Active days and sessions per day (see the module docstring)."""

    active_smoothing: float = 2.0
    """Pseudo-days of the log-wide active share (*data*: 0.326) in each user's P(active)."""
    sessions_smoothing: float = 2.0
    """Pseudo active days of the log-wide sessions per active day (*data*: 1.589) in each user's rate."""
    return_long_view: float = 1.0
    """Assumption: + this * (the session's long-view share - the user's logged rate) on the return logit."""
    return_offset: float = -0.15
    """Calibrated (``calibrate_offsets``) so the baseline policy's sessions per active user-day are the log's
    1.589, with the full fitted models."""
    max_sessions_per_day: int = 13
    """*Data*: the most sessions one user had on one training day."""


#: The in-order offsets calibrated on the full fitted models (``rlmtf.envs.kuairand.calibrate.fit_in_order``:
#: the baseline policy, users 0..29,999 x 2 days, seed 0): 6.08 consumed items per session and 0.517 sessions
#: per user-day, as with every list consumed. The leave offset is large because sessions here are short (1.2
#: requests): at offsets 0 most users would leave inside their first list (3.09 items per session, 0.478
#: sessions per user-day).
IN_ORDER_OFFSETS = {"leave_offset": -1.396, "return_offset": 0.182}


@dataclass(frozen=True)
class KuaiRandEnvConfig:
    """Everything the KuaiRand environment does beyond the fitted models. ``n_users`` / ``n_items`` are
    filled from the data (leave them 0 in a config file)."""

    env: str = "kuairand"
    n_users: int = 0
    n_items: int = 0
    list_len: int = 5
    """l, the number of items shown per request."""
    max_concurrent_sessions: int = 2048
    """Sessions simulated together in one vectorised batch (memory, not semantics)."""
    log_true_scores: bool = False
    """Log the response model's task probabilities of shown items (``true_scores``); about halves the speed."""
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    days: DayConfig = field(default_factory=DayConfig)
    reward: RewardWeights = field(default_factory=RewardWeights)
    action_space: ActionSpace = field(default_factory=ActionSpace)
    consumption: ConsumptionConfig = field(default_factory=lambda: ConsumptionConfig(**IN_ORDER_OFFSETS))
    """How lists are consumed: all of them (the default) or in rank order with a leave chance after every item
    (``mode = "in_order"``, ``docs/design.md#in-order-consumption``)."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validate(self) -> None:
        r = self.retrieval
        problems = self.consumption.check()
        if self.env != "kuairand":
            problems.append(f"env must be 'kuairand', got {self.env!r}")
        if not 1 <= self.list_len <= r.n_candidates:
            problems.append(f"list_len must be in [1, n_candidates={r.n_candidates}], got {self.list_len}")
        if self.max_concurrent_sessions < 1:
            problems.append("max_concurrent_sessions must be >= 1")
        if min(r.interest_share, r.popular_share) < 0 or r.interest_share + r.popular_share > 1:
            problems.append("retrieval shares must be >= 0 and sum to <= 1")
        if r.tag_prior <= 0 or r.popular_prior <= 0 or r.pre_weight < 0:
            problems.append("retrieval tag_prior and popular_prior must be > 0, pre_weight >= 0")
        if self.session.max_requests < 1 or self.days.max_sessions_per_day < 1:
            problems.append("session.max_requests and days.max_sessions_per_day must be >= 1")
        if min(self.session.length_smoothing, self.days.active_smoothing, self.days.sessions_smoothing) <= 0:
            problems.append("smoothing pseudo-counts must be > 0")
        if min(self.n_users, self.n_items) < 0:
            problems.append("n_users and n_items must be >= 0 (0: filled from the data)")
        if problems:
            raise ConfigError("KuaiRand environment config: " + "; ".join(problems))


def load_env_config(path: str | os.PathLike[str] | None) -> KuaiRandEnvConfig:
    """Defaults overridden by a TOML / YAML / JSON file of the same nesting (like ``load_sim_config``)."""
    return load_config_file(KuaiRandEnvConfig, path, "env config")
