"""Streams hold nothing they do not use, resume exactly in long logs and from ids they never
sent, and survive garbage on the hub's channels; /healthz says when the hub cannot deliver.

Jobs here are written with :class:`JobEvents` (as a worker would) and never reach Celery, so
each test decides exactly what their logs hold.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from support import (
    Proc,
    Received,
    RedisServer,
    collect,
    gunicorn_web,
    iter_events,
    logged,
    post_job,
    wait_until,
)

from tasks.events import JobEvents
from tasks.tokens import job_token

FUTURE = "99999999999999-0"


def health(base: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(base + "/healthz", timeout=10).json()
    return body


def waiting_job(events: JobEvents) -> str:
    """A job in the line that no worker will take (there is no Celery message)."""
    job_id = secrets.token_urlsafe(16)
    events.enqueue(job_id, {"prompt": "a test of the stream itself"})
    return job_id


def running_job(events: JobEvents, progress: int = 0) -> str:
    job_id = waiting_job(events)
    events.publish(job_id, "started")
    for step in range(progress):
        events.publish(job_id, "progress", {"percent": step * 100 // progress, "step": step})
    return job_id


def durable(received: list[Received]) -> list[tuple[str, str]]:
    return [(e.id, e.event) for e in received if e.id is not None]


class Reader:
    """Read a stream in a thread, keeping every event, until the server ends it."""

    def __init__(self, base: str, job_id: str, last_id: str | None = None) -> None:
        self.events: list[Received] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(base, job_id, last_id))
        self.thread.daemon = True
        self.thread.start()

    def _run(self, base: str, job_id: str, last_id: str | None) -> None:
        try:
            self.events.extend(iter_events(base, job_id, last_id, timeout=60))
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = 60) -> list[Received]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"
        assert self.error is None, repr(self.error)
        return self.events


@pytest.fixture
def limited_web(stack_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A web server that holds at most 10 streams, with a 2 s heartbeat."""
    env = {**stack_env, "JOBCAST_MAX_STREAMS": "10", "JOBCAST_HEARTBEAT_SECONDS": "2"}
    proc, base = gunicorn_web(env, tmp_path / "web.log")
    yield base
    proc.stop()


def test_head_and_options_on_streams_hold_nothing(limited_web: str, rds: redis.Redis) -> None:
    """30 HEADs and OPTIONS on a job's stream and on /ops/stream, with JOBCAST_MAX_STREAMS=10:
    each answers a GET's status and headers with no body and holds nothing (hub.streams
    stays 0); then ten GETs still stream, the eleventh gets 503, and all are released."""
    job = waiting_job(JobEvents(rds))
    with httpx.Client(base_url=limited_web, timeout=10) as http:
        for _ in range(30):
            head = http.head(f"/imagine/{job}/stream")
            assert head.status_code == 200, head.text
            assert head.headers["content-type"] == "text/event-stream" and head.content == b""
            ops = http.head("/ops/stream")
            assert ops.status_code == 200 and ops.content == b""
            assert ops.headers["content-type"].startswith("text/event-stream")
            options = http.options(f"/imagine/{job}/stream")
            assert options.status_code == 200 and "GET" in options.headers["allow"]
        assert http.head(f"/imagine/{'x' * 22}/stream").status_code == 404
        assert health(limited_web)["hub"]["streams"] == 0
        with contextlib.ExitStack() as open_streams:
            for _ in range(10):
                response = open_streams.enter_context(http.stream("GET", f"/imagine/{job}/stream"))
                assert response.status_code == 200
                assert b"event: queued" in next(response.iter_bytes())
            assert health(limited_web)["hub"]["streams"] == 10
            refused = http.get("/ops/stream")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "too_many_streams"
        wait_until(lambda: health(limited_web)["hub"]["streams"] == 0, 30, "streams released")
        with http.stream("GET", "/ops/stream") as feed:
            assert next(feed.iter_bytes()).startswith(b"retry: ")
    wait_until(lambda: health(limited_web)["hub"]["streams"] == 0, 30, "the feed released")


def test_streams_served_by_flask_release_too(
    stack_env: dict[str, str], tmp_path: Path, rds: redis.Redis
) -> None:
    """With job tokens on (streams go through Flask, not the fast route), HEADs hold nothing
    and a GET stream that the client closes is released."""
    env = {**stack_env, "JOBCAST_SIGNING_KEY": "hardening", "JOBCAST_HEARTBEAT_SECONDS": "2"}
    proc, base = gunicorn_web(env, tmp_path / "signed.log")
    try:
        job = waiting_job(JobEvents(rds))
        url = f"{base}/imagine/{job}/stream?token={job_token('hardening', job)}"
        for _ in range(20):
            head = httpx.head(url, timeout=10)
            assert head.status_code == 200 and head.content == b""
        assert httpx.head(f"{base}/imagine/{job}/stream", timeout=10).status_code == 403
        assert health(base)["hub"]["streams"] == 0
        with httpx.stream("GET", url, timeout=10) as response:
            assert b"event: queued" in next(response.iter_bytes())
            assert health(base)["hub"]["streams"] == 1
        wait_until(lambda: health(base)["hub"]["streams"] == 0, 30, "the stream released")
    finally:
        proc.stop()


