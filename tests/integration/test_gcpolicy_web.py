"""The standalone app's collector policy (web/gcpolicy.py) in a real gunicorn gevent
worker: 3,000 streams open, the full pass they bring freezes what it found alive,
/healthz says so, and every stream still gets exactly the log afterwards (a frozen
stream is as alive as any). ``JOBCAST_GC_REFRESH_SECONDS=0`` leaves the collector alone.
And the loop gevent must not run on is refused at start."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Proc, Stack, free_port, logged, own_stack, wait_until

from tasks.events import JobEvents
from web.cli import web_argv

STREAMS = 3000  # ≈ 47 tracked objects each: enough to bring a full pass of the collector


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path) as s:
        yield s


def health(base: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(base + "/healthz", timeout=10).json()
    return body


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    got = bytearray()
    sock.settimeout(30)
    while marker not in got:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"stream closed before {marker!r}: {bytes(got[-300:])!r}")
        got += data
    return bytes(got)


@pytest.mark.parametrize("refresh", ["300", "0"])
def test_streams_open_across_full_passes_and_all_get_the_log(stack: Stack, refresh: str) -> None:
    _, base = stack.web(JOBCAST_GC_REFRESH_SECONDS=refresh)
    port = int(base.rsplit(":", 1)[1])
    events = JobEvents(stack.client())
    job_id = "gc-policy-job-0123456789"
    events.publish(job_id, "started", {"worker": "w"})
    request = (
        f"GET /jobs/{job_id}/stream HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    socks: list[socket.socket] = []
    try:
        for _ in range(STREAMS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(request)
            socks.append(sock)
        heads = [read_until(sock, b"event: started") for sock in socks]
        assert all(head.startswith(b"HTTP/1.1 200") for head in heads)
        wait_until(lambda: health(base)["hub"]["streams"] == STREAMS, 30, "every stream open")
        body = health(base)
        if refresh == "0":
            assert "collector" not in body
        else:
            stats = body["collector"]
            assert stats["fullPasses"] >= 1 and stats["freezes"] >= 1, stats
            assert stats["refreshes"] == 0 and stats["longestFullPassMs"] > 0, stats
        for n in range(3):
            events.publish(job_id, "progress", {"percent": n})
        events.publish(job_id, "done", {"url": "/media/x.png"})
        truth = [event_id for event_id, _ in logged(stack.client(), job_id)]
        for sock, head in zip(socks, heads, strict=True):
            raw = head + read_until(sock, b"event: done")
            ids = [line[4:] for line in raw.decode().split("\n") if line.startswith("id: ")]
            assert ids == truth[: len(ids)] and len(ids) == len(truth)
    finally:
        for sock in socks:
            sock.close()


def test_gevent_s_libuv_loop_is_refused_at_start_with_the_reason(stack: Stack) -> None:
    """Under GEVENT_LOOP=libuv every pooled Redis connection failed redis-py's readiness
    check and every POST answered 503; now the worker does not boot, and says why."""
    port = free_port()
    argv = web_argv("127.0.0.1", port, 1, "-k", "gevent")
    web = stack.keep(
        "web", Proc(argv, {**stack.env, "GEVENT_LOOP": "libuv"}, stack.tmp / "web.log").start()
    )
    wait_until(lambda: not web.alive(), 60, "gunicorn to give up on its worker")
    assert "does not run on gevent's libuv loop" in web.output(), web.output()[-3000:]
