"""The operator dashboard in real Chromium, fed by a real monitor, worker and web server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Page, expect
from support import Proc, collect, free_port, gunicorn_web, jobcast_monitor, post_job

pytestmark = pytest.mark.browser

SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def monitor(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = jobcast_monitor(stack_env, tmp_path_factory.mktemp("logs") / "monitor.log")
    yield proc
    proc.stop()


def spark(page: Page, name: str) -> str:
    return str(page.get_attribute(f"#spark-{name} .line", "d") or "")


def test_worker_row_and_a_moving_sparkline(
    web: str,
    worker: Proc,
    monitor: Proc,
    rds: redis.Redis,
    new_page: Callable[..., Page],
    artifacts: Path,
) -> None:
    """The page lists the worker as online and redraws its sparklines as jobs finish."""
    page = new_page()
    page.goto(web + "/ops")
    expect(page.locator("#feed")).to_have_attribute("data-state", "live")
    row = page.locator('#workers tr[data-worker^="main@"]')
    expect(row.locator(".badge")).to_have_text("online")
    expect(page.locator("#workers-online")).not_to_have_text("–")
    before = spark(page, "done")
    jobs = [post_job(web, **SMALL) for _ in range(3)]
    for job in jobs:
        collect(web, job["jobId"])
    page.wait_for_function(
        "before => document.querySelector('#spark-done .line').getAttribute('d') !== before",
        arg=before,
    )
    assert spark(page, "done").startswith("M") and spark(page, "done") != before
    page.screenshot(path=str(artifacts / "ops-page.png"), full_page=True)


def test_feed_shows_reconnecting_and_recovers(
    stack_env: dict[str, str],
    monitor: Proc,
    rds: redis.Redis,
    new_page: Callable[..., Page],
    tmp_path: Path,
) -> None:
    """When the server goes away the page says it is reconnecting, and goes live again after."""
    port = free_port()
    server, base = gunicorn_web(stack_env, tmp_path / "web-a.log", port=port)
    page = new_page()
    try:
        page.goto(base + "/ops")
        expect(page.locator("#feed")).to_have_attribute("data-state", "live")
        server.kill()
        expect(page.locator("#feed")).to_have_attribute("data-state", "reconnecting")
        expect(page.locator("#feed-text")).to_have_text("Reconnecting…")
        server, _ = gunicorn_web(stack_env, tmp_path / "web-b.log", port=port)
        expect(page.locator("#feed")).to_have_attribute("data-state", "live", timeout=20_000)
    finally:
        server.stop()


def test_fits_a_phone_in_dark_mode(
    web: str, worker: Proc, monitor: Proc, rds: redis.Redis, new_page: Callable[..., Page]
) -> None:
    """On a 390 px dark screen nothing overflows sideways and the colours follow the scheme."""
    page = new_page(viewport={"width": 390, "height": 844}, color_scheme="dark")
    page.goto(web + "/ops")
    expect(page.locator('#workers tr[data-worker^="main@"] .badge')).to_have_text("online")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(x) for x in background[4:-1].split(","))
    assert red + green + blue < 3 * 60  # a dark background
