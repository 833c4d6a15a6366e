"""The demo workload: a deterministic procedural image generator that sharpens step by step."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import numpy.typing as npt
import pytest

from tasks.demo.generator import Frame, generate, scene_for

W, H = 96, 64


def frames(
    prompt: str, *, seed: int = 7, steps: int = 8, width: int = W, height: int = H
) -> list[Frame]:
    return list(generate(prompt, width=width, height=height, steps=steps, seed=seed))


def final(prompt: str, *, seed: int = 7, steps: int = 3) -> npt.NDArray[np.float64]:
    return frames(prompt, seed=seed, steps=steps)[-1].pixels.astype(np.float64)


def mad(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def laplacian_energy(pixels: npt.NDArray[np.uint8]) -> float:
    g = pixels.astype(np.float64).mean(axis=-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


# --- determinism -----------------------------------------------------------------------------


def test_same_inputs_give_byte_identical_frames() -> None:
    """Two runs with the same prompt, seed, size and steps give the same bytes at every step."""
    first = frames("sunset over the ocean with mountains", seed=42)
    second = frames("sunset over the ocean with mountains", seed=42)
    assert [f.pixels.tobytes() for f in first] == [f.pixels.tobytes() for f in second]


def test_another_seed_gives_another_picture() -> None:
    """Changing only the seed changes the finished picture clearly."""
    a = final("sunset over the ocean with mountains", seed=1)
    b = final("sunset over the ocean with mountains", seed=2)
    assert np.abs(a - b).mean() > 5


def test_another_prompt_gives_another_picture() -> None:
    """Changing only the prompt, even by an unknown word, changes the finished picture clearly."""
    a = final("a quiet evening", seed=1)
    b = final("a quiet evening walk", seed=1)
    assert np.abs(a - b).mean() > 5


def test_final_picture_does_not_depend_on_step_count() -> None:
    """The last frame is the finished scene itself, whatever number of steps led to it."""
    one = frames("city skyline at night", steps=1)[-1].pixels
    many = frames("city skyline at night", steps=6)[-1].pixels
    assert one.tobytes() == many.tobytes()


# --- prompt words ----------------------------------------------------------------------------


def test_night_over_ocean_is_darker_above_than_sunny_desert() -> None:
    """A night sky makes the upper half of the picture far darker than a sunny desert's."""
    night = final("night sky over the ocean")
    day = final("sunny desert at noon")
    assert night[: H // 2].mean() < 0.5 * day[: H // 2].mean()


def test_colour_words_tilt_the_channel_balance() -> None:
    """ "red" pushes the picture towards red and "blue" towards blue, with the rest alike."""
    for rest in ("mountains at dusk", "forest by a lake"):
        red = final(f"red {rest}").reshape(-1, 3).mean(axis=0)
        blue = final(f"blue {rest}").reshape(-1, 3).mean(axis=0)
        assert red[0] - red[2] > blue[0] - blue[2] + 30


def test_keywords_choose_mood_and_elements() -> None:
    """Keywords, plurals included, pick the mood and the elements; the first mood word wins."""
    scene = scene_for("Snowy mountains and pine trees at dusk by the lake")
    assert scene.mood == "sunset"
    assert {"mountains", "trees", "water", "snow", "sun"} <= scene.elements
    assert scene_for("night in the city").elements >= {"city", "stars", "moon"}
    assert "sun" not in scene_for("night under the sun").elements
    assert "stars" not in scene_for("noon with stars").elements
    assert scene_for("moon over a lake").mood == "night"
    assert scene_for("the moon at dusk").mood == "sunset"


def test_unknown_words_shift_the_hue_and_known_ones_do_not() -> None:
    """Words outside the tables turn the hue, deterministically; a prompt of keywords keeps it."""
    assert scene_for("ocean").hue_shift == 0
    assert scene_for("whale ocean").hue_shift == scene_for("whale ocean").hue_shift != 0
    assert scene_for("whale ocean").hue_shift != scene_for("ship ocean").hue_shift


def test_prompt_without_keywords_still_draws_a_landscape() -> None:
    """With no keyword the scene falls back to a day over rolling hills."""
    scene = scene_for("a cat")
    assert scene.mood == "day"
    assert {"sky", "hills", "ground"} <= scene.elements


# --- progress ----------------------------------------------------------------------------------


def test_one_frame_per_step_with_rising_percent() -> None:
    """There is one frame per step, numbered 1..steps, and percent rises strictly to 100."""
    result = frames("forest by a lake", steps=7)
    assert [f.step for f in result] == list(range(1, 8))
    assert all(f.steps == 7 for f in result)
    percents = [f.percent for f in result]
    assert percents == sorted(set(percents))
    assert percents[-1] == 100


@pytest.mark.parametrize(
    "prompt",
    ["sunset over the ocean with mountains", "city skyline at night", "sunny desert at noon"],
)
def test_frames_close_in_on_the_final_picture(prompt: str) -> None:
    """Each frame is nearer the final picture than the one before; the first is far from it."""
    result = frames(prompt, steps=10)
    last = result[-1].pixels
    distances = [mad(f.pixels, last) for f in result]
    assert distances[0] > 40
    assert all(later <= earlier + 0.5 for earlier, later in pairwise(distances))
    assert distances[-1] == 0


@pytest.mark.parametrize(
    "prompt",
    ["sunset over the ocean with mountains", "snowy forest in winter", "city skyline at night"],
)
def test_early_frames_are_rough_and_the_last_is_crisp(prompt: str) -> None:
    """Early frames are coarse colour blobs: far less fine detail than the finished picture."""
    result = frames(prompt, steps=10, width=128, height=128)
    energy = [laplacian_energy(f.pixels) for f in result]
    assert energy[0] < 0.25 * energy[-1]
    assert energy[2] < 0.5 * energy[-1]
    assert max(energy) == energy[-1] or energy[-1] > 0.9 * max(energy)


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(96, 64), (64, 96), (160, 64)])
def test_pixels_have_the_requested_non_square_shape(width: int, height: int) -> None:
    """Every frame holds (height, width, 3) uint8 pixels, whatever the aspect ratio."""
    for frame in frames("mountains over a lake", steps=2, width=width, height=height):
        assert frame.pixels.shape == (height, width, 3)
        assert frame.pixels.dtype == np.uint8


