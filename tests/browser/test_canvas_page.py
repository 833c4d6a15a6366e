"""A canvas job on the page: the contact sheet's card, in real headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Page, expect
from support import Proc

pytestmark = pytest.mark.browser

WAIT = 60_000  # ms: the machine is shared

# Notes, per thumbnail, each class it gains in order: the page's own code is not touched.
RECORD = """
window.__reveal = {};
new MutationObserver((changes) => {
  for (const change of changes) {
    const el = change.target;
    if (!(el instanceof HTMLElement) || !el.dataset || !el.dataset.child) continue;
    const seen = (window.__reveal[el.dataset.child] ??= []);
    for (const name of el.classList) if (!seen.includes(name)) seen.push(name);
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["class"] });
"""


def test_the_contact_sheet_card_reveals_each_thumbnail_blurred_then_sharp(
    web: str, worker: Proc, rds: redis.Redis, artifacts: Path, new_page: object
) -> None:
    """A contact sheet of 4 opened from its link: the card shows one aggregate bar and a
    strip of 4 thumbnails, each first painted from its blurhash then revealed sharp as
    its child ends; the card ends `done` with the composed grid as its picture."""
    body = {"prompt": "paper lanterns over a river", "count": 4, "side": 64, "steps": 16}
    response = httpx.post(f"{web}/jobs/contact-sheet", json=body, timeout=10)
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    page: Page = new_page()  # type: ignore[operator]
    page.add_init_script(RECORD)
    page.goto(f"{web}/?job={job_id}")
    card = page.locator(f'.card[data-job="{job_id}"]')
    expect(card.locator(".strip li")).to_have_count(4, timeout=WAIT)
    expect(card).to_have_attribute("data-state", "done", timeout=WAIT)
    expect(card.locator(".strip li.sharp")).to_have_count(4, timeout=WAIT)
    expect(card).to_have_class(re.compile(r"\bloaded\b"), timeout=WAIT)
    assert card.locator(".bar").get_attribute("aria-valuenow") == "100"
    reveal = page.evaluate("window.__reveal")
    for i in range(4):
        seen = reveal[f"{job_id}.{i}"]
        assert seen.index("blurred") < seen.index("sharp"), seen
    natural = card.locator(".frame img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [2 * 64 + 3 * 4, 2 * 64 + 3 * 4]
    page.screenshot(path=artifacts / "page-contact-sheet.png")
