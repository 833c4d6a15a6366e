"""Procedural landscapes that sharpen step by step, like a diffusion model's previews.

Design::

    prompt ── words ──▶ Scene: a mood's Palette, the elements to draw, a tint and a hue shift
    prompt + seed ── sha256 ──▶ key ──▶ one PCG64 stream per noise field and octave

    latent = smooth colour blobs (3 octaves of value noise per channel), fixed per key
    for step k in 1..steps, with t = k / steps:
        canvas   fractal noise fields use the first ~t·n of their n octaves: finer ones fade in
        scene_k  sky ▸ stars ▸ sun ▸ moon ▸ clouds ▸ aurora ▸ mountains ▸ city ▸ ground
                 ▸ hills ▸ dunes ▸ trees ▸ water (mirrors all above) ▸ grade, box-filtered down
        soft_k   gaussian blur of scene_k, radius ∝ (1 - t)²
        frame_k  t · soft_k + (1 - t) · latent                the scene's share grows with t

Every element is drawn from smooth value noise: 1-D fractal noise gives silhouettes
(ridges, dunes, hills, tree lines), 2-D fractal noise gives texture and shading (clouds,
rock, grass, waves). At t = 1 every octave is in, the blur radius is 0 and the latent is
gone, so the last frame is the crisp scene, the same for any number of steps. Each step
renders the whole scene again at full size, so the run time grows with width · height · steps.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

Field = npt.NDArray[np.floating[Any]]
Index = npt.NDArray[np.intp]
RGB = tuple[float, float, float]

SUPERSAMPLE = 1.5  # rendered pixels per output pixel along each side; anti-aliases detail
BLUR = 0.04  # blur radius of the first step, in image heights
MIN_SIDE = 16


@dataclass(frozen=True, eq=False)
class Frame:
    """One step of a generation: the partial picture, already at its final size."""

    step: int
    steps: int
    pixels: npt.NDArray[np.uint8]

    @property
    def percent(self) -> int:
        """Return progress as a whole percentage, 100 at the last step."""
        return round(100 * self.step / self.steps)

    def to_image(self) -> Image.Image:
        """Return the pixels as an RGB image."""
        return Image.fromarray(self.pixels)


@dataclass(frozen=True)
class Palette:
    """The colours of one mood, as 0..1 RGB."""

    zenith: RGB
    middle: RGB
    horizon: RGB
    light: RGB
    cloud: RGB
    rock: RGB
    land: RGB
    sand: RGB
    foliage: RGB
    water: RGB
    snow: RGB
    windows: RGB
    glow: float  # how much the sun or moon lights the sky around it
    lit_windows: float  # share of city windows that are lit


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for: a mood, the elements to draw and a colour grade."""

    mood: str
    palette: Palette
    elements: frozenset[str]
    tint: RGB = (1.0, 1.0, 1.0)
    hue_shift: float = 0.0  # degrees; chosen by the words that no table knows


MOODS: dict[str, Palette] = {
    "day": Palette(
        zenith=(0.18, 0.38, 0.78),
        middle=(0.42, 0.64, 0.92),
        horizon=(0.78, 0.87, 0.96),
        light=(1.0, 0.97, 0.86),
        cloud=(0.96, 0.96, 0.98),
        rock=(0.40, 0.42, 0.50),
        land=(0.30, 0.52, 0.22),
        sand=(0.92, 0.74, 0.46),
        foliage=(0.09, 0.27, 0.13),
        water=(0.06, 0.28, 0.45),
        snow=(0.94, 0.96, 1.0),
        windows=(0.55, 0.70, 0.85),
        glow=0.35,
        lit_windows=0.25,
    ),
    "sunset": Palette(
        zenith=(0.22, 0.13, 0.38),
        middle=(0.80, 0.32, 0.42),
        horizon=(1.0, 0.62, 0.26),
        light=(1.0, 0.82, 0.48),
        cloud=(0.92, 0.46, 0.42),
        rock=(0.28, 0.17, 0.30),
        land=(0.26, 0.18, 0.20),
        sand=(0.86, 0.50, 0.32),
        foliage=(0.08, 0.05, 0.10),
        water=(0.20, 0.10, 0.26),
        snow=(1.0, 0.80, 0.78),
        windows=(1.0, 0.80, 0.45),
        glow=0.9,
        lit_windows=0.3,
    ),
    "night": Palette(
        zenith=(0.01, 0.015, 0.05),
        middle=(0.025, 0.04, 0.11),
        horizon=(0.07, 0.10, 0.22),
        light=(0.88, 0.92, 1.0),
        cloud=(0.13, 0.15, 0.23),
        rock=(0.06, 0.07, 0.12),
        land=(0.03, 0.06, 0.07),
        sand=(0.17, 0.17, 0.24),
        foliage=(0.015, 0.03, 0.04),
        water=(0.01, 0.03, 0.08),
        snow=(0.40, 0.45, 0.60),
        windows=(1.0, 0.82, 0.45),
        glow=0.25,
        lit_windows=0.45,
    ),
}

