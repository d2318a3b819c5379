"""Every simulator parameter, in one typed config with documented defaults.

Override any of them from a YAML or TOML file with the same nesting, e.g.::

    # sim.toml
    n_users = 5000
    [behaviour]
    like_bias = -2.8
    [session]
    leave_bias = -2.2

``load_sim_config(path)`` applies the file on top of the defaults; an unknown key or a value of the
wrong type is an error that names it. ``rlmtf sim config`` prints the resolved config as TOML.
The behaviour defaults are calibrated to KuaiRand-Pure under the baseline policy
(``rlmtf sim calibrate`` shows simulated against real rates).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlmtf.core.config_io import ConfigError, build, check_values, load_config_file, to_dict
from rlmtf.core.fusion import ActionSpace
from rlmtf.core.reward import RewardWeights
from rlmtf.envs.consumption import ConsumptionConfig

#: The in-order offsets calibrated for the default simulator (``rlmtf sim calibrate --fit-in-order``, the
#: baseline policy, users 0..4,999 x 2 days, seed 12345: 28.12 consumed items per session against 28.13 under
#: "all", 1.911 sessions per user-day against 1.907; at offsets 0 in-order consumption alone gives 26.35 and
#: 1.891).
IN_ORDER_OFFSETS = {"leave_offset": -0.135, "return_offset": 0.056}


@dataclass(frozen=True)
class ItemConfig:
    """The catalogue: category, duration, quality, freshness and the clickbait trait."""

    category_concentration: float = 2.0
    """Dirichlet concentration of the category shares of the catalogue (smaller = more skewed)."""
    duration_median_s: float = 60.0
    """Median video duration in seconds (KuaiRand-Pure's logged median is 70.6 s)."""
    duration_sigma: float = 0.8
    """Log-normal sigma of durations; durations are clipped to [duration_min_s, duration_max_s]."""
    duration_min_s: float = 5.0
    duration_max_s: float = 600.0
    quality_sigma: float = 1.0
    """Standard deviation of the latent item quality (shared by all users)."""
    clickbait_fraction: float = 0.12
    """Share of items with a clickbait trait cb ~ U(0.5, 1); the rest have cb = 0. Clickbait raises
    click and valid-view rates but lowers finish, like and the viewer's satisfaction."""
    age_mean_days: float = 6.0
    """Mean item age (exponential); items younger than ``fresh_days`` form the fresh segment."""
    fresh_days: float = 1.0
    sensational_noise: float = 0.35
    """Noise of the observable 'sensational title' feature, a noisy reading of the clickbait trait."""
    popularity_noise: float = 0.15
    """Noise of the observable historical valid rate, multiplied by 3 for fresh items (few impressions)."""


@dataclass(frozen=True)
class UserConfig:
    """The population: latent interests and taste, activity, patience; observable profile."""

    interest_concentration: float = 0.3
    """Dirichlet concentration of each user's true interest over categories (small = focused)."""
    latent_dim: int = 8
    """Dimension of the latent user-taste and item-style vectors whose dot product adds affinity."""
    observed_top_k: int = 3
    """The profile shows the top-k interests read off a noisy copy of the true interest."""
    interest_observation_noise: float = 0.05
    """Uniform noise added to the true interest before its top-k categories are read off for the profile."""
    activity_a: float = 2.0
    """Activity ~ Beta(activity_a, activity_b) in [0, 1]: engagement, return rate and MTL accuracy."""
    activity_b: float = 2.0
    patience_sigma: float = 0.4
    """Per-user offset of the leave logit (N(0, sigma)); higher patience = longer sessions."""
    base_satisfaction_mean: float = 0.3
    """Each user's base satisfaction ~ N(mean, sigma): where sessions start and what returning compares to."""
    base_satisfaction_sigma: float = 0.1
    clickbait_susceptibility: tuple[float, float] = (0.5, 1.5)
    """Uniform range of how strongly a user is drawn in by clickbait (and later disappointed)."""


@dataclass(frozen=True)
class BehaviourConfig:
    """True behaviour model: engagement, click, watch ratio and interactions given user and item."""

    interest_weight: float = 0.7
    """Affinity = interest_weight * log(C * interest[cat] + 0.1) + taste_weight * <u, v> + quality."""
    taste_weight: float = 1.0
    quality_weight: float = 0.5
    engage_bias: float = -2.699
    """Logit offset of P(engage): the user watches the item with intent rather than skipping it."""
    engage_activity: float = 0.8
    """Active users engage more: + engage_activity * (activity - 0.5)."""
    engage_clickbait: float = 1.2
    """Clickbait pulls users in: + engage_clickbait * cb * susceptibility."""
    engage_fatigue: float = 0.8
    """Fatigue lowers engagement: - engage_fatigue * fatigue."""
    click_bias: float = -0.794
    click_engaged: float = 2.4
    click_clickbait: float = 1.0
    skip_zero_prob: float = 0.15
    """Probability that a skipped (not engaged) item is not played at all (play time 0)."""
    skip_seconds_median: float = 3.0
    """A skip lasts a few seconds whatever the duration: log-normal play time in seconds."""
    skip_seconds_sigma: float = 1.1
    engaged_ratio_median: float = 0.569
    """Median watch ratio of an engaged view of an average item at the median duration."""
    engaged_ratio_sigma: float = 0.109
    ratio_affinity: float = 0.15
    ratio_quality: float = 0.1
    ratio_clickbait: float = 1.6
    """Clickbait views are cut short: log-ratio - ratio_clickbait * cb."""
    ratio_duration: float = 0.35
    """Longer videos are watched to a smaller fraction: log-ratio - ratio_duration * log(d / median)."""
    max_watch_ratio: float = 4.0
    clickbait_hook_s: float = 12.0
    """An engaged clickbait view lasts at least this long (the hook), so it counts as valid."""
    valid_threshold_s: float = 10.0
    """Valid consumption: watch time strictly greater than this."""
    like_bias: float = -4.689
    """Interaction logits, applied to engaged views only: bias + affinity + quality - clickbait."""
    share_bias: float = -7.795
    collect_bias: float = -4.4
    follow_bias: float = -7.388
    comment_bias: float = -6.716
    interaction_affinity: float = 0.6
    interaction_quality: float = 0.6
    interaction_clickbait: float = 2.0


@dataclass(frozen=True)
class MTLConfig:
    """The imperfect multi-task model: logit(score) = slope * logit(truth) + bias + noise.

    Errors depend on the item segment (fresh, short, long, category) and on user activity, which is
    why a fusion that can differ per item may beat one action per user."""

    watch_time_cap_s: float = 120.0
    """The watch_time task predicts expected seconds / cap, clipped to [0, 1]."""
    base_noise: float = 0.2
    """Per-(user, item, day) noise of every task's logit, for a fully active user."""
    inactive_noise: float = 0.4
    """Extra noise for inactive users: noise = base_noise + inactive_noise * (1 - activity)."""
    inactive_slope: float = 0.35
    """Calibration slope shrinks for inactive users: slope = 1 - inactive_slope * (1 - activity)."""
    fresh_noise: float = 0.4
    """Extra noise on fresh items (cold start)."""
    fresh_interaction_bias: float = 0.6
    """Fresh items: like and share logits over-estimated by this."""
    short_valid_bias: float = 0.8
    """Items shorter than short_s: the valid logit is over-estimated (they are easy to 'watch')."""
    short_s: float = 15.0
    long_s: float = 180.0
    long_watch_bias: float = -0.5
    """Items longer than long_s: the watch_time logit is under-estimated, finish over-estimated."""
    long_finish_bias: float = 0.5
    clickbait_finish_bias: float = 0.8
    """Clickbait: finish and like over-estimated (the model learnt them from click-heavy logs)."""
    category_bias_sigma: float = 0.3
    """A fixed miscalibration per (category, task), N(0, sigma) on the logit."""


@dataclass(frozen=True)
class SessionConfig:
    """Session dynamics: satisfaction moved by feedback, fatigue, and the leave probability."""

    satisfaction_rate: float = 0.35
    """S <- (1 - rate) * S + rate * mean item satisfaction of the request."""
    sat_watch: float = 1.0
    """Item satisfaction = sat_watch * min(ratio, 1.2) + sat_like * like + sat_interact * (share +
    collect + follow + comment) - sat_clickbait * cb * engaged * susceptibility - sat_invalid * (not valid)."""
    sat_like: float = 0.8
    sat_interact: float = 1.0
    sat_clickbait: float = 1.5
    sat_invalid: float = 0.25
    fatigue_decay: float = 0.75
    """F <- decay * F + fatigue_repeat * (share of shown items whose category was just seen) +
    fatigue_clickbait * mean clickbait of the shown items."""
    fatigue_repeat: float = 0.5
    fatigue_clickbait: float = 0.8
    leave_bias: float = -2.6
    """Leave logit per request = leave_bias - leave_satisfaction * S + leave_fatigue * F - patience
    + leave_per_request * t."""
    leave_satisfaction: float = 2.5
    leave_fatigue: float = 1.2
    leave_per_request: float = 0.02
    max_requests: int = 60
    """A session is cut after this many requests (the user is done for now)."""
    start_carry: float = 0.5
    """A session starts at S = (1 - carry) * base satisfaction + carry * the user's long-term satisfaction."""
    long_term_rate: float = 0.3
    """Long-term satisfaction <- (1 - rate) * itself + rate * satisfaction at session end."""


@dataclass(frozen=True)
class DayConfig:
    """Days: users open several sessions a day, fewer after unsatisfying ones."""

    active_bias: float = 2.0
    """P(user opens the app on a day) = sigmoid(active_bias + active_activity * (activity - 0.5)
    + active_satisfaction * (long-term satisfaction - base satisfaction))."""
    active_activity: float = 2.0
    active_satisfaction: float = 3.0
    return_bias: float = 1.0
    """P(another session today after session k) = sigmoid(return_bias + return_satisfaction *
    (S_end - base satisfaction) + return_activity * (activity - 0.5) - return_per_session * k)."""
    return_satisfaction: float = 3.0
    return_activity: float = 2.0
    return_per_session: float = 0.45
    max_sessions_per_day: int = 8


@dataclass(frozen=True)
class RetrievalConfig:
    """The retrieval step that supplies candidates to the ranking stage."""

    n_candidates: int = 100
    interest_mix: float = 0.6
    """Candidate categories are drawn from interest_mix * true interest + (1 - mix) * catalogue shares."""


@dataclass(frozen=True)
class SimConfig:
    """The whole simulator. ``world_seed`` fixes users, items and the MTL model's fixed errors; the
    seed of a run (``--seed``) fixes everything that happens in it."""

    n_users: int = 20_000
    n_items: int = 10_000
    n_categories: int = 16
    list_len: int = 5
    """l, the number of items shown per request."""
    world_seed: int = 0
    max_concurrent_sessions: int = 2048
    """Sessions simulated together in one vectorised batch (memory, not semantics: results do not
    depend on it)."""
    items: ItemConfig = field(default_factory=ItemConfig)
    users: UserConfig = field(default_factory=UserConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    mtl: MTLConfig = field(default_factory=MTLConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    days: DayConfig = field(default_factory=DayConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    reward: RewardWeights = field(default_factory=RewardWeights)
    action_space: ActionSpace = field(default_factory=ActionSpace)
    consumption: ConsumptionConfig = field(default_factory=lambda: ConsumptionConfig(**IN_ORDER_OFFSETS))
    """How lists are consumed: all of them (the default, the papers' assumption) or in rank order with a
    leave chance after every item (``mode = "in_order"``, ``docs/design.md#in-order-consumption``)."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validate(self) -> None:
        """:class:`ConfigError` naming every key whose value makes no sense with the others (the checks of
        one value alone, types, finite numbers and ranges, are :func:`rlmtf.core.config_io.check_values`)."""
        it, us, mtl, r = self.items, self.users, self.mtl, self.retrieval
        problems = self.consumption.check()
        for name in ("n_users", "n_items", "n_categories"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.list_len <= r.n_candidates:
            problems.append(f"list_len must be in [1, retrieval.n_candidates={r.n_candidates}], got {self.list_len}")
        if us.observed_top_k > self.n_categories >= 1:
            problems.append(f"users.observed_top_k ({us.observed_top_k}) must be <= n_categories ({self.n_categories})")
        if not 0 < it.duration_min_s <= it.duration_median_s <= it.duration_max_s:
            problems.append("items: need 0 < duration_min_s <= duration_median_s <= duration_max_s, got "
                            f"{it.duration_min_s}, {it.duration_median_s}, {it.duration_max_s}")
        if min(us.activity_a, us.activity_b) <= 0:
            problems.append("users.activity_a and users.activity_b must be > 0 (a Beta distribution)")
        if self.users.clickbait_susceptibility[0] < 0:
            problems.append("users.clickbait_susceptibility must be >= 0")
        if self.behaviour.max_watch_ratio <= 0 or self.behaviour.skip_seconds_median <= 0 \
                or self.behaviour.engaged_ratio_median <= 0:
            problems.append("behaviour.max_watch_ratio, skip_seconds_median and engaged_ratio_median must be > 0")
        if mtl.watch_time_cap_s <= 0:
            problems.append(f"mtl.watch_time_cap_s must be > 0, got {mtl.watch_time_cap_s}")
        if mtl.short_s > mtl.long_s:
            problems.append(f"mtl.short_s ({mtl.short_s}) must be <= mtl.long_s ({mtl.long_s})")
        if self.session.max_requests < 1 or self.days.max_sessions_per_day < 1:
            problems.append("session.max_requests and days.max_sessions_per_day must be >= 1")
        if problems:
            raise ConfigError("sim config: " + "; ".join(problems))


def sim_config_from_dict(d: dict[str, Any]) -> SimConfig:
    """Defaults overridden by the (nested) dict ``d``, checked as a config file is."""
    cfg = build(SimConfig, d)
    problems = check_values(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    cfg.validate()
    return cfg


def load_sim_config(path: str | Path | None) -> SimConfig:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON file of overrides; None gives the defaults."""
    return load_config_file(SimConfig, path, "sim config")


def to_toml(cfg: SimConfig) -> str:
    """Render a config as TOML (for ``rlmtf sim config`` and run directories)."""
    d = cfg.to_dict()
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v) if isinstance(v, float | int) else json.dumps(v)

    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {fmt(v)}")
    for name, t in tables:
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {fmt(v)}" for k, v in t.items()]
    return "\n".join(lines) + "\n"
