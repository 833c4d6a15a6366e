"""The dashboard's per-kind table in real Chromium, fed by a real monitor and worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from opsupport import failing_analyze, post
from playwright.sync_api import Page, expect
from support import Proc, collect, jobcast_monitor

from tasks.app import create_celery
from tasks.config import Settings
from tasks.handle import submit

pytestmark = pytest.mark.browser

SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def monitor(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    proc = jobcast_monitor(stack_env, tmp_path / "monitor.log")
    yield proc
    proc.stop()


def test_kinds_table_shows_each_kind_on_a_dark_phone(
    web: str,
    worker: Proc,
    monitor: Proc,
    rds: redis.Redis,
    stack_env: dict[str, str],
    new_page: Callable[..., Page],
    artifacts: Path,
) -> None:
    """After imagine jobs succeed and analyze fails one job of two, the table has a row per
    kind with its finished count and failure rate; a kind named with markup waits in a
    line no worker serves and shows as plain text; on a 390 px dark screen the table
    stacks without overflowing sideways."""
    jobs = [post(web, "imagine", SMALL) for _ in range(2)]
    jobs += [post(web, "analyze", {"prompt": "a picture"}), failing_analyze(stack_env, rds)]
    for job_id in jobs:
        collect(web, job_id)
    app = create_celery(Settings.from_env(stack_env))
    submit("demo.render", kwargs={}, kind="<img src=x onerror=alert(1)>", queue="idle", app=app)

    page = new_page(viewport={"width": 390, "height": 844}, color_scheme="dark")
    page.goto(web + "/ops")
    analyze = page.locator('#kinds tr[data-kind="analyze"]')
    expect(analyze.locator("td.fail")).to_have_text("50 %")
    expect(analyze.locator("td").last).to_have_text("2")
    imagine = page.locator('#kinds tr[data-kind="imagine"]')
    expect(imagine.locator("td.fail")).to_have_text("0.0 %")
    expect(imagine.locator("td").last).to_have_text("2")
    hostile = page.locator('#kinds tr[data-kind="_img_src_x_onerror_alert_1__"]')
    expect(hostile.locator("td.kind")).to_have_text("_img_src_x_onerror_alert_1__")
    expect(hostile.locator("td").nth(1)).to_have_text("1")
    assert page.locator("#kinds img").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(artifacts / "ops-kinds-phone.png"), full_page=True)
    wide = new_page()
    wide.goto(web + "/ops")
    expect(wide.locator('#kinds tr[data-kind="analyze"] td.fail')).to_have_text("50 %")
    wide.locator("#kinds").screenshot(path=str(artifacts / "ops-kinds.png"))
