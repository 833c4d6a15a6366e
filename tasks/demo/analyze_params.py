"""The ``analyze`` kind's parameters: what a browser form can send as JSON.

Two sources, so the demo needs no upload yet takes one:

- nothing but ``prompt`` / ``seed`` / ``size``: the demo generator renders that picture,
  then it is analysed (deterministic: the same three give the same report);
- ``image``: a ``data:image/...;base64,...`` URL of an uploaded PNG, JPEG, GIF or WebP,
  at most :data:`MAX_UPLOAD_BYTES` decoded (the HTTP body limit,
  ``JOBCAST_MAX_BODY_BYTES``, applies first; the page shrinks a picture to fit it).

The JSON Schema says every limit the model checks: the data URL's grammar (real base64,
padding included) and its length are in ``pattern`` and ``maxLength``. What a schema
cannot say, that the bytes are a picture of at most :data:`MAX_PIXELS`, is checked on
submit too, from the image header alone (nothing is decoded in the web process).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings
from typing import Annotated, Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from tasks.demo.params import MAX_SEED, random_seed
from tasks.kinds import bounded_integer, problem

TASK = "jobcast.analyze"
MAX_PROMPT_CHARS = 200
DEFAULT_PROMPT = "a lighthouse on a cliff at sunset"
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 64, 512, 256
MIN_COLOURS, MAX_COLOURS, DEFAULT_COLOURS = 2, 8, 5
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_PIXELS = 4096 * 4096  # what an upload may decode to (its header says before decoding)
FORMATS = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP"}

_B64 = "[A-Za-z0-9+/]"
DATA_URL_PATTERN = (
    rf"^data:image/({'|'.join(FORMATS)});base64,(?:{_B64}{{4}})*(?:{_B64}{{2}}==|{_B64}{{3}}=)?$"
)
# The same grammar, checked in two cheap passes (the pattern's repeated group takes Python's
# re about 0.7 s on 2 MiB, a stall for every stream of a gevent worker): the head, then the
# body's alphabet with at most two "=" at its end, and a length that is a multiple of 4.
_HEAD = re.compile(rf"data:image/(?:{'|'.join(FORMATS)});base64,")
_BODY = re.compile(r"[A-Za-z0-9+/]*={0,2}")
MAX_DATA_URL_CHARS = len("data:image/jpeg;base64,") + 4 * math.ceil(MAX_UPLOAD_BYTES / 3)

# Control characters but tab, LF and CR; DEL and C1. The pattern is what the schema says;
# the check below says the same. Lone surrogates (JSON can carry one, UTF-8 cannot) are
# refused too, but not by the pattern: schemathesis' regex engine cannot express them and
# would then drop the whole pattern (as the imagine kind's prompt, tasks/demo/params.py).
_FORBIDDEN = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
PROMPT_PATTERN = rf"^[^{_FORBIDDEN}]*$"
_PROMPT = re.compile(PROMPT_PATTERN)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise problem("must be a text")
    if len(value) > MAX_PROMPT_CHARS:
        raise problem("must be at most {limit} characters", limit=MAX_PROMPT_CHARS)
    if not _PROMPT.match(value) or _SURROGATE.search(value):
        raise problem("must not contain control characters")
    return " ".join(value.split())


def _image(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise problem("must be a data URL: data:image/png;base64,...")
    if len(value) > MAX_DATA_URL_CHARS:
        raise problem("must be at most {limit} bytes once decoded (2 MiB)", limit=MAX_UPLOAD_BYTES)
    if not is_data_url(value):
        raise problem(
            "must be a base64 data URL of a PNG, JPEG, GIF or WebP image "
            "(data:image/png;base64,...)"
        )
    # What the bytes are is the worker's to find out (open_upload): a schema cannot say
    # "a PNG Pillow reads", and a body the schema allows must not be refused here.
    return value


def is_data_url(value: str) -> bool:
    """Whether ``value`` matches :data:`DATA_URL_PATTERN` (the same answer, faster)."""
    head = _HEAD.match(value)
    if head is None:
        return False
    body = value[head.end() :]
    return len(body) % 4 == 0 and _BODY.fullmatch(body) is not None


def decode(url: str) -> tuple[str, bytes]:
    """The declared format and the bytes of a data URL that matched the pattern."""
    head, _, body = url.partition(",")
    kind = head[len("data:image/") : -len(";base64")]
    try:
        return FORMATS[kind], base64.b64decode(body, validate=True)
    except (binascii.Error, KeyError) as exc:  # the pattern lets neither through
        raise problem("is not valid base64") from exc


def peek(url: str) -> tuple[int, int]:
    """Read an upload's header: its size, or why it is not a picture we take."""
    declared, data = decode(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[declared]) as image:
                width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow reports a damaged header with any of these.
        raise problem("is not a {kind} image Pillow can read", kind=declared) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise problem("is too many pixels (at most {limit})", limit=MAX_PIXELS) from exc
    if width * height > MAX_PIXELS:
        raise problem("is too many pixels (at most {limit})", limit=MAX_PIXELS)
    return width, height


