"""Where finished images live: ``<media_dir>/<job id>.png``, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image


def image_path(media_dir: str, job_id: str) -> Path:
    return Path(media_dir) / f"{job_id}.png"


def save_png(image: Image.Image, path: Path) -> None:
    """Write to a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            image.save(out, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
