"""The generic job routes: POST /jobs/<kind>, GET/DELETE /jobs/<id>, its stream, its result."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from support import Proc, job_state

TINY = {"width": 64, "height": 64, "steps": 1}
LONG = {"width": 512, "height": 512, "steps": 40}
UNKNOWN = "AAAAAAAAAAAAAAAAAAAAAA"
JSON = "application/json"


def submit(base: str, kind: str = "imagine", **body: Any) -> dict[str, Any]:
    body.setdefault("prompt", "a lighthouse on a cliff at sunset")
    response = httpx.post(f"{base}/jobs/{kind}", json=body, timeout=10)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def events(base: str, url: str, timeout: float = 60) -> list[tuple[str, dict[str, Any]]]:
    """A job stream read to its end by a third-party SSE client: (event, data) pairs."""
    with (
        httpx.Client(timeout=httpx.Timeout(timeout, connect=5)) as client,
        connect_sse(client, "GET", base + url) as source,
    ):
        source.response.raise_for_status()
        return [(sse.event, json.loads(sse.data)) for sse in source.iter_sse() if sse.data]


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ({}, "prompt", "required: a text describing the picture"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": " \t\n "}, "prompt", "must not be empty"),
        ({"prompt": 42}, "prompt", "required: a text describing the picture"),
        ({"prompt": "x" * 501}, "prompt", "must be at most 500 characters"),
        ({"prompt": "a\x00b"}, "prompt", "must not contain control characters"),
        ({"prompt": "a\u0085b"}, "prompt", "must not contain control characters"),  # C1 NEL
        ({"prompt": "a\u009fb"}, "prompt", "must not contain control characters"),
        ({"prompt": "a\u202eb"}, "prompt", "must not contain control characters"),  # bidi
        ({"prompt": "a\ud800b"}, "prompt", "must not contain control characters"),  # lone
        ({"prompt": "x", "width": -5}, "width", "must be an integer from 64 to 1024"),
        ({"prompt": "x", "width": "64"}, "width", "must be an integer from 64 to 1024"),
        ({"prompt": "x", "height": True}, "height", "must be an integer from 64 to 1024"),
        ({"prompt": "x", "steps": 100000}, "steps", "must be an integer from 1 to 100"),
        ({"prompt": "x", "steps": 2.5}, "steps", "must be an integer from 1 to 100"),
        ({"prompt": "x", "seed": 141.5}, "seed", "must be an integer from 0 to 4294967295"),
        ({"prompt": "x", "seed": 2**32}, "seed", "must be an integer from 0 to 4294967295"),
        ({"prompt": "x", "seed": False}, "seed", "must be an integer from 0 to 4294967295"),
        ({"prompt": "x", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_fields_are_422_naming_the_field_and_write_nothing(
    web: str, rds: redis.Redis, body: dict[str, Any], field: str, why: str
) -> None:
    """Each invalid body is a 422 ``invalid_fields`` that names the bad field with its
    reason (and no other field); Redis is exactly as it was."""
    before = job_state(rds)
    raw = json.dumps(body).encode()  # ASCII with \u escapes: a lone surrogate can be sent
    response = httpx.post(web + "/jobs/imagine", content=raw, headers={"Content-Type": JSON})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_fields"
    assert error["fields"] == {field: why}
    assert job_state(rds) == before


def test_every_bad_field_is_named_at_once(web: str, rds: redis.Redis) -> None:
    """A body with several problems names each one, unknown fields included."""
    before = job_state(rds)
    response = httpx.post(web + "/jobs/imagine", json={"width": 10, "steps": 0, "x": 1, "y": 2})
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"prompt", "width", "steps", "x", "y"}
    assert fields["x"] == fields["y"] == "unknown field"
    assert job_state(rds) == before


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"[]", {"Content-Type": "application/json"}, 422, "invalid_fields"),
        (b"{nope", {"Content-Type": "application/json"}, 400, "bad_json"),
        (b"prompt=x", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        (b'{"prompt": "' + b"x" * 40000 + b'"}', {"Content-Type": "application/json"}, 413, "too_large"),
        (b'{"prompt": "x"}', {"Content-Type": "application/json", "Idempotency-Key": ""}, 400, "bad_idempotency_key"),
        (b'{"prompt": "x"}', {"Content-Type": "application/json", "Idempotency-Key": "a b"}, 400, "bad_idempotency_key"),
        (b'{"prompt": "x"}', {"Content-Type": "application/json", "Idempotency-Key": "k" * 129}, 400, "bad_idempotency_key"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_and_write_nothing(
    web: str, rds: redis.Redis, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    """Malformed requests get the same errors as POST /imagine (and a bad Idempotency-Key
    a 400); nothing is written."""
    before = job_state(rds)
    response = httpx.post(web + "/jobs/imagine", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert job_state(rds) == before


@pytest.mark.parametrize("kind", ["nope", "Imagine", "imagine2", "a" * 40, UNKNOWN])
def test_unknown_kind_is_404_and_writes_nothing(web: str, rds: redis.Redis, kind: str) -> None:
    """POST /jobs/<not a registered kind> is a 404 JSON error, whatever the body."""
    before = job_state(rds)
    response = httpx.post(f"{web}/jobs/{kind}", json={"prompt": "a cat", **TINY})
    assert response.status_code in {404, 405}, response.text
    if len(kind) < 16:  # 16+ id characters name a job: POST there is a 405 (GET, DELETE)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert job_state(rds) == before


def test_kind_and_job_routes_allow_their_own_methods(web: str, rds: redis.Redis) -> None:
    """/jobs/imagine takes POST only; /jobs/<id> GET and DELETE only: each 405 says so."""
    refused = httpx.get(web + "/jobs/imagine")
    assert refused.status_code == 405 and "POST" in refused.headers["Allow"]
    assert "GET" not in refused.headers["Allow"]
    posted = httpx.post(f"{web}/jobs/{UNKNOWN}", json={"prompt": "x"})
    assert posted.status_code == 405
    assert set(posted.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}
    assert "POST" not in posted.headers["Allow"]


def test_a_job_streams_to_done_and_its_result_downloads(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """POST /jobs/imagine → 202 with kind and links; its stream ends with done; the status
    names the kind; the result lists image.png, which downloads as the same PNG as
    /imagine/<id>/image."""
    job = submit(web, prompt="a red kite over a beach", seed=141.0, **TINY)
    job_id = job["jobId"]
    assert job["kind"] == "imagine" and job["position"] >= 1
    assert job["status"] == f"/jobs/{job_id}" and job["stream"] == f"/jobs/{job_id}/stream"
    assert job["result"] == f"/jobs/{job_id}/result"
    assert "token" not in job
    seen = events(web, job["stream"])
    assert seen[0][0] == "queued" and seen[-1][0] == "done"
    status = httpx.get(web + job["status"]).json()
    assert (status["state"], status["kind"], status["percent"]) == ("succeeded", "imagine", 100)
    assert rds.hget(f"jobcast:job:{{{job_id}}}", "seed") == b"141"  # 141.0 is the integer 141
    result = httpx.get(web + job["result"])
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["state"] == "succeeded" and body["result"] == seen[-1][1]
    assert body["files"] == {"image.png": f"/jobs/{job_id}/result/image.png"}
    png = httpx.get(web + body["files"]["image.png"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-content-type-options"] == "nosniff"
    assert png.content.startswith(b"\x89PNG")
    assert png.content == httpx.get(f"{web}/imagine/{job_id}/image").content


def test_cancel_and_results_before_success(web: str, worker: Proc, rds: redis.Redis) -> None:
    """A job not yet succeeded has no result (404) and no files; DELETE /jobs/<id> cancels
    it, its stream ends cancelled, it stays readable, and a second DELETE is a 409."""
    job = submit(web, **LONG)
    job_id = job["jobId"]
    assert httpx.get(f"{web}/jobs/{job_id}/result").status_code == 404
    assert httpx.get(f"{web}/jobs/{job_id}/result/image.png").status_code == 404
    cancelled = httpx.delete(f"{web}/jobs/{job_id}")
    assert cancelled.status_code in {200, 202}, cancelled.text
    assert cancelled.json()["state"] in {"cancelled", "cancelling"}
    assert events(web, job["stream"])[-1][0] == "cancelled"
    assert httpx.get(f"{web}/jobs/{job_id}").json()["state"] == "cancelled"
    assert httpx.get(f"{web}/jobs/{job_id}/result").status_code == 404
    again = httpx.delete(f"{web}/jobs/{job_id}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_finished"


@pytest.mark.parametrize(
    "name",
    [
        "missing.png",
        ".hidden",
        "..%2F..%2Fetc%2Fpasswd",
        "a%2Fb",
        "%00",
        "x" * 65,
        "image.png.abc.tmp",
    ],
)
def test_file_names_outside_the_saved_files_are_404(
    web: str, worker: Proc, rds: redis.Redis, name: str
) -> None:
    """Only files the job saved are served: other names, traversal, NUL or over-long names
    are 404 JSON, never a file from elsewhere."""
    job = submit(web, **TINY)
    events(web, job["stream"])
    response = httpx.get(f"{web}/jobs/{job['jobId']}/result/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_unknown_jobs_are_404_on_every_route(web: str, rds: redis.Redis) -> None:
    """Every /jobs/<id> route answers 404 JSON for an id no job has."""
    for method, suffix in (
        ("GET", ""), ("DELETE", ""), ("GET", "/stream"), ("GET", "/result"),
        ("GET", "/result/image.png"),
    ):  # fmt: skip
        response = httpx.request(method, f"{web}/jobs/{UNKNOWN}{suffix}")
        assert response.status_code == 404, (method, suffix)
        assert response.json()["error"]["code"] == "not_found"


def test_signed_tokens_guard_every_jobs_route(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis
) -> None:
    """With JOBCAST_SIGNING_KEY, each /jobs/<id> route is a 403 without the job's token;
    the links the submit hands out carry it and work."""
    base = web_with(JOBCAST_SIGNING_KEY="s3cret")
    job = submit(base, **TINY)
    token = job["token"]
    for key in ("stream", "status", "result"):
        assert job[key].endswith(f"?token={token}"), key
    events(base, job["stream"])
    job_id = job["jobId"]
    for method, suffix in (
        ("GET", ""), ("GET", "/stream"), ("GET", "/result"), ("GET", "/result/image.png"),
        ("DELETE", ""),
    ):  # fmt: skip
        for query in ("", "?token=wrong"):
            response = httpx.request(method, f"{base}/jobs/{job_id}{suffix}{query}")
            assert response.status_code == 403, (method, suffix, query)
            assert response.json()["error"]["code"] == "bad_token"
    files = httpx.get(base + job["result"]).json()["files"]
    assert files["image.png"] == f"/jobs/{job_id}/result/image.png?token={token}"
    assert httpx.get(base + files["image.png"]).status_code == 200


def test_submits_share_the_rate_limit(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis
) -> None:
    """POST /jobs/<kind> and POST /imagine draw on one budget per client."""
    base = web_with(JOBCAST_POST_RATE_LIMIT="2/minute")
    submit(base, **TINY)
    assert httpx.post(base + "/imagine", json={"prompt": "x", **TINY}).status_code == 202
    refused = httpx.post(base + "/jobs/imagine", json={"prompt": "x", **TINY})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_requests"