TINTS: dict[str, RGB] = {
    "red": (1.30, 0.80, 0.75),
    "orange": (1.25, 0.95, 0.65),
    "gold": (1.20, 1.05, 0.62),
    "green": (0.80, 1.20, 0.85),
    "blue": (0.75, 0.92, 1.30),
    "purple": (1.05, 0.75, 1.30),
    "pink": (1.25, 0.85, 1.05),
}

# word -> tags; a tag names a mood, a tint or an element. Plurals are found by dropping an "s".
KEYWORDS: dict[str, tuple[str, ...]] = {
    "day": ("day",),
    "noon": ("day", "sun"),
    "sunny": ("day", "sun"),
    "morning": ("day", "sun"),
    "sunset": ("sunset", "sun"),
    "sunrise": ("sunset", "sun"),
    "dusk": ("sunset", "sun"),
    "dawn": ("sunset", "sun"),
    "evening": ("sunset",),
    "twilight": ("sunset", "stars"),
    "night": ("night", "stars", "moon"),
    "midnight": ("night", "stars", "moon"),
    "starry": ("night", "stars"),
    "star": ("night", "stars"),
    "aurora": ("night", "aurora", "stars"),
    "sun": ("sun",),
    "moon": ("moon",),
    "cloud": ("cloudy",),
    "cloudy": ("cloudy",),
    "storm": ("cloudy",),
    "ocean": ("water",),
    "sea": ("water",),
    "lake": ("water",),
    "river": ("water",),
    "beach": ("water", "dunes"),
    "mountain": ("mountains",),
    "peak": ("mountains",),
    "alp": ("mountains",),
    "forest": ("trees",),
    "tree": ("trees",),
    "wood": ("trees",),
    "pine": ("trees",),
    "desert": ("dunes",),
    "dune": ("dunes",),
    "sand": ("dunes",),
    "hill": ("hills",),
    "meadow": ("hills",),
    "valley": ("hills", "mountains"),
    "snow": ("snow",),
    "snowy": ("snow",),
    "winter": ("snow",),
    "ice": ("snow",),
    "city": ("city",),
    "skyline": ("city",),
    "town": ("city",),
    "red": ("red",),
    "orange": ("orange",),
    "gold": ("gold",),
    "golden": ("gold",),
    "green": ("green",),
    "blue": ("blue",),
    "purple": ("purple",),
    "violet": ("purple",),
    "pink": ("pink",),
}

LANDFORMS = frozenset({"mountains", "city", "hills", "dunes", "trees", "water"})


# --- prompt -> scene ---------------------------------------------------------------------


def scene_for(prompt: str) -> Scene:
    """Read the prompt's words into a Scene."""
    words = re.findall(r"[a-z]+", prompt.lower())
    tags = [tag for word in words for tag in _tags(word)]
    fallback = "night" if "moon" in tags else "day"
    mood = next((tag for tag in tags if tag in MOODS), fallback)
    palette = MOODS[mood]
    elements = _elements(tags, mood)
    if "snow" in elements:
        palette = _wintry(palette)
    unknown = [word for word in words if not _tags(word)]
    return Scene(mood, palette, elements, _tint(tags), _hue_shift(unknown))


def _tags(word: str) -> tuple[str, ...]:
    """Look a word up, trying its singular when it ends in "s"."""
    return KEYWORDS.get(word) or KEYWORDS.get(word.removesuffix("s"), ())


def _elements(tags: list[str], mood: str) -> frozenset[str]:
    """Choose what to draw: the named elements plus sky, clouds and ground where needed."""
    named = {tag for tag in tags if tag not in MOODS and tag not in TINTS}
    named -= {"night": {"sun"}, "day": {"stars"}}.get(mood, set())
    if not named & LANDFORMS:
        named.add("hills")
    if "water" not in named:
        named.add("ground")
    return frozenset(named | {"sky", "clouds"})


