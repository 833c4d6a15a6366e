"""Where finished images live: ``<media_dir>/<job id>.png``, written atomically; and the
files a job saves: ``<media_dir>/<job id>/<name>``."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from PIL import Image

# Readable by all, as any file the process writes: a web process running as another user
# on a shared volume must serve it. The umask still applies (the kernel masks it).
IMAGE_MODE = 0o644


def image_path(media_dir: str, job_id: str) -> Path:
    return Path(media_dir) / f"{job_id}.png"


def save_png(image: Image.Image, path: Path) -> None:
    """Write to a temporary file and rename, so readers never see half a file.

    A worker killed mid-write leaves ``<name>.<random>.tmp``; the retention sweep
    removes those once they are old (``tasks.retention``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, IMAGE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            image.save(out, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# Files a job saves (JobContext.save_file) live in a folder per job, served at
# GET /jobs/<id>/result/<name>; a name is one path segment of its own alphabet.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The demo image as the worker writes it today (image_path): listed as this file until
# the demo saves it through save_file (then this alias can go).
LEGACY_IMAGE = "image.png"


def job_dir(media_dir: str, job_id: str) -> Path:
    return Path(media_dir) / job_id


def job_file(media_dir: str, job_id: str, name: str) -> Path | None:
    """The saved file ``name`` of a job, if there is one (never a path outside its folder)."""
    if not FILE_NAME.fullmatch(name) or name.endswith(".tmp"):  # .tmp: a write under way
        return None
    path = job_dir(media_dir, job_id) / name
    if name == LEGACY_IMAGE and not path.is_file():
        path = image_path(media_dir, job_id)
    return path if path.is_file() and not path.is_symlink() else None


def job_files(media_dir: str, job_id: str) -> list[str]:
    """The names of the files a job saved, sorted."""
    folder = job_dir(media_dir, job_id)
    names = set()
    if folder.is_dir():
        names = {p.name for p in folder.iterdir() if FILE_NAME.fullmatch(p.name)}
    if image_path(media_dir, job_id).is_file():
        names.add(LEGACY_IMAGE)
    return sorted(n for n in names if job_file(media_dir, job_id, n) is not None)
