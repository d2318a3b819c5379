"""The simulated world: an item catalogue and a user population, fixed by ``world_seed``.

Latent (hidden from policies): user interests over categories, user taste and item style vectors,
item quality, the clickbait trait, user patience, susceptibility to clickbait and base satisfaction.
Observable: the item features and the user profile below (and the behaviour history, which lives
in the simulator's per-user state because sessions update it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlmtf.core.schema import FeatureGroup, FeatureSpec
from rlmtf.envs.engine import CONTEXT_GROUP
from rlmtf.envs.sim.config import SimConfig


@dataclass
class Items:
    """The catalogue, one entry per item id 0..n_items-1 (arrays of length n_items)."""

    category: np.ndarray  # (I,) int64
    duration: np.ndarray  # (I,) float64, seconds
    quality: np.ndarray  # (I,) float64, latent
    clickbait: np.ndarray  # (I,) float64 in [0, 1], latent
    age_days: np.ndarray  # (I,) float64
    style: np.ndarray  # (I, d) float64, latent
    features: np.ndarray  # (I, F) float32, observable: see item_feature_group()
    by_category: np.ndarray  # (I,) item ids sorted by category
    category_start: np.ndarray  # (C,) start of each category's block in by_category
    category_count: np.ndarray  # (C,)
    category_share: np.ndarray  # (C,) share of the catalogue


@dataclass
class Users:
    """The population, one entry per user id 0..n_users-1."""

    interest: np.ndarray  # (U, C) true interest distribution, latent
    taste: np.ndarray  # (U, d) latent
    activity: np.ndarray  # (U,) in [0, 1], observable
    age: np.ndarray  # (U,) in [0, 1], observable (age bucket / 6)
    gender: np.ndarray  # (U,) 0/1, observable
    patience: np.ndarray  # (U,) latent
    susceptibility: np.ndarray  # (U,) latent
    base_satisfaction: np.ndarray  # (U,) latent
    observed_interest: np.ndarray  # (U, C) top-k multi-hot, observable
    profile: np.ndarray  # (U, P) float32 observable: see user_profile_group()


def item_feature_group(n_categories: int) -> FeatureGroup:
    return FeatureGroup((("category", n_categories), ("log_duration", 1), ("freshness", 1),
                         ("historical_valid_rate", 1), ("sensational_title", 1)))


def user_profile_group(n_categories: int) -> FeatureGroup:
    return FeatureGroup((("age", 1), ("gender", 1), ("activity", 1), ("top_interests", n_categories)))


def user_history_group(n_categories: int) -> FeatureGroup:
    return FeatureGroup((("recent_categories", n_categories), ("valid_rate", 1), ("watch_ratio", 1),
                         ("like_rate", 1), ("sessions_today", 1), ("minutes_today", 1),
                         ("last_session_length", 1), ("long_term_engagement", 1)))


def feature_spec(cfg: SimConfig) -> FeatureSpec:
    c = cfg.n_categories
    return FeatureSpec(user_profile=user_profile_group(c), user_history=user_history_group(c),
                       context=CONTEXT_GROUP, item_features=item_feature_group(c),
                       action_dim=cfg.action_space.dim)


def make_items(cfg: SimConfig, rng: np.random.Generator) -> Items:
    ic, n, c = cfg.items, cfg.n_items, cfg.n_categories
    share = rng.dirichlet(np.full(c, ic.category_concentration))
    category = rng.choice(c, size=n, p=share)
    duration = np.clip(ic.duration_median_s * np.exp(ic.duration_sigma * rng.standard_normal(n)),
                       ic.duration_min_s, ic.duration_max_s)
    quality = ic.quality_sigma * rng.standard_normal(n)
    is_cb = rng.random(n) < ic.clickbait_fraction
    clickbait = np.where(is_cb, rng.uniform(0.5, 1.0, n), 0.0)
    age = rng.exponential(ic.age_mean_days, n)
    style = rng.standard_normal((n, cfg.users.latent_dim)) / np.sqrt(cfg.users.latent_dim)
    fresh = age < ic.fresh_days
    # Observable features: what a content-understanding pipeline and item statistics would give.
    freshness = np.exp(-age / 3.0)
    pop_noise = ic.popularity_noise * np.where(fresh, 3.0, 1.0) * rng.standard_normal(n)
    popularity = 1.0 / (1.0 + np.exp(-(0.6 * quality + 0.8 * clickbait - 0.8 + pop_noise)))
    sensational = clickbait + ic.sensational_noise * rng.standard_normal(n)
    log_dur = (np.log(duration) - np.log(ic.duration_median_s)) / max(ic.duration_sigma, 1e-6)
    onehot = np.eye(c)[category]
    features = np.column_stack([onehot, log_dur, freshness, popularity, sensational]).astype(np.float32)
    order = np.argsort(category, kind="stable")
    count = np.bincount(category, minlength=c)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    if (count == 0).any():
        raise ValueError(f"n_items={n} leaves category {int(np.argmin(count))} empty; use more items")
    return Items(category=category, duration=duration, quality=quality, clickbait=clickbait, age_days=age,
                 style=style, features=np.ascontiguousarray(features), by_category=order,
                 category_start=start, category_count=count, category_share=count / n)


def make_users(cfg: SimConfig, rng: np.random.Generator) -> Users:
    uc, n, c = cfg.users, cfg.n_users, cfg.n_categories
    interest = rng.dirichlet(np.full(c, uc.interest_concentration), size=n)
    taste = rng.standard_normal((n, uc.latent_dim)) / np.sqrt(uc.latent_dim)
    activity = rng.beta(uc.activity_a, uc.activity_b, n)
    age = rng.integers(0, 7, n) / 6.0
    gender = rng.integers(0, 2, n).astype(np.float64)
    patience = uc.patience_sigma * rng.standard_normal(n)
    lo, hi = uc.clickbait_susceptibility
    susceptibility = rng.uniform(lo, hi, n)
    base_sat = uc.base_satisfaction_mean + uc.base_satisfaction_sigma * rng.standard_normal(n)
    noisy = interest + uc.interest_observation_noise * rng.random((n, c))
    top = np.argsort(-noisy, axis=1)[:, : uc.observed_top_k]
    observed = np.zeros((n, c))
    np.put_along_axis(observed, top, 1.0, axis=1)
    profile = np.column_stack([age, gender, activity, observed]).astype(np.float32)
    return Users(interest=interest, taste=taste, activity=activity, age=age, gender=gender, patience=patience,
                 susceptibility=susceptibility, base_satisfaction=base_sat, observed_interest=observed,
                 profile=np.ascontiguousarray(profile))
