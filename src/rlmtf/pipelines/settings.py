"""The two settings every learned method of the paper experiment is run in (docs/design.md#settings).

- ``paper``: the papers' own choices: their action space, exploration per request (Enhanced-State RL: per
  user-item pair), the within-session objective (gamma 0.9), progressive training that makes every round's
  policy the next behaviour policy, each round trained on its own logs.
- ``improved``: this project's: the relative action space (docs/design.md#the-action-space), exploration
  per user-day (Enhanced-State RL keeps per-item noise) with the box shifted inside the action space at its
  edges, the undiscounted user-day objective (docs/design.md#the-objective), every method trained from
  scratch for at least the steps that objective needs (docs/design.md#how-many-steps), and gated progressive
  training on the logs of every round so far, its offline test the direct method (FQE for an item-level
  candidate; docs/design.md#progressive-training).
  The offline baselines learn the same objective from the same logs; ES keeps its own fitness (the reward
  of the sessions it simulates).

Every choice is fixed here, before any A/B: the experiment reports both settings, whatever they show.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SETTINGS", "Setting"]


@dataclass(frozen=True)
class Setting:
    name: str
    action_space: str = "paper"
    """The fusion parameterisation (``rlmtf.core.fusion.ActionSpace.parameterisation``)."""
    per: str | None = None
    """IntegratedRL-MTF's exploration noise: per request, per day (None: the method's default)."""
    edge: str = "clip"
    """Exploration at the action space's edge: clip (the paper) or shift the box inside."""
    gate: bool = False
    """Progressive training accepts a round only if it passes the gate."""
    train_on: str = "round"
    """Each progressive round trains on its own logs ("round") or on every round's ("all")."""
    gamma: float | None = None
    """The discount per request (None: each algorithm's default, the paper's 0.9)."""
    session_gamma: float | None = None
    """The discount per session gap of a day episode (None: the default)."""
    episode: str = "session"
    """The training episode: a session (the paper) or a user-day."""
    steps: str = "fixed"
    """"fixed": the preset's steps; "horizon": a method trained from scratch runs at least the steps its
    episode's value needs to propagate (``rlmtf.train.loop.horizon_steps``, docs/design.md#how-many-steps)."""
    gate_offline: str = "dm"
    """The progressive-training gate's offline estimate (``rlmtf.pipelines.ptm``; FQE until 2026-12-02)."""
    item_keep: float = 0.0
    """Per-item exploration noise cut to keep this share of the behaviour policy's top l (``PTMConfig.item_keep``)."""
    gate_mde: float = 0.0
    """The lift the gate's A/B is sized to detect (``PTMConfig.gate_mde``; 0: the preset's days as they are)."""

    def algo_config(self, cfg: Any) -> Any:
        """``cfg`` (an algorithm's config) with this setting's objective, where the config has the fields."""
        names = {f.name for f in dataclasses.fields(cfg)}
        want = {"gamma": self.gamma, "session_gamma": self.session_gamma}
        return dataclasses.replace(cfg, **{k: v for k, v in want.items() if k in names and v is not None})

    def ptm_fields(self, kind: str) -> dict:
        """The PTMConfig fields of this setting for ``kind`` (Enhanced-State RL keeps its per-item noise; its
        residual variant explores like IntegratedRL-MTF plus small per-item noise on the correction)."""
        residual = f"{self.per or 'request'}+item"
        per = {"integrated": self.per, "esrl_residual": residual, "esrl_list": residual}.get(kind)
        return {"gate": self.gate, "train_on": self.train_on, "per": per, "edge": self.edge,
                "steps_rule": self.steps, "gate_offline": self.gate_offline, "gate_mde": self.gate_mde,
                "item_keep": self.item_keep}


SETTINGS: dict[str, Setting] = {
    "paper": Setting("paper"),
    "improved": Setting("improved", action_space="relative", per="day", edge="shift", gate=True, train_on="all",
                        gamma=1.0, session_gamma=1.0, episode="day", steps="horizon",
                        gate_mde=0.01, item_keep=0.8),
}
