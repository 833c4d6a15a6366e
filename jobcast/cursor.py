"""The composite cursor of a multiplexed stream: every job's last id in one SSE ``id:``.

Bytes, then base64url without padding (so it is one header-safe token)::

    0x01                      format version
    varint n                  how many jobs of the ?job= list the cursor covers
    4 bytes                   BLAKE2b-32 of those n job ids joined by "\\n"
    varint base               a millisecond time the ids are stored relative to
    entries, by job index:    varint (index << 1 | gone)
                              if not gone: varint zigzag(ms - base) · varint seq

``gone``: the job was reported as an ``error`` (unknown, not allowed) on this stream, so a
reconnect does not report it again. A job without an entry has sent nothing yet. The
fingerprint ties the cursor to the list: a list that only appends jobs keeps it valid;
for any other list the cursor is foreign (every job starts over with a ``reset``), and
text that is not base64url is a 400 (``bad_last_event_id``).

It lives here, not in ``web``: the Python client (:mod:`jobcast.client`) reads it too, and
stays standalone (standard library only in this module).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

EventId = tuple[int, int]  # a Redis stream id (ms, seq), as tasks.events has it

VERSION = 1
MAX_CURSOR = 8192  # characters of a Last-Event-ID this reads at most
MAX_PART = 2**64 - 1
TEXT = re.compile(f"[A-Za-z0-9_-]{{1,{MAX_CURSOR}}}")  # what a cursor may look like


@dataclass
class Cursor:
    """Where each job of a list stands: an id, ``GONE``, or nothing (index missing)."""

    covered: int = 0
    base: int = 0
    last: dict[int, EventId | None] = field(default_factory=dict)  # None: gone
    foreign: bool = False  # looked like a cursor, is not one of this list's


def fingerprint(jobs: list[str]) -> bytes:
    return hashlib.blake2b("\n".join(jobs).encode(), digest_size=4).digest()


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def header(jobs: list[str], base: int) -> bytes:
    return bytes([VERSION]) + varint(len(jobs)) + fingerprint(jobs) + varint(base)


def entry(index: int, base: int, last: EventId | None) -> bytes:
    """One job's entry: its last id, or (``None``) reported gone."""
    if last is None:
        return varint(index << 1 | 1)
    return varint(index << 1) + varint(zigzag(last[0] - base)) + varint(last[1])


def encode(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def decode(text: str, jobs: list[str]) -> Cursor:
    """The cursor ``text`` for the list ``jobs``; ValueError if it is not one of its."""
    if len(text) > MAX_CURSOR:
        raise ValueError("too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if not raw or raw[0] != VERSION:
        raise ValueError("unknown version")
    reader = _Reader(raw, 1)
    covered = reader.varint()
    if covered > len(jobs) or reader.take(4) != fingerprint(jobs[:covered]):
        raise ValueError("another list of jobs")
    cursor = Cursor(covered, reader.varint())
    while not reader.done():
        key = reader.varint()
        index, gone = key >> 1, key & 1
        if index >= covered or index in cursor.last:
            raise ValueError("bad index")
        if gone:
            cursor.last[index] = None
            continue
        delta, seq = reader.varint(), reader.varint()
        ms = cursor.base + (delta >> 1 if not delta & 1 else -((delta + 1) >> 1))
        if not 0 <= ms <= MAX_PART or seq > MAX_PART:
            raise ValueError("not a stream id")
        cursor.last[index] = (ms, seq)
    return cursor


class _Reader:
    __slots__ = ("at", "raw")

    def __init__(self, raw: bytes, at: int) -> None:
        self.raw = raw
        self.at = at

    def done(self) -> bool:
        return self.at >= len(self.raw)

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.raw):
            raise ValueError("truncated")
        chunk = self.raw[self.at : self.at + count]
        self.at += count
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.done() or shift > 70:
                raise ValueError("bad varint")
            byte = self.raw[self.at]
            self.at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
