"""Canvas jobs end to end: a Celery group, chord or chain of a user's tasks
(tests/platform_app.py) submitted through ``jobcast.submit`` as one parent job, run by a
real worker of the user's app, the parent's stream read through a real gunicorn server."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from celery import Celery, chain, chord, group
from support import Proc, Received, collect, logged, platform_worker, wait_until

import jobcast
from tasks.config import Settings
from tasks.keys import Keys

QUEUE = "user"
TINY = {"width": 64, "height": 64, "steps": 1}


@pytest.fixture(scope="module")
def user_worker(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:  # fmt: skip
    """``celery -A platform_app worker -Q user`` with two pool processes."""
    log = tmp_path_factory.mktemp("logs") / "canvas-worker.log"
    proc = platform_worker(stack_env, log, QUEUE, "canvas")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def user_app(stack_env: dict[str, str]) -> Iterator[Celery]:
    """A client's Celery app: it names the user's tasks, it does not import them (so
    this process registers none of their kinds)."""
    settings = Settings.from_env(stack_env)
    app = Celery("client", broker=settings.redis_url)
    jobcast.configure_celery(app, settings)
    yield app
    app.jobcast.redis.close()


def part(app: Celery, **kwargs: Any) -> Any:
    return app.signature("user.part", kwargs=kwargs)


def total(app: Celery) -> Any:
    return app.signature("user.total")


def own(events: list[Received]) -> list[Received]:
    """The logged events of a stream (those with an id of their own)."""
    return [e for e in events if e.id is not None]


def check_parent_stream(rds: redis.Redis, job_id: str, events: list[Received]) -> None:
    """The stream is exactly the parent's log, starts queued → started, its percent
    never decreases and reaches 100 right before `done`."""
    mine = own(events)
    assert [(e.id, e.event) for e in mine] == logged(rds, job_id)
    names = [e.event for e in mine]
    assert names[0] == "queued" and names[1] == "started", names
    percents = [e.data["percent"] for e in mine if e.event == "progress"]
    assert percents == sorted(percents) and len(set(percents)) == len(percents), percents
    assert percents[-1] == 100
    assert names[-1] == "done" and names.count("done") == 1


def test_a_group_of_six_streams_one_rising_percent_and_ends_with_every_result(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A group of 6 is one parent job: its stream rises to 100 and ends `done` with the
    six results in order; each child is a job of its own that succeeded; the parent's
    status lists the six children at 100."""
    handle = jobcast.submit(group(part(user_app, n=10 + i) for i in range(6)), queue=QUEUE)
    events = collect(web, handle.id)
    check_parent_stream(rds, handle.id, events)
    done = own(events)[-1].data
    assert [r["n"] for r in done["results"]] == [10, 11, 12, 13, 14, 15]
    assert done["children"] == [f"{handle.id}.{i}" for i in range(6)]
    status = httpx.get(f"{web}/jobs/{handle.id}").json()
    assert status["state"] == "succeeded" and status["percent"] == 100
    assert [(c["state"], c["percent"]) for c in status["children"]] == [("succeeded", 100)] * 6
    child = collect(web, f"{handle.id}.3")
    assert own(child)[-1].event == "done" and own(child)[-1].data["n"] == 13