def _wintry(palette: Palette) -> Palette:
    """Cover the land in snow and pale the colours."""
    snow = palette.snow
    return replace(
        palette,
        land=snow,
        sand=_blend(palette.sand, snow, 0.7),
        rock=_blend(palette.rock, snow, 0.3),
        foliage=_blend(palette.foliage, snow, 0.12),
        zenith=_blend(palette.zenith, snow, 0.2),
        middle=_blend(palette.middle, snow, 0.25),
        horizon=_blend(palette.horizon, snow, 0.3),
    )


def _blend(a: RGB, b: RGB, t: float) -> RGB:
    """Mix two colours, ``t`` of the way from ``a`` to ``b``."""
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _tint(tags: list[str]) -> RGB:
    """Multiply the gains of every colour word."""
    gains = np.ones(3)
    for tag in tags:
        if tag in TINTS:
            gains *= TINTS[tag]
    return (float(gains[0]), float(gains[1]), float(gains[2]))


def _hue_shift(unknown: list[str]) -> float:
    """Turn the words no table knows into a hue rotation of up to ±12 degrees."""
    if not unknown:
        return 0.0
    digest = hashlib.sha256(" ".join(unknown).encode()).digest()
    return (int.from_bytes(digest[:4], "little") / 2**32 * 2 - 1) * 12


# --- noise ---------------------------------------------------------------------------------


def _key(prompt: str, seed: int) -> bytes:
    """Derive the key of every random stream from the prompt and the seed."""
    return hashlib.sha256(f"jobcast-generator\0{seed}\0{prompt}".encode()).digest()


def _rng(key: bytes, *parts: object) -> np.random.Generator:
    """Open the random stream named by ``parts``."""
    digest = hashlib.sha256(key + repr(parts).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


@dataclass(frozen=True)
class _Layout:
    """Where things sit in the picture, in image heights (y grows downwards)."""

    horizon: float
    light_x: float
    light_y: float


@dataclass(frozen=True)
class _Canvas:
    """One step's drawing surface: pixel coordinates and how much detail to draw."""

    scene: Scene
    layout: _Layout
    key: bytes
    height: int
    width: int
    detail: float  # 0..1: share of each noise field's octaves in use
    y: Field  # (height, 1): 0 at the top edge, 1 at the bottom edge
    x: Field  # (1, width): 0 at the left edge, width / height at the right one

    @property
    def aspect(self) -> float:
        """Return width over height."""
        return self.width / self.height

    @property
    def px(self) -> float:
        """Return the size of one pixel in image heights."""
        return 1 / self.height


def _canvas(
    scene: Scene, layout: _Layout, key: bytes, size: tuple[int, int], detail: float
) -> _Canvas:
    """Build a canvas of ``size`` = (height, width) pixels."""
    height, width = size
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / height)[None, :]
    return _Canvas(scene, layout, key, height, width, detail, y, x)


def _layout(key: bytes, scene: Scene, aspect: float) -> _Layout:
    """Place the horizon and the sun or moon."""
    rng = _rng(key, "layout")
    horizon = 0.58 + 0.08 * rng.random()
    light_x = aspect * (0.22 + 0.56 * rng.random())
    if scene.mood == "sunset":
        return _Layout(horizon, light_x, horizon - 0.07 - 0.05 * rng.random())
    return _Layout(horizon, light_x, 0.12 + 0.12 * rng.random())


def _axis(cells: float, count: int, length: float, offset: float) -> tuple[Index, Field]:
    """Map ``count`` pixel centres onto a lattice of ``cells`` per unit; return cells and fades."""
    scale = cells * length / count
    pos = (np.arange(count, dtype=np.float32) + 0.5) * np.float32(scale) + np.float32(offset)
    index = pos.astype(np.intp)
    f = pos - index.astype(np.float32)
    return index, f * f * f * (f * (f * 6 - 15) + 10)


def _noise2(c: _Canvas, name: str, octave: int, cells: float, stretch: float) -> Field:
    """Return smooth 2-D value noise in 0..1 with ``cells`` per unit, ``stretch`` times wider."""
    rng = _rng(c.key, name, octave)
    iy, fy = _axis(cells, c.height, 1.0, rng.random())
    ix, fx = _axis(cells / stretch, c.width, c.aspect, rng.random())
    lattice = rng.random((int(iy[-1]) + 2, int(ix[-1]) + 2), dtype=np.float32)
    # Interpolate along x on the few lattice rows first, so only one pass is full size.
    rows = lattice[:, ix] * (1 - fx) + lattice[:, ix + 1] * fx
    return rows[iy] * (1 - fy)[:, None] + rows[iy + 1] * fy[:, None]


