"""A client whose last event is not in the log any more (what a Sentinel failover does to
events the old master had not replicated) is told so with a ``reset``, then gets the
whole log: its log ends equal to Redis's, never with a silent hole where its id was.

The lost event is made by deleting it from the stream (XDEL): the state a new master is
in when the old one acknowledged an event and died before replicating it.
"""

from __future__ import annotations

import secrets

import redis
from support import Received, iter_events, logged

from tasks.events import JobEvents
from tasks.keys import Keys


def running_job(events: JobEvents, progress: int = 3) -> tuple[str, list[str]]:
    """A job with a started event and ``progress`` progress events; their ids."""
    job_id = "lost-" + secrets.token_urlsafe(12)
    ids = [events.publish(job_id, "started", {"worker": "w"})]
    ids += [events.publish(job_id, "progress", {"percent": 10 * n}) for n in range(progress)]
    assert all(ids)
    return job_id, [i for i in ids if i]


def as_client_keeps_it(received: list[Received]) -> list[tuple[str, str]]:
    """The log a client keeps: what came after the last reset."""
    log: list[tuple[str, str]] = []
    for event in received:
        if event.event == "reset":
            log = []
        elif event.id:
            log.append((event.id, event.event))
    return log


def test_resuming_from_a_lost_id_gets_a_reset_and_the_whole_log(web: str, rds: redis.Redis) -> None:
    """Last-Event-ID names an event the log no longer holds (inside its span, not trimmed):
    a reset with the snapshot comes first, then every logged event."""
    events = JobEvents(rds)
    job_id, ids = running_job(events)
    events.publish(job_id, "done", {"url": "/x.png"})
    rds.xdel(Keys().events(job_id), ids[2])
    received = list(iter_events(web, job_id, last_id=ids[2], timeout=20))
    assert received[0].event == "reset" and received[0].data["state"] == "succeeded"
    assert as_client_keeps_it(received) == logged(rds, job_id)
    assert [e.event for e in received[1:]] == ["started", "progress", "progress", "done"]


def test_resuming_from_an_id_still_logged_gets_no_reset(web: str, rds: redis.Redis) -> None:
    """The usual resume: the events after Last-Event-ID, no reset."""
    events = JobEvents(rds)
    job_id, ids = running_job(events)
    events.publish(job_id, "done", {"url": "/x.png"})
    received = list(iter_events(web, job_id, last_id=ids[1], timeout=20))
    assert "reset" not in [e.event for e in received]
    assert [(e.id, e.event) for e in received if e.id] == logged(rds, job_id)[2:]


def test_a_live_stream_whose_last_event_is_lost_across_a_reconnect_is_reset(
    web: str, rds: redis.Redis
) -> None:
    """The hub's connection drops (as at a failover) and the event the stream sent last is
    gone from the log when it resyncs: the stream sends a reset and the whole log, then
    carries on live to the end."""
    events = JobEvents(rds)
    job_id, ids = running_job(events)
    received: list[Received] = []
    for event in iter_events(web, job_id, timeout=20):
        received.append(event)
        if event.id == ids[-1]:
            rds.xdel(Keys().events(job_id), ids[-1])
            rds.client_kill_filter(_type="pubsub")  # every hub reconnects and resyncs
            events.publish(job_id, "done", {"url": "/x.png"})
    kinds = [e.event for e in received]
    assert kinds[: len(ids) + 1] == ["started", "progress", "progress", "progress", "reset"]
    assert as_client_keeps_it(received) == logged(rds, job_id)
    assert kinds[-1] == "done"
