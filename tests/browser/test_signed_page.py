"""The page in real Chromium with job tokens on (``JOBCAST_SIGNING_KEY``).

Every request the page makes for a job (stream, status, cancel, image, recovery, shared
links) must carry the job's token: a request without it is a 403, which the page would
show as "could not be loaded" or "gone", or retry forever.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from playwright.sync_api import Page, Request, Response, expect
from support import Proc, free_port, gunicorn_web, logged
from test_page import LONG, SMALL, WAIT, card_of, rendered, submit, wait_for_phase

pytestmark = pytest.mark.browser

KEY = "signing-" + secrets.token_hex(8)
# Still running after two restarts of the web server (~35 s alone on this machine).
SLOW = {"width": 512, "height": 512, "steps": 100}
NewPage = Callable[..., Page]


@pytest.fixture(scope="module")
def signed(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A web server that signs jobs."""
    env = {**stack_env, "JOBCAST_SIGNING_KEY": KEY}
    proc, base = gunicorn_web(env, tmp_path_factory.mktemp("logs") / "signed.log")
    yield base
    proc.stop()


def refused(page: Page) -> list[str]:
    """URLs of the page's requests that got a 4xx, from now on."""
    seen: list[str] = []

    def note(response: Response) -> None:
        if 400 <= response.status < 500:
            seen.append(f"{response.status} {response.url}")

    page.on("response", note)
    return seen


def token_of(page: Page, job_id: str) -> str:
    return str(page.evaluate("id => window.__jobcast.cards[id].token", job_id))


def test_signed_job_shows_its_image_and_a_shared_link_follows_it(
    signed: str, worker: Proc, rds: redis.Redis, new_page: NewPage
) -> None:
    """With signing on, a job renders to done and its picture loads; the card's link
    (``?job=<id>&token=<t>``) opens the job live in a second page, which ends the same
    way; no request of either page is refused."""
    first = new_page()
    first_refused = refused(first)
    first.goto(signed + "/")
    card, job_id = submit(first, "a lighthouse on a cliff", **LONG)
    token = token_of(first, job_id)
    assert token
    link = card.locator(".share").get_attribute("href")
    assert link == f"/?job={job_id}&token={token}"
    assert first.evaluate("location.search") == f"?job={job_id}&token={token}"

    second = new_page()
    second_refused = refused(second)
    second.goto(signed + link)
    shared = card_of(second, job_id)
    expect(shared.locator(".title")).to_have_text("a lighthouse on a cliff")
    for page in (first, second):
        mine = card_of(page, job_id)
        expect(mine).to_have_attribute("data-state", "done", timeout=WAIT)
        expect(mine).to_have_class(re.compile(r"\bloaded\b"), timeout=WAIT)
        assert mine.locator("img").evaluate("img => img.naturalWidth") == LONG["width"]
        assert rendered(page, job_id) == logged(rds, job_id)
        opened = mine.locator(".open").get_attribute("href")
        assert opened == f"/imagine/{job_id}/image?token={token}"
    assert first_refused == [] and second_refused == []


def test_signed_cancel_stops_the_job(
    signed: str, worker: Proc, rds: redis.Redis, new_page: NewPage
) -> None:
    """Cancel sends the job's token: a running job ends cancelled and a waiting one too."""
    page = new_page()
    denied = refused(page)
    page.goto(signed + "/")
    running, running_id = submit(page, "a long winding mountain road", **LONG)
    expect(running).to_have_attribute("data-state", "running", timeout=WAIT)
    waiting, waiting_id = submit(page, "a small boat on a lake", **SMALL)
    expect(waiting.locator(".status")).to_contain_text("#1 in line")
    waiting.locator(".cancel").click()
    expect(waiting).to_have_attribute("data-state", "cancelled", timeout=WAIT)
    running.locator(".cancel").click()
    expect(running).to_have_attribute("data-state", "cancelled", timeout=WAIT)
    for job_id in (waiting_id, running_id):
        assert rendered(page, job_id)[-1][1] == "cancelled"
    assert denied == []


def test_signed_page_recovers_a_refused_stream_and_resumes(
    stack_env: dict[str, str],
    worker: Proc,
    rds: redis.Redis,
    new_page: NewPage,
    tmp_path: Path,
) -> None:
    """A restart that first comes back misconfigured (another signing key: the stream is
    refused with 403, EventSource gives up) sends the page to its recovery: it polls the
    status with the token until the right server is back, then reopens the stream at
    ``?token=<t>&lastEventId=<id>`` and the card ends with exactly the log."""
    port = free_port()
    env = {**stack_env, "JOBCAST_SIGNING_KEY": KEY}
    server, base = gunicorn_web(env, tmp_path / "web-a.log", port=port)
    page = new_page()
    requested: list[str] = []
    statuses: list[tuple[int, str]] = []

    def note_request(request: Request) -> None:
        requested.append(request.url)

    def note_response(response: Response) -> None:
        statuses.append((response.status, urlsplit(response.url).path))

    page.on("request", note_request)
    page.on("response", note_response)
    try:
        page.goto(base + "/")
        card, job_id = submit(page, "a lighthouse in the fog", **SLOW)
        wait_for_phase(page, job_id, "progress")
        token = token_of(page, job_id)
        server.kill()
        wrong_key = {**stack_env, "JOBCAST_SIGNING_KEY": "another-key"}
        server, _ = gunicorn_web(wrong_key, tmp_path / "web-b.log", port=port)
        # Recovery began (retries 1) and its status fetch was refused, so it tries again.
        page.wait_for_function(
            "id => window.__jobcast.cards[id].retries >= 2", arg=job_id, timeout=WAIT
        )
        assert (403, f"/jobs/{job_id}") in statuses
        server.kill()
        server, _ = gunicorn_web(env, tmp_path / "web-c.log", port=port)
        expect(card).to_have_attribute("data-state", "done", timeout=120_000)
        assert rendered(page, job_id) == logged(rds, job_id)
        assert page.evaluate("window.__jobcast.skipped") == 0
        resumed = [u for u in requested if "/stream?" in u and "lastEventId" in u]
        assert resumed, requested
        query = parse_qs(urlsplit(resumed[-1]).query, strict_parsing=True)
        assert set(query) == {"token", "lastEventId"} and query["token"] == [token]
        assert re.fullmatch(r"\d+-\d+", query["lastEventId"][0])
    finally:
        server.stop()
