"""Fetching the official KuaiRand-Pure release: download, unpack safely, validate with the loader."""

from __future__ import annotations

import os
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from rlmtf.envs.kuairand.data import load_kuairand
from rlmtf.envs.kuairand.paths import USER_FILE, KuaiRandDataError

#: The official KuaiRand-Pure release (project README, https://kuairand.com; Zenodo record 10439422).
DATASET_URL = "https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz"


def fetch_archive(url: str, path: Path, log: Callable[[str], None] = print) -> Path:
    """Download ``url`` to ``path`` (through ``path.part``, renamed when complete)."""
    part = path.with_name(path.name + ".part")
    log(f"downloading {url} -> {path}")
    with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:  # noqa: S310 (fixed https URL)
        total = int(r.headers.get("Content-Length") or 0)
        done, last = 0, -1
        while chunk := r.read(1 << 20):
            f.write(chunk)
            done += len(chunk)
            pct = int(100 * done / total) if total else -1
            if pct >= 0 and pct // 10 != last:
                last = pct // 10
                log(f"  {done / 2**20:.0f} MiB ({pct}%)")
    part.replace(path)
    return path


def _safe_member(name: str, dest: Path) -> Path:
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise KuaiRandDataError(f"archive member {name!r} would be written outside {dest}")
    return target


def unpack_and_validate(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Unpack a KuaiRand-Pure release (.tar.gz / .tgz / .zip) into ``dest`` and validate it with the loader.

    Returns the directory that holds the files (``dest/KuaiRand-Pure/data`` for the official archive).
    Links, devices and paths leaving ``dest`` are refused.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for m in z.infolist():
                    _safe_member(m.filename, dest)
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in members:
                    _safe_member(m.name, dest)
                    if not (m.isfile() or m.isdir()):
                        raise KuaiRandDataError(f"{archive.name}: member {m.name!r} is not a regular file")
                t.extractall(dest, members=members)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise KuaiRandDataError(f"{archive.name}: cannot unpack archive ({type(e).__name__}: {e})") from e
    found = sorted(p.parent for p in dest.rglob(USER_FILE))
    if not found:
        raise KuaiRandDataError(f"{archive.name}: no {USER_FILE} inside the archive")
    load_kuairand(found[0])
    return found[0]


def download(dest: str | os.PathLike[str], *, url: str = DATASET_URL,
             fetch: Callable[[str, Path], Path] | None = None, keep_archive: bool = False,
             log: Callable[[str], None] = print) -> Path:
    """Fetch the official KuaiRand-Pure archive into ``dest``, unpack it and validate it.

    ``fetch(url, path)`` defaults to :func:`fetch_archive`; tests pass a function that copies a fixture.
    Returns the validated data directory (pass it as ``--data-dir`` or ``$RLMTF_KUAIRAND_DIR``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / Path(url.split("?")[0]).name
    (fetch or (lambda u, p: fetch_archive(u, p, log)))(url, archive)
    data_dir = unpack_and_validate(archive, dest)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    log(f"KuaiRand-Pure ready in {data_dir} (license CC BY-SA 4.0, see the release's LICENSE)")
    return data_dir