def _noise1(c: _Canvas, name: str, octave: int, cells: float) -> Field:
    """Return smooth 1-D value noise in 0..1 along x, one value per column."""
    rng = _rng(c.key, name, octave)
    ix, fx = _axis(cells, c.width, c.aspect, rng.random())
    lattice = rng.random(int(ix[-1]) + 2, dtype=np.float32)
    return lattice[ix] * (1 - fx) + lattice[ix + 1] * fx


def _octave_weights(c: _Canvas, cells: float, limit: int) -> list[float]:
    """Weigh each octave by how far this step's detail has reached it; the finest come last."""
    count = int(np.clip(math.log2(max(c.height / (3 * cells), 1)) + 1, 1, limit))
    return [min(1.0, max(0.0, c.detail * count - octave + 1)) for octave in range(count)]


def _fbm(
    c: _Canvas, sample: Callable[[int, float], Field], cells: float, ridged: bool, limit: int
) -> Field:
    """Sum octaves of ``sample`` into fractal noise in 0..1; octaves not yet in add their mean."""
    mean = 0.4 if ridged else 0.5
    total: Field = np.zeros(1, np.float32)
    norm = 0.0
    for octave, weight in enumerate(_octave_weights(c, cells, limit)):
        amplitude = 0.5**octave
        norm += amplitude
        if weight == 0:
            total = total + amplitude * mean
            continue
        layer = sample(octave, cells * 2**octave)
        if ridged:
            layer = (1 - np.abs(2 * layer - 1)) ** 2
        total = total + amplitude * (weight * layer + (1 - weight) * mean)
    return total / norm


def _fbm2(
    c: _Canvas, name: str, cells: float, stretch: float = 1.0, ridged: bool = False, limit: int = 8
) -> Field:
    """Return 2-D fractal noise, shape (height, width)."""
    return _fbm(c, lambda o, n: _noise2(c, name, o, n, stretch), cells, ridged, limit)


def _fbm1(c: _Canvas, name: str, cells: float, ridged: bool = False, limit: int = 8) -> Field:
    """Return 1-D fractal noise along x, shape (width,)."""
    return _fbm(c, lambda o, n: _noise1(c, name, o, n), cells, ridged, limit)


# --- drawing helpers -------------------------------------------------------------------------


def _color(rgb: RGB) -> Field:
    """Return a colour as an array that broadcasts over an image."""
    return np.array(rgb, dtype=np.float32)


def _paint(img: Field, mask: Field, color: Field) -> None:
    """Cover ``img`` with ``color`` where ``mask`` (0..1) says so."""
    img += (color - img) * mask[..., None]


def _below(c: _Canvas, top: Field | float, soft: float = 1.0) -> Field:
    """Return an anti-aliased mask of the pixels below the per-column line ``top``."""
    return np.clip((c.y - top) / (soft * c.px) + 0.5, 0, 1)


