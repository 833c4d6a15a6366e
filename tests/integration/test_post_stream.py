"""POST-and-stream: ``POST /jobs/<kind>`` (and ``POST /imagine``) with ``Accept:
text/event-stream`` answers the new job's stream itself, read here by raw HTTP clients."""

from __future__ import annotations

import json
import socket
import urllib.parse
from typing import Any

import httpx
import pytest
import redis
from support import Proc, logged, wait_until

from web.openapi import document

TINY = {"prompt": "a kite over a beach", "width": 64, "height": 64, "steps": 2}
SSE_ACCEPT = {"Accept": "text/event-stream"}


def parse_frames(raw: str) -> list[dict[str, str]]:
    """SSE frames as field → value dicts (comments and retry-only frames dropped)."""
    frames = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            frames.append(fields)
    return frames


def post_stream(base: str, path: str, body: Any) -> tuple[httpx.Response, list[dict[str, str]]]:
    """POST ``body`` asking for the stream; read the answer to its end."""
    with (
        httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client,
        client.stream("POST", base + path, json=body, headers=SSE_ACCEPT) as response,
    ):
        raw = "".join(response.iter_text())
    return response, parse_frames(raw)


def hub_streams(base: str) -> int:
    streams: int = httpx.get(base + "/healthz").json()["hub"]["streams"]
    return streams


@pytest.mark.parametrize("path", ["/jobs/imagine", "/imagine"])
def test_post_answers_the_new_jobs_stream_to_its_end(
    web: str, worker: Proc, rds: redis.Redis, path: str
) -> None:
    """The answer is 200 text/event-stream with the job's id in X-Job-Id and Location; its
    first event is ``queued`` carrying that jobId; the events run to ``done`` and are
    exactly the job's log in Redis, in order."""
    response, frames = post_stream(web, path, TINY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    job_id = response.headers["x-job-id"]
    assert response.headers["location"].endswith(job_id)
    assert frames[0]["event"] == "queued"
    assert json.loads(frames[0]["data"])["jobId"] == job_id
    durable = [(f["id"], f["event"]) for f in frames if "id" in f]
    assert durable[-1][1] == "done"
    assert durable == logged(rds, job_id)


def test_invalid_body_is_still_a_json_422_and_queues_nothing(web: str, rds: redis.Redis) -> None:
    """A client asking for a stream with an invalid body gets the usual JSON 422 naming the
    field; no job exists."""
    before = rds.dbsize()
    response = httpx.post(
        web + "/jobs/imagine", json={"prompt": "x", "width": 3}, headers=SSE_ACCEPT
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["fields"] == {"width": "must be an integer from 64 to 1024"}
    assert rds.dbsize() == before


def test_without_the_accept_header_the_answer_is_the_202_json(web: str, rds: redis.Redis) -> None:
    """Accept: */* (or JSON ranked above the stream) keeps the 202 JSON answer."""
    plain = httpx.post(web + "/jobs/imagine", json=TINY, headers={"Accept": "*/*"})
    assert plain.status_code == 202 and plain.json()["jobId"]
    ranked = httpx.post(
        web + "/jobs/imagine",
        json=TINY,
        headers={"Accept": "application/json, text/event-stream;q=0.5"},
    )
    assert ranked.status_code == 202 and "x-job-id" not in ranked.headers


def test_client_gone_after_the_headers_leaves_the_job_running_and_nothing_leaks(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """A raw-socket client that hangs up right after the response headers: the job still
    runs to done, and this process's open-stream count returns to what it was."""
    before = hub_streams(web)
    url = urllib.parse.urlsplit(web)
    body = json.dumps({**TINY, "steps": 8}).encode()
    request = (
        f"POST /jobs/imagine HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Accept: text/event-stream\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, head
            head += chunk
    status, *lines = head.decode().split("\r\n")
    assert status.startswith("HTTP/1.1 200")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines if line)}
    job_id = headers["x-job-id"]
    state_key = f"jobcast:job:{{{job_id}}}"
    wait_until(lambda: rds.hget(state_key, "state") == b"succeeded", 60, "the job to succeed")
    assert logged(rds, job_id)[-1][1] == "done"
    wait_until(lambda: hub_streams(web) == before, 30, "the stream count to return")


def test_openapi_documents_the_stream_answer_of_each_submit() -> None:
    """Each submit's 200 lists text/event-stream beside JSON, with the X-Job-Id header."""
    doc = document()
    for path in ("/jobs/imagine", "/imagine"):
        ok = doc["paths"][path]["post"]["responses"]["200"]
        assert set(ok["content"]) == {"application/json", "text/event-stream"}
        assert "X-Job-Id" in ok["headers"]
