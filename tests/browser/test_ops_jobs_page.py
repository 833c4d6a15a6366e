"""The job browser page (/ops/jobs) in real Chromium: sign in, list, filter, detail."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
import redis
from playwright.sync_api import Page, expect
from support import Proc, collect, post_job

pytestmark = pytest.mark.browser

TOKEN = "ops-" + secrets.token_urlsafe(12)
SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}


def test_sign_in_then_list_filter_and_open_a_job(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis, new_page: Callable[..., Page]
) -> None:
    """/ops/jobs sends a browser to sign in and back; the page lists the jobs newest first,
    the id filter narrows it to one, and a click shows that job's log."""
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN)
    jobs = [post_job(base, **SMALL)["jobId"] for _ in range(3)]
    for job_id in jobs:
        collect(base, job_id)
    page = new_page()
    page.goto(base + "/ops/jobs")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/ops/jobs")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.locator("td:first-child")).to_have_text(jobs[::-1])
    expect(rows.locator("td:nth-child(3)")).to_have_text(["succeeded"] * 3)
    page.fill("input[name=id]", jobs[1][:10])
    page.click("#filters button")
    expect(rows).to_have_count(1)
    rows.locator("a").click()
    expect(page.locator("#detail")).to_contain_text('"kind": "done"')
    expect(page.locator("#detail")).to_contain_text(jobs[1])
