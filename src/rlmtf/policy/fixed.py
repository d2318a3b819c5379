"""Hand-set fusion policies: one fixed (power, bias) vector for every user and item.

``baseline`` is the production-style hand-tuned fusion that exploration starts from (PTM round 1)
and that the test set is logged with. The other presets exist to probe the simulator: ``valid-only``
weights only the clickbait-prone valid-view task; ``random`` draws a uniform action per request;
``oracle`` applies the baseline fusion to the exact task probabilities instead of the MTL scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlmtf.core import rng as crng
from rlmtf.core.fusion import ACTION_DIM, MTL_TASKS, ActionSpace
from rlmtf.policy.base import Policy, RequestObs

#: Hand-set fusion parameters per MTL task (valid, watch_time, finish, like, share).
BASELINE_POWER = (1.0, 0.8, 0.6, 0.4, 0.3)
BASELINE_BIAS = (0.1, 0.1, 0.1, 0.05, 0.05)


class FixedPolicy(Policy):
    """The same action for every request (user-level)."""

    level = "user"

    def __init__(self, action: np.ndarray, name: str = "fixed", score_source: str = "mtl",
                 space: ActionSpace | None = None):
        action = np.asarray(action, dtype=np.float32)
        if action.shape not in ((ACTION_DIM,), (ACTION_DIM - 1,)):
            raise ValueError(f"{name}: a fixed action has {ACTION_DIM} numbers ({ACTION_DIM - 1} in the relative "
                             f"action space), got shape {action.shape}")
        if not np.isfinite(action).all() or (np.abs(action) > 1).any():
            raise ValueError(f"{name}: action must be finite and in [-1, 1], got {action.tolist()}")
        if space is not None and space.dim != action.size:
            raise ValueError(f"{name}: a fixed action of {action.size} numbers is not in the "
                             f"{space.parameterisation!r} action space ({space.dim} dimensions)")
        if space is None and action.size == ACTION_DIM - 1:
            space = ActionSpace(parameterisation="relative")
        self.action = action
        self.action_space = space
        self.name = name
        self.score_source = score_source  # type: ignore[assignment]

    @classmethod
    def from_params(cls, power, bias, space: ActionSpace = ActionSpace(), name: str = "fixed",
                    score_source: str = "mtl") -> FixedPolicy:
        a = space.from_params(np.asarray(power, dtype=np.float64), np.asarray(bias, dtype=np.float64))
        if (np.abs(a) > 1 + 1e-9).any():
            bias_range = space.log_bias_range if space.relative else space.bias_range
            raise ValueError(f"{name}: power {list(power)} / bias {list(bias)} fall outside the "
                             f"{space.parameterisation!r} action space (power in {space.power_range}"
                             f"{' relative to the first' if space.relative else ''}, bias in {bias_range})")
        return cls(np.clip(a, -1, 1), name=name, score_source=score_source, space=space)

    def act(self, obs: RequestObs) -> np.ndarray:
        return np.broadcast_to(self.action, (obs.batch_size, self.action.size)).copy()

    def to_json(self, space: ActionSpace = ActionSpace()) -> dict:
        space = self.action_space or space
        power, bias = space.to_params(self.action.astype(np.float64))
        return {"kind": "fixed", "name": self.name, "action": self.action.tolist(),
                "power": dict(zip(MTL_TASKS, power.tolist(), strict=True)),
                "bias": dict(zip(MTL_TASKS, bias.tolist(), strict=True)), "score_source": self.score_source}

    def save(self, path: str | Path, space: ActionSpace = ActionSpace()) -> None:
        Path(path).write_text(json.dumps(self.to_json(space), indent=2))


class RandomPolicy(Policy):
    """A uniform random action in [-1, 1]^A per request, a pure function of (seed, request)."""

    level = "user"
    name = "random"

    def __init__(self, seed: int = 0, dim: int = ACTION_DIM):
        self.seed, self.dim = seed, dim

    def act(self, obs: RequestObs) -> np.ndarray:
        k = crng.key(self.seed, obs.request_key[:, None], np.arange(self.dim))
        return (2.0 * crng.uniform(k, 301) - 1.0).astype(np.float32)


def baseline_policy(space: ActionSpace = ActionSpace()) -> FixedPolicy:
    return FixedPolicy.from_params(BASELINE_POWER, BASELINE_BIAS, space, name="baseline")


def valid_only_policy(space: ActionSpace = ActionSpace()) -> FixedPolicy:
    """Ranks by the valid-view score alone: the task that clickbait inflates."""
    lo = space.power_range[0]
    return FixedPolicy.from_params((1.0, lo, lo, lo, lo), BASELINE_BIAS, space, name="valid-only")


def oracle_policy(space: ActionSpace = ActionSpace()) -> FixedPolicy:
    """The baseline fusion applied to the exact task probabilities (simulator only)."""
    return FixedPolicy.from_params(BASELINE_POWER, BASELINE_BIAS, space, name="oracle", score_source="true")
