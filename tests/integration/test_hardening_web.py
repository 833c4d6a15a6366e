"""Hardening of the web side (issue 10, items 4, 12, 13, 17), against real gunicorn servers.

* The open ops feed shows labels, never job ids; with the ops token it shows ids.
* ``/ops/login`` is rate limited per client; its cookie is ``Secure`` behind a trusted TLS
  proxy only, and revocable (logout, token change).
* ``next`` of the login only ever leads to a local path.
* In signed mode every URL the server hands out works as given.
* Behind trusted proxies the per-client limits key on the forwarded client address, and
  without them ``X-Forwarded-For`` changes nothing.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from support import (
    Proc,
    RedisServer,
    collect,
    gunicorn_web,
    jobcast_monitor,
    post_job,
    wait_until,
)

from tasks.app import create_celery
from tasks.config import Settings
from tasks.monitor import snapshot_frame
from web import create_app
from web.ops import HIDDEN_ERROR, public_frame

TOKEN = "ops-" + secrets.token_urlsafe(12)
ROTATED = "ops-" + secrets.token_urlsafe(12)
TINY = {"width": 64, "height": 64, "steps": 1}
LONG = {"prompt": "a slow one", "width": 512, "height": 512, "steps": 80}
LABEL = re.compile(r"[0-9a-f]{8}")
JSON_ONLY = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def servers(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Web servers on the session's Redis, by name: ``direct`` (token, no trusted proxy,
    3 POSTs and 3 sign-ins a minute), ``proxied`` (the same behind one trusted proxy),
    ``rotated`` (another token, sign-ins unlimited), ``signed`` (job tokens on)."""
    limited = {"JOBCAST_POST_RATE_LIMIT": "3/minute", "JOBCAST_OPS_LOGIN_RATE_LIMIT": "3/minute"}
    configs = {
        "direct": {"JOBCAST_OPS_TOKEN": TOKEN, **limited},
        "proxied": {"JOBCAST_OPS_TOKEN": TOKEN, "JOBCAST_TRUSTED_PROXIES": "1", **limited},
        "rotated": {"JOBCAST_OPS_TOKEN": ROTATED, "JOBCAST_OPS_LOGIN_RATE_LIMIT": "1000/minute"},
        "signed": {"JOBCAST_SIGNING_KEY": "s3cret-" + secrets.token_hex(8)},
    }
    logs = tmp_path_factory.mktemp("logs")
    procs: list[Proc] = []
    bases: dict[str, str] = {}
    try:
        for name, env in configs.items():
            proc, bases[name] = gunicorn_web({**stack_env, **env}, logs / f"{name}.log")
            procs.append(proc)
        yield bases
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(autouse=True)
def fresh_limits(rds: redis.Redis) -> None:
    """Start each test with empty rate-limit windows (Flask-Limiter keeps them a minute,
    under its own ``LIMITS:`` prefix, and these servers share one Redis)."""
    keys = list(rds.scan_iter("LIMITS:LIMITER/jobcast:limits/*", count=1000))
    if keys:
        rds.delete(*keys)


def sign_in(base: str, token: str = TOKEN, **headers: str) -> httpx.Response:
    return httpx.post(
        base + "/ops/login", data={"token": token, "next": "/ops"}, headers=headers, timeout=10
    )


def ops_stream_opens(base: str, cookies: httpx.Cookies | None = None) -> bool:
    """True if ``/ops/stream`` answers 200 to these cookies (read until its first bytes)."""
    with (
        httpx.Client(base_url=base, cookies=cookies, timeout=10) as client,
        client.stream("GET", "/ops/stream") as response,
    ):
        return response.status_code == 200 and next(response.iter_bytes()).startswith(b"retry:")


# -- item 4: the open feed carries labels, not capabilities ------------------------------


def snapshot_in_redis(rds: redis.Redis) -> dict[str, Any]:
    raw = rds.get("jobcast:ops:snapshot")
    return json.loads(raw) if raw else {}


def active_ids(snap: dict[str, Any]) -> list[str]:
    return [job["id"] for w in snap.get("workers", []) for job in w.get("jobs", [])]


