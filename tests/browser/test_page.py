"""The progressive-reveal page at ``/``, driven in real headless Chromium.

The page notes every durable event it renders in ``window.__jobcast.log[jobId]`` as
``[id, phase]`` and every queue position it shows in ``window.__jobcast.positions``; the
tests compare those with the job's event log in Redis (the ground truth).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blurhash
import httpx
import pytest
import redis
from PIL import Image
from playwright.sync_api import Locator, Page, expect
from support import Proc, free_port, gunicorn_web, logged, post_job, wait_until

from tasks.demo.generator import generate

pytestmark = pytest.mark.browser

SMALL = {"width": 192, "height": 192, "steps": 12}
MIDDLE = {"width": 256, "height": 256, "steps": 16}
WIDE = {"width": 256, "height": 192, "steps": 16}
# Must still be running after three pages have loaded and settled (~15 s at 100 steps).
SCENIC = {"width": 512, "height": 384, "steps": 100}
# Long enough (~10 s on a busy 2-core machine) to act on while it runs.
LONG = {"width": 512, "height": 512, "steps": 24}
WAIT = 60_000  # ms: generous, the machine is shared

NewPage = Callable[..., Page]
# No card is still sliding in and no picture is still fading in.
SETTLED = """() => !document.getAnimations().some((a) => a.animationName === "rise"
  || (a instanceof CSSTransition && ["IMG", "CANVAS"].includes(a.effect.target.tagName)))"""


def submit(page: Page, prompt: str, **params: Any) -> tuple[Locator, str]:
    """Fill the form, press Imagine, and return the new card and its job id."""
    before = page.locator(".card").count()
    page.fill("#prompt", prompt)
    for name in ("width", "height", "steps", "seed"):
        if name in params:
            page.fill(f"#{name}", str(params[name]))
    page.click("button[type=submit]")
    expect(page.locator(".card")).to_have_count(before + 1)
    job_id = page.locator(".card").first.get_attribute("data-job")
    assert job_id
    return card_of(page, job_id), job_id


def card_of(page: Page, job_id: str) -> Locator:
    return page.locator(f'.card[data-job="{job_id}"]')


def rendered(page: Page, job_id: str) -> list[tuple[str, str]]:
    """The (id, phase) of every durable event the page applied to the job's card."""
    return [tuple(e) for e in page.evaluate("id => window.__jobcast.log[id]", job_id)]


def wait_for_phase(page: Page, job_id: str, phase: str) -> None:
    page.wait_for_function(
        "([id, phase]) => window.__jobcast.log[id]?.some((e) => e[1] === phase)",
        arg=[job_id, phase],
        timeout=WAIT,
    )


def stream_closed(page: Page, job_id: str) -> bool:
    """Whether the page stopped following the job: its card is finished and no watch of
    the kit (jobcast.js) still counts the job as live."""
    return bool(
        page.evaluate(
            """id => window.__jobcast.cards[id].finished && window.__jobcast.watches.every(
                 (w) => !w.jobs.jobs.has(id) || w.jobs.jobs.get(id).ended)""",
            job_id,
        )
    )


def canvas_stats(page: Page, job_id: str) -> dict[str, float]:
    """Distinct colours, spread and brightness of the card's preview canvas."""
    return dict(
        page.evaluate(
            """id => {
              const c = document.querySelector(`.card[data-job="${id}"] canvas`);
              const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              const colours = new Set(); let min = 255, max = 0, sum = 0, alpha = 255;
              for (let i = 0; i < px.length; i += 4) {
                colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
                const v = px[i] + px[i + 1] + px[i + 2];
                min = Math.min(min, v / 3); max = Math.max(max, v / 3); sum += v;
                alpha = Math.min(alpha, px[i + 3]);
              }
              return {colours: colours.size, spread: max - min, mean: sum / (px.length * 0.75),
                      alpha, width: c.width, height: c.height};
            }""",
            job_id,
        )
    )


def wait_running(rds: redis.Redis, job_id: str) -> None:
    wait_until(lambda: rds.hget(f"jobcast:job:{{{job_id}}}", "state") == b"running", 60, "running")


