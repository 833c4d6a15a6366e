"""The client's Event helpers and DeltaText (pure: no server)."""

from __future__ import annotations

from jobcast.client import DeltaText, Event


def test_delta_text_joins_the_delta_events() -> None:
    """DeltaText concatenates delta events' text and ignores the other kinds."""
    text = DeltaText()
    for event in [
        Event("delta", {"text": "Hel"}, "1-0"),
        Event("progress", {"percent": 5}, "2-0"),
        Event("delta", {"text": "lo"}, "3-0"),
    ]:
        text.feed(event)
    assert str(text) == "Hello"


def test_event_helpers_read_their_own_kinds_only() -> None:
    """percent/position/message/error come from the matching kinds; done is 100 %."""
    queued = Event("queued", {"position": 3, "queueLength": 7, "etaSeconds": 12})
    assert (queued.position, queued.queue_length, queued.eta_seconds) == (3, 7, 12)
    assert Event("progress", {"percent": 40}).percent == 40
    assert Event("done", {}).percent == 100 and Event("done", {}).terminal
    assert Event("log", {"message": "hi"}).message == "hi"
    assert Event("step", {"message": "hi"}).message is None
    assert Event("failed", {"error": "no"}).error == "no"
    assert Event("progress", {"percent": True}).percent is None
