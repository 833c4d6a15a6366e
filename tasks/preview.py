"""Blurred previews: a blurhash of a small thumbnail of the partial image."""

from __future__ import annotations

import warnings

import blurhash
from PIL import Image

THUMB_SIDE = 32


def components_for(width: int, height: int) -> tuple[int, int]:
    """Pick blurhash components that follow the aspect ratio (4 along the long side)."""
    if width >= height:
        return 4, max(2, min(4, round(4 * height / width)))
    return max(2, min(4, round(4 * width / height))), 4


def blurhash_of(image: Image.Image) -> str:
    """Encode ``image`` as a blurhash from a thumbnail at most 32 px on its long side."""
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    x, y = components_for(*image.size)
    # blurhash.encode closes the image it is given; hand it our throwaway thumbnail.
    with warnings.catch_warnings():
        # blurhash-python reads pixels with Image.getdata, deprecated since Pillow 12 (and
        # pinned below 14 in pyproject.toml until it moves on).
        warnings.simplefilter("ignore", DeprecationWarning)
        return str(blurhash.encode(thumb, x, y))
