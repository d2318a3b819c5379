"""The admin endpoint's gate and what it may load (``POST /v1/admin/reload``).

The token is checked before anything else, the body included, so an unauthenticated caller learns nothing
but 401/403: ``Authorization: Bearer <token>`` equal to ``$RLMTF_ADMIN_TOKEN`` (401 without a bearer
token, 403 for a wrong one or when the variable is unset).

A reload names a built-in policy or a policy under the models directory given at start-up (``rlmtf serve
--models-dir``), relative to it (an absolute path inside it is accepted too). A name outside it, a missing
file and an unreadable one get the same answer, so the endpoint tells nothing about the server's other
files; without a models directory only the built-ins can be loaded.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import HTTPException

from rlmtf.algos.registry import BUILTIN, PolicyLoadError, policy_file

__all__ = ["ADMIN_TOKEN_ENV", "check_admin", "resolve_reload"]

ADMIN_TOKEN_ENV = "RLMTF_ADMIN_TOKEN"


def check_admin(authorization: str | None) -> None:
    """Raise the 401/403 an admin request without the right bearer token gets."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, detail="missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not token:
        raise HTTPException(403, detail=f"admin endpoints are disabled ({ADMIN_TOKEN_ENV} is not set)")
    if not hmac.compare_digest(authorization[len("Bearer "):].encode(), token.encode()):
        raise HTTPException(403, detail="wrong token")


def resolve_reload(name: str, models_dir: str | os.PathLike[str] | None) -> str:
    """The policy spec a reload of ``name`` loads: a built-in's name, or a path under ``models_dir``;
    :class:`PolicyLoadError` with one message for anything outside, missing or unreadable."""
    if name in BUILTIN:
        return name
    if models_dir is None:
        raise PolicyLoadError(f"{name!r}: this service reloads only the built-ins ({', '.join(BUILTIN)}); start it "
                              "with --models-dir to reload saved policies from that directory")
    root = Path(models_dir).resolve()
    unavailable = PolicyLoadError(f"no readable policy {name!r} in the models directory")
    if "\0" in name:
        raise unavailable
    try:
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise unavailable
        with open(policy_file(str(path)), "rb") as f:  # readable, not only present
            f.read(1)
    except (OSError, PolicyLoadError, ValueError, RuntimeError):
        raise unavailable from None
    return str(path)
