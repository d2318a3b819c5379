"""The online ranking service (``docs/design.md#the-ranking-service``; the paper's section 3.4, Figure 3).

``create_app(...)`` returns a FastAPI app with:

- ``GET /v1/schema``: feature names and dims (``user_features`` = user_profile ++ user_history,
  ``item_features``, ``context``), ``mtl_tasks``, ``max_candidates``, ``policy_version``.
- ``POST /v1/rank``: named features -> vectors in FeatureSpec order, one :class:`RequestObs` with
  B = 1, the policy's actions (item-level policies act per candidate, user-level ones per request),
  the fused score (Formula 1) of every candidate, and the top-k items best first. ``score`` is the
  final score ``prod_i (score_i + bias_i) ** power_i`` (the exp of the fused log score).
- ``POST /v1/feedback``: behaviours of one shown item; ``event_id`` is an idempotency key (a repeated
  event is stored once); without one every call is a new event.
- ``GET /healthz``, ``GET /metrics`` (Prometheus text format, :mod:`rlmtf.serve.metrics`),
  ``POST /v1/admin/reload``.

Features: the service accepts one :class:`FeatureSpec` for its lifetime, the names ``/v1/schema``
lists. ``create_app(feature_spec=...)`` sets it; by default it is the served policy's own (the
``feature_spec`` a trained policy's policy.json records), else, for a policy that records none (the
built-ins, a fixed fusion), the simulator's. A policy that records another spec than the service's is
refused, at start-up and on reload (422, the service keeps its policy): its features would change the
wire format under running clients and the log would hold two shapes of rows. Serve it from a service
started with it. The log records the spec (:mod:`rlmtf.serve.store`), and a log directory written
with one spec refuses a service with another.

Exploration (``docs/design.md#exploration``): a stable share ``explore_fraction`` of users (``blake2b(seed:user_id)``
read as a number in [0, 1) below the fraction) is served by
``UniformExploration(policy, lower_b, upper_b)``: ``a = clip(mu_bp + U(lower_b, upper_b), -1, 1)``,
noise per request for user-level policies and per user-item pair for item-level ones. Every shown item
is logged with mu_bp, lower_b, upper_b and the action; without exploration mu_bp is the action and the
box is empty (lower_b = upper_b = 0).

Per-user exploration bounds: ``bounds`` (``rlmtf serve --bounds FILE``, env ``RLMTF_SERVE_BOUNDS``)
names a JSON or Parquet file mapping user ids to their own ``lower_b``/``upper_b`` vectors
(:mod:`rlmtf.serve.bounds`). An explored user listed there is served and logged with that box; every
other explored user with the default one. The file does not change who explores.

Validation errors are 422 with FastAPI's ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``
shape; ``loc`` names the offending field (e.g. ``["body", "candidates", 3, "mtl_scores", "like"]``).
Feature values and MTL scores are JSON numbers (strict: no strings, no booleans). A body over
``max_body_bytes`` gets 413.

Speed (see BENCHMARKS.md, "HTTP ranking service"): ``/v1/rank`` and ``/v1/feedback`` are ``async``
handlers that read the raw body and parse it with pydantic-core in one pass
(:class:`rlmtf.serve.wire.RankParser`: the structure in Rust, the features into arrays with bulk
numpy checks, the exact per-field walk only to name an error); the response is one ``json.dumps``.
The scoring runs on the event loop (a few milliseconds of CPU: a thread would only add a hop); the
durable write is encoded (float32 BLOBs) on the event loop, handed to the store's writer thread and
awaited, so the event loop parses the next request while the commit (and its fsync) runs, and
concurrent requests share one commit (group commit, :mod:`rlmtf.serve.store`). Metrics and the body
limit are one plain ASGI middleware (:mod:`rlmtf.serve.metrics`). Under ``rlmtf serve``
(:func:`rlmtf.serve.run.app_from_env`) the start-up heap is frozen out of the garbage collector
(``gc.freeze``) and a torch policy gets one intra-op thread per worker; with several workers the
listening socket is made by :mod:`rlmtf.serve.run` so that connections get ``TCP_NODELAY`` (uvicorn's
own socket left Nagle on: ~40 ms per response).

Policy version: ``baseline`` (or the built-in's name) for built-ins, else the first 12 hex digits of a
blake2b hash of the policy's files (policy.json and every ``*.safetensors``, by name; a run directory
and its ``policy/`` have the same version).

Admin reload (:mod:`rlmtf.serve.admin`) needs ``Authorization: Bearer <token>`` equal to the env var
``RLMTF_ADMIN_TOKEN`` (401 without a bearer token, 403 for a wrong one or when the variable is unset),
checked before the body is read; it loads a built-in or a policy under ``models_dir``. The new policy is
loaded and smoke-tested on a dummy request before it is swapped in under a lock; a failing load
keeps the old policy serving and answers 422 with the reason. A request reads the served policy
once, so it is answered and logged entirely by the old or entirely by the new one.

Feedback: ``event_id`` is an idempotency key; a repeat (same id, whatever its payload) is stored
once and answered ``{"duplicate": true}``. Values are checked at the door: finite JSON numbers,
watch_time in [0, ``max_watch_time_s``], watch_ratio in [0, ``MAX_WATCH_RATIO``], the rest exactly 0 or 1,
so the export never meets a value it cannot store. Ranking: an optional ``request_key`` makes a retry
idempotent (answered from the log, logged once). Ids are at most ``max_string_length`` characters.
Feedback may only name an item shown in that request.
Every request and feedback event is committed to SQLite (:mod:`rlmtf.serve.store`, WAL) before the
response is sent; ``durability`` (``rlmtf serve --durability``) says what a commit survives:
``fsync`` (default, ``synchronous=FULL``) a power loss, ``process`` (``synchronous=NORMAL``) a
killed server process. :func:`rlmtf.serve.export.export_logs` turns the log into logged-data Parquet
(``docs/design.md#logged-data``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import sqlite3
import threading
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from rlmtf.algos.registry import BUILTIN, PolicyLoadError, load_policy, policy_file, saved_feature_spec
from rlmtf.core.fusion import ActionSpace, fused_log_score, rank_top_l
from rlmtf.core.reward import REWARD_BEHAVIOURS
from rlmtf.core.schema import FEEDBACK_COLUMNS, FeatureSpec
from rlmtf.policy.base import Policy, RequestObs, check_actions, space_of
from rlmtf.policy.explore import UniformExploration
from rlmtf.serve.admin import ADMIN_TOKEN_ENV, check_admin, resolve_reload
from rlmtf.serve.bounds import UserBounds, load_user_bounds
from rlmtf.serve.metrics import EdgeMiddleware, Metrics
from rlmtf.serve.openapi import ADMIN_RESPONSES, FEEDBACK_RESPONSES, RANK_RESPONSES, document
from rlmtf.serve.store import ServeStore, ShownItem
from rlmtf.serve.wire import (
    Candidate,
    FeedbackRequest,
    FeedbackResponse,
    RankedItem,
    RankParser,
    RankRequest,
    RankResponse,
    ReloadRequest,
    ReloadResponse,
    WireError,
    check_content_type,
    check_lengths,
    clean_errors,
    duplicate_key,
    spec_difference,
)

__all__ = ["create_app", "policy_version", "explore_assigned", "ADMIN_TOKEN_ENV", "Candidate", "FeedbackRequest",
           "RankRequest", "RankResponse", "RankedItem", "ReloadRequest"]

#: watch_ratio a feedback may report at most (a ratio of the video's duration)
MAX_WATCH_RATIO = 1000.0
#: the returned fused score is exp(log score); above this log it would overflow a double, so it is capped
#: there (the ranking itself uses the log scores and is unaffected)
_MAX_LOG_SCORE = math.log(np.finfo(np.float64).max)
#: Behaviours a feedback event may report: the feedback columns of ``docs/design.md#logged-data``. watch_time and
#: watch_ratio are non-negative numbers, the others 0/1.
FEEDBACK_KEYS: tuple[str, ...] = tuple(FEEDBACK_COLUMNS)
_CONTINUOUS = ("watch_time", "watch_ratio")


# --- helpers ----------------------------------------------------------------------------------------


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) from a string."""
    h = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def explore_assigned(user_id: str, explore_fraction: float, seed: int = 0) -> bool:
    """Whether ``user_id`` is in the exploration bucket (stable across requests and restarts)."""
    return explore_fraction > 0 and _unit_hash(f"{seed}:{user_id}") < explore_fraction