def _smoothstep(lo: float, hi: float, v: Field) -> Field:
    """Ease ``v`` from 0 at ``lo`` to 1 at ``hi``."""
    t = np.clip((v - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _distance(c: _Canvas, x: float, y: float) -> Field:
    """Return every pixel's distance to the point (x, y)."""
    return np.sqrt((c.x - x) ** 2 + (c.y - y) ** 2)


def _haze(c: _Canvas, color: RGB, amount: float) -> Field:
    """Fade a colour towards the horizon sky, as distance does."""
    return _color(_blend(color, c.scene.palette.horizon, amount))


def _hash01(salt: int, *ints: npt.NDArray[np.integer[Any]]) -> Field:
    """Hash integer coordinates to stable pseudo-random numbers in 0..1."""
    h = np.full(np.broadcast_shapes(*(i.shape for i in ints)), salt, dtype=np.uint64)
    for prime, values in zip((73856093, 19349663, 83492791), ints, strict=False):
        h ^= values.astype(np.uint64) * np.uint64(prime)
        h = (h ^ (h >> np.uint64(13))) * np.uint64(0x5BD1E995) & np.uint64(0xFFFFFFFF)
    return (h & np.uint64(0xFFFF)).astype(np.float32) / 65535


# --- sky layers ----------------------------------------------------------------------------


def _sky(c: _Canvas, img: Field) -> None:
    """Fill with the mood's gradient from zenith to horizon and the glow of the light."""
    p = c.scene.palette
    stops = np.array([p.zenith, p.middle, p.horizon], dtype=np.float32)
    depth = np.clip(c.y[:, 0] / c.layout.horizon, 0, 1) ** 1.3
    column = np.stack([np.interp(depth, (0.0, 0.55, 1.0), stops[:, i]) for i in range(3)], -1)
    img[:] = column[:, None, :].astype(np.float32)
    if {"sun", "moon"} & c.scene.elements:
        glow = np.exp(-_distance(c, c.layout.light_x, c.layout.light_y) / 0.22) * p.glow
        img += _color(p.light) * glow[..., None]


def _aurora(c: _Canvas, img: Field) -> None:
    """Add curtains of light: a sharp green hem along a wavy line, violet rays fading upwards."""
    hem = 0.16 + 0.2 * _fbm1(c, "aurora", 1.0)
    rays = 0.3 + 1.4 * _fbm1(c, "rays", 14.0, limit=5) ** 3
    height = c.y - hem
    below = np.exp(-((np.maximum(height, 0) / 0.012) ** 2))
    above = np.exp(np.minimum(height, 0) / 0.12)
    curtain = below * above * rays
    green = (curtain * above**0.5)[..., None] * _color((0.15, 0.95, 0.5))
    violet = (curtain * (1 - above) * 1.5)[..., None] * _color((0.45, 0.15, 0.7))
    img += (green + violet) * 0.9


def _stars(c: _Canvas, img: Field) -> None:
    """Sprinkle stars, denser high up; being the finest detail, they fade in with it."""
    rng = _rng(c.key, "stars")
    count = int(500 * c.aspect)
    rows = (rng.random(count) ** 1.6 * c.layout.horizon * c.height).astype(np.intp)
    cols = (rng.random(count) * c.width).astype(np.intp)
    shine = rng.random(count) ** 4 * min(1.0, max(0.0, 2 * c.detail - 0.4))
    size = max(1, round(c.height / 400))
    for dy in range(size):
        for dx in range(size):
            r, k = np.minimum(rows + dy, c.height - 1), np.minimum(cols + dx, c.width - 1)
            np.add.at(img, (r, k), shine[:, None] * _color((0.9, 0.93, 1.0)))


def _sun(c: _Canvas, img: Field) -> None:
    """Draw the sun as a bright disc with a hot glow."""
    distance = _distance(c, c.layout.light_x, c.layout.light_y)
    radius = 0.05 if c.scene.mood == "sunset" else 0.04
    light = _color(c.scene.palette.light)
    img += light * (np.exp(-distance / 0.04) * 0.5)[..., None]
    _paint(img, np.clip((radius - distance) / c.px + 0.5, 0, 1), np.minimum(light * 1.15, 1))


def _moon(c: _Canvas, img: Field) -> None:
    """Draw the moon: a cratered disc, a crescent on some seeds."""
    x = c.layout.light_x if "sun" not in c.scene.elements else c.aspect - c.layout.light_x
    y, radius = c.layout.light_y, 0.045
    distance = _distance(c, x, y)
    disc = np.clip((radius - distance) / c.px + 0.5, 0, 1)
    if _rng(c.key, "moon").random() < 0.5:
        shadow = _distance(c, x - 0.35 * radius, y - 0.15 * radius)
        disc *= 1 - np.clip((radius - shadow) / c.px + 0.5, 0, 1)
    craters = _fbm2(c, "craters", 40.0, limit=4)
    surface = _color(c.scene.palette.light) * (0.7 + 0.5 * craters)[..., None]
    img += _color(c.scene.palette.light) * (np.exp(-distance / 0.03) * 0.25)[..., None]
    _paint(img, disc, surface)


def _clouds(c: _Canvas, img: Field) -> None:
    """Draw wispy clouds, lit from the light's side, thinning towards the horizon."""
    p = c.scene.palette
    density = _fbm2(c, "clouds", 3.0, stretch=3.5)
    threshold = 0.46 if "cloudy" in c.scene.elements else 0.56
    fade = np.clip((c.layout.horizon - c.y) / 0.2, 0, 1)
    cover = _smoothstep(threshold, threshold + 0.18, density) * fade
    light = np.exp(-_distance(c, c.layout.light_x, c.layout.light_y) / 0.35) * p.glow
    shade = 0.7 + 0.45 * _smoothstep(threshold, threshold + 0.35, density) + light
    color = _color(p.cloud) * shade[..., None]
    _paint(img, cover * 0.9, color)


# --- land layers -----------------------------------------------------------------------------


def _mountains(c: _Canvas, img: Field) -> None:
    """Draw three ridged ranges, far ones hazier, with snow on the high peaks."""
    rock = _fbm2(c, "rock", 5.0, stretch=0.7, ridged=True)
    light = _relief(rock)
    for layer in range(3):
        _range(c, img, layer, rock, light)


def _relief(height: Field) -> Field:
    """Shade a height field by the slope facing the light (upper left)."""
    dy, dx = np.gradient(height, axis=(0, 1))
    facing = np.asarray(dx + 0.6 * dy, dtype=np.float32) * np.float32(height.shape[0] / 10)
    return np.clip(0.85 - facing, 0.45, 1.3)


def _range(c: _Canvas, img: Field, layer: int, rock: Field, light: Field) -> None:
    """Draw one mountain range; ``layer`` 0 is the farthest."""
    p, depth = c.scene.palette, (2 - layer) / 2
    ridge = _fbm1(c, f"ridge{layer}", 2.0 + 1.2 * layer, ridged=True)
    top = c.layout.horizon - (0.06 + 0.42 * ridge**1.5) * (1 - 0.22 * layer)
    face = _haze(c, p.rock, 0.15 + 0.55 * depth) * (light[..., None] ** (1 - 0.6 * depth))
    mist = np.clip((c.y - top) / 0.35, 0, 1) * 0.5
    face = face + (_color(p.horizon) - face) * mist[..., None]
    caps = 0.16 if "snow" in c.scene.elements else 0.05
    high = np.clip((c.layout.horizon - 0.2 - top) / 0.08, 0, 1) * caps
    snow = _below(c, top) * (1 - _below(c, top + high * (0.3 + rock)))
    face = face + (_haze(c, p.snow, 0.5 * depth) * light[..., None] - face) * snow[..., None]
    _paint(img, _below(c, top), face)


def _city(c: _Canvas, img: Field) -> None:
    """Draw a hazy back row and a front row of buildings with windows."""
    for row in range(2):
        _skyline(c, img, row)


def _skyline(c: _Canvas, img: Field, row: int) -> None:
    """Draw one row of buildings standing on the horizon; taller towards downtown."""
    rng = _rng(c.key, "city", row)
    widths = rng.uniform(0.03, 0.08, int(c.aspect / 0.03) + 2).astype(np.float32)
    edges = np.cumsum(widths) - 0.02
    downtown = np.exp(-(((edges - 0.5 * c.aspect) / (0.4 * c.aspect)) ** 2))
    heights = rng.uniform(0.04, 0.12, edges.size).astype(np.float32)
    heights *= (0.8 + 1.6 * downtown) * (1.2 - 0.35 * row)
    index = np.minimum(np.searchsorted(edges, c.x[0]), edges.size - 1)
    top = c.layout.horizon - heights[index]
    shade = rng.uniform(0.7, 1.2, edges.size).astype(np.float32)[index]
    p = c.scene.palette
    wall = _haze(c, p.rock, 0.55 - 0.45 * row)[None, :] * shade[:, None]
    lit = _windows(c, index, edges - widths, top, row)
    facade = wall[None, :, :] + (_color(p.windows) - wall[None, :, :]) * lit[..., None]
    _paint(img, _below(c, top[None, :]), facade)


def _windows(c: _Canvas, index: Index, left: Field, top: Field, row: int) -> Field:
    """Return a mask of the lit windows on a grid inside each building."""
    u = (c.x[0] - left[index]) / 0.011
    v = (c.y - top[None, :]) / 0.016
    cu, cv = np.floor(u), np.floor(v)
    inside = (u % 1 > 0.3) & (u % 1 < 0.75) & (v % 1 > 0.35) & (v % 1 < 0.8) & (cv >= 1)
    chance = _hash01(row + 1, index[None, :], cu.astype(np.intp)[None, :], cv.astype(np.intp))
    fine = min(1.0, max(0.0, 2 * c.detail - 0.3))
    return (inside & (chance < c.scene.palette.lit_windows)) * np.float32(0.9 * fine)


def _ground_color(c: _Canvas) -> RGB:
    """Return the colour of flat land: sand in a desert, otherwise the mood's land."""
    p = c.scene.palette
    return p.sand if "dunes" in c.scene.elements else p.land


def _ground(c: _Canvas, img: Field) -> None:
    """Cover everything below the horizon with textured land, hazy in the distance."""
    texture = _fbm2(c, "ground", 4.0, stretch=4.0)
    distance = np.clip(1 - (c.y - c.layout.horizon) / 0.3, 0, 1) ** 3
    base = _color(_ground_color(c))
    haze = _color(c.scene.palette.horizon)
    color = base * (0.65 + 0.7 * texture)[..., None]
    color = color + (haze - color) * (0.6 * distance)[..., None]
    _paint(img, _below(c, c.layout.horizon), color)


def _hills(c: _Canvas, img: Field) -> None:
    """Draw two rows of rolling hills with grass texture."""
    grass = _fbm2(c, "grass", 10.0, stretch=3.0)
    for layer in range(2):
        profile = _fbm1(c, f"hill{layer}", 1.5 + layer)
        top = c.layout.horizon + 0.03 + 0.1 * layer - (0.06 + 0.12 * profile)
        color = _haze(c, c.scene.palette.land, 0.45 - 0.35 * layer)
        shade = 1.1 - 0.8 * np.clip((c.y - top) / 0.5, 0, 0.6) + 0.35 * (grass - 0.5)
        _paint(img, _below(c, top), color * shade[..., None])


def _dunes(c: _Canvas, img: Field) -> None:
    """Draw three rows of dunes with a lit and a shaded flank and fine ripples."""
    wind = 9 * _fbm2(c, "ripples", 5.0, limit=5)
    for layer in range(3):
        _dune_row(c, img, layer, wind)


def _dune_row(c: _Canvas, img: Field, layer: int, wind: Field) -> None:
    """Draw one row of dunes; the shadow line slants down from each crest."""
    profile = 1 - np.abs(2 * _fbm1(c, f"dune{layer}", 1.0 + 0.6 * layer, limit=4) - 1)
    top = c.layout.horizon + 0.02 + 0.12 * layer - (0.04 + 0.14 * profile) * (0.6 + 0.3 * layer)
    slope = np.gradient(top) * np.float32(c.height)
    below = np.clip((c.y - top) * 0.8 * c.height, 0, c.width - 1)
    column = np.clip(np.arange(c.width) + below, 0, c.width - 1).astype(np.intp)
    lit = 0.5 + 0.5 * np.tanh(slope[column] * 4)
    ripples = np.sin((c.y - top) * 700 + wind) * 0.025
    color = _haze(c, c.scene.palette.sand, 0.4 - 0.2 * layer)
    shade = 0.55 + 0.55 * lit + ripples * min(1.0, c.detail * 1.5)
    _paint(img, _below(c, top), color * shade[..., None])


def _trees(c: _Canvas, img: Field) -> None:
    """Draw three rows of conifers, far rows hazier and smaller."""
    for row in range(3):
        _tree_row(c, img, row)


def _tree_row(c: _Canvas, img: Field, row: int) -> None:
    """Draw one row of conifer silhouettes as overlapping triangles with ragged edges."""
    rng = _rng(c.key, "trees", row)
    count = int(c.aspect * (30 + 12 * row))
    xs = rng.uniform(-0.05, c.aspect + 0.05, count)[:, None]
    heights = rng.uniform(0.05, 0.12, count)[:, None] * (0.6 + 0.3 * row)
    profile = np.max(heights - np.abs(c.x - xs) * 2.8, axis=0).astype(np.float32)
    ragged = (_fbm1(c, f"branches{row}", 60.0, limit=4) - 0.5) * 0.03 * np.clip(profile * 20, 0, 1)
    in_water = "water" in c.scene.elements
    base = c.layout.horizon + (0.004 if in_water else 0.01 + 0.045 * row)
    top = base - np.maximum(profile, 0) + ragged
    color = _haze(c, c.scene.palette.foliage, 0.35 - 0.15 * row)
    needles = 0.85 + 0.3 * _fbm2(c, "needles", 30.0, limit=3)
    shape = _below(c, top) * (1 - _below(c, base))
    _paint(img, shape, color * needles[..., None])


def _water(c: _Canvas, img: Field) -> None:
    """Fill below the horizon with water mirroring everything above, rippled by waves."""
    first = min(int(c.layout.horizon * c.height), c.height - 1)
    y = c.y[first:]
    waves = _fbm2(c, "waves", 6.0, stretch=8.0)[first:]
    near = y - c.layout.horizon
    source_y = 2 * c.layout.horizon - y - 0.004 + (waves - 0.5) * 0.03 * near
    rows = np.clip(source_y * c.height, 0, first - 1).astype(np.intp)
    cols = np.clip((c.x + (waves - 0.5) * 0.08 * near) * c.height, 0, c.width - 1)
    mirror = img[rows, cols.astype(np.intp)] * 0.8
    deep = np.clip(0.1 + 1.6 * near, 0, 0.75)[..., None]
    water = mirror + (_color(c.scene.palette.water) - mirror) * deep
    water += _glitter(c, waves, near)[..., None] * _color(c.scene.palette.light)
    mask = _below(c, c.layout.horizon)[first:]
    _paint(img[first:], mask, water)


def _glitter(c: _Canvas, waves: Field, near: Field) -> Field:
    """Return the sparkle of the sun or moon on wave crests in a column under it."""
    if not {"sun", "moon"} & c.scene.elements:
        return np.zeros_like(waves)
    spread = 0.03 + 0.35 * near
    column = np.exp(-(((c.x - c.layout.light_x) / spread) ** 2))
    return _smoothstep(0.55, 0.7, waves) * column * 0.8


# --- assembly ------------------------------------------------------------------------------

Layer = Callable[[_Canvas, Field], None]

# Painter's order: each layer covers what is behind it.
LAYERS: tuple[tuple[str, Layer], ...] = (
    ("sky", _sky),
    ("stars", _stars),
    ("sun", _sun),
    ("moon", _moon),
    ("clouds", _clouds),
    ("aurora", _aurora),
    ("mountains", _mountains),
    ("city", _city),
    ("ground", _ground),
    ("hills", _hills),
    ("dunes", _dunes),
    ("trees", _trees),
    ("water", _water),
)


def _render(c: _Canvas) -> Field:
    """Draw every layer the scene has, then grade the colours."""
    img = np.zeros((c.height, c.width, 3), dtype=np.float32)
    for element, layer in LAYERS:
        if element in c.scene.elements:
            layer(c, img)
    return _grade(c, img)


def _grade(c: _Canvas, img: Field) -> Field:
    """Apply the tint, the hue shift and a soft vignette."""
    img = img * _color(c.scene.tint)
    img = img @ _hue_matrix(c.scene.hue_shift).T
    centre = _distance(c, c.aspect / 2, 0.5) / max(c.aspect, 1.0)
    return np.clip(img * (1 - 0.35 * centre**2)[..., None], 0, 1)


def _hue_matrix(degrees: float) -> Field:
    """Return the RGB matrix that turns hues by ``degrees`` around the grey axis."""
    angle = math.radians(degrees)
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rotation = math.cos(angle) * np.eye(3) + math.sin(angle) * cross
    return (rotation + (1 - math.cos(angle)) * np.outer(k, k)).astype(np.float32)


def _shrink(picture: Field, width: int, height: int) -> Image.Image:
    """Quantise the rendered picture and box-filter it down to the output size."""
    image = Image.fromarray((picture * 255 + 0.5).astype(np.uint8))
    return image.resize((width, height), Image.Resampling.BOX)


def _latent(key: bytes, height: int, width: int) -> Field:
    """Return the starting noise: smooth, saturated colour blobs in 0..1."""
    c = _canvas(scene_for(""), _Layout(0.5, 0.5, 0.5), key, (height, width), 1.0)
    channels = [_fbm2(c, f"latent{i}", 2.5, limit=3) for i in range(3)]
    return np.clip(0.5 + (np.stack(channels, -1) - 0.5) * 2.0, 0, 1)


def _develop(image: Image.Image, latent: Field, t: float) -> npt.NDArray[np.uint8]:
    """Blur the step's picture by how early it is and mix it into the latent noise."""
    radius = BLUR * image.height * (1 - t) ** 2
    if radius >= 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    signal = t  # the scene's share of the frame
    mixed = signal * np.asarray(image, dtype=np.float32) + (1 - signal) * 255 * latent
    return (mixed + 0.5).astype(np.uint8)


def _check(width: int, height: int, steps: int) -> None:
    """Reject sizes and step counts the generator cannot draw."""
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"width and height must be at least {MIN_SIDE}, got {width}x{height}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def generate(prompt: str, *, width: int, height: int, steps: int, seed: int) -> Iterator[Frame]:
    """Yield one Frame per step; the last frame is the finished picture."""
    _check(width, height, steps)
    key, scene = _key(prompt, seed), scene_for(prompt)
    layout = _layout(key, scene, width / height)
    latent = _latent(key, height, width)
    size = (round(height * SUPERSAMPLE), round(width * SUPERSAMPLE))
    for step in range(1, steps + 1):
        t = step / steps
        picture = _render(_canvas(scene, layout, key, size, t))
        pixels = _develop(_shrink(picture, width, height), latent, t)
        pixels.flags.writeable = False
        yield Frame(step, steps, pixels)