def read_snapshots(
    base: str, until: Any, headers: dict[str, str] | None = None, count: int = 1
) -> tuple[list[str], dict[str, Any]]:
    """Every data field ``/ops/stream`` sends until ``count`` snapshots satisfy ``until``
    (the first snapshot is the latest at connect, later ones are live); the last one."""
    seen: list[str] = []
    deadline = time.monotonic() + 30
    with (
        httpx.Client(timeout=httpx.Timeout(20, connect=5)) as client,
        connect_sse(client, "GET", base + "/ops/stream", headers=dict(headers or {})) as source,
    ):
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            seen.append(sse.data)
            if sse.event == "snapshot" and until(snap := json.loads(sse.data)):
                count -= 1
                if not count:
                    return seen, snap
            assert time.monotonic() < deadline, "no such snapshot on the feed"
    raise AssertionError("the feed ended")


def test_open_ops_feed_shows_labels_and_never_a_job_id(
    web: str,
    servers: dict[str, str],
    stack_env: dict[str, str],
    worker: Proc,
    rds: redis.Redis,
    tmp_path: Path,
) -> None:
    """Without JOBCAST_OPS_TOKEN, /ops/stream (the latest snapshot at connect and the live
    ones) names a running job and a failed task only by 8-hex labels, the same in every
    connection, and shows no failure's exception text (it may carry parameters or paths);
    the token's holder sees the ids and the errors."""
    monitor = jobcast_monitor(stack_env, tmp_path / "monitor.log")
    app = create_celery(Settings.from_env(stack_env))
    try:
        doomed = secrets.token_urlsafe(16)
        # Missing arguments: the worker raises TypeError, the monitor lists a failure.
        app.send_task("jobcast.imagine", kwargs={"job_id": doomed}, task_id=doomed)
        wait_until(
            lambda: any(f["id"] == doomed for f in snapshot_in_redis(rds).get("failures", [])),
            60, "the monitor to list the failure",
        )  # fmt: skip
        job_id = post_job(web, **LONG)["jobId"]
        wait_until(
            lambda: job_id in active_ids(snapshot_in_redis(rds)), 60, "the job on its worker"
        )

        def shows_both(snap: dict[str, Any]) -> bool:
            return bool(active_ids(snap)) and bool(snap["failures"])

        labels = []
        for _ in range(2):
            seen, snap = read_snapshots(web, shows_both, count=2)
            assert not [data for data in seen if job_id in data or doomed in data]
            assert snap["redacted"] is True
            ids = active_ids(snap) + [f["id"] for f in snap["failures"]]
            assert all(LABEL.fullmatch(label) for label in ids), ids
            assert not [f for f in snap["failures"] if "TypeError" in f["error"]]
            assert not [data for data in seen if "TypeError" in data]
            labels.append((active_ids(snap), snap["failures"][0]["id"]))
        assert labels[0] == labels[1]  # a job keeps its label

        bearer = {"Authorization": f"Bearer {TOKEN}"}
        _, full = read_snapshots(servers["direct"], shows_both, headers=bearer)
        assert job_id in active_ids(full) and doomed in [f["id"] for f in full["failures"]]
        assert "TypeError" in next(f["error"] for f in full["failures"] if f["id"] == doomed)
        assert "redacted" not in full
    finally:
        app.close()
        app.jobcast.redis.close()
        monitor.stop()


# -- item 4: sign-in limit, Secure cookie, revocation ------------------------------------