def test_queued_job_shows_its_place_progress_preview_then_the_image(
    web: str, worker: Proc, rds: redis.Redis, artifacts: Path, new_page: NewPage
) -> None:
    """Behind two jobs: "#2 in line", then #1, then every progress step once, a non-blank
    preview canvas before the final image, which loads at its size without moving anything;
    the page stops following the job after ``done``."""
    blocker = post_job(web, prompt="a storm over the sea", **LONG)
    wait_running(rds, blocker["jobId"])
    post_job(web, prompt="a quiet harbour at dawn", **MIDDLE)
    page = new_page()
    page.goto(web + "/")
    card, job_id = submit(page, "a red fox in fresh snow", **WIDE)

    status = card.locator(".status")
    expect(status).to_have_text(re.compile(r"^#2 in line( · about \d+ (s|min))?$"))
    page.wait_for_function(SETTLED)
    box_queued = card.locator(".frame").bounding_box()
    page.screenshot(path=artifacts / "page-queued.png")
    page.wait_for_function(
        "id => window.__jobcast.positions[id].includes(1)", arg=job_id, timeout=WAIT
    )
    expect(card).to_have_attribute("data-state", "done", timeout=WAIT)

    image = card.locator("img")
    expect(image).to_have_js_property("naturalWidth", 256, timeout=WAIT)
    expect(image).to_have_js_property("naturalHeight", 192)
    expect(card).to_have_class(re.compile(r"\bloaded\b"))
    box_done = card.locator(".frame").bounding_box()
    assert box_queued and box_done
    assert all(abs(box_done[k] - box_queued[k]) < 0.5 for k in box_done)  # nothing jumped
    expect(card.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")

    positions = page.evaluate("id => window.__jobcast.positions[id]", job_id)
    assert positions[0] == 2 and positions[-1] == 1 and positions == sorted(positions, reverse=True)
    assert rendered(page, job_id) == logged(rds, job_id)
    phases = [phase for _, phase in rendered(page, job_id)]
    assert phases.count("progress") >= 2 and phases.index("preview") < phases.index("done")
    timings = page.evaluate("id => window.__jobcast.timings[id]", job_id)
    assert timings["posted"] < timings["preview"] < timings["image"]
    stats = canvas_stats(page, job_id)
    assert stats["alpha"] == 255 and stats["colours"] > 20 and stats["spread"] > 5, stats
    assert (stats["width"], stats["height"]) == (32, 24)  # the final aspect ratio
    assert stream_closed(page, job_id)
    assert page.evaluate("window.__jobcast.skipped") == 0
    page.screenshot(path=artifacts / "page-done.png")


def test_reconnects_after_a_web_restart_and_renders_every_event_once(
    stack_env: dict[str, str],
    worker: Proc,
    rds: redis.Redis,
    artifacts: Path,
    new_page: NewPage,
    tmp_path: Path,
) -> None:
    """The web server dies mid-job: the card says "reconnecting…", EventSource comes
    back with Last-Event-ID when the server does, and the card ends with exactly the log."""
    port = free_port()
    server, base = gunicorn_web(stack_env, tmp_path / "web.log", port=port)
    try:
        page = new_page()
        page.goto(base + "/")
        card, job_id = submit(page, "a lighthouse in the fog", width=512, height=512, steps=60)
        wait_for_phase(page, job_id, "progress")
        server.kill()  # the whole server at once: every connection drops
        assert rds.hget(f"jobcast:job:{{{job_id}}}", "state") == b"running"
        expect(card.locator(".conn")).to_have_text("reconnecting…")
        page.screenshot(path=artifacts / "page-reconnecting.png")
        server, _ = gunicorn_web(stack_env, tmp_path / "web.log", port=port)
        expect(card).to_have_attribute("data-state", "done", timeout=WAIT)
        expect(card.locator(".conn")).to_have_text("")
        assert rendered(page, job_id) == logged(rds, job_id)
        assert page.evaluate("window.__jobcast.skipped") == 0
        assert stream_closed(page, job_id)
    finally:
        server.stop()


def test_cancel_a_queued_and_a_running_job(
    web: str, worker: Proc, rds: redis.Redis, new_page: NewPage
) -> None:
    """Cancel on a waiting card ends it at once; on a running card it ends at the next
    step; both cards say so, hide the button and the page stops following them."""
    page = new_page()
    page.goto(web + "/")
    running, running_id = submit(page, "a long winding mountain road", **LONG)
    expect(running).to_have_attribute("data-state", "running", timeout=WAIT)
    waiting, waiting_id = submit(page, "a small boat on a lake", **SMALL)
    expect(waiting.locator(".status")).to_contain_text("#1 in line")

    waiting.locator(".cancel").click()
    expect(waiting).to_have_attribute("data-state", "cancelled")
    expect(waiting.locator(".status")).to_contain_text("Cancelled")
    running.locator(".cancel").click()
    expect(running).to_have_attribute("data-state", "cancelled", timeout=WAIT)
    expect(running.locator(".cancel")).to_be_hidden()

    for job_id in (waiting_id, running_id):
        assert rendered(page, job_id) == logged(rds, job_id)
        assert rendered(page, job_id)[-1][1] == "cancelled"
        assert stream_closed(page, job_id)


def test_shared_link_shows_the_same_job_live_in_a_second_page(
    web: str, worker: Proc, rds: redis.Redis, artifacts: Path, new_page: NewPage
) -> None:
    """The card's link opens the job in another page, which follows it live to the same end;
    a link to an unknown job says the job is gone."""
    first = new_page()
    first.goto(web + "/")
    card, job_id = submit(first, "paper lanterns over a river", **LONG)
    link = card.locator(".share").get_attribute("href")
    assert link == f"/?job={job_id}"
    assert first.evaluate("location.search") == f"?job={job_id}"

    second = new_page(viewport={"width": 390, "height": 844}, color_scheme="dark")
    second.goto(web + link)
    shared = card_of(second, job_id)
    expect(shared.locator(".title")).to_have_text("paper lanterns over a river")
    expect(shared).to_have_attribute("data-state", "running", timeout=WAIT)
    expect(shared).to_have_class(re.compile(r"\bpreviewed\b"), timeout=WAIT)
    second.screenshot(path=artifacts / "page-shared-phone-dark.png")
    for page in (first, second):
        expect(card_of(page, job_id)).to_have_attribute("data-state", "done", timeout=WAIT)
        assert rendered(page, job_id) == logged(rds, job_id)

    third = new_page()
    third.goto(f"{web}/?job={secrets.token_urlsafe(16)}")
    expect(third.locator(".card .status")).to_have_text(re.compile("gone"))


def test_more_jobs_than_the_browser_opens_connections(
    web: str, worker: Proc, rds: redis.Redis, new_page: NewPage
) -> None:
    """Eight jobs at once (Chromium opens six HTTP/1.1 connections per origin): every POST
    still gets through, and every card ends with exactly its log (all on one stream)."""
    page = new_page()
    page.goto(web + "/")
    jobs = [
        submit(page, f"a paper boat number {n}", width=64, height=64, steps=2)[1] for n in range(8)
    ]
    for job_id in jobs:
        expect(card_of(page, job_id)).to_have_attribute("data-state", "done", timeout=WAIT)
        assert rendered(page, job_id) == logged(rds, job_id)
        assert stream_closed(page, job_id)


def test_validation_errors_appear_next_to_their_fields(
    web: str, worker: Proc, rds: redis.Redis, new_page: NewPage
) -> None:
    """A 422 names each bad field: its message shows under that field, which is marked
    invalid; no card is made. Fixing the fields clears the messages and submits."""
    page = new_page()
    page.goto(web + "/")
    page.fill("#prompt", "   ")
    page.fill("#width", "5000")
    page.fill("#steps", "0")
    page.click("button[type=submit]")
    expect(page.locator("#prompt-error")).to_have_text("Must not be empty")
    expect(page.locator("#width-error")).to_have_text("Must be an integer from 64 to 1024")
    expect(page.locator("#steps-error")).to_contain_text("from 1 to 100")
    expect(page.locator("#height-error")).to_have_text("")
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#prompt")).to_be_focused()
    expect(page.locator(".card")).to_have_count(0)

    card, _ = submit(page, "a tiny house", width=64, height=64, steps=1)
    expect(page.locator("#width-error")).to_have_text("")
    expect(page.locator("#width")).not_to_have_attribute("aria-invalid", "true")
    expect(card).to_have_attribute("data-state", "done", timeout=WAIT)


def _hash_cases() -> list[tuple[Image.Image, int, int]]:
    frames = list(generate("a desert at dusk with dunes", width=96, height=64, steps=4, seed=3))
    city = next(iter(generate("a city at night", width=64, height=96, steps=1, seed=9)))
    gradient = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    return [
        (frames[-1].to_image(), 4, 3),
        (frames[0].to_image(), 9, 9),
        (city.to_image(), 3, 4),
        (gradient, 1, 1),
        (gradient.rotate(90), 5, 2),
    ]


# blurhash-python's encode still calls Image.getdata, deprecated in Pillow 12.
@pytest.mark.filterwarnings("ignore:Image.Image.getdata:DeprecationWarning")
def test_our_blurhash_decoder_matches_blurhash_python(
    web: str, artifacts: Path, new_page: NewPage
) -> None:
    """The kit (/static/jobcast.js) decodes hashes of real images (made by blurhash-python) to the
    pixels blurhash-python's ``decode`` gives, within ±2 per channel."""
    page = new_page()
    page.goto(web + "/")
    for image, x, y in _hash_cases():
        hash_ = blurhash.encode(image.copy(), x, y)
        for width, height in ((32, 32), (40, 24), (7, 13)):
            ours = page.evaluate(
                """async ([hash, w, h]) => {
                  const { decodeBlurhash } = await import("/static/jobcast.js");
                  return Array.from(decodeBlurhash(hash, w, h));
                }""",
                [hash_, width, height],
            )
            theirs = blurhash.decode(hash_, width, height).convert("RGB").tobytes()
            rgb = [v for i, v in enumerate(ours) if i % 4 != 3]
            assert len(rgb) == len(theirs)
            worst = max(abs(a - b) for a, b in zip(rgb, theirs, strict=True))
            assert worst <= 2, (hash_, width, height, worst)
            assert all(v == 255 for v in ours[3::4])


def test_page_is_small_and_self_contained(web: str, artifacts: Path) -> None:
    """HTML + JS + CSS (every module the page imports) stay under 72 KB (three demo kinds,
    the activity list, cards for any kind, a canvas's thumbnail strip and the whole JS kit:
    multiplexing, tab sharing, submit), need no build step and load nothing from a CDN."""
    paths = ["/", "/static/app.js", "/static/jobcast.js", "/static/style.css"]
    paths += ["/static/activity.js", "/static/analyze.js"]
    bodies = {}
    for path in paths:
        response = httpx.get(web + path)
        assert response.status_code == 200, path
        bodies[path] = response.content
    weight = sum(len(body) for body in bodies.values())
    (artifacts / "page-weight.json").write_text(
        json.dumps({"total": weight, **{p: len(b) for p, b in bodies.items()}}, indent=2)
    )
    assert weight < 72_000, weight
    for path, body in bodies.items():
        assert not re.search(rb"(src|href)=\"https?://|import .* from \"https?://", body), path
    assert b'type="module"' in bodies["/"]


def test_time_from_post_to_first_painted_preview(
    web: str, worker: Proc, rds: redis.Redis, artifacts: Path, new_page: NewPage
) -> None:
    """A default job (512×512, 20 steps) on an idle worker: the time from pressing Imagine
    (just before ``fetch``) to the blurhash painted on the canvas is recorded."""
    page = new_page()
    page.goto(web + "/")
    page.fill("#prompt", "a lighthouse on a cliff at sunset")
    page.click("button[type=submit]")
    card = page.locator(".card").first
    expect(card).to_have_class(re.compile(r"\bpreviewed\b"), timeout=WAIT)
    job_id = card.get_attribute("data-job")
    page.wait_for_function("id => window.__jobcast.timings[id]?.preview", arg=job_id, timeout=WAIT)
    timings = page.evaluate("id => window.__jobcast.timings[id]", job_id)
    seconds = (timings["preview"] - timings["posted"]) / 1000
    (artifacts / "preview-timing.json").write_text(json.dumps({"seconds": round(seconds, 3)}))
    print(f"POST → first painted preview: {seconds:.2f} s")
    card.locator(".cancel").click()  # free the worker for the next test
    expect(card).to_have_attribute("data-state", "cancelled", timeout=WAIT)
    assert 0 < seconds < 45


def test_screenshots_light_dark_and_phone(
    web: str, worker: Proc, rds: redis.Redis, artifacts: Path, new_page: NewPage
) -> None:
    """A finished card, one mid-job with its preview and one waiting in line, in light and
    dark at desktop width and at phone width: the same jobs through one shared link."""
    page = new_page()
    page.goto(web + "/")
    done_card, done_id = submit(page, "a snowy mountain forest at dawn", **MIDDLE)
    expect(done_card).to_have_class(re.compile(r"\bloaded\b"), timeout=WAIT)
    live, live_id = submit(page, "a city skyline at night over the water", **SCENIC)
    expect(live).to_have_class(re.compile(r"\bpreviewed\b"), timeout=WAIT)
    waiting, waiting_id = submit(page, "a desert at dusk with dunes", **MIDDLE)
    expect(waiting.locator(".status")).to_contain_text("#1 in line")
    ids = (done_id, live_id, waiting_id)
    assert page.evaluate("location.search") == "?" + "&".join(f"job={i}" for i in ids)
    views = {
        "light": new_page(color_scheme="light", viewport={"width": 1100, "height": 760}),
        "dark": new_page(color_scheme="dark", viewport={"width": 1100, "height": 760}),
        "phone": new_page(color_scheme="light", viewport={"width": 390, "height": 844}),
    }
    for name, view in views.items():
        view.goto(f"{web}/{page.evaluate('location.search')}")
        expect(card_of(view, done_id)).to_have_class(re.compile(r"\bloaded\b"), timeout=WAIT)
        expect(card_of(view, live_id)).to_have_class(re.compile(r"\bpreviewed\b"), timeout=WAIT)
        expect(card_of(view, waiting_id)).to_have_attribute("data-state", "queued")
        view.wait_for_function(SETTLED)  # the fade-ins have finished: a sharp picture
        view.screenshot(path=artifacts / f"page-{name}.png", full_page=True)
