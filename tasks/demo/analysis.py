"""Image analysis in five stages, as pure functions over numpy arrays.

Design::

    image ─▶ load       RGB, alpha flattened on white, fitted inside MAX_SIDE (never enlarged)
          ─▶ palette    k-means (k-means++ start, fixed RNG) on a sample ─▶ every pixel to its
                        nearest centre ─▶ colours with their share of the picture
          ─▶ edges      luminance ─▶ Sobel gx, gy ─▶ |g| / 4 (1 at a full black-white step)
                        ─▶ density: share of pixels above EDGE_THRESHOLD, and the edge image
          ─▶ histogram  per channel and luminance: mean, spread, 16-bin shares; the RMS
                        contrast and a brightness class
          ─▶ thumbnail  fitted inside THUMB_SIDE

:func:`analyze` yields one :class:`Stage` per step as it finishes, so a job can report
each; :func:`report` folds them into the JSON a finished job returns. Everything is
deterministic: the same pixels give the same report.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

Pixels = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float64]

STAGES = ("load", "palette", "edges", "histogram", "thumbnail")
MAX_SIDE = 512  # the analysed picture's longest side
THUMB_SIDE = 128
SAMPLE = 4096  # pixels k-means learns the palette from
KMEANS_ROUNDS = 20
EDGE_THRESHOLD = 0.1  # normalized gradient above which a pixel counts as an edge
HIST_BINS = 16
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights


@dataclass(frozen=True)
class Stage:
    """One finished stage: a small JSON summary, a log line, and the picture it made."""

    name: str
    index: int  # 1-based
    summary: dict[str, Any]
    message: str
    image: Image.Image | None = field(default=None, compare=False)

    @property
    def total(self) -> int:
        return len(STAGES)


def analyze(image: Image.Image, *, colours: int = 5) -> Iterator[Stage]:
    """Yield the five stages of ``image``'s analysis, each as soon as it is done."""
    picture = normalize(image)
    pixels = np.asarray(picture, dtype=np.uint8)
    height, width = pixels.shape[:2]
    load = {"width": width, "height": height}
    load |= {"sourceWidth": image.width, "sourceHeight": image.height}
    yield Stage("load", 1, load, f"Loaded {image.width}×{image.height}, analysing {width}×{height}")

    swatches = palette(pixels, colours)
    top = swatches[0]
    yield Stage(
        "palette",
        2,
        {"colours": swatches},
        f"Palette: {len(swatches)} colours, mostly {top['hex']} ({top['share']:.0%})",
    )

    magnitude = sobel(luminance(pixels))
    density = edge_density(magnitude)
    mean = round(float(magnitude.mean()), 4)
    summary = {"density": density, "mean": mean, "threshold": EDGE_THRESHOLD}
    yield Stage("edges", 3, summary, f"Edges: {density:.1%} of pixels", edge_image(magnitude))

    stats = histogram(pixels)
    yield Stage(
        "histogram",
        4,
        stats,
        f"Histogram: {stats['brightness']}, contrast {stats['contrast']:.2f}",
    )

    thumb = thumbnail(picture)
    size = {"width": thumb.width, "height": thumb.height}
    yield Stage("thumbnail", 5, size, f"Thumbnail: {thumb.width}×{thumb.height}", thumb)


def report(stages: Iterable[Stage]) -> dict[str, Any]:
    """The finished analysis as one JSON object (what the job returns)."""
    by_name = {stage.name: stage.summary for stage in stages}
    missing = [name for name in STAGES if name not in by_name]
    if missing:
        raise ValueError(f"the analysis is missing stages {missing}")
    load = by_name["load"]
    return {
        "width": load["width"],
        "height": load["height"],
        "source": {"width": load["sourceWidth"], "height": load["sourceHeight"]},
        "palette": by_name["palette"]["colours"],
        "edges": by_name["edges"],
        "histogram": by_name["histogram"],
        "thumbnail": by_name["thumbnail"],
    }


# --- load ------------------------------------------------------------------------------------