def test_ops_login_is_rate_limited_per_client(servers: dict[str, str], rds: redis.Redis) -> None:
    """Past JOBCAST_OPS_LOGIN_RATE_LIMIT (3/minute here) a client's sign-ins get 429 —
    JSON with Retry-After for API clients, the form with a message for browsers — even
    with the right token; another client behind the same trusted proxy still signs in."""
    proxied = servers["proxied"]
    one = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(3):
        assert sign_in(proxied, "a guess", **one).status_code == 401
    refused = sign_in(proxied, "a guess", **one, **JSON_ONLY)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "too_many_requests"
    page = sign_in(proxied, TOKEN, **one, Accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert page.status_code == 429 and page.headers["content-type"].startswith("text/html")
    assert "Too many sign-in attempts" in page.text and 'name="token"' in page.text
    assert "set-cookie" not in page.headers
    other = sign_in(proxied, TOKEN, **{"X-Forwarded-For": "203.0.113.8"})
    assert other.status_code == 303 and other.headers["location"] == "/ops"


def test_ops_cookie_is_secure_only_behind_a_trusted_tls_proxy(
    servers: dict[str, str], rds: redis.Redis
) -> None:
    """The ops cookie says Secure when a trusted proxy forwards ``X-Forwarded-Proto:
    https``; not when the same header reaches a server that trusts no proxy, nor over
    plain HTTP."""
    https = {"X-Forwarded-Proto": "https"}
    behind_tls = sign_in(servers["proxied"], **https).headers["set-cookie"]
    assert re.search(r";\s*Secure", behind_tls, re.I), behind_tls
    forged = sign_in(servers["direct"], **https).headers["set-cookie"]
    plain = sign_in(servers["proxied"]).headers["set-cookie"]
    for cookie in (forged, plain):
        assert "HttpOnly" in cookie and not re.search(r";\s*Secure", cookie, re.I), cookie


def test_logout_and_a_new_token_revoke_the_ops_cookie(
    servers: dict[str, str], rds: redis.Redis
) -> None:
    """A signed-in cookie works on every process with the same token; after logout a saved
    copy of it is refused (401), and a server with another token refuses a live one."""
    direct, proxied, rotated = servers["direct"], servers["proxied"], servers["rotated"]
    with httpx.Client(base_url=direct, timeout=10) as browser:
        assert browser.post("/ops/login", data={"token": TOKEN}).status_code == 303
        stolen = httpx.Cookies(browser.cookies)
        assert ops_stream_opens(direct, stolen) and ops_stream_opens(proxied, stolen)
        assert browser.post("/ops/logout").status_code == 303
    assert not ops_stream_opens(direct, stolen)
    assert httpx.get(direct + "/metrics", cookies=stolen).status_code == 401
    assert httpx.get(direct + "/ops", cookies=stolen).status_code == 303

    with httpx.Client(base_url=direct, timeout=10) as browser:
        assert browser.post("/ops/login", data={"token": TOKEN}).status_code == 303
        live = httpx.Cookies(browser.cookies)
    assert ops_stream_opens(direct, live)
    assert not ops_stream_opens(rotated, live)  # the token changed: the cookie is void


# -- item 12: no open redirect -----------------------------------------------------------

OFF_SITE = [
    "//evil.example/x",
    "////evil.example/x",
    "/\\evil.example/x",
    "/\\/evil.example/x",
    "\\\\evil.example/x",
    "/%2F%2Fevil.example/x",
    "/%5Cevil.example/x",
    "https:evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "/\t/evil.example/x",
    "/\n/evil.example/x",
    "/\r\n/evil.example/x",
    " //evil.example/x",
    "ops",
    "",
]
LOCAL = {"/ops": "/ops", "/ops?tab=failures": "/ops?tab=failures", "/metrics": "/metrics"}


def test_login_only_ever_redirects_to_a_local_path(
    web: str, servers: dict[str, str], rds: redis.Redis
) -> None:
    """``next`` that a browser could read as another site (``//h``, ``////h``, ``/\\h``,
    encoded slashes, schemes, tabs and newlines) leads to /ops — as a bounce without a
    token and after a real sign-in; a local path is kept."""
    rotated = servers["rotated"]
    cases = {target: "/ops" for target in OFF_SITE} | LOCAL
    for target, expected in cases.items():
        bounce = httpx.get(web + "/ops/login", params={"next": target})
        signed_in = httpx.post(rotated + "/ops/login", data={"token": ROTATED, "next": target})
        for response in (bounce, signed_in):
            assert response.status_code == 303, (target, response.text)
            assert response.headers["location"] == expected, (target, response.request.url)


# -- item 13: signed mode hands out URLs that work ---------------------------------------


def test_signed_mode_urls_work_as_given(
    servers: dict[str, str], worker: Proc, rds: redis.Redis
) -> None:
    """With JOBCAST_SIGNING_KEY, the POST's stream, status and image URLs, and the status's
    result url, each work exactly as handed out; a resume URL adds lastEventId to them."""
    signed = servers["signed"]
    job = post_job(signed, **TINY)
    assert job["image"] == f"/imagine/{job['jobId']}/image?token={job['token']}"
    with httpx.stream("GET", signed + job["stream"], timeout=60) as response:
        assert response.status_code == 200
        body = response.read().decode()
    done_id = re.findall(r"id: (\S+)\nevent: done", body)[0]
    status = httpx.get(signed + job["status"]).json()
    assert status["state"] == "succeeded" and status["url"] == job["image"]
    for url in (job["image"], status["url"]):
        picture = httpx.get(signed + url)
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    resumed = httpx.get(f"{signed}{job['stream']}&lastEventId={done_id}")
    assert resumed.status_code == 204
    assert httpx.delete(signed + job["status"]).status_code == 409  # ended, not forbidden


# -- item 17: the per-client limit behind a proxy ----------------------------------------


def post_from(base: str, address: str) -> int:
    headers = {"X-Forwarded-For": address}
    body = {"prompt": "from " + address, **TINY}
    return httpx.post(base + "/imagine", json=body, headers=headers, timeout=10).status_code


def test_forwarded_for_counts_only_behind_trusted_proxies(
    servers: dict[str, str], worker: Proc, rds: redis.Redis
) -> None:
    """Trusting no proxy, a forged X-Forwarded-For escapes nothing: the fourth POST in a
    minute is refused whatever it claims. Behind one trusted proxy each forwarded client
    has its own bucket: one client's limit leaves another's alone."""
    assert [post_from(servers["direct"], f"198.51.100.{n}") for n in range(4)] == [202] * 3 + [429]
    proxied = servers["proxied"]
    assert [post_from(proxied, "192.0.2.1") for _ in range(4)] == [202] * 3 + [429]
    assert post_from(proxied, "192.0.2.2") == 202
    # A client cannot pick its bucket by prepending its own X-Forwarded-For entry:
    # ProxyFix takes the address the trusted proxy appended (the last one).
    assert post_from(proxied, "192.0.2.9, 192.0.2.1") == 429


def test_streams_work_the_same_behind_a_trusted_proxy(
    servers: dict[str, str], worker: Proc, rds: redis.Redis
) -> None:
    """ProxyFix wraps the fast stream route as well: through a trusted proxy an unknown
    job's stream is the usual 404 JSON and a job streams to its done."""
    forwarded = {"X-Forwarded-For": "192.0.2.50", "X-Forwarded-Proto": "https"}
    unknown = f"/imagine/{secrets.token_urlsafe(16)}/stream"
    response = httpx.get(servers["proxied"] + unknown, headers=forwarded)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    job = post_job(servers["proxied"], **TINY)
    assert collect(servers["proxied"], job["jobId"])[-1].event == "done"


def test_open_feed_rewrites_a_frame_once_for_all_viewers(
    redis_server: RedisServer, rds: redis.Redis
) -> None:
    """The open feed parses and re-encodes each published frame once, however many viewers
    it goes to: the same frame again is answered from the last one (the very same bytes),
    with the id labelled everywhere and a failure's error text replaced by the notice."""
    app = create_app({"redis_url": redis_server.url})
    ext = app.extensions["jobcast"]
    job_id = secrets.token_urlsafe(16)
    snap = {
        "workers": [{"name": "w@h", "jobs": [{"id": job_id, "task": "t", "pct": 5}]}],
        "failures": [{"id": job_id, "error": f"job {job_id} broke"}],
    }
    frame = snapshot_frame(json.dumps(snap))
    first = public_frame(ext, frame)
    assert public_frame(ext, bytes(frame)) is first
    assert job_id.encode() not in first
    shown = json.loads(first.split(b"data: ", 1)[1])
    label = shown["workers"][0]["jobs"][0]["id"]
    assert LABEL.fullmatch(label) and shown["failures"][0] == {
        "id": label,
        "error": HIDDEN_ERROR,
    }
