"""examples/flask_embed: a host Flask app with Jobcast under ``/jobcast``, served by real
gunicorn (``-k gevent``) with its own Redis and Celery worker.

The stack is the example's own (not the session's), so no other worker can take its jobs
and publish URLs without the prefix.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect
from support import ROOT, Proc, RedisServer, celery_worker, collect, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.browser]

EXAMPLE = ROOT / "examples" / "flask_embed"
TINY = {"width": 128, "height": 128, "steps": 6}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the example app; its Redis, worker and gunicorn stop after the module."""
    logs = tmp_path_factory.mktemp("embed-logs")
    redis_server = RedisServer(tmp_path_factory.mktemp("embed-redis")).start()
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_server.url,
        JOBCAST_MEDIA_DIR=str(tmp_path_factory.mktemp("embed-media")),
        JOBCAST_URL_PREFIX="/jobcast",  # the workers' half of the mount point
        PYTHONUNBUFFERED="1",
    )
    started: list[Proc] = []
    try:
        started.append(celery_worker(env, logs / "worker.log", "embed"))
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1"]
        argv += ["-b", f"127.0.0.1:{port}", "--graceful-timeout", "3"]
        argv += ["--chdir", str(EXAMPLE), "app:create_app()"]
        web = Proc(argv, env, logs / "web.log").start()
        started.append(web)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _serves(base) or not web.alive(), 30, "the example to serve")
        assert web.alive(), web.output()[-3000:]
        yield base
    finally:
        for proc in reversed(started):
            proc.stop()
        redis_server.stop()


def _serves(base: str) -> bool:
    try:
        return httpx.get(base + "/jobcast/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_job_runs_through_the_prefixed_routes(host: str) -> None:
    """POST /jobcast/imagine answers with URLs under /jobcast; the stream (httpx-sse) runs
    to `done`, whose image URL is under /jobcast too and serves the PNG."""
    response = httpx.post(host + "/jobcast/imagine", json={"prompt": "a kite", **TINY})
    assert response.status_code == 202, response.text
    job = response.json()
    job_id = job["jobId"]
    assert response.headers["Location"] == f"/jobcast/imagine/{job_id}" == job["status"]
    assert job["stream"] == f"/jobcast/imagine/{job_id}/stream"
    assert job["image"] == f"/jobcast/imagine/{job_id}/image"
    events = collect(host + "/jobcast", job_id)
    assert [e.event for e in events if e.id][-1] == "done"
    done = events[-1].data
    assert done["url"] == job["image"]
    image = httpx.get(host + done["url"])
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    status = httpx.get(host + job["status"]).json()
    assert status["state"] == "succeeded" and status["url"] == job["image"]


def test_the_host_keeps_its_own_routes_and_errors(host: str) -> None:
    """The host's /hello, its HTML 404 and its own limiter's 429 are the host's; Jobcast's
    unknown paths and methods under /jobcast are Jobcast's JSON errors."""
    assert httpx.get(host + "/hello").text == "Hello from the host app."
    missing = httpx.get(host + "/no-such-page")
    assert missing.status_code == 404 and "The host app has no such page" in missing.text
    assert missing.headers["Content-Type"].startswith("text/html")
    ours = httpx.get(host + "/jobcast/no-such-page")
    assert ours.status_code == 404 and ours.json()["error"]["code"] == "not_found"
    wrong = httpx.put(host + "/jobcast/imagine")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    unknown_job = httpx.get(host + "/jobcast/imagine/" + "A" * 22)
    assert unknown_job.json() == {"error": {"code": "not_found", "message": "No such job."}}
    statuses = [httpx.get(host + "/hello").status_code for _ in range(3)]
    assert statuses[-1] == 429  # 3/minute, the first call above included
    assert "application/json" not in httpx.get(host + "/hello").headers["Content-Type"]


def test_both_metrics_are_served_apart(host: str) -> None:
    """The host's Prometheus registry keeps its counter; Jobcast's metrics are at
    /jobcast/metrics, from its own registry."""
    httpx.get(host + "/hello")
    assert "hello_requests_total" in httpx.get(host + "/host-metrics").text
    jobcast = httpx.get(host + "/jobcast/metrics").text
    assert "jobcast_jobs" in jobcast and "hello_requests_total" not in jobcast


def test_the_prefixed_page_runs_a_job_in_chromium(host: str, new_page: Callable[..., Page]) -> None:
    """/jobcast/ loads its script and styles under the prefix, posts to /jobcast/imagine,
    and its card streams the job to the finished picture; the address bar stays under it."""
    page = new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(host + "/jobcast/")
    page.fill("#prompt", "a paper boat")
    for name, value in TINY.items():
        page.fill(f"#{name}", str(value))
    page.click("button[type=submit]")
    card = page.locator(".card").first
    expect(card).to_have_attribute("data-state", "done", timeout=60_000)
    expect(card).to_have_class(re.compile(r"\bloaded\b"), timeout=30_000)
    job_id = card.get_attribute("data-job")
    assert page.url == f"{host}/jobcast/?job={job_id}"
    assert card.locator("img").get_attribute("src") == f"/jobcast/imagine/{job_id}/image"
    assert failed == []


def test_ops_page_under_the_prefix_connects(host: str, new_page: Callable[..., Page]) -> None:
    """/jobcast/ops loads its assets under the prefix and its feed connects there."""
    page = new_page()
    page.goto(host + "/jobcast/ops")
    expect(page.locator("#feed")).not_to_have_attribute("data-state", "connecting", timeout=30_000)
    assert page.locator("#feed").get_attribute("data-state") in {"live", "stale"}
