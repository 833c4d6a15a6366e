"""A connection's queue positions only go down, also when it opens while the line moves."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from support import gunicorn_web, wait_until

from tasks.events import JobEvents, now_ms


@pytest.fixture
def one_web(stack_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """One gunicorn process, so every stream of the job shares that process's line."""
    proc, base = gunicorn_web(stack_env, tmp_path / "web.log", workers=1)
    yield base
    proc.stop()


def new_id() -> str:
    return secrets.token_urlsafe(16)


def cancel_call(events: JobEvents, job_id: str) -> list[object]:
    """EVALSHA arguments of the publish script cancelling a waiting job, as the API does."""
    k = events.keys
    keys = [k.job(job_id), k.events(job_id), k.queue, k.running, k.stats, k.queue_version]
    args = [
        k.channel(job_id), "cancelled", "{}", events.maxlen, events.retention_seconds,
        k.queue, job_id, now_ms(), "queued", secrets.token_hex(8),
    ]  # fmt: skip
    return [len(keys), *keys, *args]


def stream_positions(base: str, job_id: str, last_id: str, seconds: float) -> list[int]:
    """The positions one connection gets (resuming after ``last_id``) within ``seconds``."""
    seen: list[int] = []
    deadline = time.monotonic() + seconds
    headers = {"Last-Event-ID": last_id}
    with (
        httpx.Client(timeout=httpx.Timeout(seconds, connect=5)) as client,
        connect_sse(client, "GET", f"{base}/imagine/{job_id}/stream", headers=headers) as source,
    ):
        try:
            for sse in source.iter_sse():
                if sse.event == "queued":
                    seen.append(json.loads(sse.data)["position"])
                if time.monotonic() > deadline:
                    break
        except httpx.ReadTimeout:
            pass  # the line stood still for a while: this connection saw what it could
    return seen


def test_place_read_behind_a_flush_is_not_followed_by_the_flushed_one(
    one_web: str, rds: redis.Redis
) -> None:
    """A second stream of a waiting job opens while Redis is paused with a departure sent
    to it and the flusher holds an older place for every watcher: the stream's places
    only go down and end at 1. (The process follows the job already, so the stream takes
    its place from there, 2, instead of reading Redis; the departure then moves it.)"""
    events = JobEvents(rds)
    ahead = [new_id() for _ in range(3)]
    for job_id in ahead:
        events.enqueue(job_id, {"prompt": "dunes"})
    watched = new_id()
    queued_id = events.enqueue(watched, {"prompt": "dunes"}).event_id
    assert queued_id is not None
    first: list[list[int]] = []
    opened = threading.Thread(
        target=lambda: first.append(stream_positions(one_web, watched, queued_id, 4)), daemon=True
    )
    opened.start()
    wait_until(lambda: rds.pubsub_numsub(f"jobcast:job:{{{watched}}}")[0][1] == 1, 30, "a watcher")
    for job_id in ahead[:2]:  # the first is flushed at once; the throttle holds the next back
        events.publish(job_id, "cancelled", {}, expect="queued")
    second: list[list[int]] = []
    rds.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    # The third departure is sent (not answered) before the stream opens: Redis runs it
    # first when the pause ends, so the stream's place read counts it.
    late = rds.connection_pool.get_connection()
    late.send_command("EVALSHA", events._publish.sha, *cancel_call(events, ahead[2]))
    reader = threading.Thread(
        target=lambda: second.append(stream_positions(one_web, watched, queued_id, 3)), daemon=True
    )
    reader.start()
    for thread in (reader, opened):
        thread.join(30)
    assert late.read_response()
    rds.connection_pool.release(late)
    assert first and first[0][-1] == 1 and first[0] == sorted(first[0], reverse=True)
    places = second[0] if second else []
    assert places and places[0] <= 2 and places[-1] == 1, places
    assert places == sorted(places, reverse=True), "the stream went back in line"
