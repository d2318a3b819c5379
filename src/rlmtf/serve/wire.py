"""Wire models and the parser of ``POST /v1/rank`` bodies (``docs/design.md#wire-format``).

A ranking request names every feature of every candidate (about 2,500 numbers for 100 candidates),
so how it becomes arrays decides the service's latency. :meth:`RankParser.parse`:

1. ``RankRequest.model_validate_json(raw)``: pydantic-core parses the bytes and checks the structure
   in Rust (types, required fields, no unknown fields, finite numbers). Numbers are strict: a JSON
   number (an integer or a float); a string such as ``"0.5"`` or a boolean is refused.
2. A bulk assembly (:meth:`RankParser._items_fast`) builds the (N, F) item-feature and (N, K) score
   arrays with C-level ``map`` over the candidates and one ``np.array`` per feature, and checks in
   bulk: every name present and no extra one, every length right, no duplicate item id, no
   negative score, every value representable in float32.
3. When any bulk check fails, the exact walk (:meth:`RankParser._items_exact`, per candidate, per
   feature) raises the first error in request order, naming the field, e.g.
   ``["body", "candidates", 17, "mtl_scores", "like"]``. The bulk assembly never accepts what the
   walk refuses and builds the same arrays; it only skips the walk when there is nothing to find.

(A road around pydantic, ``pydantic_core.from_json`` plus type checks with ``map``/``set``, measured
no faster at 100 candidates and 10-40 % faster in the parse at 500: not worth a second validator.)

Errors are :class:`WireError` holding FastAPI's ``[{"loc": [...], "msg": ..., "type": ...}]`` list.

Strictness (every body): a JSON object with no key given twice (:func:`duplicate_key`; pydantic alone
keeps the last), sent as ``Content-Type: application/json`` (:func:`check_content_type`, else 415);
``k`` a JSON integer, behaviours JSON numbers, ``session_end`` a JSON boolean; ids at most
``max_string`` characters (:func:`check_lengths`, ``rlmtf serve --max-string-length``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlmtf.core.schema import FeatureGroup, FeatureSpec

__all__ = ["Candidate", "ErrorBody", "ErrorItem", "FeedbackRequest", "FeedbackResponse", "MessageBody", "ParsedRank",
           "RankParser", "RankRequest", "RankResponse", "RankedItem", "ReloadErrorBody", "ReloadRequest",
           "ReloadResponse", "WireError", "check_content_type", "check_lengths", "clean_errors", "duplicate_key",
           "spec_difference", "vector"]

Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]
FeatureValue = Finite | list[Finite]
_F32_MAX = float(np.finfo(np.float32).max)


# --- wire models ------------------------------------------------------------------------------------


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(min_length=1)
    item_features: dict[str, FeatureValue]
    mtl_scores: dict[str, Finite]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    k: int = Field(default=5, strict=True)
    request_key: str | None = Field(default=None, min_length=1, description=(
        "Idempotency key: a retry with a key already served is answered with the logged response and not "
        "logged again."))
    user_features: dict[str, FeatureValue]
    context: dict[str, FeatureValue]
    candidates: list[Candidate]


class RankedItem(BaseModel):
    item_id: str
    score: float
    action: list[float]


class RankResponse(BaseModel):
    request_id: str
    policy_version: str
    explored: bool
    items: list[RankedItem]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    event_id: str | None = Field(default=None, min_length=1)
    behaviours: dict[str, Finite] = Field(default_factory=dict)
    session_end: bool = Field(default=False, strict=True)


class FeedbackResponse(BaseModel):
    event_id: str
    accepted: bool
    duplicate: bool


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str = Field(min_length=1, description="A built-in policy, or a policy under the service's --models-dir "
                                                  "(relative to it).")


class ReloadResponse(BaseModel):
    policy_version: str
    previous_version: str
    level: str


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """A refused body (422): FastAPI's shape, ``loc`` naming the field."""

    detail: list[ErrorItem]


class ReloadErrorBody(ErrorBody):
    """A policy that cannot be loaded (422): the reason, and the version that keeps serving."""

    policy_version: str


class MessageBody(BaseModel):
    """Every other refusal: one message."""

    detail: str


# --- errors -----------------------------------------------------------------------------------------


class WireError(Exception):
    """A request the service refuses (422 by default); ``errors`` is FastAPI's ``detail`` list."""

    def __init__(self, errors: list[dict], status: int = 422):
        super().__init__(errors[0]["msg"] if errors else "invalid request")
        self.errors, self.status = errors, status


def _err(loc: list[Any], msg: str, kind: str = "value_error") -> WireError:
    return WireError([{"loc": ["body", *loc], "msg": msg, "type": kind}])


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _Duplicate(k)
        seen[k] = v
    return seen


class _Duplicate(Exception):
    """A JSON object names a key twice."""


