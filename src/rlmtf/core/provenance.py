"""Where a result came from: the commit of the code that computed it (recorded in datasets and runs), and
the timestamped log an experiment script leaves beside its results."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def git_commit() -> str | None:
    """The commit of this checkout, or None outside a git work tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def file_logger(path: str | Path, fresh: bool = False) -> Callable[[str], None]:
    """A ``log(msg)`` that prints ``[HH:MM:SS] msg`` and appends it to ``path`` (emptied first if ``fresh``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        path.write_text("")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with path.open("a") as f:
            f.write(line + "\n")

    return log


def write_summary(out: str | Path, args: dict, summary: dict, per_seed: list, log: Callable[[str], None]) -> Path:
    """An experiment script's ``out/summary.json``: its arguments (paths as strings), the commit, the summary
    over seeds and the per-seed results; the summary also goes to ``log``."""
    import json

    doc = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()}, "commit": git_commit(),
           "summary": summary, "per_seed": per_seed}
    path = Path(out) / "summary.json"
    path.write_text(json.dumps(doc, indent=2, default=float))
    log(json.dumps(summary, indent=1, default=float))
    return path
