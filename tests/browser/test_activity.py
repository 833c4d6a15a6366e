"""A card's activity list (`log`, `step`), its streamed text (`delta`) and the analyze kind,
in real headless Chromium against the real server.

The page applies each durable event once, in id order, and notes it in
``window.__jobcast.log``; every test compares that with the job's log in Redis.
"""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image
from playwright.sync_api import Page, expect
from support import Proc, logged, wait_until

from tasks.events import JobEvents

pytestmark = pytest.mark.browser

WAIT = 60_000  # ms: the machine is shared
LONG = {"width": 512, "height": 512, "steps": 40}
NewPage = Callable[..., Page]


def rendered(page: Page, job_id: str) -> list[tuple[str, str]]:
    return [tuple(e) for e in page.evaluate("id => window.__jobcast.log[id] ?? []", job_id)]


def wait_for_phase(page: Page, job_id: str, phase: str) -> None:
    page.wait_for_function(
        "([id, phase]) => window.__jobcast.log[id]?.some((e) => e[1] === phase)",
        arg=[job_id, phase],
        timeout=WAIT,
    )


def lines(page: Page, job_id: str) -> list[str]:
    return page.locator(f'.card[data-job="{job_id}"] .activity li').all_inner_texts()


def test_log_step_and_delta_events_render_under_the_card(
    web: str, rds: redis.Redis, artifacts: Path, new_page: NewPage
) -> None:
    """A job no worker runs, driven by the test: `step` lines show their index and total,
    `log` lines their message, only the last eight stay (newest last), the list is a
    polite live region, and `delta` texts join into one block; every durable event is
    applied once, in the log's order."""
    events = JobEvents(rds)
    job_id = secrets.token_urlsafe(16)
    assert events.enqueue(job_id, {"prompt": "a test-driven job"}).position >= 1  # no message
    page = new_page()
    page.goto(f"{web}/?job={job_id}")
    card = page.locator(f'.card[data-job="{job_id}"]')
    wait_for_phase(page, job_id, "queued")
    activity, delta = card.locator(".activity"), card.locator(".delta")
    expect(activity).to_be_hidden()
    expect(delta).to_be_hidden()

    events.publish(job_id, "started", {"worker": "test"})
    events.publish(job_id, "step", {"name": "load", "index": 1, "total": 5, "width": 64})
    events.publish(job_id, "log", {"message": "Loaded 64×64", "level": "info"})
    for word in ("Hel", "lo, ", "wor", "ld"):
        events.publish(job_id, "delta", {"text": word})
    events.publish(job_id, "step", {"name": "palette", "index": 2, "total": 5})
    expect(card.locator(".activity li")).to_have_text(
        ["Step 1 of 5 · load", "Loaded 64×64", "Step 2 of 5 · palette"], timeout=WAIT
    )
    expect(delta).to_have_text("Hello, world")
    assert activity.get_attribute("aria-live") == "polite"
    assert activity.evaluate("el => el.tagName") == "OL"

    for i in range(1, 11):
        level = "warning" if i == 10 else "info"
        events.publish(job_id, "log", {"message": f"Reading file {i} of 10", "level": level})
    events.publish(job_id, "delta", {"text": "!"})
    events.publish(job_id, "cancelled", {"reason": "test over"})
    wait_for_phase(page, job_id, "cancelled")
    assert lines(page, job_id) == [f"Reading file {i} of 10" for i in range(3, 11)]
    expect(card.locator(".activity li").last).to_have_class("warning")
    expect(delta).to_have_text("Hello, world!")
    card.screenshot(path=str(artifacts / "activity-card.png"))
    assert rendered(page, job_id) == logged(rds, job_id)


def test_events_a_running_image_job_logs_join_its_card(
    web: str, worker: Proc, rds: redis.Redis, new_page: NewPage
) -> None:
    """An image job posted through the form, running on the real worker, gets `step`,
    `log` and `delta` events besides its own phases: the card lists them between its
    progress updates, still shows the picture at the end, and applied the whole log once
    and in order."""
    page = new_page()
    page.goto(web + "/")
    page.fill("#prompt", "a harbour at night")
    for name, value in LONG.items():
        page.fill(f"#{name}", str(value))
    page.click("#imagine button[type=submit]")
    expect(page.locator(".card")).to_have_count(1)
    job_id = page.locator(".card").first.get_attribute("data-job")
    assert job_id
    card = page.locator(f'.card[data-job="{job_id}"]')
    wait_until(lambda: rds.hget(f"jobcast:job:{{{job_id}}}", "state") == b"running", 60, "running")
    events = JobEvents(rds)
    assert events.publish(job_id, "step", {"name": "render", "index": 1, "total": 1})
    assert events.publish(job_id, "log", {"message": "Rendering in 40 steps", "level": "info"})
    assert events.publish(job_id, "delta", {"text": "A harbour, "})
    assert events.publish(job_id, "delta", {"text": "at night."})
    wait_for_phase(page, job_id, "done")
    expect(card.locator(".activity li")).to_have_text(
        ["Step 1 of 1 · render", "Rendering in 40 steps"]
    )
    expect(card.locator(".delta")).to_have_text("A harbour, at night.")
    expect(card).to_have_class(re.compile(r"\bloaded\b"), timeout=WAIT)
    assert rendered(page, job_id) == logged(rds, job_id)


