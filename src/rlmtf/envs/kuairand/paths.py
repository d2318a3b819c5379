"""Where the KuaiRand-Pure files are: their names in the two accepted layouts (``data.py``) and the data
directory (``$RLMTF_KUAIRAND_DIR``, else ``shared/data/kuairand_pure`` beside or above the working dir)."""

from __future__ import annotations

import os
from pathlib import Path

LOG_FILE = "log_standard_20220425_to_20220508_pure.parquet"
PRE_HISTORY_FILE = "derived_user_last50_sequences_until_20220424.parquet"
OFFICIAL_LOG_FILE = "log_standard_4_22_to_5_08_pure.csv"
OFFICIAL_PRE_LOG_FILE = "log_standard_4_08_to_4_21_pure.csv"
USER_FILE = "user_features_pure.csv"
VIDEO_FILE = "video_features_basic_pure.csv"


class KuaiRandDataError(ValueError):
    """KuaiRand-Pure files are missing, unreadable or not what the release documents (the message names
    the file and the column)."""


def default_kuairand_dir() -> Path | None:
    """``$RLMTF_KUAIRAND_DIR``, else ``shared/data/kuairand_pure`` beside or above the working dir."""
    env = os.environ.get("RLMTF_KUAIRAND_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        cand = base / "shared" / "data" / "kuairand_pure"
        if cand.is_dir():
            return cand
    return None


def resolve_data_dir(kuairand_dir: str | os.PathLike[str] | None) -> Path:
    """``kuairand_dir``, else :func:`default_kuairand_dir`; an error that says how to point at the data if
    there is none or it is not a directory."""
    d = Path(kuairand_dir) if kuairand_dir is not None else default_kuairand_dir()
    if d is None:
        raise KuaiRandDataError("KuaiRand-Pure data not found: set RLMTF_KUAIRAND_DIR to the directory holding "
                                f"{USER_FILE} and the log (or put it in shared/data/kuairand_pure), or pass "
                                "kuairand_dir; the official release is at https://kuairand.com")
    if not d.is_dir():
        where = "RLMTF_KUAIRAND_DIR" if kuairand_dir is None and os.environ.get("RLMTF_KUAIRAND_DIR") else "the"
        raise KuaiRandDataError(f"KuaiRand-Pure data directory {d} (from {where} setting) does not exist; "
                                "set RLMTF_KUAIRAND_DIR to the directory of the KuaiRand-Pure files")
    return d


#: Bumped when the environment needs differently fitted models (part of the default cache key).
MODELS_VERSION = "1"


def default_models_dir(data_dir: Path) -> Path:
    """``$RLMTF_KUAIRAND_MODELS``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/rlmtf/kuairand-<hash>``, the
    hash of the data directory's path and file sizes, the default fit config and a version."""
    env = os.environ.get("RLMTF_KUAIRAND_MODELS")
    if env:
        return Path(env)
    import dataclasses
    import hashlib
    import json

    from rlmtf.envs.kuairand.fit import FitConfig

    h = hashlib.sha256()
    h.update(str(data_dir.resolve()).encode())
    for p in sorted(data_dir.iterdir()):
        if p.is_file():
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    h.update(json.dumps(dataclasses.asdict(FitConfig()), sort_keys=True, default=str).encode())
    h.update(MODELS_VERSION.encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rlmtf" / f"kuairand-{h.hexdigest()[:12]}"
