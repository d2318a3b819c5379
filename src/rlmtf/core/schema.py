"""The logged-data schema (``docs/design.md#logged-data``): the one place that defines it.

One Parquet row per shown user-item pair. Feature groups are stored as fixed-size float32 lists
whose lengths come from a :class:`FeatureSpec` (the simulator's, the KuaiRand environment's, or a
serving deployment's). The spec is stored in the dataset's ``_meta.json`` and in the Parquet
schema metadata, so a reader can check every list length.

Terms (paper vocabulary):
- ``user_state`` = user_profile ++ user_history ++ context           (the paper's original state s_t)
- ``enhanced_state`` = user_state ++ item_features ++ mtl_scores     (s_tj, one per user-item pair)
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field

import pyarrow as pa

from rlmtf.core.fusion import ACTION_DIM, MTL_TASKS, N_TASKS, ActionSpace

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FeatureGroup:
    """An ordered list of named features; each is a number (dim 1) or a fixed-length vector."""

    fields: tuple[tuple[str, int], ...]

    @property
    def dim(self) -> int:
        return sum(d for _, d in self.fields)

    def names(self) -> dict[str, int]:
        return dict(self.fields)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, d in self.fields:
            out[name] = slice(start, start + d)
            start += d
        return out


@dataclass(frozen=True)
class FeatureSpec:
    """Names and sizes of the features an environment emits and a policy consumes."""

    user_profile: FeatureGroup
    user_history: FeatureGroup
    context: FeatureGroup
    item_features: FeatureGroup
    mtl_tasks: tuple[str, ...] = MTL_TASKS
    action_dim: int = ACTION_DIM

    @property
    def user_state_dim(self) -> int:
        return self.user_profile.dim + self.user_history.dim + self.context.dim

    @property
    def enhanced_state_dim(self) -> int:
        return self.user_state_dim + self.item_features.dim + len(self.mtl_tasks)

    def to_json(self) -> dict:
        return {
            "user_profile": [list(f) for f in self.user_profile.fields],
            "user_history": [list(f) for f in self.user_history.fields],
            "context": [list(f) for f in self.context.fields],
            "item_features": [list(f) for f in self.item_features.fields],
            "mtl_tasks": list(self.mtl_tasks),
            "action_dim": self.action_dim,
        }

    @classmethod
    def from_json(cls, d: dict) -> FeatureSpec:
        def group(key: str) -> FeatureGroup:
            return FeatureGroup(tuple((str(n), int(k)) for n, k in d[key]))

        return cls(
            user_profile=group("user_profile"),
            user_history=group("user_history"),
            context=group("context"),
            item_features=group("item_features"),
            mtl_tasks=tuple(d.get("mtl_tasks", MTL_TASKS)),
            action_dim=int(d.get("action_dim", ACTION_DIM)),
        )


# --- columns -------------------------------------------------------------------------------------

#: Integer key columns and their Arrow types.
KEY_COLUMNS: dict[str, pa.DataType] = {
    "day": pa.int32(),
    "session_id": pa.int64(),
    "user_id": pa.int64(),
    "t": pa.int32(),  # request index within the session, 0-based
    "position": pa.int32(),  # rank of the item in the shown list, 0-based
    "item_id": pa.int64(),
}

#: Feedback columns. watch_time is in seconds; the others are 0/1 events.
FEEDBACK_COLUMNS: dict[str, pa.DataType] = {
    "click": pa.int8(),
    "watch_time": pa.float32(),
    "watch_ratio": pa.float32(),
    "valid": pa.int8(),
    "finish": pa.int8(),
    "like": pa.int8(),
    "share": pa.int8(),
    "collect": pa.int8(),
    "follow": pa.int8(),
    "comment": pa.int8(),
}

#: Exploration columns, each a list of ``action_dim`` floats.
ACTION_COLUMNS: tuple[str, ...] = ("mu_bp", "lower_b", "upper_b", "action")

#: The candidate sample (``docs/design.md#the-candidate-sample``): each row of a request also carries one of the
#: request's candidates drawn uniformly from all it ranked (shown or not), with its item features, MTL scores and
#: the exploration box the behaviour policy gave it, so that training can standardise on and constrain the actor
#: over the candidates it will score at serving time, not only the shown ones. Logged all together or not at all.
CANDIDATE_COLUMNS: tuple[str, ...] = ("candidate_item_features", "candidate_mtl_scores", "candidate_mu_bp",
                                      "candidate_lower_b", "candidate_upper_b")

#: Columns a dataset may have or not: ``true_scores``, which a simulator may add and a live platform does not
#: have (never used for training); ``seen`` (int8), logged under in-order consumption: whether the user
#: reached the shown item before leaving (0: unseen, no feedback), a dataset without it consumed every item;
#: and the candidate sample (:data:`CANDIDATE_COLUMNS`).
OPTIONAL_COLUMNS: tuple[str, ...] = ("true_scores", "seen", *CANDIDATE_COLUMNS)


def candidate_dims(spec: FeatureSpec) -> dict[str, int]:
    """The candidate sample's list columns and their lengths."""
    return {"candidate_item_features": spec.item_features.dim, "candidate_mtl_scores": len(spec.mtl_tasks),
            **{f"candidate_{c}": spec.action_dim for c in ("mu_bp", "lower_b", "upper_b")}}


