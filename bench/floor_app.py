"""The floor: the least a gevent web process can do to fan job events out over SSE.

A plain WSGI callable (no Flask) for ``gunicorn -k gevent -w 1 bench.floor_app:app``.
One hub greenlet owns ONE Redis pub/sub connection (RESP2); channels are refcounted;
each pub/sub payload (already a finished SSE frame, see ``tasks/events.py``) is handed
as the same bytes object to every watcher's queue. Routes:

- ``GET /imagine/<id>/stream``: ``retry: 3000`` first, then frames, ``: keep-alive``
  after 15 s of silence, the response ends after a terminal event.
- ``GET /imagine/<id>``: a tiny status document for the polling subject.

No backlog, no Last-Event-ID, no reconnect logic: it is a lower bound, not a product.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import redis
from gevent.event import Event
from gevent.queue import Empty, Full, Queue

PREFIX = os.environ.get("JOBCAST_PREFIX", "jobcast:")
KEEPALIVE_SECONDS = 15.0
QUEUE_SIZE = 256
RETRY = b"retry: 3000\n\n"
PING = b": keep-alive\n\n"
TERMINAL = (b"\nevent: done\n", b"\nevent: failed\n", b"\nevent: cancelled\n")
IDLE_CHANNEL = PREFIX + "floor:idle"  # keeps the hub's listen() loop alive
SSE_HEADERS = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
]
StartResponse = Callable[..., Any]


class Hub:
    """One pub/sub connection, many watchers; a channel is subscribed while watched."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, protocol=2)
        self.pubsub = self.client.pubsub()
        self.watchers: dict[bytes, set[Queue]] = {}
        self.confirmed: dict[bytes, Event] = {}

    def start(self) -> None:
        self.pubsub.subscribe(IDLE_CHANNEL)
        gevent.spawn(self.run)

    def watch(self, channel: bytes, queue: Queue) -> None:
        group = self.watchers.get(channel)
        if group is None:
            group = self.watchers[channel] = set()
            self.confirmed[channel] = Event()
            self.pubsub.subscribe(channel)
        group.add(queue)
        ready = self.confirmed.get(channel)
        if ready is not None:
            ready.wait(5.0)

    def unwatch(self, channel: bytes, queue: Queue) -> None:
        group = self.watchers.get(channel)
        if group is None:
            return
        group.discard(queue)
        if not group:
            del self.watchers[channel]
            self.confirmed.pop(channel, None)
            self.pubsub.unsubscribe(channel)

    def run(self) -> None:
        for message in self.pubsub.listen():
            kind = message["type"]
            if kind == "message":
                self.deliver(message["channel"], message["data"])
            elif kind == "subscribe":
                ready = self.confirmed.pop(message["channel"], None)
                if ready is not None:
                    ready.set()

    def deliver(self, channel: bytes, frame: bytes) -> None:
        group = self.watchers.get(channel)
        if not group:
            return
        terminal = frame.startswith(b"id: ") and any(t in frame for t in TERMINAL)
        for queue in tuple(group):
            try:
                queue.put_nowait(frame)
                if terminal:
                    queue.put_nowait(None)
            except Full:  # a slow client: drop it rather than grow memory
                group.discard(queue)
                queue.queue.clear()
                queue.put_nowait(None)


_hub: Hub | None = None
_client: redis.Redis | None = None


def _redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def hub() -> Hub:
    global _hub
    if _hub is None:
        _hub = Hub(_redis_url())
        _hub.start()
    return _hub


def client() -> redis.Redis:
    global _client
    if _client is None:
        pool = redis.BlockingConnectionPool.from_url(
            _redis_url(), max_connections=32, timeout=10, protocol=2
        )
        _client = redis.Redis(connection_pool=pool)
    return _client


def stream(job_id: str, start_response: StartResponse) -> Iterator[bytes]:
    channel = f"{PREFIX}job:{{{job_id}}}".encode()
    queue: Queue = Queue(QUEUE_SIZE)
    the_hub = hub()
    the_hub.watch(channel, queue)
    start_response("200 OK", SSE_HEADERS)
    return _frames(the_hub, channel, queue)


def _frames(the_hub: Hub, channel: bytes, queue: Queue) -> Iterator[bytes]:
    try:
        yield RETRY
        while True:
            try:
                frame = queue.get(timeout=KEEPALIVE_SECONDS)
            except Empty:
                yield PING
                continue
            if frame is None:
                return
            yield frame
    finally:
        the_hub.unwatch(channel, queue)


def status(job_id: str, start_response: StartResponse) -> list[bytes]:
    state, progress = client().hmget(f"{PREFIX}job:{{{job_id}}}", "state", "last:progress")
    if state is None:
        return _send(start_response, "404 Not Found", b'{"error":{"code":"not_found"}}')
    body = b'{"state":"' + state + b'","progress":' + (progress or b"null") + b"}"
    return _send(start_response, "200 OK", body)


def _send(start_response: StartResponse, status_line: str, body: bytes) -> list[bytes]:
    start_response(
        status_line,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
    parts = environ.get("PATH_INFO", "").split("/")
    if len(parts) == 4 and parts[1] == "imagine" and parts[3] == "stream":
        return stream(parts[2], start_response)
    if len(parts) == 3 and parts[1] == "imagine":
        return status(parts[2], start_response)
    return _send(start_response, "404 Not Found", b'{"error":{"code":"not_found"}}')
