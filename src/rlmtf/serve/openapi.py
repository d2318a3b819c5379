"""The service's OpenAPI document (``GET /openapi.json``): the request bodies the handlers parse themselves,
and every status each endpoint answers with the body model it sends.

``/v1/rank`` and ``/v1/feedback`` read the raw body (for speed and strictness, :mod:`rlmtf.serve.wire`), so
FastAPI cannot see their request models; :func:`document` adds them. The error statuses: 408 (body too
slow) and 413 (body too large) from the edge middleware, 415 (not JSON), 422 (a refused body, FastAPI's
shape with ``loc``), 404 (an unknown request id), 401/403 (admin), 503 (the log could not commit).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from rlmtf.serve.wire import ErrorBody, MessageBody, ReloadErrorBody

__all__ = ["ADMIN_RESPONSES", "FEEDBACK_RESPONSES", "RANK_RESPONSES", "document"]

_EDGE: dict[int | str, dict[str, Any]] = {
    408: {"model": MessageBody, "description": "The body did not arrive in time."},
    413: {"model": MessageBody, "description": "The body is over the size limit."},
    415: {"model": ErrorBody, "description": "The body is not declared application/json."},
}
RANK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_EDGE,
    422: {"model": ErrorBody, "description": "A refused request; loc names the field."},
    503: {"model": MessageBody, "description": "The request could not be logged durably; retry it."},
}
FEEDBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **RANK_RESPONSES,
    404: {"model": MessageBody, "description": "Unknown request_id."},
}
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_EDGE,
    401: {"model": MessageBody, "description": "No bearer token."},
    403: {"model": MessageBody, "description": "A wrong token, or admin disabled (no RLMTF_ADMIN_TOKEN)."},
    422: {"model": ReloadErrorBody, "description": "A refused body or a policy that cannot be loaded; the old "
                                                   "policy keeps serving."},
}


def document(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """Document request bodies that handlers parse themselves (``{path: model}``) in /openapi.json."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        comps = doc.setdefault("components", {}).setdefault("schemas", {})
        for path, model in bodies.items():
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[model.__name__] = js
            op = doc.get("paths", {}).get(path, {}).get("post")
            if op is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