def test_client_gone_before_the_first_byte_releases_its_stream(
    limited_web: str, rds: redis.Redis
) -> None:
    """Clients that send a stream request and hang up at once (reset, before reading a
    byte) leave nothing behind: hub.streams comes back to 0 and new streams open."""
    job = waiting_job(JobEvents(rds))
    host, port = limited_web.removeprefix("http://").split(":")
    for path in (f"/imagine/{job}/stream", "/ops/stream"):
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        for _ in range(12):
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(request)
            sock.close()  # SO_LINGER 0: a reset
    wait_until(lambda: health(limited_web)["hub"]["streams"] == 0, 60, "streams released")
    first = next(iter_events(limited_web, job, timeout=10))
    assert first.event == "queued"


def test_a_stream_that_fails_while_opening_answers_json_and_holds_nothing(
    limited_web: str, rds: redis.Redis
) -> None:
    """A log entry the stream cannot read (written by hand into Redis) makes opening fail:
    the client gets a JSON 500, and the failed opening holds no stream slot."""
    job = waiting_job(JobEvents(rds))
    rds.xadd(f"jobcast:job:{{{job}}}:events", {"phase": "progress"})  # no data field
    for _ in range(12):
        response = httpx.get(f"{limited_web}/imagine/{job}/stream", timeout=10)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
    assert health(limited_web)["hub"]["streams"] == 0


def test_resume_anywhere_in_a_long_finished_log_is_exact_and_ends(
    web: str, rds: redis.Redis
) -> None:
    """A finished job with more than two pages of log (1,200 events, trimmed to the cap):
    resuming after any event, before, at and past the page boundary, gets exactly the rest
    of the log, ending with `done`; from its last event, 204 (GET and HEAD)."""
    events = JobEvents(rds)
    job = running_job(events, progress=1200)
    events.publish(job, "done", {"url": "/nowhere.png"})
    log = logged(rds, job)
    assert len(log) >= 1000 and log[-1][1] == "done"
    assert durable(collect(web, job, timeout=10)) == log
    for index in (0, 488, 498, 499, 500, 750, len(log) - 2):
        received = collect(web, job, log[index][0], timeout=10)
        assert durable(received) == log[index + 1 :], f"resumed after #{index + 1}"
        assert [e.event for e in received if e.id is None] == []
    headers = {"Last-Event-ID": log[-1][0]}
    assert httpx.get(f"{web}/imagine/{job}/stream", headers=headers).status_code == 204
    assert httpx.head(f"{web}/imagine/{job}/stream", headers=headers).status_code == 204


def test_resume_inside_a_long_log_of_a_running_job_goes_live_to_the_end(
    web: str, rds: redis.Redis
) -> None:
    """A running job with 1,200 logged events: a client resuming after #489 gets the rest of
    the log, then the events published while it watches, and the stream ends at `done`."""
    events = JobEvents(rds)
    job = running_job(events, progress=1200)
    try:
        log = logged(rds, job)
        reader = Reader(web, job, log[488][0])
        wait_until(lambda: len(reader.events) >= len(log) - 489, 30, "the backlog")
        for step in range(3):
            events.publish(job, "progress", {"percent": 99, "step": 1200 + step})
        events.publish(job, "done", {"url": "/nowhere.png"})
        assert durable(reader.join()) == logged(rds, job)[489:]
    finally:
        events.publish(job, "failed", {"error": "test over"})  # no-op once it is done


def test_last_event_id_newer_than_the_log_resets_then_streams_to_the_end(
    web: str, rds: redis.Redis
) -> None:
    """A Last-Event-ID newer than anything the job logged (forged or from another job) is
    not trusted: `reset` with the snapshot, then the whole log as for a first visit, then
    live events, and the stream ends at `done` — on a running and on a finished job."""
    events = JobEvents(rds)
    job = running_job(events, progress=3)
    try:
        reader = Reader(web, job, FUTURE)
        expected = len(logged(rds, job))
        wait_until(lambda: len(reader.events) >= 1 + expected, 30, "reset and the log")
        events.publish(job, "progress", {"percent": 90, "step": 9})
        events.publish(job, "done", {"url": "/nowhere.png"})
        received = reader.join()
        assert received[0].event == "reset" and received[0].data["state"] == "running"
        assert durable(received[1:]) == logged(rds, job)
    finally:
        events.publish(job, "failed", {"error": "test over"})
    again = collect(web, job, FUTURE, timeout=10)
    assert again[0].event == "reset" and again[0].data["state"] == "succeeded"
    assert durable(again[1:]) == logged(rds, job) and again[-1].event == "done"
    head = httpx.head(f"{web}/imagine/{job}/stream", headers={"Last-Event-ID": FUTURE})
    assert head.status_code == 200


