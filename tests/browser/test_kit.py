"""The JS kit (clients/js/jobcast.js, served as /static/jobcast.js) in real Chromium: the
page's cards on one multiplexed connection, resume through a web restart, two tabs
sharing one connection, and POST-and-stream from ``submit()``.

Connections are counted from the browser's own requests (Playwright's ``request``
events): every request to a stream route is one connection the browser opened.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect
from support import Proc, free_port, gunicorn_web, logged, post_job
from test_page import WAIT, card_of, rendered

pytestmark = pytest.mark.browser

NewPage = Callable[..., Page]
TINY = {"width": 64, "height": 64, "steps": 2}
STREAM_ROUTE = re.compile(r"/(jobs|imagine)/([^/]+/)?stream$")


def stream_requests(target: Page | BrowserContext) -> list[Request]:
    """The requests for a stream (a stream route, or a POST asking for one), from now on."""
    seen: list[Request] = []

    def note(request: Request) -> None:
        asks = request.headers.get("accept", "").startswith("text/event-stream")
        if STREAM_ROUTE.search(urlsplit(request.url).path) or asks:
            seen.append(request)

    target.on("request", note)
    return seen


def jobs_of(request: Request) -> list[str]:
    return parse_qs(urlsplit(request.url).query).get("job", [])


def all_done(page: Page, job_ids: list[str], rds: redis.Redis) -> None:
    """Every card ends done with exactly its job's log, each event applied once."""
    for job_id in job_ids:
        expect(card_of(page, job_id)).to_have_attribute("data-state", "done", timeout=WAIT)
    for job_id in job_ids:
        assert rendered(page, job_id) == logged(rds, job_id), job_id
    assert page.evaluate("window.__jobcast.skipped") == 0


def test_fifty_cards_live_on_one_connection(
    web: str, worker: Proc, rds: redis.Redis, new_page: NewPage
) -> None:
    """A page linking 50 jobs (most still queued) follows them all on ONE stream
    connection (the old page held 5 and kept the rest waiting): every card ends done
    with exactly its log, and the browser opened no other stream."""
    jobs = [post_job(web, prompt=f"a paper boat number {n}", **TINY)["jobId"] for n in range(50)]
    page = new_page()
    streams = stream_requests(page)
    page.goto(web + "/?" + "&".join(f"job={job}" for job in jobs))
    expect(page.locator(".card")).to_have_count(50)
    all_done(page, jobs, rds)
    assert len(streams) == 1, [r.url for r in streams]
    assert urlsplit(streams[0].url).path == "/jobs/stream"
    assert sorted(jobs_of(streams[0])) == sorted(jobs)


def test_a_web_restart_resumes_every_card_exactly_once(
    stack_env: dict[str, str],
    worker: Proc,
    rds: redis.Redis,
    new_page: NewPage,
    tmp_path: Path,
) -> None:
    """The web server is killed while one job runs and five wait: every card says
    "reconnecting…", the page reopens its one stream with the composite cursor when the
    server is back, and every card ends with each event of its log applied once."""
    port = free_port()
    server, base = gunicorn_web(stack_env, tmp_path / "web-a.log", port=port)
    try:
        first = post_job(base, prompt="a lighthouse in the fog", width=512, height=512, steps=60)
        jobs = [first["jobId"]]
        jobs += [post_job(base, prompt=f"a boat {n}", **TINY)["jobId"] for n in range(5)]
        page = new_page()
        streams = stream_requests(page)
        page.goto(base + "/?" + "&".join(f"job={job}" for job in jobs))
        page.wait_for_function(
            "id => window.__jobcast.log[id]?.some((e) => e[1] === 'progress')", arg=jobs[0],
            timeout=WAIT,
        )  # fmt: skip
        server.kill()
        for job in jobs:
            expect(card_of(page, job).locator(".conn")).to_have_text("reconnecting…")
        server, _ = gunicorn_web(stack_env, tmp_path / "web-b.log", port=port)
        all_done(page, jobs, rds)
        for job in jobs:
            expect(card_of(page, job).locator(".conn")).to_have_text("")
        assert len(streams) >= 2
        assert {urlsplit(r.url).path for r in streams} == {"/jobs/stream"}
        resumed = parse_qs(urlsplit(streams[-1].url).query)
        assert resumed["job"] == jobs_of(streams[0])
        assert re.fullmatch(r"[A-Za-z0-9_-]+", resumed["lastEventId"][0])
    finally:
        server.stop()