def _analyze_route(web: str) -> bool:
    """Whether this build has POST /jobs/analyze (the kinds registry brings it)."""
    return httpx.post(f"{web}/jobs/analyze", json={"colours": 0}, timeout=10).status_code != 404


def test_an_analyze_job_from_the_page_shows_its_stages_and_findings(
    web: str, worker: Proc, rds: redis.Redis, artifacts: Path, new_page: NewPage
) -> None:
    """ "Analyze an image" with an uploaded half-red half-blue picture: the card lists the
    five stages and their log lines, then shows the thumbnail, a two-colour palette at
    half each and the edge map, with the log applied once and in order; reloaded from its
    link, the card comes back the same."""
    if not _analyze_route(web):
        pytest.skip("POST /jobs/analyze is not in this build yet (tasks/kinds.py)")
    picture = Image.new("RGB", (200, 100), (255, 0, 0))
    picture.paste((0, 0, 255), (100, 0, 200, 100))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    page = new_page()
    page.goto(web + "/")
    page.locator("#kinds label", has_text="Analyze an image").click()
    expect(page.get_by_role("radio", name="Analyze an image")).to_be_checked()
    expect(page.locator("#imagine")).to_be_hidden()
    page.set_input_files(
        "#analyze-image",
        files=[{"name": "halves.png", "mimeType": "image/png", "buffer": out.getvalue()}],
    )
    page.fill("#analyze-colours", "2")
    page.click("#analyze button[type=submit]")
    expect(page.locator(".card")).to_have_count(1)
    job_id = page.locator(".card").first.get_attribute("data-job")
    assert job_id
    card = page.locator(f'.card[data-job="{job_id}"]')
    wait_for_phase(page, job_id, "done")
    steps = card.locator(".activity li.step")
    expect(steps).to_have_text(
        [
            "Step 2 of 5 · palette",
            "Step 3 of 5 · edges",
            "Step 4 of 5 · histogram",
            "Step 5 of 5 · thumbnail",
        ]
    )  # fmt: skip  (the oldest lines scrolled out: eight are kept)
    expect(card.locator(".title")).to_have_text("Analyze halves.png")
    expect(card).to_have_class(re.compile(r"\bloaded\b"), timeout=WAIT)
    swatches = card.locator(".swatch")
    expect(swatches).to_have_count(2)
    titles = sorted(swatches.evaluate_all("els => els.map((e) => e.title)"))
    # The page sends a JPEG: its colours come back within a few levels of pure red and blue.
    assert [t.split(" · ")[1] for t in titles] == ["50%", "50%"]
    assert card.locator(".edges img").evaluate("img => img.complete && img.naturalWidth") == 200
    page.screenshot(path=str(artifacts / "analyze-page.png"))
    assert rendered(page, job_id) == logged(rds, job_id)

    page.reload()  # the address bar links the job: its card comes back, finished
    card = page.locator(f'.card[data-job="{job_id}"]')
    expect(card).to_have_attribute("data-state", "done", timeout=WAIT)
    expect(card.locator(".swatch")).to_have_count(2)
    expect(card.locator(".activity li.step").last).to_have_text("Step 5 of 5 · thumbnail")
    assert rendered(page, job_id) == logged(rds, job_id)


def test_the_analyze_form_shows_the_server_reason_on_the_field(
    web: str, rds: redis.Redis, new_page: NewPage
) -> None:
    """Nine colours are refused by the server: the reason appears under the Colours field,
    which is marked invalid and focused, and no card is made."""
    if not _analyze_route(web):
        pytest.skip("POST /jobs/analyze is not in this build yet (tasks/kinds.py)")
    page = new_page()
    page.goto(web + "/")
    page.locator("#kinds label", has_text="Analyze an image").click()
    page.fill("#analyze-colours", "9")
    page.click("#analyze button[type=submit]")
    expect(page.locator("#analyze-colours-error")).to_have_text("Must be an integer from 2 to 8")
    expect(page.locator("#analyze-colours")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#analyze-colours")).to_be_focused()
    expect(page.locator(".card")).to_have_count(0)
