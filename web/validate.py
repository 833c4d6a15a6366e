"""Validation of job parameters against their kind's model: every bad field named, with why.

The 422 body is ``{"error": {"code": "invalid_fields", "message", "fields": {name: why}}}``;
a body that is not a JSON object has no fields to name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from tasks.kinds import field_problems
from web.errors import ApiError


def validate_params(model: type[BaseModel], body: Any) -> dict[str, Any]:
    """The clean parameters as JSON-ready values, or a 422 naming each invalid field."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_fields", "The body must be a JSON object.")
    try:
        params = model.model_validate(body)
    except ValidationError as exc:
        problems = field_problems(model, exc)
        raise ApiError(422, "invalid_fields", "Some fields are invalid.", fields=problems) from None
    clean: dict[str, Any] = params.model_dump(mode="json", by_alias=True)
    unencodable = {
        name: "Must be Unicode text (a lone surrogate escape such as \\ud800 is not)."
        for name, value in clean.items()
        if not _encodable(value)
    }
    if unencodable:  # JSON lets them through, UTF-8 (and so Redis) cannot hold them
        raise ApiError(422, "invalid_fields", "Some fields are invalid.", fields=unencodable)
    return clean


def _encodable(value: Any) -> bool:
    """Whether every string in ``value`` (a JSON value) can be written as UTF-8."""
    if isinstance(value, str):
        if value.isascii():
            return True
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    return True