def test_two_tabs_share_one_connection_and_the_second_takes_over(
    web: str, worker: Proc, rds: redis.Redis, browser: Browser
) -> None:
    """Two tabs of one origin (one browser context) with different and common jobs hold
    ONE stream between them: the first tab leads, the second opens no stream and gets
    its cards' events through the channel. Closing the first tab hands the connection to
    the second, which resumes from the cursor: its cards end with exactly their logs."""
    short = post_job(web, prompt="a short one", **TINY)["jobId"]
    long = post_job(web, prompt="a long one", width=512, height=512, steps=50)["jobId"]
    last = post_job(web, prompt="the last one", **TINY)["jobId"]
    context = browser.new_context()
    context.set_default_timeout(30_000)
    try:
        first, second = context.new_page(), context.new_page()
        first_streams, second_streams = stream_requests(first), stream_requests(second)
        first.goto(f"{web}/?job={short}&job={long}")
        first.wait_for_function("id => window.__jobcast.log[id]?.length", arg=short, timeout=WAIT)
        second.goto(f"{web}/?job={long}&job={last}")
        expect(card_of(second, long)).to_have_attribute("data-state", "running", timeout=WAIT)
        second.wait_for_function(
            "id => window.__jobcast.log[id]?.some((e) => e[1] === 'progress')", arg=long,
            timeout=WAIT,
        )  # fmt: skip
        expect(card_of(first, short)).to_have_attribute("data-state", "done", timeout=WAIT)
        assert rendered(first, short) == logged(rds, short)
        assert second_streams == []  # the second tab reads the first one's connection
        assert len(first_streams) <= 2  # its jobs, then reopened with the second tab's job
        assert set(jobs_of(first_streams[-1])) == {short, long, last}

        first.close()  # the leader goes: the second tab takes the lock and the stream
        all_done(second, [long, last], rds)
        assert len(second_streams) >= 1
        taken = parse_qs(urlsplit(second_streams[0].url).query)
        assert taken["job"] == jobs_of(first_streams[-1]) and taken["lastEventId"][0]
    finally:
        context.close()


def test_submit_streams_the_post_and_resumes_after_a_drop(
    stack_env: dict[str, str],
    worker: Proc,
    rds: redis.Redis,
    new_page: NewPage,
    tmp_path: Path,
) -> None:
    """``submit()`` POSTs with ``Accept: text/event-stream`` and reads the job from that
    response; when the server dies it resumes with GET /jobs/<id>/stream from its last
    id, and its handlers see every event of the log once, ending in onDone; a refused
    submit rejects with the API's error fields."""
    port = free_port()
    server, base = gunicorn_web(stack_env, tmp_path / "web-a.log", port=port)
    try:
        page = new_page()
        streams = stream_requests(page)
        page.goto(base + "/")
        page.evaluate(
            """async () => {
              const kit = await import("/static/jobcast.js");
              const got = (window.__kit = { events: [], done: null, job: null });
              got.job = await kit.submit("imagine", { prompt: "a kit lighthouse", width: 512,
                height: 512, steps: 50 }, {
                onAny: (kind, data, meta) => got.events.push([meta.id, kind]),
                onDone: (data) => (got.done = data),
              });
              try {
                await kit.submit("imagine", { prompt: "", width: 5000 });
              } catch (error) {
                got.refused = { status: error.status, fields: Object.keys(error.fields) };
              }
            }"""
        )
        job_id = page.evaluate("window.__kit.job.jobId")
        assert page.evaluate("window.__kit.refused") == {
            "status": 422,
            "fields": ["prompt", "width"],
        }
        page.wait_for_function(
            "() => window.__kit.events.some((e) => e[1] === 'progress')", timeout=WAIT
        )
        server.kill()
        server, _ = gunicorn_web(stack_env, tmp_path / "web-b.log", port=port)
        page.wait_for_function("() => window.__kit.done !== null", timeout=WAIT)
        events = [tuple(e) for e in page.evaluate("window.__kit.events")]
        assert events == logged(rds, job_id)
        assert streams[0].method == "POST" and urlsplit(streams[0].url).path == "/jobs/imagine"
        resumed = [r for r in streams if r.method == "GET"]
        assert resumed and urlsplit(resumed[-1].url).path == f"/jobs/{job_id}/stream"
        assert re.fullmatch(r"\d+-\d+", parse_qs(urlsplit(resumed[-1].url).query)["lastEventId"][0])
    finally:
        server.stop()


def test_jobs_past_max_jobs_wait_for_the_next_connection(
    web: str, worker: Proc, rds: redis.Redis, new_page: NewPage
) -> None:
    """``watchMany`` with ``maxJobs: 2`` and three jobs: two share the first connection,
    the third gets the next one once those ended; each job's handlers see its whole log
    once."""
    jobs = [post_job(web, prompt=f"a kite {n}", **TINY)["jobId"] for n in range(3)]
    page = new_page()
    streams = stream_requests(page)
    page.goto(web + "/")
    page.evaluate(
        """async (ids) => {
          const kit = await import("/static/jobcast.js");
          const got = (window.__kit = { events: {}, done: [] });
          kit.watchMany(ids, {
            onAny: (kind, data, meta) => (got.events[meta.jobId] ??= []).push([meta.id, kind]),
            onDone: (data, meta) => got.done.push(meta.jobId),
          }, { maxJobs: 2 });
        }""",
        jobs,
    )
    page.wait_for_function("() => window.__kit.done.length === 3", timeout=WAIT)
    for job_id in jobs:
        got = page.evaluate("id => window.__kit.events[id]", job_id)
        assert [tuple(e) for e in got] == logged(rds, job_id)
    assert [jobs_of(r) for r in streams] == [jobs[:2], jobs[2:]]