def test_to_image_is_an_rgb_image_of_the_requested_size() -> None:
    """to_image() gives an RGB PIL image of (width, height) with the frame's pixels."""
    frame = frames("aurora over the sea", steps=2, width=80, height=64)[-1]
    image = frame.to_image()
    assert image.mode == "RGB"
    assert image.size == (80, 64)
    assert np.array_equal(np.asarray(image), frame.pixels)


def test_frames_cannot_be_changed_in_place() -> None:
    """A frame's pixels are read-only, so a consumer cannot alter what others see."""
    frame = frames("a red sun", steps=1)[0]
    with pytest.raises(ValueError):
        frame.pixels[0, 0, 0] = 1


@pytest.mark.parametrize(
    "kwargs", [{"width": 8}, {"height": 4}, {"steps": 0}], ids=["narrow", "flat", "no-steps"]
)
def test_rejects_sizes_and_steps_it_cannot_draw(kwargs: dict[str, int]) -> None:
    """Too small a side or fewer than one step is refused before any work."""
    args = {"width": W, "height": H, "steps": 2, "seed": 0} | kwargs
    with pytest.raises(ValueError):
        next(generate("lake", **args))


# --- content -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["sunset over the ocean with mountains", "night sky over the ocean", "a cat", "snowy forest"],
)
def test_final_picture_has_a_spread_of_colours(prompt: str) -> None:
    """The finished picture is not flat: its pixel values and grey levels vary a good deal."""
    pixels = final(prompt)
    assert pixels.std() > 15
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
