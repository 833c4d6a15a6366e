"""gunicorn terminating TLS itself (``--certfile``/``--keyfile``): the app knows the
request came over https (the ops cookie is ``Secure``), and a stream over TLS is the
job's log exactly, written by gunicorn (the hub never writes plain bytes into a TLS
connection: no direct sends there)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from support import (
    Proc,
    Stack,
    free_port,
    logged,
    own_stack,
    self_signed_certificate,
    wait_until,
)

from tasks.events import JobEvents
from web.cli import web_argv

OPS_TOKEN = "tls-ops-token-0123456789abcdef"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path, JOBCAST_OPS_TOKEN=OPS_TOKEN) as s:
        yield s


def tls_web(stack: Stack) -> str:
    """gunicorn with a self-signed certificate for 127.0.0.1; its https base URL."""
    cert, key = self_signed_certificate(stack.tmp)
    port = free_port()
    argv = web_argv(
        "127.0.0.1", port, 1, "--certfile", str(cert), "--keyfile", str(key), "-k", "gevent"
    )
    web = stack.keep("web", Proc(argv, stack.env, stack.tmp / "web.log").start())
    base = f"https://127.0.0.1:{port}"

    def serving() -> bool:
        assert web.alive(), web.output()[-3000:]
        try:
            return httpx.get(base + "/healthz", verify=False, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(serving, 30, "gunicorn to serve https")
    return base


def test_a_stream_over_tls_is_the_log_and_the_app_sees_https(stack: Stack) -> None:
    base = tls_web(stack)
    events = JobEvents(stack.client())
    job_id = "tls-stream-job-0123456789"
    events.publish(job_id, "started", {"worker": "w"})
    got: list[tuple[str, str]] = []

    def read() -> None:
        with (
            httpx.Client(verify=False, timeout=30) as client,
            connect_sse(client, "GET", f"{base}/jobs/{job_id}/stream") as source,
        ):
            for sse in source.iter_sse():
                if sse.id:
                    got.append((sse.id, sse.event))
                if sse.event == "done":
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def hub() -> dict[str, int]:
        stats: dict[str, int] = httpx.get(base + "/healthz", verify=False, timeout=5).json()["hub"]
        return stats

    wait_until(lambda: hub()["streams"] == 1, 15, "the stream to open")
    for n in range(40):
        events.publish(job_id, "progress", {"percent": n * 2})
    events.publish(job_id, "done", {"url": "/media/x.png"})
    reader.join(30)
    assert not reader.is_alive(), "the stream did not end"
    assert got == logged(stack.client(), job_id)
    assert hub()["directSends"] == 0
    login = httpx.post(
        base + "/ops/login", data={"token": OPS_TOKEN}, verify=False, follow_redirects=False
    )
    assert login.status_code == 303, login.text
    cookie = login.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie, cookie
