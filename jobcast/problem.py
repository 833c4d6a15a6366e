"""The JSON error of every Jobcast route, ``{"error": {"code", "message", "fields"?}}``, in
one place for both ends: the server raises and renders it (:mod:`web.errors`), the Python
client reads it back (:mod:`jobcast.client`). Standard library only: the client is
standalone and must not import ``web`` (nor Flask).
"""

from __future__ import annotations

from typing import Any


class Problem(Exception):
    """An API error: its HTTP status, machine code, message and reasons per field."""

    def __init__(
        self, status: int, code: str, message: str, fields: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return body(self.code, self.message, self.fields)


def body(code: str, message: str, fields: Any = None) -> dict[str, Any]:
    """The JSON object of an error answer (``fields`` only when there are some)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def parse(payload: Any) -> tuple[str, str, dict[str, str] | None]:
    """``(code, message, fields)`` of an error answer's JSON; ValueError if it is not one
    of ours (a proxy's page, say)."""
    try:
        error = payload["error"]
        code, message = str(error["code"]), str(error["message"])
        fields = error.get("fields")
    except (KeyError, TypeError, AttributeError):
        raise ValueError("not a Jobcast error body") from None
    return code, message, fields if isinstance(fields, dict) else None