def list_columns(spec: FeatureSpec) -> dict[str, int]:
    """Fixed-size float32 list columns and their lengths."""
    cols = {
        "user_profile": spec.user_profile.dim,
        "user_history": spec.user_history.dim,
        "context": spec.context.dim,
        "item_features": spec.item_features.dim,
        "mtl_scores": len(spec.mtl_tasks),
    }
    cols.update({c: spec.action_dim for c in ACTION_COLUMNS})
    return cols


def arrow_schema(spec: FeatureSpec, with_optional: bool | Collection[str] = False) -> pa.Schema:
    """The Arrow schema of a logged-data file for ``spec`` (metadata carries the spec); ``with_optional``:
    every optional column (True), none (False) or the named ones."""
    optional = set(OPTIONAL_COLUMNS if with_optional is True else () if with_optional is False else with_optional)
    fields_: list[pa.Field] = [pa.field(n, t, nullable=False) for n, t in KEY_COLUMNS.items()]
    for name, dim in list_columns(spec).items():
        fields_.append(pa.field(name, pa.list_(pa.float32(), dim), nullable=False))
    fields_ += [pa.field(n, t, nullable=False) for n, t in FEEDBACK_COLUMNS.items()]
    fields_.append(pa.field("reward", pa.float32(), nullable=False))
    fields_.append(pa.field("done", pa.bool_(), nullable=False))
    if "true_scores" in optional:
        fields_.append(pa.field("true_scores", pa.list_(pa.float32(), N_TASKS), nullable=False))
    if "seen" in optional:
        fields_.append(pa.field("seen", pa.int8(), nullable=False))
    for name, dim in candidate_dims(spec).items():
        if name in optional:
            fields_.append(pa.field(name, pa.list_(pa.float32(), dim), nullable=False))
    meta = {b"rlmtf.schema_version": str(SCHEMA_VERSION).encode(),
            b"rlmtf.feature_spec": json.dumps(spec.to_json()).encode()}
    return pa.schema(fields_, metadata=meta)


@dataclass
class DatasetMeta:
    """Contents of a dataset's ``_meta.json``."""

    feature_spec: FeatureSpec
    list_len: int = 5
    schema_version: int = SCHEMA_VERSION
    info: dict = field(default_factory=dict)  # how it was made: env, policy, seed, sim config, ...

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "list_len": self.list_len,
                "feature_spec": self.feature_spec.to_json(), "info": self.info}

    @classmethod
    def from_json(cls, d: dict) -> DatasetMeta:
        return cls(feature_spec=FeatureSpec.from_json(d["feature_spec"]), list_len=int(d["list_len"]),
                   schema_version=int(d["schema_version"]), info=d.get("info", {}))

    @property
    def action_space(self) -> ActionSpace:
        """The action space the logged actions are in: the one the environment config records, else the
        default space of their dimension."""
        return logged_action_space(self.info, self.feature_spec.action_dim)


def logged_action_space(info: dict, dim: int) -> ActionSpace:
    """The action space of logs made as ``info`` records (``info["sim_config"]["action_space"]``), else the
    default space of ``dim`` dimensions."""
    d = (info.get("sim_config") or {}).get("action_space")
    return ActionSpace.from_dict(dict(d)) if isinstance(d, dict) else ActionSpace.for_dim(dim)