def open_upload(url: str) -> Image.Image:
    """Decode an upload fully (in the worker); ``ValueError`` saying why it cannot be read."""
    try:
        peek(url)  # the header first: a pixel bomb is refused before decoding
    except PydanticCustomError as exc:
        raise ValueError(f"the upload {exc.message()}") from None
    declared, data = decode(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[declared])
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"the {declared} data is damaged") from exc
    return image


Seed = bounded_integer(0, MAX_SEED, description="Random when left out.")
Size = bounded_integer(MIN_SIZE, MAX_SIZE, description="Side of the generated picture, in pixels.")
Colours = bounded_integer(MIN_COLOURS, MAX_COLOURS, description="How many palette colours to find.")
PROMPT_SCHEMA = {
    "type": "string",
    "maxLength": MAX_PROMPT_CHARS,
    "pattern": PROMPT_PATTERN,
    "description": "What the generator draws when no image is given; also the job's title.",
}
IMAGE_SCHEMA = {
    "anyOf": [
        {"type": "string", "maxLength": MAX_DATA_URL_CHARS, "pattern": DATA_URL_PATTERN},
        {"type": "null"},
    ],
    "description": (
        "An uploaded picture as a base64 data URL (PNG, JPEG, GIF or WebP, at most 2 MiB "
        f"decoded and {MAX_PIXELS} pixels). Left out: the prompt's picture is generated."
    ),
}


class AnalyzeParams(BaseModel):
    """The parameters of an `analyze` job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Annotated[str, BeforeValidator(_prompt), Field(json_schema_extra=PROMPT_SCHEMA)] = (
        DEFAULT_PROMPT
    )
    seed: Seed = Field(default_factory=random_seed)  # type: ignore[valid-type]
    size: Size = DEFAULT_SIZE  # type: ignore[valid-type]
    colours: Colours = DEFAULT_COLOURS  # type: ignore[valid-type]
    image: Annotated[str | None, BeforeValidator(_image), Field(json_schema_extra=IMAGE_SCHEMA)] = (
        None
    )


# The kind's declaration; the lead turns it into tasks.kinds.Kind(**ANALYZE) at merge.
ANALYZE: dict[str, Any] = {
    "name": "analyze",
    "params": AnalyzeParams,
    "task": TASK,
    "title": "Analyze an image",
    "description": (
        "Analyses a picture in five stages (load, palette, edges, histogram, thumbnail): a "
        "`step` and a `log` event per stage, progress, a blurred preview of the thumbnail, "
        "then `done` with the report. Without `image`, the generator draws `prompt` first. "
        "Its files are `edges.png`, `thumbnail.png` and `report.json`."
    ),
    "result": (
        "The report: `palette` (colours with their `share`), `edges` (`density`), "
        "`histogram` (`mean`, `contrast`, `brightness`, per-channel stats), `thumbnail`, "
        "`files`."
    ),
}
