"""Server-Sent Events framing.

An :class:`Event` encodes to the exact bytes of one SSE frame. The task side publishes
frames in this same form (see ``tasks.events``), so streams forward them untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEEP_ALIVE = b": keep-alive\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def encode(self) -> bytes:
        """Return the frame: ``id``, ``event``, ``retry``, one ``data:`` line per line."""
        lines = []
        if self.id is not None:
            lines.append(f"id: {_single_line(self.id)}")
        if self.event is not None:
            lines.append(f"event: {_single_line(self.event)}")
        if self.retry is not None:
            lines.append(f"retry: {int(self.retry)}")
        if self.data is not None:
            lines.extend(f"data: {line}" for line in _LINE_BREAK.split(self.data))
        return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment frame (ignored by clients; keeps proxies and half-open sockets honest)."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def frame(event_id: bytes, phase: bytes, data: bytes) -> bytes:
    """The frame of a logged event, straight from the bytes Redis returns."""
    return b"id: " + event_id + b"\nevent: " + phase + b"\ndata: " + data + b"\n\n"


def _single_line(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("SSE field values other than data cannot span lines")
    return value