def test_a_chord_passes_its_members_results_to_the_callback(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A chord of 4 and a callback: the callback (child 4) starts only after the four,
    gets their results as Celery passes them, and its sum is in the parent's `done`."""
    canvas = chord((part(user_app, n=i + 1) for i in range(4)), total(user_app))
    handle = jobcast.submit(canvas, queue=QUEUE)
    events = collect(web, handle.id)
    check_parent_stream(rds, handle.id, events)
    assert own(events)[-1].data["results"][4] == {"result": 1 + 2 + 3 + 4}
    states = [(e.data["index"], e.data["state"]) for e in own(events) if e.event == "child"]
    callback_start = states.index((4, "running"))
    assert {i for i, s in states[:callback_start] if s == "succeeded"} == {0, 1, 2, 3}


def test_a_chain_runs_one_link_at_a_time_each_given_the_previous_result(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A chain of 3: the parent's `child` events say which link runs, one after the
    other; each link got the previous link's result first, as Celery chains pass it."""
    canvas = chain(part(user_app, n=3), part(user_app, n=4), part(user_app, n=5))
    handle = jobcast.submit(canvas, queue=QUEUE)
    events = collect(web, handle.id)
    check_parent_stream(rds, handle.id, events)
    states = [(e.data["index"], e.data["state"]) for e in own(events) if e.event == "child"]
    assert states == [(0, "running"), (0, "succeeded"), (1, "running"), (1, "succeeded"),
                      (2, "running"), (2, "succeeded")]  # fmt: skip
    first, second, third = own(events)[-1].data["results"]
    assert first == {"got": [], "n": 3}
    assert second == {"got": [first], "n": 4}
    assert third == {"got": [second], "n": 5}


def test_a_group_nested_in_a_chain_with_a_chain_inside_ends_done(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """chain(a, group(chain(b, c), d), total): nesting three deep. b and d get a's
    result, c gets b's, and total gets [c's, d's] (Celery's semantics), ending done."""
    a, b, c, d = (part(user_app, n=n) for n in (2, 3, 4, 5))
    canvas = chain(a, group(chain(b, c), d), total(user_app))
    handle = jobcast.submit(canvas, queue=QUEUE)
    events = collect(web, handle.id)
    check_parent_stream(rds, handle.id, events)
    ra, rb, rc, rd, rtotal = own(events)[-1].data["results"]
    assert rb["got"] == [ra] and rd["got"] == [ra] and rc["got"] == [rb]
    assert rtotal == {"result": 4 + 5}


def test_a_failing_chord_member_fails_the_parent_naming_it(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """One member of a chord fails: the parent ends `failed` naming that child with its
    error, the callback never runs (it ends `cancelled`), nothing ends `done`."""
    members = [part(user_app, n=4), part(user_app, n=20, fail=True), part(user_app, n=4)]
    handle = jobcast.submit(chord(members, total(user_app)), queue=QUEUE)
    events = own(collect(web, handle.id))
    assert events[-1].event == "failed"
    assert events[-1].data["child"] == f"{handle.id}.1"
    assert "stopped at 10" in events[-1].data["error"]
    assert "done" not in [e.event for e in events]
    callback = own(collect(web, f"{handle.id}.3"))
    assert [e.event for e in callback] == ["queued", "cancelled"]


def test_cancelling_the_parent_ends_every_child_cancelled(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """DELETE on a parent whose group of 4 long jobs runs two at a time: the parent ends
    `cancelled` at once, the two waiting children leave the line at once, the two running
    ones stop at their next step; every child ends `cancelled`."""
    spin = user_app.signature("user.spin")
    handle = jobcast.submit(group(spin.clone() for _ in range(4)), queue=QUEUE)
    wait_until(
        lambda: sum(c["state"] == "running" for c in handle.status()["children"]) == 2,
        30, "two children to run",
    )  # fmt: skip
    response = httpx.delete(f"{web}/jobs/{handle.id}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert handle.status()["state"] == "cancelled"
    line = rds.zrange("jobcast:line:{user}:queue", 0, -1)  # the waiting two left at once
    assert not [m for m in line if m.decode().startswith(handle.id)]
    assert httpx.delete(f"{web}/jobs/{handle.id}").status_code == 409
    wait_until(
        lambda: all(c["state"] == "cancelled" for c in handle.status()["children"]),
        30, "every child to end cancelled",
    )  # fmt: skip


def test_the_contact_sheet_kind_is_a_chord_over_http_ending_with_a_grid(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """POST /jobs/contact-sheet (the demo's canvas kind) answers 202 for one parent job;
    its stream passes up each tile's preview with the tile's id, and ends `done` with the
    grid image (2 × 2 tiles of 64 px with 4 px gaps), which the result route serves."""
    body = {"prompt": "a lighthouse at dusk", "count": 4, "side": 64, "steps": 4}
    response = httpx.post(f"{web}/jobs/contact-sheet", json=body, timeout=10)
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    events = collect(web, job_id)
    check_parent_stream(rds, job_id, events)
    previews = {e.data["child"] for e in own(events) if e.event == "preview"}
    assert previews == {f"{job_id}.{i}" for i in range(4)}
    grid = own(events)[-1].data["results"][4]
    assert (grid["width"], grid["height"]) == (2 * 64 + 3 * 4, 2 * 64 + 3 * 4)
    image = httpx.get(f"{web}/jobs/{job_id}.4/result/image.png")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    bad = httpx.post(f"{web}/jobs/contact-sheet", json={**body, "count": 99}, timeout=10)
    assert bad.status_code == 422 and "count" in bad.json()["error"]["fields"]


def test_a_waiting_canvas_has_the_place_of_its_first_waiting_child(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """Both pool processes busy with long jobs, then a group of 2 and a plain job: the
    canvas is `queued` at place 1 (its first child's), its children at 1 and 2, and the
    plain job submitted after them at 3. Its ETA to start is its first child's; its ETA
    to end adds its two runs at the line's average, shared by the two jobs running."""
    jobcast.submit(part(user_app, n=2), queue=QUEUE).wait(timeout=60)  # the line's average
    spin = user_app.signature("user.spin")
    busy = [jobcast.submit(spin.clone(), queue=QUEUE) for _ in range(2)]
    wait_until(lambda: all(h.status()["state"] == "running" for h in busy), 30, "both to run")
    handle = jobcast.submit(group(spin.clone() for _ in range(2)), queue=QUEUE)
    after = jobcast.submit(spin.clone(), queue=QUEUE)
    assert handle.position == 1
    status = httpx.get(f"{web}/jobs/{handle.id}").json()
    assert status["state"] == "queued" and status["position"] == 1
    assert [c["position"] for c in status["children"]] == [1, 2]
    assert after.status()["position"] == 3
    avg = float(rds.hget(Keys().line(QUEUE).stats, "avgMs")) / 1000
    assert status["etaSeconds"] is not None and status["etaSeconds"] >= 1
    assert status["doneEtaSeconds"] == math.ceil(status["etaSeconds"] + 2 * avg / 2)
    for job in (handle, after, *busy):
        job.cancel()
    wait_until(lambda: all(h.status()["state"] == "cancelled" for h in busy), 30, "spins to stop")


def test_an_idempotency_key_names_one_canvas(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """The same key twice for a canvas: the second submit returns the first canvas
    (created False, same id) and makes no second one; the first ends done as usual."""
    canvas = group(part(user_app, n=2) for _ in range(2))
    first = jobcast.submit(canvas, queue=QUEUE, key="sheet-7")
    again = jobcast.submit(canvas, queue=QUEUE, key="sheet-7")
    assert first.created and not again.created and again.id == first.id
    assert len(first.wait(timeout=60)["results"]) == 2
    parents = [k for k in rds.scan_iter("jobcast:job:{*}") if k.endswith(b"}")]
    assert parents == [f"jobcast:job:{{{first.id}}}".encode()]


def test_in_signed_mode_a_canvas_token_opens_its_children_and_no_other_job(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis
) -> None:
    """With JOBCAST_SIGNING_KEY, the token POST hands out for a contact sheet opens the
    sheet's children too (their status, tile image and stream, alone or multiplexed), which
    is how the page's thumbnails load; it opens no other job, and a child's id alone is 403."""
    base = web_with(JOBCAST_SIGNING_KEY="s3cret")
    body = {"prompt": "a signed sheet", "count": 2, "side": 64, "steps": 2}
    sheet = httpx.post(f"{base}/jobs/contact-sheet", json=body, timeout=10).json()
    other = httpx.post(f"{base}/jobs/imagine", json={"prompt": "x", **TINY}, timeout=10).json()
    token, child = sheet["token"], f"{sheet['jobId']}.0"
    with httpx.stream("GET", base + sheet["stream"], timeout=60) as streamed:  # carries the token
        assert "event: done" in streamed.read().decode()
    assert httpx.get(f"{base}/jobs/{child}", params={"token": token}).json()["state"] == "succeeded"
    tile = httpx.get(f"{base}/jobs/{child}/result/image.png", params={"token": token})
    assert tile.status_code == 200 and tile.content.startswith(b"\x89PNG")
    assert httpx.get(f"{base}/jobs/{child}").status_code == 403
    assert httpx.get(f"{base}/jobs/{other['jobId']}", params={"token": token}).status_code == 403
    query = [("job", child), ("token", token), ("job", other["jobId"]), ("token", token)]
    with httpx.stream("GET", f"{base}/jobs/stream", params=query, timeout=30) as streamed:
        text = streamed.read().decode()
    assert "bad_token" in text and text.count("bad_token") == 1  # the other job only
    assert "event: done" in text
    with httpx.stream("GET", base + other["stream"], timeout=60) as streamed:
        assert "event: done" in streamed.read().decode()  # ended before the next test
