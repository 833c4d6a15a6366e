"""The ``imagine`` kind: its parameters as a pydantic model, built for the configured limits.

The model's JSON Schema (in the OpenAPI document) and its validation agree input for
input: the prompt's ``pattern`` is the very regex validation uses, lengths are counted on
the text as sent, and an integer is what JSON Schema calls one (``141.0`` is, ``141.5``
and ``true`` are not).
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tasks.config import Settings
from tasks.kinds import Kind, Missing, bounded_integer, problem

TASK = "jobcast.imagine"
MAX_SEED = 2**32 - 1

# What the prompt may not contain (all BMP, written as escapes that Python's re, ECMA-262
# and Rust's regex read alike): C0 controls but tab, LF and CR; DEL and the C1 controls
# (U+0080-U+009F); format characters (soft hyphen, zero-width and bidi marks, BOM...);
# and private use. Unpaired surrogates (JSON can escape them, no text holds them) are
# refused as well, apart: no regex but Python's can name them.
FORBIDDEN = (
    r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f"
    r"\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    r"\ufeff\ufff9-\ufffb\ue000-\uf8ff"
)
SURROGATES = r"\ud800-\udfff"
# The whitespace that is allowed (and collapses to one space): every character Python's
# str.split() splits on that FORBIDDEN does not already refuse.
SPACE = r"\t\n\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Only allowed characters, at least one of them not whitespace.
PROMPT_PATTERN = rf"^[^{FORBIDDEN}]*[^{FORBIDDEN}{SPACE}][^{FORBIDDEN}]*$"
_PROMPT = re.compile(PROMPT_PATTERN)
_FORBIDDEN = re.compile(rf"[{FORBIDDEN}{SURROGATES}]")


class Limits(NamedTuple):
    min_side: int
    max_side: int
    default_side: int
    max_steps: int
    default_steps: int
    max_prompt_chars: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(*(getattr(settings, name) for name in cls._fields))


def prompt_text(max_chars: int) -> BeforeValidator:
    """The prompt with runs of whitespace collapsed to one space; or why it is refused."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise problem("required: a text describing the picture")
        if not value.split():
            raise problem("must not be empty")
        if len(value) > max_chars:
            raise problem("must be at most {limit} characters", limit=max_chars)
        if _FORBIDDEN.search(value):
            raise problem("must not contain control characters")
        assert _PROMPT.search(value)  # the schema's pattern says the same
        return " ".join(value.split())

    return BeforeValidator(check)


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def imagine_params(settings: Settings) -> type[BaseModel]:
    """The ``ImagineParams`` model for these settings' limits (one class per set of limits)."""
    return _model(Limits.of(settings))


@lru_cache(maxsize=32)
def _model(limits: Limits) -> type[BaseModel]:
    side = (limits.min_side, limits.max_side)
    default_side, default_steps = limits.default_side, limits.default_steps
    Side = bounded_integer(*side, lambda: default_side)
    Steps = bounded_integer(1, limits.max_steps, lambda: default_steps)
    Seed = bounded_integer(0, MAX_SEED, random_seed, description="Random when left out or null.")
    prompt_schema = {
        "minLength": 1,
        "maxLength": limits.max_prompt_chars,
        "pattern": PROMPT_PATTERN,
        "description": (
            "What to draw. Runs of whitespace count as one space; it must not be blank "
            "or contain control, format, surrogate or private-use characters."
        ),
    }

    class ImagineParams(BaseModel):
        """The parameters of an `imagine` job."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        prompt: Annotated[
            str,
            prompt_text(limits.max_prompt_chars),
            Missing("a text describing the picture"),
            Field(json_schema_extra=prompt_schema),
        ]
        width: Side = default_side  # type: ignore[valid-type]
        height: Side = default_side  # type: ignore[valid-type]
        steps: Steps = default_steps  # type: ignore[valid-type]
        seed: Seed = Field(default_factory=random_seed)  # type: ignore[valid-type]

    return ImagineParams


def imagine_kind(settings: Settings) -> Kind:
    return Kind(
        name="imagine",
        params=imagine_params(settings),
        task=TASK,
        title="Imagine a picture",
        description=(
            "Draws the prompt step by step: progress events, one blurred preview at about "
            "30 %, then `done` with the image's URL. Its file is `image.png`."
        ),
        result="The image: `url`, `width`, `height` and `seconds` it took.",
    )