def duplicate_key(raw: bytes) -> WireError | None:
    """A :class:`WireError` when some JSON object in ``raw`` names a key twice (None otherwise, also for a
    body that is not JSON: the model's parse reports that)."""
    try:
        json.loads(raw, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        return _err([str(e.args[0])], f"key {e.args[0]!r} given twice in one JSON object", "duplicate_key")
    except (ValueError, RecursionError):
        return None
    return None


def check_content_type(value: str | None) -> WireError | None:
    """A 415 :class:`WireError` unless the body is declared ``application/json`` (any charset)."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return None
    return WireError([{"loc": ["header", "content-type"], "msg": f"expected Content-Type application/json, got "
                       f"{value!r}", "type": "content_type"}], 415)


def check_lengths(fields: dict[str, str | None], limit: int) -> WireError | None:
    """A :class:`WireError` naming the first string (``{field: value}``, ``loc`` joined by dots) over ``limit``
    characters."""
    for where, v in fields.items():
        if v is not None and len(v) > limit:
            loc: list[Any] = [int(p) if p.isdigit() else p for p in where.split(".")]
            return _err(loc, f"{len(v)} characters, at most {limit} allowed", "string_too_long")
    return None


_UNION_TAGS = frozenset({"float", "list[float]", "list[constrained-float]", "constrained-float"})


def clean_errors(errors, prefix: tuple = ()) -> list[dict]:
    """Pydantic errors without the echoed input (NaN is not JSON) and without union-branch tags in
    ``loc``; one error per location, preferring the one that says 'finite'."""
    out: dict[tuple, dict] = {}
    for e in errors:
        loc = (*prefix, *(p for p in e.get("loc", ()) if p not in _UNION_TAGS))
        item = {"loc": list(loc), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        if loc not in out or item["type"] == "finite_number":
            out[loc] = item
    return list(out.values())


def spec_difference(a: FeatureSpec, b: FeatureSpec) -> str:
    """What differs between two feature specs, in a few words, ``a``'s side first: the sizes of the
    groups that differ, else the first feature named differently (e.g. "user_profile 156 vs 19 values;
    context 'hour' vs 'hour_sin'"); "" when they are equal."""
    if a == b:
        return ""
    parts = []
    for g in ("user_profile", "user_history", "context", "item_features"):
        ga, gb = getattr(a, g), getattr(b, g)
        if ga.dim != gb.dim:
            parts.append(f"{g} {ga.dim} vs {gb.dim} values")
        elif ga != gb:
            na, nb = next(((x, y) for x, y in zip(ga.fields, gb.fields, strict=False) if x != y),
                          (ga.fields[-1], gb.fields[-1]))
            parts.append(f"{g} {na[0]!r} vs {nb[0]!r}")
    if a.mtl_tasks != b.mtl_tasks:
        parts.append(f"mtl_tasks {list(a.mtl_tasks)} vs {list(b.mtl_tasks)}")
    if a.action_dim != b.action_dim:
        parts.append(f"action_dim {a.action_dim} vs {b.action_dim}")
    return "; ".join(parts)


def vector(group: FeatureGroup, given: dict[str, Any], loc: list[Any]) -> np.ndarray:
    """Named features -> one float32 vector in the group's order; :class:`WireError` naming the field
    otherwise (unknown, missing, wrong length, outside float32's range)."""
    if len(given) != len(group.fields):  # cheap test first: the names are checked one by one below
        dims = group.names()
        unknown = [n for n in given if n not in dims]
        if unknown:
            raise _err([*loc, unknown[0]], f"unknown feature {unknown[0]!r} (expected: {', '.join(dims)})")
    out = np.empty(group.dim, dtype=np.float64)  # float64 first: a value beyond float32 stays visible
    start = 0
    for name, d in group.fields:
        v = given.get(name)
        if v is None:
            dims = group.names()
            unknown = [n for n in given if n not in dims]
            if unknown:
                raise _err([*loc, unknown[0]], f"unknown feature {unknown[0]!r} (expected: {', '.join(dims)})")
            raise _err([*loc, name], f"missing feature {name!r} (dim {d})", "missing")
        if isinstance(v, list):
            if len(v) != d:
                raise _err([*loc, name], f"feature {name!r} has length {len(v)}, expected {d}")
            out[start:start + d] = v
        elif d != 1:
            raise _err([*loc, name], f"feature {name!r} has length 1, expected {d}")
        else:
            out[start] = v
        start += d
    if np.abs(out).max(initial=0.0) > _F32_MAX:  # finite float64 values beyond float32's range
        start = 0
        for name, d in group.fields:
            bad = np.flatnonzero(np.abs(out[start:start + d]) > _F32_MAX)
            if bad.size:
                v = given[name]
                i = int(bad[0])
                raise _err([*loc, name, *([i] if isinstance(v, list) else [])],
                           f"{v[i] if isinstance(v, list) else v!r} is outside the float32 range")
            start += d
    return out.astype(np.float32)


# --- the parser -------------------------------------------------------------------------------------


@dataclass
class ParsedRank:
    """A validated ranking request as arrays in FeatureSpec order."""

    user_id: str
    session_id: str
    k: int
    user: np.ndarray  # (P + H,) float32: user_profile ++ user_history
    context: np.ndarray  # (X,) float32
    item_ids: list[str]  # (N,)
    item_features: np.ndarray  # (N, F) float32
    mtl_scores: np.ndarray  # (N, K) float32, >= 0
    request_key: str | None = None


class RankParser:
    """``parse(raw_bytes) -> ParsedRank`` or :class:`WireError`; see the module docstring."""

    def __init__(self, spec: FeatureSpec, max_candidates: int = 2000):
        self.spec, self.max_candidates = spec, max_candidates
        self.user_group = FeatureGroup(spec.user_profile.fields + spec.user_history.fields)
        if len(self.user_group.names()) != len(self.user_group.fields):
            raise ValueError("user_profile and user_history share a feature name; the wire format cannot tell "
                             "them apart")
        self.tasks = FeatureGroup(tuple((t, 1) for t in spec.mtl_tasks))
        self._item_fields = spec.item_features.fields
        self._item_getters = [(d, itemgetter(name)) for name, d in self._item_fields]
        self._task_names = tuple(spec.mtl_tasks)
        getter = itemgetter(*self._task_names)
        self._score_getter = getter if len(self._task_names) > 1 else (lambda m: (getter(m),))

    def parse(self, raw: bytes) -> ParsedRank:
        try:
            req = RankRequest.model_validate_json(raw)
        except ValidationError as e:
            raise WireError(clean_errors(e.errors(), ("body",))) from None
        n = len(req.candidates)
        if n == 0:
            raise _err(["candidates"], "no candidates")
        if n > self.max_candidates:
            raise _err(["candidates"], f"{n} candidates, at most {self.max_candidates} allowed")
        if not 1 <= req.k <= n:
            raise _err(["k"], f"k={req.k} out of range: must be in [1, {n}] (the number of candidates)")
        user = vector(self.user_group, req.user_features, ["user_features"])
        ctx = vector(self.spec.context, req.context, ["context"])
        arrays = self._items_fast(req.candidates)
        if arrays is None:
            arrays = self._items_exact(req.candidates)
        ids, feats, scores = arrays
        return ParsedRank(req.user_id, req.session_id, req.k, user, ctx, ids, feats, scores, req.request_key)

    def _items_fast(self, cands: list[Candidate]) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        """Bulk assembly and checks; None when anything looks wrong (then the exact walk reports it).

        Names: every expected name is looked up in every candidate (a KeyError means one is missing)
        and the total number of names equals N x the expected count, so no candidate has an extra one.
        """
        n = len(cands)
        ids = [c.item_id for c in cands]
        ifs = [c.item_features for c in cands]
        mss = [c.mtl_scores for c in cands]
        if len(set(ids)) != n:
            return None
        if sum(map(len, ifs)) != n * len(self._item_fields) or sum(map(len, mss)) != n * len(self._task_names):
            return None
        feats = np.empty((n, self.spec.item_features.dim), np.float32)
        start = 0
        with np.errstate(over="ignore"):
            try:
                for d, get in self._item_getters:
                    col = np.array(list(map(get, ifs)), dtype=np.float32)
                    if col.shape != ((n,) if d == 1 else (n, d)):
                        return None  # e.g. [x] for a scalar feature, or a wrong length: the walk decides
                    feats[:, start:start + d] = col.reshape(n, d)
                    start += d
                scores = np.array(list(map(self._score_getter, mss)), dtype=np.float32)
            except (KeyError, ValueError, TypeError, OverflowError):  # a name missing, ragged lists, a list
                return None  # where a number belongs
        if scores.shape != (n, len(self._task_names)):
            return None
        if not (np.isfinite(feats).all() and np.isfinite(scores).all()) or (scores < 0).any():
            return None
        return ids, feats, scores

    def _items_exact(self, cands: list[Candidate]) -> tuple[list[str], np.ndarray, np.ndarray]:
        n, spec = len(cands), self.spec
        feats = np.empty((n, spec.item_features.dim), np.float32)
        scores = np.empty((n, len(spec.mtl_tasks)), np.float32)
        seen: set[str] = set()
        for i, c in enumerate(cands):
            if c.item_id in seen:
                raise _err(["candidates", i, "item_id"], f"duplicate item_id {c.item_id!r}")
            seen.add(c.item_id)
            feats[i] = vector(spec.item_features, c.item_features, ["candidates", i, "item_features"])
            scores[i] = vector(self.tasks, c.mtl_scores, ["candidates", i, "mtl_scores"])
            neg = np.flatnonzero(scores[i] < 0)
            if neg.size:
                raise _err(["candidates", i, "mtl_scores", spec.mtl_tasks[int(neg[0])]], "scores must be >= 0")
        return [c.item_id for c in cands], feats, scores
