"""CORS on the job routes (``JOBCAST_CORS_ORIGINS``, ``JOBCAST_CORS_CREDENTIALS``), as a
page of another app served beside Jobcast sees it, on real gunicorn gevent servers.

The stream is answered by the fast WSGI route (web/fastroute.py), every other route by
Flask: both must send the same headers.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from support import Proc, collect, gunicorn_web, post_job

ALLOWED = "http://app.example.test:3000"
OTHER = "http://evil.example.test"
ORIGINS = f"{ALLOWED},https://second.example.test"
TINY = {"width": 64, "height": 64, "steps": 1}
UNKNOWN = "A" * 22


@pytest.fixture(scope="module")
def servers(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Three servers on the session's Redis: exact origins, with credentials, and ``*``."""
    logs = tmp_path_factory.mktemp("cors-logs")
    configs = {
        "exact": {"JOBCAST_CORS_ORIGINS": ORIGINS},
        "credentials": {"JOBCAST_CORS_ORIGINS": ORIGINS, "JOBCAST_CORS_CREDENTIALS": "true"},
        "any": {"JOBCAST_CORS_ORIGINS": "*"},
    }
    procs: list[Proc] = []
    bases: dict[str, str] = {}
    try:
        for name, extra in configs.items():
            proc, bases[name] = gunicorn_web(stack_env | extra, logs / f"{name}.log")
            procs.append(proc)
        yield bases
    finally:
        for proc in procs:
            proc.stop()


def cors(response: httpx.Response) -> dict[str, str]:
    """The response's Access-Control-* headers, names in lower case."""
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def vary(response: httpx.Response) -> set[str]:
    return {part.strip().lower() for part in response.headers.get("Vary", "").split(",")}


def test_preflight_from_an_allowed_origin(servers: dict[str, str], rds: redis.Redis) -> None:
    """OPTIONS with Access-Control-Request-Method from an allowed origin: 204, the origin
    echoed, the URL's methods, the request headers a client sends, and a max-age."""
    requests = [
        ("/imagine", "POST", "content-type, idempotency-key"),
        (f"/imagine/{UNKNOWN}/stream", "GET", "last-event-id"),
        (f"/imagine/{UNKNOWN}", "DELETE", "authorization"),
    ]
    for path, method, asked in requests:
        response = httpx.options(
            servers["exact"] + path,
            headers={
                "Origin": ALLOWED,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": asked,
            },
        )
        assert response.status_code == 204, (path, response.text)
        headers = cors(response)
        assert headers["access-control-allow-origin"] == ALLOWED
        assert method in headers["access-control-allow-methods"].split(", ")
        allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
        assert {h.strip() for h in asked.split(",")} <= allowed
        assert int(headers["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in headers
        assert "origin" in vary(response)
    methods = httpx.options(
        servers["exact"] + f"/imagine/{UNKNOWN}",
        headers={"Origin": ALLOWED, "Access-Control-Request-Method": "DELETE"},
    ).headers["Access-Control-Allow-Methods"]
    assert set(methods.split(", ")) == {"DELETE", "GET", "HEAD"}


def test_preflight_from_another_origin_gets_no_cors_headers(
    servers: dict[str, str], rds: redis.Redis
) -> None:
    """A preflight from an origin not listed gets Flask's usual OPTIONS answer and no
    Access-Control-* header, so the browser refuses the call."""
    response = httpx.options(
        servers["exact"] + "/imagine",
        headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200 and "POST" in response.headers["Allow"]
    assert cors(response) == {}


def test_stream_from_an_allowed_origin(
    servers: dict[str, str], worker: Proc, rds: redis.Redis
) -> None:
    """POST and the stream from an allowed origin carry the CORS headers (Location and
    Retry-After exposed), and the stream's events flow to `done`."""
    base = servers["exact"]
    posted = httpx.post(
        base + "/imagine", json={"prompt": "x", **TINY}, headers={"Origin": ALLOWED}
    )
    assert posted.status_code == 202
    assert cors(posted)["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip() for h in cors(posted)["access-control-expose-headers"].split(",")}
    assert {"Location", "Retry-After"} <= exposed
    job_id = posted.json()["jobId"]
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client, "GET", f"{base}/imagine/{job_id}/stream", headers={"Origin": ALLOWED}
        ) as source,
    ):
        headers = cors(source.response)
        assert source.response.status_code == 200
        assert headers["access-control-allow-origin"] == ALLOWED
        assert "origin" in vary(source.response)
        phases = [sse.event for sse in source.iter_sse() if sse.id]
    assert phases[0] == "queued" and phases[-1] == "done"


def test_stream_from_another_origin_has_no_cors_headers(
    servers: dict[str, str], worker: Proc, rds: redis.Redis
) -> None:
    """From an origin not listed the stream is the same stream (every event to `done`),
    with no Access-Control-* header; nor does a job route answer one without Origin."""
    base = servers["exact"]
    job = post_job(base, **TINY)
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client, "GET", f"{base}/imagine/{job['jobId']}/stream", headers={"Origin": OTHER}
        ) as source,
    ):
        assert source.response.status_code == 200
        assert cors(source.response) == {}
        phases = [sse.event for sse in source.iter_sse() if sse.id]
    assert phases[-1] == "done"
    assert cors(httpx.get(f"{base}/imagine/{job['jobId']}")) == {}


