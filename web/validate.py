"""Validation of ``POST /imagine`` bodies: every bad field named, with the reason."""

from __future__ import annotations

import secrets
from typing import Any

from tasks.config import Settings
from web.errors import ApiError

FIELDS = ("prompt", "width", "height", "steps", "seed")
MAX_SEED = 2**32 - 1


def validate_job(body: Any, settings: Settings) -> dict[str, Any]:
    """Return clean job parameters, or raise a 422 naming each invalid field."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_fields", "The body must be a JSON object.")
    problems: dict[str, str] = {name: "unknown field" for name in body if name not in FIELDS}
    prompt = _prompt(body.get("prompt"), settings, problems)
    side = (settings.min_side, settings.max_side)
    params = {
        "prompt": prompt,
        "width": _integer(body, "width", side, settings.default_side, problems),
        "height": _integer(body, "height", side, settings.default_side, problems),
        "steps": _integer(body, "steps", (1, settings.max_steps), settings.default_steps, problems),
        "seed": _integer(body, "seed", (0, MAX_SEED), None, problems),
    }
    if problems:
        raise ApiError(422, "invalid_fields", "Some fields are invalid.", fields=problems)
    if params["seed"] is None:
        params["seed"] = secrets.randbelow(MAX_SEED + 1)
    return params


def _prompt(value: Any, settings: Settings, problems: dict[str, str]) -> str:
    if not isinstance(value, str):
        problems["prompt"] = "required: a text describing the picture"
        return ""
    text = " ".join(value.split())
    if not text:
        problems["prompt"] = "must not be empty"
    elif len(text) > settings.max_prompt_chars:
        problems["prompt"] = f"must be at most {settings.max_prompt_chars} characters"
    elif not text.isprintable():
        problems["prompt"] = "must not contain control characters"
    return text


def _integer(
    body: dict[str, Any],
    name: str,
    bounds: tuple[int, int],
    default: int | None,
    problems: dict[str, str],
) -> Any:
    value = body.get(name)
    if value is None:
        return default
    low, high = bounds
    # bool is an int in Python, but `true` is not a width.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems[name] = f"must be an integer from {low} to {high}"
        return None
    return value
