"""The extension in a host app of its own (in process, Flask's test client, the session's
Redis): what Jobcast takes over and what it leaves to the host.

The example app under gunicorn, with streams and the browser, is tests/examples.
"""

from __future__ import annotations

import pytest
import redis
from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from support import RedisServer

from web import Jobcast

UNKNOWN = "A" * 22


def host_app(redis_url: str, **config: object) -> Flask:
    """A host with its own routes and app-wide error handlers, as many apps have."""
    app = Flask("host")
    app.config.update(JOBCAST_REDIS_URL=redis_url, **config)

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.post("/upload")
    def upload() -> str:
        return str(len(request.get_data()))

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("the host's own bug")

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[str, int]:
        return "host 404", 404

    @app.errorhandler(Exception)
    def any_error(exc: Exception) -> tuple[str, int]:
        return "host error", 500

    return app


def test_jobcast_errors_are_json_and_the_hosts_stay_its_own(redis_server: RedisServer) -> None:
    """With the host's app-wide 404 and Exception handlers in place, Jobcast's routes (and
    unknown paths or methods under its prefix) still answer JSON errors, while the host's
    routes and unknown paths outside the prefix get the host's answers."""
    app = host_app(redis_server.url)
    Jobcast(app, url_prefix="/jobcast")
    client = app.test_client()
    assert client.get("/hello").text == "hello"
    assert client.get("/nowhere").text == "host 404"
    assert client.get("/boom").text == "host error"
    assert client.get("/imagine/" + UNKNOWN + "/stream").text == "host 404"  # not our path
    for method, path, status, code in [
        ("GET", f"/jobcast/imagine/{UNKNOWN}", 404, "not_found"),
        ("GET", "/jobcast/nowhere", 404, "not_found"),
        ("PUT", "/jobcast/imagine", 405, "method_not_allowed"),
        ("POST", "/jobcast/imagine", 415, "unsupported_media_type"),
    ]:
        response = client.open(path, method=method)
        assert response.status_code == status, path
        assert response.json is not None and response.json["error"]["code"] == code, path


def test_the_body_limit_is_jobcasts_alone(redis_server: RedisServer) -> None:
    """JOBCAST_MAX_BODY_BYTES bounds Jobcast's routes (413 JSON) without becoming the
    host's MAX_CONTENT_LENGTH: the host's own route still takes a larger body."""
    app = host_app(redis_server.url, JOBCAST_MAX_BODY_BYTES=2048)
    Jobcast(app, url_prefix="/jobcast")
    client = app.test_client()
    big = b'{"prompt": "' + b"x" * 4096 + b'"}'
    refused = client.post("/jobcast/imagine", data=big, content_type="application/json")
    assert refused.status_code == 413 and refused.json["error"]["code"] == "too_large"
    assert client.post("/upload", data=big).text == str(len(big))
    assert app.config["MAX_CONTENT_LENGTH"] is None


def test_settings_and_prefix_come_from_the_host_config(redis_server: RedisServer) -> None:
    """JOBCAST_* keys of app.config are settings (the prefix too); the page and the POST
    answer build their URLs on that prefix."""
    app = host_app(redis_server.url, JOBCAST_URL_PREFIX="/tools/jobs", JOBCAST_MAX_QUEUE=3)
    state = Jobcast().init_app(app)
    assert (state.settings.url_prefix, state.settings.max_queue) == ("/tools/jobs", 3)
    page = app.test_client().get("/tools/jobs/").text
    assert 'data-base="/tools/jobs"' in page
    assert 'src="/tools/jobs/static/app.js"' in page


def test_the_hosts_limiter_and_config_are_left_alone(redis_server: RedisServer) -> None:
    """A host limiter switched off by its RATELIMIT_* config does not switch off Jobcast's
    (which limits POST /jobcast/imagine by JOBCAST_POST_RATE_LIMIT), and the host's config
    is what it was."""
    app = host_app(
        redis_server.url,
        RATELIMIT_ENABLED=False,
        RATELIMIT_STORAGE_URI="memory://",
        JOBCAST_POST_RATE_LIMIT="2/minute",
        JOBCAST_PREFIX="jobcast:embed-limits:",
    )
    Limiter(get_remote_address, app=app, default_limits=["1/minute"])
    before = dict(app.config)
    Jobcast(app, url_prefix="/jobcast")
    assert {k: v for k, v in app.config.items() if k.startswith("RATELIMIT_")} == {
        k: v for k, v in before.items() if k.startswith("RATELIMIT_")
    }
    client = app.test_client()
    assert [client.get("/hello").status_code for _ in range(3)] == [200] * 3
    statuses = [client.post("/jobcast/imagine", json={}).status_code for _ in range(3)]
    assert statuses == [422, 422, 429]


def test_twice_on_one_app_is_refused(redis_server: RedisServer) -> None:
    """A second init_app on the same app fails loudly instead of replacing the first."""
    app = host_app(redis_server.url)
    Jobcast(app, url_prefix="jobcast/")
    assert app.extensions["jobcast"].settings.url_prefix == "/jobcast"
    with pytest.raises(RuntimeError, match="already set up"):
        Jobcast(app, url_prefix="/other")


def test_signed_job_urls_carry_the_prefix(redis_server: RedisServer, rds: redis.Redis) -> None:
    """With job tokens on, the 202 answer's stream, status and image URLs and its Location
    are under the prefix and carry the token, and the status URL answers with it."""
    app = host_app(redis_server.url, JOBCAST_SIGNING_KEY="k" * 32)
    Jobcast(app, url_prefix="/jobcast")
    client = app.test_client()
    posted = client.post("/jobcast/imagine", json={"prompt": "x", "width": 64, "height": 64})
    assert posted.status_code == 202
    job = posted.json
    token = f"token={job['token']}"
    base = f"/jobcast/imagine/{job['jobId']}"
    assert job["stream"] == f"{base}/stream?{token}" and job["image"] == f"{base}/image?{token}"
    assert posted.headers["Location"] == job["status"] == f"{base}?{token}"
    assert client.get(job["status"]).json["state"] == "queued"
    assert client.get(base).status_code == 403


def test_ops_sign_in_stays_under_the_prefix(redis_server: RedisServer) -> None:
    """With an ops token, /jobcast/ops sends a browser to /jobcast/ops/login, and a sign-in
    with an off-site `next` lands on /jobcast/ops, not on the host's /ops."""
    app = host_app(redis_server.url, JOBCAST_OPS_TOKEN="t0ken", JOBCAST_PREFIX="jobcast:ops-embed:")
    Jobcast(app, url_prefix="/jobcast")
    client = app.test_client()
    page = client.get("/jobcast/ops")
    assert page.status_code == 303
    assert page.headers["Location"] == "/jobcast/ops/login?next=/jobcast/ops"
    form = client.get("/jobcast/ops/login").text
    assert 'action="/jobcast/ops/login"' in form and "/jobcast/static/ops.css" in form
    signed_in = client.post("/jobcast/ops/login", data={"token": "t0ken", "next": "//evil.test"})
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/jobcast/ops"