def normalize(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """RGB, transparency flattened onto white, fitted inside ``max_side`` (never enlarged)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    else:
        image = image.convert("RGB")
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


# --- palette ---------------------------------------------------------------------------------


def palette(pixels: Pixels, k: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """The ``k`` dominant colours (fewer if the picture has fewer), largest share first.

    Each is ``{"hex": "#rrggbb", "rgb": [r, g, b], "share": 0..1}``; the shares count
    every pixel by its nearest colour, so they sum to 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    flat = pixels.reshape(-1, 3).astype(np.float64)
    rng = np.random.default_rng(seed)
    sample = flat if len(flat) <= SAMPLE else flat[rng.choice(len(flat), SAMPLE, replace=False)]
    centres = kmeans(sample, min(k, len(np.unique(sample, axis=0))), rng)
    counts = np.bincount(nearest(flat, centres), minlength=len(centres))
    order = [i for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    return [_swatch(centres[i], counts[i] / len(flat)) for i in order]


def kmeans(points: Floats, k: int, rng: np.random.Generator) -> Floats:
    """Lloyd's k-means from a k-means++ start; returns the ``k`` centres."""
    centres = _plus_plus(points, k, rng)
    for _ in range(KMEANS_ROUNDS):
        labels = nearest(points, centres)
        moved = centres.copy()
        for i in range(k):
            members = points[labels == i]
            if len(members):
                moved[i] = members.mean(axis=0)
        if np.allclose(moved, centres, atol=0.5):
            return moved
        centres = moved
    return centres


def _plus_plus(points: Floats, k: int, rng: np.random.Generator) -> Floats:
    """k-means++: each next centre drawn with odds growing with the squared distance."""
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = _distances(points, np.array(centres)).min(axis=1)
        total = d2.sum()
        if total == 0:
            break  # every point sits on a centre already
        centres.append(points[rng.choice(len(points), p=d2 / total)])
    return np.array(centres)


def nearest(points: Floats, centres: Floats) -> npt.NDArray[np.intp]:
    """The index of each point's nearest centre."""
    return np.asarray(_distances(points, centres).argmin(axis=1), dtype=np.intp)


def _distances(points: Floats, centres: Floats) -> Floats:
    # |p - c|² = |p|² - 2 p·c + |c|², without a points × centres × 3 temporary.
    d2 = (points**2).sum(axis=1)[:, None] - 2 * points @ centres.T + (centres**2).sum(axis=1)
    return np.maximum(d2, 0.0)


def _swatch(centre: Floats, share: float) -> dict[str, Any]:
    rgb = [int(v) for v in np.clip(np.rint(centre), 0, 255)]
    return {"hex": "#{:02x}{:02x}{:02x}".format(*rgb), "rgb": rgb, "share": round(share, 4)}


# --- edges -----------------------------------------------------------------------------------


def luminance(pixels: Pixels) -> Floats:
    """Relative luminance 0..1 per pixel."""
    return np.asarray(pixels[..., :3].astype(np.float64) @ LUMA / 255.0)


def sobel(gray: Floats) -> Floats:
    """The Sobel gradient magnitude, scaled so a full 0-to-1 step gives 1 (clipped at 1).

    The border is extended by repeating the edge pixels, so a flat picture gives 0 there too.
    """
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.asarray(np.minimum(np.hypot(gx, gy) / 4.0, 1.0))


def edge_density(magnitude: Floats, threshold: float = EDGE_THRESHOLD) -> float:
    """The share of pixels whose gradient is above ``threshold``."""
    return round(float((magnitude > threshold).mean()), 4)


def edge_image(magnitude: Floats) -> Image.Image:
    """The gradient as a grey picture: white where the edges are strongest."""
    return Image.fromarray(np.rint(magnitude * 255).astype(np.uint8), mode="L")


# --- histogram -------------------------------------------------------------------------------


def histogram(pixels: Pixels) -> dict[str, Any]:
    """Per channel and luminance: mean and spread (0..255) and ``HIST_BINS`` bin shares;
    the RMS contrast (luminance spread, 0..1) and a brightness class."""
    channels = {name: pixels[..., i].astype(np.float64) for i, name in enumerate("rgb")}
    channels["luma"] = luminance(pixels) * 255.0
    stats = {name: _channel(values) for name, values in channels.items()}
    mean = stats["luma"]["mean"] / 255.0
    return {
        "channels": stats,
        "brightness": brightness(mean),
        "mean": round(mean, 4),
        "contrast": round(stats["luma"]["std"] / 255.0, 4),
    }


def _channel(values: Floats) -> dict[str, Any]:
    counts, _ = np.histogram(values, bins=HIST_BINS, range=(0.0, 256.0))
    return {
        "mean": round(float(values.mean()), 2),
        "std": round(float(values.std()), 2),
        "bins": [round(float(c), 4) for c in counts / values.size],
    }


def brightness(mean: float) -> str:
    """Name a mean luminance (0..1): dark, dim, medium, light or bright."""
    for limit, name in ((0.2, "dark"), (0.4, "dim"), (0.6, "medium"), (0.8, "light")):
        if mean < limit:
            return name
    return "bright"


# --- thumbnail -------------------------------------------------------------------------------


def thumbnail(image: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    """A copy fitted inside ``side`` × ``side``, aspect kept (never enlarged)."""
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    return thumb
