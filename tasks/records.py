"""A job's record (the ``job:{id}`` hash the event scripts keep) read back: the part of a
status that the submit side's :meth:`JobHandle.status` and the web's snapshot share."""

from __future__ import annotations

import json
from typing import Any


def decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}


def last_events(record: dict[str, str]) -> dict[str, Any]:
    """The data of the latest event of each built-in kind (``last:<kind>`` fields)."""
    return {k[5:]: json.loads(v) for k, v in record.items() if k.startswith("last:")}


def progress(state: str | None, last: dict[str, Any], record: dict[str, str]) -> dict[str, Any]:
    """How far the job got: percent (100 once it succeeded; a canvas's is its weighted
    aggregate, ``pct``), the failure's message, the attempt."""
    if state == "succeeded":
        percent = 100
    elif record.get("canvas") == "1":
        percent = int(record.get("pct", "0"))
    else:
        percent = (last.get("progress") or {}).get("percent", 0)
    return {
        "percent": percent,
        "error": (last.get("failed") or {}).get("error"),
        "attempt": int(record.get("attempt", 0)),
    }


def json_object(raw: str | None) -> dict[str, Any] | None:
    """A JSON object field (``meta``); None when absent or not an object."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
