"""Where the files a job made live: ``<media_dir>/<job id>/<name>``, written atomically.

The demo's image is ``<job id>/image.png``; the retention sweep removes a job's folder
once its files are older than the retention.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

# Readable by all, as any file the process writes: a web process running as another user
# on a shared volume must serve it. The umask still applies (the kernel masks it).
FILE_MODE = 0o644
# A file name a job may use: no path separators, no leading dot.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def job_dir(media_dir: str, job_id: str) -> Path:
    """The folder of a job's files."""
    return Path(media_dir) / job_id


def image_path(media_dir: str, job_id: str) -> Path:
    """The demo's final image."""
    return job_dir(media_dir, job_id) / "image.png"


def write_file(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename, so readers never see half a file.

    A worker killed mid-write leaves ``<name>.<random>.tmp``; the retention sweep
    removes those once they are old (``tasks.retention``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def job_file(media_dir: str, job_id: str, name: str) -> Path | None:
    """The saved file ``name`` of a job, if there is one (never a path outside its folder)."""
    if not FILE_NAME.fullmatch(name) or name.endswith(".tmp"):  # .tmp: a write under way
        return None
    path = job_dir(media_dir, job_id) / name
    return path if path.is_file() and not path.is_symlink() else None


def job_files(media_dir: str, job_id: str) -> list[str]:
    """The names of the files a job saved, sorted."""
    folder = job_dir(media_dir, job_id)
    names = set()
    if folder.is_dir():
        names = {p.name for p in folder.iterdir() if FILE_NAME.fullmatch(p.name)}
    return sorted(n for n in names if job_file(media_dir, job_id, n) is not None)