def test_credentials_mode_echoes_the_origin_never_a_star(
    servers: dict[str, str], worker: Proc, rds: redis.Redis
) -> None:
    """With credentials on, every answer to an allowed origin names it (never ``*``) and
    allows credentials: preflight, POST, stream (the fast route) and status."""
    base = servers["credentials"]
    preflight = httpx.options(
        base + "/imagine", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
    )
    posted = httpx.post(
        base + "/imagine", json={"prompt": "x", **TINY}, headers={"Origin": ALLOWED}
    )
    job_id = posted.json()["jobId"]
    assert [e.event for e in collect(base, job_id) if e.id][-1] == "done"
    stream = httpx.get(f"{base}/imagine/{job_id}/stream", headers={"Origin": ALLOWED})
    status = httpx.get(f"{base}/imagine/{job_id}", headers={"Origin": ALLOWED})
    assert stream.status_code == 200 and "event: done" in stream.text  # the replay
    for response in (preflight, posted, stream, status):
        headers = cors(response)
        assert headers["access-control-allow-origin"] == ALLOWED, response.request.url
        assert headers["access-control-allow-credentials"] == "true", response.request.url
    assert cors(httpx.get(f"{base}/imagine/{job_id}", headers={"Origin": OTHER})) == {}


def test_status_image_and_errors_carry_the_headers(
    servers: dict[str, str], worker: Proc, rds: redis.Redis
) -> None:
    """The status and image routes answer an allowed origin with the headers, and so do
    their errors (an unknown job's 404 from Flask and from the fast stream route), so the
    page can read them; /healthz, not a job route, sends none."""
    base = servers["exact"]
    job = post_job(base, **TINY)
    assert [e.event for e in collect(base, job["jobId"]) if e.id][-1] == "done"
    origin = {"Origin": ALLOWED}
    status = httpx.get(base + job["status"], headers=origin)
    assert status.json()["state"] == "succeeded"
    image = httpx.get(base + job["image"], headers=origin)
    assert image.headers["Content-Type"] == "image/png"
    missing = httpx.get(f"{base}/imagine/{UNKNOWN}", headers=origin)
    missing_stream = httpx.get(f"{base}/imagine/{UNKNOWN}/stream", headers=origin)
    for response in (status, image, missing, missing_stream):
        assert cors(response)["access-control-allow-origin"] == ALLOWED, response.request.url
        assert "origin" in vary(response), response.request.url
    assert missing.status_code == missing_stream.status_code == 404
    assert cors(httpx.get(base + "/healthz", headers=origin)) == {}


def test_any_origin_gets_a_star_without_credentials(
    servers: dict[str, str], rds: redis.Redis
) -> None:
    """``JOBCAST_CORS_ORIGINS=*``: any origin gets ``Access-Control-Allow-Origin: *`` and
    no credentials, on a preflight and on the stream route."""
    base = servers["any"]
    preflight = httpx.options(
        base + "/imagine", headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"}
    )
    stream = httpx.get(f"{base}/imagine/{UNKNOWN}/stream", headers={"Origin": OTHER})
    for response in (preflight, stream):
        assert cors(response)["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in cors(response)