def policy_version(spec: str) -> str:
    """``spec`` for built-ins, else a short hash of the policy's files."""
    if spec in BUILTIN:
        return spec
    path = policy_file(spec)
    if Path(spec).is_dir():  # a saved model (or a run's): its policy.json and weights
        files = sorted([*path.parent.glob("*.json"), *path.parent.glob("*.safetensors")])
    else:
        files = [path]
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _err(loc: list[Any], msg: str, status: int = 422) -> HTTPException:
    return HTTPException(status, detail=[{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def _smoke_test(policy: Policy, spec: FeatureSpec) -> None:
    """Act on a dummy request so that a policy built for another feature spec fails at load time."""
    n = 3
    obs = RequestObs(
        user_id=np.zeros(1, np.int64), request_key=np.zeros(1, np.uint64),
        user_profile=np.zeros((1, spec.user_profile.dim), np.float32),
        user_history=np.zeros((1, spec.user_history.dim), np.float32),
        context=np.zeros((1, spec.context.dim), np.float32), item_id=np.arange(n, dtype=np.int64)[None],
        mtl_scores=np.full((1, n, len(spec.mtl_tasks)), 0.1, np.float32),
        item_features_=np.zeros((1, n, spec.item_features.dim), np.float32))
    check_actions(np.asarray(policy.act(obs)), obs, policy.level, policy.name, dim=None)


def _limit_torch_threads(threads: int | None) -> None:
    """Cap torch's intra-op threads (only if a policy pulled torch in: fixed policies never import it)."""
    import sys

    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _freeze_heap() -> None:
    """Collect, then move every live object to the permanent generation (unfrozen first, so that a
    reload's old policy, if it holds reference cycles, is collected rather than kept)."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _json_response(content: Any, status: int = 200) -> Response:
    return Response(json.dumps(content, separators=(",", ":")).encode(), status_code=status,
                    media_type="application/json")


def _refusal(e: WireError) -> Response:
    return _json_response({"detail": e.errors}, e.status)


def _strict_body(request: Request, raw: bytes) -> WireError | None:
    """What every JSON body is checked for first: its Content-Type, and no key given twice."""
    return check_content_type(request.headers.get("content-type")) or duplicate_key(raw)


@dataclass(frozen=True)
class _Served:
    """The policy being served; swapped as a whole (one reference assignment) on reload."""

    spec: str
    version: str
    policy: Policy
    explorer: UniformExploration
    per: str  # exploration noise per "request" (user-level policy) or per "item" (item-level)
    #: serialises inference: a torch actor toggles eval/train mode inside ``act``
    lock: threading.Lock = field(default_factory=threading.Lock)


# --- the app ----------------------------------------------------------------------------------------


def create_app(policy_spec: str = "baseline", *, feature_spec: FeatureSpec | None = None,
               log_dir: str | os.PathLike[str], explore_fraction: float = 0.0, lower_b: float = -0.15,
               upper_b: float = 0.15, max_candidates: int = 2000, max_body_bytes: int = 8 * 1024 * 1024,
               seed: int = 0, action_space: ActionSpace = ActionSpace(),
               bounds: str | os.PathLike[str] | UserBounds | None = None,
               torch_threads: int | None = None, durability: str = "fsync", freeze_gc: bool = False,
               models_dir: str | os.PathLike[str] | None = None, max_string_length: int = 256,
               max_watch_time_s: float = 86400.0, body_timeout_s: float = 30.0) -> FastAPI:
    """The ranking service; see the module docstring. ``feature_spec``: the features it accepts (default:
    the policy's own, else the simulator's); a policy that records another one is refused.
    ``bounds``: a per-user bounds file (:mod:`rlmtf.serve.bounds`) or a loaded :class:`UserBounds`.
    ``torch_threads``: cap torch's intra-op threads when the policy uses torch (one per worker process
    is right when there are as many workers as cores). ``durability``: ``fsync`` or ``process``, what an
    acknowledged record survives (:mod:`rlmtf.serve.store`). ``freeze_gc``: move everything alive after start-up
    (and after each reload) to the garbage collector's permanent generation (``gc.freeze``), so that the
    collections a request's many small objects trigger do not walk the whole heap (torch, numpy, the policy):
    for a server process, not for a library caller. ``models_dir``: where an admin reload may load from
    (:mod:`rlmtf.serve.admin`). ``max_string_length``: the longest id accepted; ``max_watch_time_s``: the
    largest watch_time a feedback may report; ``body_timeout_s``: a body must arrive within this (408)."""
    spec = feature_spec if feature_spec is not None else saved_feature_spec(policy_spec)
    if spec is None:
        from rlmtf.envs.sim.config import SimConfig
        from rlmtf.envs.sim.world import feature_spec as sim_feature_spec

        spec = sim_feature_spec(SimConfig())
    if not 0.0 <= explore_fraction <= 1.0:
        raise ValueError(f"explore_fraction must be in [0, 1], got {explore_fraction}")
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    if max_string_length < 1 or max_body_bytes < 1 or not (0 < max_watch_time_s < math.inf) or body_timeout_s <= 0:
        raise ValueError("max_string_length, max_body_bytes, max_watch_time_s and body_timeout_s must be > 0 "
                         "(and finite)")
    parser = RankParser(spec, max_candidates)
    user_group = parser.user_group
    n_profile = spec.user_profile.dim
    user_bounds = bounds if isinstance(bounds, UserBounds) else load_user_bounds(bounds, lower_b, upper_b,
                                                                                  spec.action_dim)

    def build(policy_str: str) -> _Served:
        try:
            own = saved_feature_spec(policy_str)
            if own is not None and own != spec:
                raise PolicyLoadError(f"{policy_str}: the policy was trained on other features than this service "
                                      f"accepts (policy vs service: {spec_difference(own, spec)}); serve it from "
                                      "a service started with its features")
            pol = load_policy(policy_str, action_space, seed=seed)
            _limit_torch_threads(torch_threads)
            _smoke_test(pol, spec)
            version = policy_version(policy_str)
        except PolicyLoadError:
            raise
        except Exception as e:  # anything a bad file can raise: report it, keep serving the old one
            raise PolicyLoadError(f"{type(e).__name__}: {e}") from e
        per = "item" if pol.level == "item" else "request"
        explorer = UniformExploration(pol, lower_b, upper_b, per=per, seed=seed)
        return _Served(policy_str, version, pol, explorer, per)

    store = ServeStore(log_dir, spec.to_json(), durability=durability)
    metrics = Metrics()
    swap_lock = threading.Lock()
    state = {"served": build(policy_spec)}
    if freeze_gc:
        _freeze_heap()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        store.close()  # commits whatever is queued

    app = FastAPI(title="rlmtf ranking service", version="1", lifespan=lifespan)
    app.state.store = store
    app.state.feature_spec = spec
    app.state.metrics = metrics
    app.state.user_bounds = user_bounds
    app.add_middleware(EdgeMiddleware, limit=max_body_bytes, metrics=metrics, body_timeout_s=body_timeout_s)
    document(app, {"/v1/rank": RankRequest, "/v1/feedback": FeedbackRequest, "/v1/admin/reload": ReloadRequest})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": clean_errors(exc.errors())})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "policy_version": state["served"].version}

    @app.get("/v1/schema")
    def schema() -> dict:
        return {"user_features": user_group.names(), "item_features": spec.item_features.names(),
                "context": spec.context.names(), "mtl_tasks": list(spec.mtl_tasks),
                "max_candidates": max_candidates, "policy_version": state["served"].version,
                "policy_level": state["served"].policy.level, "action_dim": spec.action_dim}

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def prom() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(state["served"].version, store),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/rank", response_model=RankResponse, responses=RANK_RESPONSES)
    async def rank(request: Request) -> Response:
        raw = await request.body()
        try:
            bad = _strict_body(request, raw)
            if bad is not None:
                raise bad
            req = parser.parse(raw)
            longest = max(range(len(req.item_ids)), key=lambda i: len(req.item_ids[i]))
            bad = check_lengths({"user_id": req.user_id, "session_id": req.session_id,
                                 "request_key": req.request_key,
                                 f"candidates.{longest}.item_id": req.item_ids[longest]}, max_string_length)
            if bad is not None:
                raise bad
        except WireError as e:
            return _refusal(e)
        if req.request_key is not None:
            prior = store.logged_response(req.request_key)
            if prior is not None:  # a retry: the answer it was given, logged once
                return _json_response(prior)
        served = state["served"]  # one read: a concurrent reload cannot mix two policies in a request
        n = len(req.item_ids)
        feats, scores, user, ctx = req.item_features, req.mtl_scores, req.user, req.context
        request_id = uuid.uuid4().hex
        obs = RequestObs(
            user_id=np.array([int(_unit_hash(req.user_id) * 2**62)], np.int64),
            request_key=np.array([int.from_bytes(bytes.fromhex(request_id[:16]), "big")], np.uint64),
            user_profile=user[None, :n_profile], user_history=user[None, n_profile:], context=ctx[None],
            item_id=np.arange(n, dtype=np.int64)[None], mtl_scores=scores[None], item_features_=feats[None])
        explored = explore_assigned(req.user_id, explore_fraction, seed)
        try:
            policy: Policy = served.policy
            if explored:
                box = user_bounds.get(req.user_id)
                policy = served.explorer if box is None else UniformExploration(served.policy, *box, per=served.per,
                                                                                seed=seed)
            with served.lock:
                dec = policy.decide(obs)
            space = space_of(served.policy, action_space)
            action = check_actions(np.asarray(dec.action), obs, dec.level, served.policy.name, space.dim)
        except Exception as e:
            raise HTTPException(500, detail=f"policy failed: {type(e).__name__}: {e}") from e
        a_item = action[0] if action.ndim == 3 else np.broadcast_to(action[0], (n, action.shape[-1]))  # (N, A)
        mu = np.asarray(dec.mu_bp)
        mu_item = mu[0] if mu.ndim == 3 else np.broadcast_to(mu[0], a_item.shape)
        lo = np.broadcast_to(np.asarray(dec.lower_b, np.float32), (1, *a_item.shape)).reshape(a_item.shape)
        hi = np.broadcast_to(np.asarray(dec.upper_b, np.float32), (1, *a_item.shape)).reshape(a_item.shape)
        log_s = fused_log_score(scores.astype(np.float64), a_item.astype(np.float64), space)  # (N,)
        top = rank_top_l(log_s[None], req.k)[0].tolist()
        items, shown = [], []
        for pos, j in enumerate(top):
            score = math.exp(min(float(log_s[j]), _MAX_LOG_SCORE))  # huge MTL scores: the largest finite double
            act = a_item[j].tolist()
            cid = req.item_ids[j]
            items.append({"item_id": cid, "score": score, "action": act})
            shown.append(ShownItem(position=pos, item_id=cid, item_features=feats[j], mtl_scores=scores[j],
                                   mu_bp=mu_item[j], lower_b=lo[j], upper_b=hi[j], action=a_item[j], score=score))
        committed = store.log_request_async(
            request_id=request_id, user_id=req.user_id, session_id=req.session_id, policy_version=served.version,
            explored=explored, user_profile=user[:n_profile], user_history=user[n_profile:], context=ctx,
            shown=shown, request_key=req.request_key)
        body = {"request_id": request_id, "policy_version": served.version, "explored": explored, "items": items}
        try:
            await asyncio.wrap_future(committed)  # on disk before the answer
        except sqlite3.IntegrityError:  # a concurrent retry with the same request_key was logged first
            prior = store.logged_response(req.request_key) if req.request_key is not None else None
            if prior is None:
                raise HTTPException(503, detail="could not log the request") from None
            return _json_response(prior)
        except Exception as e:
            raise HTTPException(503, detail=f"could not log the request: {type(e).__name__}: {e}") from e
        with metrics.lock:
            metrics.ranked += 1
            metrics.explored += int(explored)
        return _json_response(body)

    @app.post("/v1/feedback", response_model=FeedbackResponse, responses=FEEDBACK_RESPONSES)
    async def feedback(request: Request) -> Response:
        raw = await request.body()
        bad = _strict_body(request, raw)
        if bad is not None:
            return _refusal(bad)
        try:
            fb = FeedbackRequest.model_validate_json(raw)
        except ValidationError as e:
            return _json_response({"detail": clean_errors(e.errors(), ("body",))}, 422)
        bad = check_lengths({"request_id": fb.request_id, "item_id": fb.item_id, "event_id": fb.event_id},
                            max_string_length)
        if bad is not None:
            return _refusal(bad)
        logged, shown = store.shown_status(fb.request_id, fb.item_id)
        if not logged:
            raise HTTPException(404, detail=f"unknown request_id {fb.request_id!r}")
        if not shown:
            raise _err(["item_id"], f"item {fb.item_id!r} was not shown in request {fb.request_id!r}")
        for name, v in fb.behaviours.items():
            if name not in FEEDBACK_KEYS:
                raise _err(["behaviours", name], f"unknown behaviour {name!r} (known: {', '.join(FEEDBACK_KEYS)})")
            if name in _CONTINUOUS and v < 0:
                raise _err(["behaviours", name], f"{name} must be >= 0")
            cap = max_watch_time_s if name == "watch_time" else MAX_WATCH_RATIO
            if name in _CONTINUOUS and v > cap:
                raise _err(["behaviours", name], f"{name} must be <= {cap:g}")
            if name not in _CONTINUOUS and v not in (0, 1):
                raise _err(["behaviours", name], f"{name} must be 0 or 1")
        event_id = fb.event_id or uuid.uuid4().hex
        committed = store.log_feedback_async(event_id=event_id, request_id=fb.request_id, item_id=fb.item_id,
                                             behaviours=dict(fb.behaviours), session_end=fb.session_end)
        try:
            new = await asyncio.wrap_future(committed)
        except Exception as e:
            raise HTTPException(503, detail=f"could not log the feedback: {type(e).__name__}: {e}") from e
        return _json_response({"event_id": event_id, "accepted": True, "duplicate": not new})

    @app.post("/v1/admin/reload", response_model=ReloadResponse, responses=ADMIN_RESPONSES)
    async def reload(request: Request) -> Response:
        check_admin(request.headers.get("authorization"))  # before anything of the body is looked at
        raw = await request.body()
        bad = _strict_body(request, raw)
        if bad is not None:
            return _json_response({"detail": bad.errors, "policy_version": state["served"].version}, bad.status)
        try:
            body = ReloadRequest.model_validate_json(raw)
        except ValidationError as e:
            return _json_response({"detail": clean_errors(e.errors(), ("body",)),
                                   "policy_version": state["served"].version}, 422)
        return await asyncio.to_thread(swap, body.policy)

    def swap(name: str) -> Response:
        with swap_lock:
            old = state["served"]
            try:
                new = build(resolve_reload(name, models_dir))
            except PolicyLoadError as e:
                return _json_response({"detail": [{"loc": ["body", "policy"], "msg": str(e), "type": "policy_load"}],
                                       "policy_version": old.version}, 422)
            state["served"] = new
        if freeze_gc:
            _freeze_heap()
        return _json_response({"policy_version": new.version, "previous_version": old.version,
                               "level": new.policy.level})

    return app


# REWARD_BEHAVIOURS is re-exported for clients that build feedback payloads.
__all__ += ["REWARD_BEHAVIOURS", "FEEDBACK_KEYS", "FeedbackResponse", "ReloadResponse", "MAX_WATCH_RATIO"]
