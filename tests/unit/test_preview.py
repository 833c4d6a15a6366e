"""Blurhash previews of partial images."""

from __future__ import annotations

import blurhash
import numpy as np
import pytest
from PIL import Image

from tasks.demo.generator import generate
from tasks.preview import blurhash_of, components_for


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), (4, 4)), ((1024, 512), (4, 2)), ((512, 1024), (2, 4)), ((640, 480), (4, 3))],
)
def test_components_follow_the_aspect_ratio(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    """Four components along the long side, proportionally fewer along the short one."""
    assert components_for(*size) == expected


def test_blurhash_of_a_partial_frame_decodes_to_its_colours() -> None:
    """The preview hash is valid and decodes to roughly the partial image's mean colour."""
    frames = list(generate("a red sunset over the sea", width=160, height=96, steps=10, seed=3))
    partial = frames[2].to_image()
    code = blurhash_of(partial)
    assert blurhash.is_valid_blurhash(code)
    decoded = np.asarray(blurhash.decode(code, 40, 24), dtype=float)[..., :3]
    original = np.asarray(partial.resize((40, 24)), dtype=float)
    assert np.abs(decoded.mean(axis=(0, 1)) - original.mean(axis=(0, 1))).max() < 20


def test_blurhash_differs_between_rough_and_finished_frames() -> None:
    """Later previews are sharper: the hash of the last frame differs from the first."""
    frames = list(generate("mountain lake at night", width=128, height=128, steps=6, seed=1))
    assert blurhash_of(frames[0].to_image()) != blurhash_of(frames[-1].to_image())


def test_the_image_passed_in_is_left_open() -> None:
    """blurhash.encode closes what it gets; ours hands it a thumbnail, not the caller's image."""
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    blurhash_of(image)
    assert image.getpixel((0, 0)) == (10, 200, 30)
