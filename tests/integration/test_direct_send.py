"""Direct sends (issue 14, target 4): the hub writes a live frame to an idle stream's
socket itself. What a client sees must not change: exactly the log, in order, framed as
the protocol says, also for a client too slow for the kernel's buffers; and the stock
path (``JOBCAST_DIRECT_SEND=false``) still serves every frame."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    Proc,
    Received,
    Stack,
    collect,
    free_port,
    iter_events,
    logged,
    own_stack,
    wait_until,
)  # fmt: skip

from tasks.events import JobEvents
from web.cli import web_argv


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path) as s:
        yield s


def hub_stats(base: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(base + "/healthz", timeout=5).json()["hub"]
    return stats


@pytest.mark.parametrize("direct", ["true", "false"])
def test_every_stream_gets_exactly_the_log(stack: Stack, direct: str) -> None:
    """Four streams of one job and 300 progress events: each stream is the job's log, and
    the hub wrote the frames itself only when direct sends are on."""
    _, base = stack.web(JOBCAST_DIRECT_SEND=direct)
    events = JobEvents(stack.client())
    job_id = "direct-send-job-0123456789"
    events.publish(job_id, "started", {"worker": "w"})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(collect, base, job_id) for _ in range(4)]
        wait_until(lambda: hub_stats(base)["streams"] == 4, 15, "four streams to open")
        for n in range(300):
            events.publish(job_id, "progress", {"percent": n // 3})
        events.publish(job_id, "done", {"url": "/media/x.png"})
        received = [future.result(timeout=60) for future in streams]
    truth = logged(stack.client(), job_id)
    for got in received:
        assert [(r.id, r.event) for r in got if r.id] == truth
    stats = hub_stats(base)
    if direct == "true":
        assert stats["directSends"] > 0, stats
    else:
        assert stats["directSends"] == 0, stats


def read_response(sock: socket.socket, chunked: bool) -> tuple[bytes, bytes]:
    """The raw head and body of one response; the body de-chunked (strictly) if chunked."""
    raw = bytearray()  # bytes += would copy the whole body on every recv
    sock.settimeout(60)
    while True:
        data = sock.recv(65536)
        if not data:
            break
        raw += data
        if chunked and raw.endswith(b"\r\n0\r\n\r\n"):
            break
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    if not chunked:
        return head, body
    plain, at = [], 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end], 16)
        chunk = body[end + 2 : end + 2 + size]
        assert len(chunk) == size and body[end + 2 + size : end + 4 + size] == b"\r\n"
        at = end + 4 + size
        if size == 0:
            assert at == len(body), "bytes after the last chunk"
            return head, b"".join(plain)
        plain.append(chunk)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/1.0"])
def test_a_reader_slower_than_the_kernel_gets_exactly_the_log(stack: Stack, protocol: str) -> None:
    """A client reads nothing while 600 events of 30 KB go out (18 MB; the kernel buffers
    a few MB of a loopback connection): direct sends fill the kernel's buffers and hand
    the rest of a frame to the stream's greenlet, its small mailbox overflows and it
    catches up from the log. Read afterwards, the body is well framed and holds every
    logged event once, in order, ending with ``done``."""
    _, base = stack.web(JOBCAST_WATCHER_QUEUE_SIZE="32")
    events = JobEvents(stack.client())
    job_id = f"slow-direct-{protocol[-1]}-0123456789"
    events.publish(job_id, "started", {"worker": "w"})
    port = int(base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(f"GET /jobs/{job_id}/stream {protocol}\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: hub_stats(base)["streams"] == 1, 15, "the stream to open")
        pad = "y" * 30_000
        for n in range(600):
            events.publish(job_id, "progress", {"percent": n // 6, "pad": pad})
        events.publish(job_id, "done", {"url": "/media/x.png"})
        stats = hub_stats(base)
        head, body = read_response(sock, chunked=protocol == "HTTP/1.1")
    finally:
        sock.close()
    assert head.startswith(protocol.encode() + b" 200"), head
    ids = [
        line[4:].decode()
        for frame in body.split(b"\n\n")
        for line in frame.split(b"\n")
        if line.startswith(b"id: ")
    ]
    assert ids == [entry_id for entry_id, _ in logged(stack.client(), job_id)]
    assert body.rstrip().endswith(b'"url":"/media/x.png"}'), body[-200:]
    assert stats["directSends"] > 0 and stats["directBlocked"] > 0, stats


def uwsgi_request(port: int, path: str) -> socket.socket:
    """A socket that sent ``GET path`` in the uwsgi protocol (what nginx's ``uwsgi_pass``
    sends): a 4-byte header (modifier 0, the vars' length, modifier 0), then each var as
    a 2-byte length and bytes for its name and its value."""
    variables = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(port),
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "jobcast.test",
    }
    packed = b"".join(
        len(part).to_bytes(2, "little") + part
        for name, value in variables.items()
        for part in (name.encode(), value.encode())
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"\0" + len(packed).to_bytes(2, "little") + b"\0" + packed)
    return sock


def uwsgi_get(port: int, path: str) -> tuple[bytes, bytes]:
    """The head and body of a response read to the end of the connection."""
    with uwsgi_request(port, path) as sock:
        return read_response(sock, chunked=False)


def test_under_the_uwsgi_protocol_bodies_stay_unframed(stack: Stack) -> None:
    """Behind nginx's ``uwsgi_pass`` (``gunicorn --protocol uwsgi``) gunicorn writes a body
    as it is and nginx frames it for the browser: the hub must not add HTTP chunks of its
    own, so there it leaves writing to gunicorn and the stream is plain SSE."""
    port = free_port()
    argv = web_argv("127.0.0.1", port, 1, "--protocol", "uwsgi", "-k", "gevent")
    web = stack.keep("web", Proc(argv, stack.env, stack.tmp / "web.log").start())

    def stats() -> dict[str, Any]:
        head, body = uwsgi_get(port, "/healthz")
        assert head.startswith(b"HTTP/1.1 200"), head
        hub: dict[str, Any] = json.loads(body)["hub"]
        return hub

    def serving() -> bool:
        assert web.alive(), web.output()[-3000:]
        try:
            return "streams" in stats()
        except OSError:
            return False

    wait_until(serving, 30, "gunicorn to answer uwsgi requests")
    events = JobEvents(stack.client())
    job_id = "uwsgi-direct-job-0123456789"
    events.publish(job_id, "started", {"worker": "w"})
    with uwsgi_request(port, f"/jobs/{job_id}/stream") as sock:
        wait_until(lambda: stats()["streams"] == 1, 15, "the stream to open")
        for n in range(50):
            events.publish(job_id, "progress", {"percent": n * 2})
        events.publish(job_id, "done", {"url": "/media/x.png"})
        head, body = read_response(sock, chunked=False)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower(), head
    assert body.startswith(b"retry: "), body[:200]
    ids = [line[4:].decode() for line in body.split(b"\n") if line.startswith(b"id: ")]
    assert ids == [entry_id for entry_id, _ in logged(stack.client(), job_id)]
    assert body.endswith(b'"url":"/media/x.png"}\n\n'), body[-200:]
    assert stats()["directSends"] == 0


class Reader:
    """Read one stream in a thread to its end, keeping every event."""

    def __init__(self, base: str, job_id: str) -> None:
        self.events: list[Received] = []
        self.thread = threading.Thread(target=self._run, args=(base, job_id), daemon=True)
        self.thread.start()

    def _run(self, base: str, job_id: str) -> None:
        for event in iter_events(base, job_id, timeout=60):
            self.events.append(event)

    def places(self) -> list[int]:
        return [e.data["position"] for e in self.events if e.event == "queued" and not e.id]


@pytest.mark.parametrize("direct", ["true", "false"])
def test_places_in_line_reach_every_stream_forward_only(stack: Stack, direct: str) -> None:
    """Five streams of the sixth job in line while the five ahead start one by one: each
    stream's places only go down and reach 1, then it gets the job's log to the end; the
    line's flusher wrote the places itself only when direct sends are on."""
    _, base = stack.web(JOBCAST_DIRECT_SEND=direct)
    events = JobEvents(stack.client())
    jobs = [f"direct-place-{direct}-{n}-0123456789" for n in range(6)]
    for job_id in jobs:
        events.enqueue(job_id, {"prompt": "a lighthouse"})
    watched = jobs[-1]
    readers = [Reader(base, watched) for _ in range(5)]
    wait_until(lambda: all(r.places() == [6] for r in readers), 15, "every stream's place")
    for job_id in jobs[:-1]:
        events.publish(job_id, "started", {"worker": "w"})
    wait_until(lambda: all(r.places()[-1:] == [1] for r in readers), 15, "everyone at #1")
    events.publish(watched, "started", {"worker": "w"})
    events.publish(watched, "done", {"url": "/media/x.png"})
    truth = logged(stack.client(), watched)
    for reader in readers:
        reader.thread.join(30)
        assert not reader.thread.is_alive(), "the stream did not end"
        places = reader.places()
        assert places == sorted(places, reverse=True) and places[-1] == 1, places
        assert [(e.id, e.event) for e in reader.events if e.id] == truth
    line = httpx.get(base + "/healthz", timeout=5).json()["line"]
    if direct == "true":
        assert line["directSends"] > 0, line
    else:
        assert line["directSends"] == 0, line
