"""Limits and capabilities: rate limit, stream tokens, and hostile input on every route."""

from __future__ import annotations

import httpx
import pytest
import redis
from support import Proc, collect, post_job

TINY = {"width": 64, "height": 64, "steps": 1}


def test_rate_limit_per_client(web_with, worker: Proc, rds: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """Past JOBCAST_POST_RATE_LIMIT a client gets 429 JSON with Retry-After; nothing enqueued."""
    base = web_with(JOBCAST_POST_RATE_LIMIT="3/minute")
    for _ in range(3):
        post_job(base, **TINY)
    queued = rds.zcard("jobcast:queue") + rds.zcard("jobcast:running")
    response = httpx.post(base + "/imagine", json={"prompt": "one more", **TINY})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "too_many_requests"
    assert rds.zcard("jobcast:queue") + rds.zcard("jobcast:running") <= queued


def test_signed_tokens_guard_every_job_route(web_with, worker: Proc, rds: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """With JOBCAST_SIGNING_KEY, the status, stream, image and cancel routes need the token."""
    base = web_with(JOBCAST_SIGNING_KEY="s3cret")
    job = post_job(base, **TINY)
    token = job["token"]
    assert job["stream"].endswith(f"?token={token}") and job["status"].endswith(f"?token={token}")
    job_id = job["jobId"]
    for method, suffix in (("GET", ""), ("GET", "/stream"), ("GET", "/image"), ("DELETE", "")):
        for query in ("", "?token=wrong", f"?token={token[:-1]}"):
            response = httpx.request(method, f"{base}/imagine/{job_id}{suffix}{query}")
            assert response.status_code == 403, (method, suffix, query)
            assert response.json()["error"]["code"] == "bad_token"
    with httpx.stream("GET", base + job["stream"]) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert "event: done" in body
    assert httpx.get(f"{base}/imagine/{job_id}/image?token={token}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/imagine"),
        ("PUT", "/imagine"),
        ("POST", "/imagine/AAAAAAAAAAAAAAAAAAAAAA"),
        ("PATCH", "/imagine/AAAAAAAAAAAAAAAAAAAAAA"),
        ("POST", "/imagine/AAAAAAAAAAAAAAAAAAAAAA/stream"),
        ("DELETE", "/healthz"),
    ],
)
def test_wrong_methods_are_405_json(web: str, method: str, path: str) -> None:
    """A method a route does not take: 405 with Allow and a JSON error, never HTML."""
    response = httpx.request(method, web + path)
    assert response.status_code == 405
    assert "Allow" in response.headers
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "last_id",
    ["garbage", "1-2-3", "-1", "9" * 30 + "-0", "1" * 5000, "１-1", "1_1", "0x10-1"],
)
def test_garbage_last_event_id_is_refused(
    web: str, worker: Proc, rds: redis.Redis, last_id: str
) -> None:
    """A Last-Event-ID we never sent is a 400 JSON error, in the header or the query."""
    job = post_job(web, **TINY)
    collect(web, job["jobId"])
    stream = f"{web}/imagine/{job['jobId']}/stream"
    by_header = httpx.get(stream, headers={"Last-Event-ID": last_id.encode()})
    # (Past ~4 KB a request line is refused by gunicorn itself with 414.)
    by_query = httpx.get(stream, params={"lastEventId": last_id[:1000]})
    for response in (by_header, by_query):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_last_event_id"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/imagine/..%2F..%2Fetc%2Fpasswd",
        "/imagine/AAAAAAAAAAAAAAAAAAAA%0D%0ASet-Cookie:x=1",
        "/imagine/AAAAAAAAAAAAAAAAAAAA%00/image",
        "/imagine/%E2%80%AEAAAAAAAAAAAAAAAAAA/stream",
        "/imagine/" + "A" * 3000,
    ],
)
def test_hostile_ids_are_404_json(web: str, raw_path: str) -> None:
    """Ids with path characters, CR/LF, NUL, bidi marks or huge lengths are simply unknown."""
    response = httpx.get(web + raw_path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "Set-Cookie" not in response.headers


def test_idle_stream_gets_keep_alive_comments(web_with, rds: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """A stream with nothing to say still writes a `: keep-alive` comment every heartbeat."""
    from tasks.events import JobEvents

    base = web_with(JOBCAST_HEARTBEAT_SECONDS="0.5")
    JobEvents(rds).publish("idle-job-0123456789ab", "started", {"worker": "w"})
    comments = 0
    with httpx.stream(
        "GET", f"{base}/imagine/idle-job-0123456789ab/stream", timeout=10
    ) as response:
        for line in response.iter_lines():
            comments += line == ": keep-alive"
            if comments == 3:
                break
    assert comments == 3
    JobEvents(rds).publish("idle-job-0123456789ab", "done", {})
