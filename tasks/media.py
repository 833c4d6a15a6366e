"""Where the files a job made live: ``<media_dir>/<job id>/<name>``, written atomically.

The demo's image is ``<job id>/image.png``; the retention sweep removes a job's folder
once its files are older than the retention.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from PIL import Image

# Readable by all, as any file the process writes: a web process running as another user
# on a shared volume must serve it. The umask still applies (the kernel masks it).
FILE_MODE = IMAGE_MODE = 0o644
# A file name a job may use: no path separators, no leading dot.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def job_dir(media_dir: str, job_id: str) -> Path:
    """The folder of a job's files."""
    return Path(media_dir) / job_id


def image_path(media_dir: str, job_id: str) -> Path:
    """The demo's final image."""
    return job_dir(media_dir, job_id) / "image.png"


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
