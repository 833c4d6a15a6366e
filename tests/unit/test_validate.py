"""Job parameters a kind's model accepts but Redis could not store are refused as 422."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from web.errors import ApiError
from web.validate import validate_params


class Note(BaseModel):
    text: str
    tags: list[str] = []
    extra: dict[str, Any] = {}


@pytest.mark.parametrize(
    "body",
    [
        '{"text": "bad \\ud800"}',
        '{"text": "ok", "tags": ["fine", "\\udfff"]}',
        '{"text": "ok", "extra": {"a": ["\\udfff"]}}',
    ],
)
def test_a_lone_surrogate_is_an_invalid_field(body: str) -> None:
    """Valid JSON, accepted by pydantic, not UTF-8: a 422 naming the field, not a 500."""
    with pytest.raises(ApiError) as refused:
        validate_params(Note, json.loads(body))
    assert refused.value.status == 422
    assert refused.value.code == "invalid_fields"
    name = next(iter(json.loads(body).keys() - {"text"} or {"text"}))
    assert list(refused.value.fields) == [name]


def test_real_text_passes_as_it_is() -> None:
    """Any real character, a pair of surrogate escapes (one emoji) included, is kept."""
    body = json.loads('{"text": "caf\\u00e9 \\ud83d\\ude00", "tags": ["\\u6771\\u4eac"]}')
    assert validate_params(Note, body) == {"text": "café 😀", "tags": ["東京"], "extra": {}}
