"""Where finished images live: ``<media_dir>/<job id>.png``, written atomically."""

from __future__ import annotations

import os
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