def test_the_largest_stream_id_resets_like_any_newer_id(web: str, rds: redis.Redis) -> None:
    """`Last-Event-ID: 18446744073709551615-18446744073709551615`, the largest id Redis can
    hold, is newer than the log like any other: `reset`, the whole log, the end; never a
    500 (Redis refuses it as an exclusive XRANGE bound)."""
    largest = f"{2**64 - 1}-{2**64 - 1}"
    events = JobEvents(rds)
    job = running_job(events, progress=2)
    events.publish(job, "done", {"url": "/nowhere.png"})
    received = collect(web, job, largest, timeout=10)
    assert received[0].event == "reset" and received[0].data["state"] == "succeeded"
    assert durable(received[1:]) == logged(rds, job) and received[-1].event == "done"


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[tuple[RedisServer, str, Proc]]:
    """A Redis and a web server of this test's own, to break freely."""
    server = RedisServer(tmp_path / "redis").start()
    env = dict(os.environ)
    env.update(
        REDIS_URL=server.url, JOBCAST_MEDIA_DIR=str(tmp_path / "media"), PYTHONUNBUFFERED="1"
    )
    proc, base = gunicorn_web(env, tmp_path / "web.log")
    yield server, base, proc
    proc.stop()
    server.stop()


def test_garbage_on_hub_channels_does_not_stop_live_delivery(
    own_stack: tuple[RedisServer, str, Proc],
) -> None:
    """Malformed messages PUBLISHed on the queue channel and on a job's channel (anyone
    with Redis access can): the web process logs them, the job's stream resyncs, later
    events still arrive live, new streams open and /healthz stays 200."""
    server, base, proc = own_stack
    client = server.client()
    events = JobEvents(client)
    job = waiting_job(events)
    reader = Reader(base, job)
    # Its place in line (a derived `queued`) means the queue channel is followed too.
    wait_until(lambda: any(e.id is None for e in reader.events), 30, "the place in line")
    before = health(base)["hub"]["messages"]
    client.publish("jobcast:queue", b"7 not-a-ticket 1 0 -")
    client.publish(f"jobcast:job:{{{job}}}", b"id: garbage\nevent: done\n\n")
    wait_until(lambda: health(base)["hub"]["messages"] >= before + 2, 30, "the hub to read both")
    events.publish(job, "started")
    events.publish(job, "progress", {"percent": 50, "step": 5})
    events.publish(job, "done", {"url": "/nowhere.png"})
    assert durable(reader.join()) == logged(client, job)
    response = httpx.get(base + "/healthz", timeout=10)
    assert response.status_code == 200
    hub, line = response.json()["hub"], response.json()["line"]
    assert hub["errors"] == 1 and hub["restarts"] == 0 and line["badMessages"] == 1
    assert durable(collect(base, job, timeout=10)) == logged(client, job)
    assert "unreadable message" in proc.output()


def test_healthz_is_503_while_the_hub_cannot_deliver(
    own_stack: tuple[RedisServer, str, Proc],
) -> None:
    """While Redis refuses the hub's subscriptions (an ACL without channel rights, its
    pub/sub connection killed) /healthz answers 503 though Redis answers PING; once
    allowed again it is 200, and a stream open all along gets what was published after."""
    server, base, _ = own_stack
    client = server.client()
    events = JobEvents(client)
    job = running_job(events)
    reader = Reader(base, job)
    wait_until(lambda: any(e.event == "started" for e in reader.events), 30, "the stream")
    client.execute_command("ACL", "SETUSER", "default", "resetchannels")
    try:
        client.client_kill_filter(_type="pubsub")
        wait_until(lambda: httpx.get(base + "/healthz", timeout=10).status_code == 503, 30, "503")
        body = health(base)
        assert body["redis"] == "ok" and body["hub"]["healthy"] is False and not body["ok"]
    finally:
        client.execute_command("ACL", "SETUSER", "default", "allchannels")
    wait_until(lambda: httpx.get(base + "/healthz", timeout=10).status_code == 200, 30, "200")
    events.publish(job, "done", {"url": "/nowhere.png"})
    assert durable(reader.join()) == logged(client, job)


def test_no_eta_while_nothing_runs(web: str, worker: Proc, rds: redis.Redis) -> None:
    """With a run time known but nothing running (the worker idles), a new job at #1 gets
    `etaSeconds` null, not one run time; a job waiting behind a running one gets a number."""
    first = post_job(web, prompt="a quick one", width=64, height=64, steps=1)
    assert collect(web, first["jobId"])[-1].event == "done"
    wait_until(lambda: rds.zcard("jobcast:running") == 0, 30, "nothing running")
    assert rds.hget("jobcast:stats", "avgMs")
    idle = post_job(web, prompt="a slow one", width=512, height=512, steps=60)
    assert idle["position"] == 1 and idle["etaSeconds"] is None
    wait_until(
        lambda: rds.hget(f"jobcast:job:{{{idle['jobId']}}}", "state") == b"running", 60, "running"
    )
    behind = post_job(web, prompt="behind it", width=64, height=64, steps=1)
    assert behind["position"] == 1 and isinstance(behind["etaSeconds"], int)
