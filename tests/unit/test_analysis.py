"""The analyze kind's pipeline and parameters, on synthetic pictures with known answers."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pydantic import ValidationError

from tasks.demo.analysis import (
    STAGES,
    analyze,
    brightness,
    edge_density,
    histogram,
    luminance,
    normalize,
    palette,
    report,
    sobel,
)
from tasks.demo.analyze import analyze_image
from tasks.demo.analyze_params import (
    ANALYZE,
    DATA_URL_PATTERN,
    MAX_DATA_URL_CHARS,
    AnalyzeParams,
    is_data_url,
    open_upload,
)
from tasks.errors import JobError

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def halves(
    left: tuple[int, int, int], right: tuple[int, int, int], w: int = 64, h: int = 48
) -> npt.NDArray[np.uint8]:
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2] = left
    pixels[:, w // 2 :] = right
    return pixels


def flat(colour: tuple[int, int, int], w: int = 40, h: int = 30) -> npt.NDArray[np.uint8]:
    return np.full((h, w, 3), colour, np.uint8)


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(out.getvalue()).decode()}"


def problems(**params: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        AnalyzeParams(**params)
    return {str(e["loc"][0]): e["msg"] for e in caught.value.errors()}


# --- palette ---------------------------------------------------------------------------------


def test_half_red_half_blue_has_those_two_colours_at_half_each() -> None:
    """Asked for five colours, a half-red half-blue picture gives exactly red and blue, 50 % each."""
    swatches = palette(halves(RED, BLUE), 5)
    assert sorted(s["hex"] for s in swatches) == ["#0000ff", "#ff0000"]
    assert [s["share"] for s in swatches] == [0.5, 0.5]


def test_palette_shares_follow_the_areas_largest_first() -> None:
    """A quarter white, three quarters black: black first at 75 %, white at 25 %."""
    pixels = flat(BLACK, 40, 40)
    pixels[:10] = WHITE
    swatches = palette(pixels, 3)
    assert [(s["hex"], s["share"]) for s in swatches] == [("#000000", 0.75), ("#ffffff", 0.25)]


def test_palette_of_a_busy_picture_finds_k_colours_covering_it() -> None:
    """On random noise k-means returns k distinct colours whose shares add up to 1."""
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    swatches = palette(pixels, 6)
    assert len({s["hex"] for s in swatches}) == 6
    assert math.isclose(sum(s["share"] for s in swatches), 1.0, abs_tol=1e-3)


def test_palette_is_deterministic() -> None:
    """The same pixels give the same palette, run after run (the RNG is fixed)."""
    pixels = np.random.default_rng(9).integers(0, 256, (90, 90, 3), dtype=np.uint8)
    assert palette(pixels, 5) == palette(pixels, 5)


# --- edges -----------------------------------------------------------------------------------


def test_a_flat_picture_has_no_edges() -> None:
    """A single-colour picture has a zero gradient everywhere, borders included."""
    magnitude = sobel(luminance(flat((120, 200, 40))))
    assert float(magnitude.max()) == 0.0
    assert edge_density(magnitude) == 0.0


def test_a_black_white_step_is_a_full_edge_two_pixels_wide() -> None:
    """A vertical black|white boundary gives magnitude 1 on the two columns beside it only."""
    magnitude = sobel(luminance(halves(BLACK, WHITE, w=64, h=20)))
    assert np.allclose(magnitude[:, 31:33], 1.0)
    assert float(np.delete(magnitude, [31, 32], axis=1).max()) == 0.0
    assert edge_density(magnitude) == round(2 / 64, 4)


def test_edge_density_grows_with_detail() -> None:
    """A checkerboard of 4 px squares is mostly edges: over ten times one boundary's share."""
    board = (np.indices((64, 64)) // 4).sum(axis=0) % 2 * 255
    checker = np.repeat(board[..., None], 3, axis=2).astype(np.uint8)
    one = edge_density(sobel(luminance(halves(BLACK, WHITE))))
    many = edge_density(sobel(luminance(checker)))
    assert many > 0.5 and many > 10 * one


# --- histogram -------------------------------------------------------------------------------


def test_histogram_of_known_areas() -> None:
    """A quarter white: luminance mean 0.25, RMS contrast √(¼·¾), class 'dim'; bins match."""
    pixels = flat(BLACK, 40, 40)
    pixels[:10] = WHITE
    stats = histogram(pixels)
    assert stats["mean"] == 0.25
    assert stats["contrast"] == round(math.sqrt(0.25 * 0.75), 4)
    assert stats["brightness"] == "dim"
    assert stats["channels"]["r"]["bins"][0] == 0.75
    assert stats["channels"]["r"]["bins"][-1] == 0.25
    assert stats["channels"]["luma"]["mean"] == 63.75


@pytest.mark.parametrize(
    ("colour", "name"), [(BLACK, "dark"), ((128, 128, 128), "medium"), (WHITE, "bright")]
)
def test_brightness_class_of_flat_greys(colour: tuple[int, int, int], name: str) -> None:
    """Black is dark, mid-grey medium, white bright, and none of them has any contrast."""
    stats = histogram(flat(colour))
    assert stats["brightness"] == name
    assert stats["contrast"] == 0.0


def test_brightness_bands() -> None:
    """The classes split the 0..1 range into five even bands."""
    assert [brightness(x) for x in (0.1, 0.3, 0.5, 0.7, 0.9)] == [
        "dark",
        "dim",
        "medium",
        "light",
        "bright",
    ]


# --- load, stages, report --------------------------------------------------------------------


def test_load_fits_large_pictures_and_leaves_small_ones() -> None:
    """A 1024×600 picture is analysed at 512×300; a 100×50 one stays as it is."""
    assert normalize(Image.new("RGB", (1024, 600))).size == (512, 300)
    assert normalize(Image.new("RGB", (100, 50))).size == (100, 50)


def test_load_flattens_transparency_on_white() -> None:
    """A fully transparent picture is analysed as white, and palette mode becomes RGB."""
    picture = normalize(Image.new("RGBA", (8, 8), (255, 0, 0, 0)))
    assert picture.mode == "RGB"
    assert picture.getpixel((3, 3)) == WHITE
    assert normalize(Image.new("P", (8, 8))).mode == "RGB"


def test_analyze_yields_the_five_stages_in_order_and_a_report() -> None:
    """Stages come as load, palette, edges, histogram, thumbnail, indexed 1..5 of 5; the
    report carries their findings and is plain JSON."""
    stages = list(analyze(Image.fromarray(halves(RED, BLUE, w=400, h=200)), colours=4))
    assert [(s.name, s.index, s.total) for s in stages] == [
        (name, i, 5) for i, name in enumerate(STAGES, 1)
    ]
    assert stages[1].message == "Palette: 2 colours, mostly #ff0000 (50%)"
    edges, thumb = stages[2].image, stages[4].image
    assert edges is not None and edges.size == (400, 200) and edges.mode == "L"
    assert thumb is not None and thumb.size == (128, 64)
    result = report(stages)
    assert json.loads(json.dumps(result)) == result
    assert result["width"] == 400 and result["thumbnail"] == {"width": 128, "height": 64}
    assert {c["hex"] for c in result["palette"]} == {"#ff0000", "#0000ff"}
    assert 0 < result["edges"]["density"] < 0.02


def test_report_needs_every_stage() -> None:
    """A report of an unfinished analysis is refused, naming what is missing."""
    stages = list(analyze(Image.new("RGB", (16, 16))))
    with pytest.raises(ValueError, match="thumbnail"):
        report(stages[:4])


def test_task_body_analyses_the_generated_picture_deterministically() -> None:
    """Called outside a worker, the task returns the report; the same prompt and seed give
    the same report (but the run time), another seed another palette."""
    first = analyze_image("a desert at noon", seed=5, size=64, colours=4)
    again = analyze_image("a desert at noon", seed=5, size=64, colours=4)
    other = analyze_image("a desert at noon", seed=6, size=64, colours=4)
    first.pop("seconds"), again.pop("seconds")
    assert first == again
    assert first["palette"] != other["palette"]
    assert first["input"] == {"kind": "generated", "seed": 5}
    assert first["files"] == ["edges.png", "thumbnail.png", "report.json"]
    assert len(first["palette"]) == 4 and first["width"] == 64


def test_task_body_refuses_what_the_model_refuses() -> None:
    """Arguments sent straight to the task, past the web's check, meet the same limits: a
    huge size fails the job with a message naming the field, before any drawing."""
    with pytest.raises(
        JobError,
        match=r"^The job's parameters are not valid: size must be an integer from 64 to 512$",
    ):
        analyze_image(size=100_000)


def test_task_body_analyses_an_upload() -> None:
    """An uploaded PNG is what gets analysed (not the prompt's picture)."""
    url = data_url(Image.fromarray(halves(RED, BLUE)))
    result = analyze_image(image=url, colours=3)
    assert sorted(c["hex"] for c in result["palette"]) == ["#0000ff", "#ff0000"]
    assert result["input"] == {"kind": "upload"}


# --- parameters ------------------------------------------------------------------------------


def test_params_defaults() -> None:
    """Nothing given: the default prompt, a random seed in range, 256 px, five colours."""
    params = AnalyzeParams()
    assert params.prompt and params.size == 256 and params.colours == 5 and params.image is None
    assert 0 <= params.seed < 2**32


@pytest.mark.parametrize(
    ("given", "field", "reason"),
    [
        ({"size": 63}, "size", "must be an integer from 64 to 512"),
        ({"size": 600}, "size", "must be an integer from 64 to 512"),
        ({"colours": 1.5}, "colours", "must be an integer from 2 to 8"),
        ({"colours": True}, "colours", "must be an integer from 2 to 8"),
        ({"seed": -1}, "seed", "must be an integer from 0 to 4294967295"),
        ({"prompt": "x" * 201}, "prompt", "must be at most 200 characters"),
        ({"prompt": "bell\x07"}, "prompt", "must not contain control characters"),
        ({"prompt": "\ud800"}, "prompt", "must not contain control characters"),
        ({"prompt": 5}, "prompt", "must be a text"),
        ({"image": 5}, "image", "must be a data URL: data:image/png;base64,..."),
        ({"colour": 3}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_params_refuse_bad_values_naming_the_field(
    given: dict[str, Any], field: str, reason: str
) -> None:
    """Each bad value is refused with a reason on its own field."""
    assert problems(**given) == {field: reason}


def test_params_take_a_real_upload_and_integral_floats() -> None:
    """A PNG data URL is accepted as it is; 141.0 counts as the integer 141."""
    url = data_url(Image.new("RGB", (10, 10), RED))
    params = AnalyzeParams(image=url, size=141.0)
    assert params.image == url and params.size == 141


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,AAA",  # not a whole number of base64 quads
        "data:image/svg+xml;base64,AAAA",  # a format we do not read
        "data:text/plain;base64,AAAA",
        "https://example.com/cat.png",
        "data:image/png,rawbytes",
    ],
)
def test_params_refuse_what_is_not_a_base64_image_url(url: str) -> None:
    """Anything but a base64 data URL of png/jpeg/gif/webp is refused by the pattern."""
    assert "must be a base64 data URL" in problems(image=url)["image"]
    assert re.search(DATA_URL_PATTERN, url) is None


@pytest.mark.parametrize(
    "body",
    ["", "AAAA", "AAA=", "AA==", "A===", "====", "AAAAA", "AAAAA=", "AAAAAA==", "AA=A", "AAAA\n",
     "AA-_", "AAA==", "AAAAAAA=", "QUJD", "QUJ", "é+/A"],
)  # fmt: skip
@pytest.mark.parametrize("head", ["data:image/png;base64,", "data:image/webp;base64,", "data:image/bmp;base64,", "Data:image/png;base64,", "xdata:image/png;base64,"])  # fmt: skip
def test_the_fast_data_url_check_agrees_with_the_schema_pattern(head: str, body: str) -> None:
    """The two-pass check the model runs says what the schema's pattern says."""
    url = head + body
    ecma = DATA_URL_PATTERN.removesuffix("$") + r"\Z"  # JSON Schema's $ ends the text; re's
    assert is_data_url(url) == (re.search(ecma, url) is not None)  # also matches before \n


def test_the_worker_refuses_bytes_that_are_not_the_declared_picture() -> None:
    """Well-formed base64 of something else, or a PNG called a JPEG, passes the model (the
    schema allows it, so submit must) and the worker refuses it saying why."""
    png = data_url(Image.new("RGB", (4, 4)))
    assert AnalyzeParams(image="data:image/png;base64,AAAA").image  # accepted as sent
    with pytest.raises(ValueError, match="the upload is not a PNG image Pillow can read"):
        open_upload("data:image/png;base64,AAAA")
    jpeg_named = png.replace("image/png", "image/jpeg")
    with pytest.raises(ValueError, match="the upload is not a JPEG image Pillow can read"):
        open_upload(jpeg_named)


def test_the_worker_refuses_too_many_pixels_from_the_header() -> None:
    """A small file that would decode to 5000×5000 pixels is refused before decoding."""
    url = data_url(Image.new("1", (5000, 5000)))
    assert len(url) < 100_000
    with pytest.raises(ValueError, match=r"is too many pixels \(at most 16777216\)"):
        open_upload(url)


def test_params_refuse_an_upload_past_two_mib_by_length() -> None:
    """A data URL longer than 2 MiB of base64 is refused by its length, before any parsing."""
    url = "data:image/png;base64," + "A" * MAX_DATA_URL_CHARS
    assert problems(image=url)["image"] == "must be at most 2097152 bytes once decoded (2 MiB)"


def test_schema_states_the_limits() -> None:
    """The JSON Schema has extra fields forbidden and each limit the model checks."""
    schema = AnalyzeParams.model_json_schema()
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    assert (props["size"]["minimum"], props["size"]["maximum"]) == (64, 512)
    assert (props["colours"]["minimum"], props["colours"]["maximum"]) == (2, 8)
    assert props["prompt"]["maxLength"] == 200
    upload = props["image"]["anyOf"][0]
    assert upload["maxLength"] == MAX_DATA_URL_CHARS and upload["pattern"] == DATA_URL_PATTERN
    assert ANALYZE["params"] is AnalyzeParams and ANALYZE["task"] == "jobcast.analyze"


def test_open_upload_flags_damaged_data() -> None:
    """A PNG cut short passes the header check but fails to decode, with a clear reason."""
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(
        out, format="PNG"
    )
    cut = out.getvalue()[:400]
    cut = cut[: len(cut) - len(cut) % 3]
    url = "data:image/png;base64," + base64.b64encode(cut).decode()
    with pytest.raises(ValueError, match="the PNG data is damaged"):
        open_upload(url)
