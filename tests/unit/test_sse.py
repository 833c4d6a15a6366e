"""SSE framing, byte for byte, and the publish script's frames matching it."""

from __future__ import annotations

import pytest

from tasks.events import JobEvents
from web.hub import item_from_frame
from web.sse import KEEP_ALIVE, Event, comment, frame


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Event(data="hello"), b"data: hello\n\n"),
        (Event(data=""), b"data: \n\n"),
        (Event(data="a\nb"), b"data: a\ndata: b\n\n"),
        (Event(data="a\r\nb\rc"), b"data: a\ndata: b\ndata: c\n\n"),
        (Event(data='{"x":1}', event="progress"), b'event: progress\ndata: {"x":1}\n\n'),
        (Event(data="{}", event="done", id="5-1"), b"id: 5-1\nevent: done\ndata: {}\n\n"),
        (Event(retry=3000), b"retry: 3000\n\n"),
        (Event(data="é", event="queued"), "event: queued\ndata: é\n\n".encode()),
    ],
)
def test_event_encodes_exact_bytes(event: Event, expected: bytes) -> None:
    """Each field is one line, data splits on every SSE line break, a blank line ends it."""
    assert event.encode() == expected


@pytest.mark.parametrize("field", ["id", "event"])
def test_single_line_fields_reject_line_breaks(field: str) -> None:
    """An id or event name with a line break would inject fields, so it is refused."""
    with pytest.raises(ValueError):
        Event(data="x", **{field: "a\nb"}).encode()  # type: ignore[arg-type]


def test_comment_and_keep_alive() -> None:
    """Comments start with a colon and end the frame with a blank line."""
    assert comment("keep-alive") == KEEP_ALIVE == b": keep-alive\n\n"
    assert comment("a\nb") == b": a\n: b\n\n"


def test_frame_of_logged_event_matches_encoder() -> None:
    """Backlog frames built from Redis bytes equal the encoder's output."""
    assert (
        frame(b"1-2", b"progress", b'{"percent":5}')
        == Event(id="1-2", event="progress", data='{"percent":5}').encode()
    )


def test_published_frame_is_the_encoder_frame(rds: object) -> None:
    """What the Lua script publishes is exactly the frame the encoder would make."""
    import redis as redis_mod

    assert isinstance(rds, redis_mod.Redis)
    pubsub = rds.pubsub()
    pubsub.subscribe("jobcast:job:{jobA}")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    events = JobEvents(rds)
    event_id = events.publish("jobA", "started", {"worker": "w@h"})
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    events.publish("jobA", "done", {})
    expected = Event(id=event_id, event="started", data='{"worker":"w@h","attempt":1}').encode()
    assert message["data"] == expected
    item = item_from_frame(message["data"])
    assert item.key is not None and f"{item.key[0]}-{item.key[1]}" == event_id
    assert not item.terminal


@pytest.mark.parametrize(
    ("raw", "terminal"),
    [
        (b"id: 1-0\nevent: done\ndata: {}\n\n", True),
        (b"id: 1-0\nevent: failed\ndata: {}\n\n", True),
        (b"id: 1-0\nevent: cancelled\ndata: {}\n\n", True),
        (b"id: 1-0\nevent: progress\ndata: {}\n\n", False),
        (b"id: 1-0\nevent: doneish\ndata: {}\n\n", False),
    ],
)
def test_hub_recognises_terminal_frames(raw: bytes, terminal: bool) -> None:
    """The hub reads the phase exactly, so only done/failed/cancelled end a stream."""
    assert item_from_frame(raw).terminal is terminal


def test_frame_without_id_is_derived() -> None:
    """A frame with no id line (a snapshot, a position) has no key and is never deduplicated."""
    item = item_from_frame(b"event: snapshot\ndata: {}\n\n")
    assert item.key is None and not item.terminal
