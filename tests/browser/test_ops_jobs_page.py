"""The job browser pages (/ops/jobs, /ops/jobs/<id>) in real Chromium: sign in, list,
filter, live updates without polling, a job's page with its live tail, cancel, phone."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

import httpx
import pytest
import redis
from opsupport import failing_analyze
from playwright.sync_api import Page, Request, expect
from support import Proc, collect, post_job

pytestmark = pytest.mark.browser

TOKEN = "ops-" + secrets.token_urlsafe(12)
SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
# Runs for several seconds (percent climbs visibly), ended by a cancel or the test's end.
LONG = {"prompt": "a slow harbour", "width": 512, "height": 512, "steps": 80}


def signed_in(
    new_page: Callable[..., Page], base: str, path: str = "/ops/jobs", **opts: object
) -> Page:
    """A page signed in (as "erin") at ``path``."""
    page = new_page(**opts)
    page.goto(base + path)
    page.fill("#token", TOKEN)
    page.fill("#operator", "erin")
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")
    return page


def test_sign_in_then_list_filter_and_open_a_job(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis, new_page: Callable[..., Page]
) -> None:
    """/ops/jobs sends a browser to sign in and back; the page lists the jobs newest first,
    the id filter narrows it to one, and its link opens that job's page with its log."""
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN)
    jobs = [post_job(base, **SMALL)["jobId"] for _ in range(3)]
    for job_id in jobs:
        collect(base, job_id)
    page = signed_in(new_page, base)
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.locator("td:first-child")).to_have_text(jobs[::-1])
    expect(rows.locator("td[data-col=state]")).to_have_text(["succeeded"] * 3)
    page.fill("input[name=id]", jobs[1][:10])
    page.click("#filters button")
    expect(rows).to_have_count(1)
    rows.locator("a").click()
    page.wait_for_url(f"**/ops/jobs/{jobs[1]}")
    expect(page.locator("#log li[data-kind=done]")).to_have_count(1)
    expect(page.locator("#log li[data-kind=started]")).to_have_count(1)
    expect(page.locator("#facts")).to_contain_text("succeeded")
    expect(page.locator("#attempts li")).to_have_count(1)


def test_the_list_updates_live_without_polling(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis, new_page: Callable[..., Page]
) -> None:
    """A job submitted after the page loaded appears on top, its state and percent change
    in place and it is cancelled from its row, with no request to /ops/jobs.json after
    the first load (nothing polls)."""
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN)
    old = post_job(base, **SMALL)["jobId"]
    collect(base, old)
    page = signed_in(new_page, base)
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(1)
    expect(page.locator("#feed")).to_have_attribute("data-state", "live")
    listed: list[str] = []

    def note(request: Request) -> None:
        if "/ops/jobs.json" in request.url:
            listed.append(request.url)

    page.on("request", note)
    job_id = post_job(base, **LONG)["jobId"]
    top = page.locator("#jobs tbody tr").first
    expect(top).to_have_attribute("data-job", job_id)
    expect(rows).to_have_count(2)
    state = top.locator("td[data-col=state]")
    expect(state).to_have_text("running", timeout=60_000)
    expect(top.locator("td[data-col=worker]")).not_to_have_text("")
    expect(top.locator("td[data-col=progress]")).to_have_text(re.compile(r"^([1-9][0-9]?) %$"))
    top.get_by_role("button", name="Cancel").click()
    expect(state).to_have_text("cancelled", timeout=60_000)
    expect(top.get_by_role("button", name="Retry")).to_be_visible()
    assert listed == []
    detail = httpx.get(
        f"{base}/ops/jobs/{job_id}.json", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert [(a["action"], a["by"]) for a in detail["audit"]] == [("cancel", "erin")]


def test_the_job_page_tails_a_running_job_and_cancels_it(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis, new_page: Callable[..., Page]
) -> None:
    """A running job's page adds its progress events as they happen, its Cancel ends the
    job, and the page then shows the end and the audit entry naming the operator."""
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN)
    job_id = post_job(base, **LONG)["jobId"]
    page = signed_in(new_page, base, f"/ops/jobs/{job_id}")
    progress = page.locator("#log li[data-kind=progress]")
    expect(progress.first).to_be_visible(timeout=60_000)
    seen = progress.count()
    expect(page.locator("#feed")).to_have_attribute("data-state", "live")
    expect(progress).not_to_have_count(seen)  # more arrive while the page stays
    page.click("#cancel")
    expect(page.locator("#log li[data-kind=cancelled]")).to_have_count(1, timeout=60_000)
    expect(page.locator("#log li.audit")).to_contain_text("cancel by erin")
    expect(page.locator("#facts")).to_contain_text("cancelled")
    expect(page.locator("#cancel")).to_be_hidden()
    ids = page.locator("#log li[data-id]").evaluate_all("els => els.map(e => e.dataset.id)")
    assert len(ids) == len(set(ids))  # the tail repeats nothing the first load showed


def test_a_failed_job_page_shows_its_traceback(
    web_with: Callable[..., str],
    worker: Proc,
    rds: redis.Redis,
    stack_env: dict[str, str],
    new_page: Callable[..., Page],
) -> None:
    """A failed job's page shows its error and the worker's traceback, and offers Retry."""
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN)
    job_id = failing_analyze(stack_env, rds)
    collect(base, job_id)
    page = signed_in(new_page, base, f"/ops/jobs/{job_id}")
    expect(page.locator("#facts")).to_contain_text("failed")
    expect(page.locator("#error")).to_contain_text("damaged")
    expect(page.locator("#traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator("#retry")).to_be_visible()
    expect(page.locator("#log li[data-kind=failed]")).to_have_count(1)


def test_phone_width_has_no_page_scroll(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis, new_page: Callable[..., Page]
) -> None:
    """At 375 px, dark, neither the list nor a job's page scrolls sideways: the table
    scrolls in its own box."""
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN)
    job_id = post_job(base, **SMALL)["jobId"]
    collect(base, job_id)
    page = signed_in(new_page, base, viewport={"width": 375, "height": 812}, color_scheme="dark")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    box = page.locator(".hscroll").first
    assert box.evaluate("e => e.scrollWidth > e.clientWidth")  # the table scrolls inside
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(16, 17, 25)"  # the dark palette
    page.goto(f"{base}/ops/jobs/{job_id}")
    expect(page.locator("#log li[data-kind=done]")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
