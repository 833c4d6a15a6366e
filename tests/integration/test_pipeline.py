"""End to end: POST → real Celery worker → Redis log → real gunicorn gevent SSE stream."""

from __future__ import annotations

import io
import itertools
import threading

import httpx
import pytest
import redis
from PIL import Image
from support import Proc, Received, collect, iter_events, job_state, logged, post_job, wait_until

SMALL = {"width": 96, "height": 64, "steps": 8}
# Long enough (a few seconds) to act on while it runs.
LONG = {"width": 384, "height": 384, "steps": 20}


def ids_and_phases(events: list[Received]) -> list[tuple[str, str]]:
    return [(e.id, e.event) for e in events if e.id is not None]


def test_full_job_streams_every_phase_in_order(web: str, worker: Proc, rds: redis.Redis) -> None:
    """queued → started → progress… → preview → done, exactly the log, then the stream ends."""
    job = post_job(web, prompt="a red sunset over the ocean", seed=7, **LONG)
    events = collect(web, job["jobId"])
    assert ids_and_phases(events) == logged(rds, job["jobId"])
    phases = [e.event for e in events if e.id]
    assert phases[0] == "queued" and phases[1] == "started" and phases[-1] == "done"
    assert "preview" in phases and phases.index("preview") < len(phases) - 1
    percents = [e.data["percent"] for e in events if e.event == "progress"]
    # Coalesced to 5 % marks at least 250 ms apart: a fast run reports only a few.
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) >= 3
    preview = next(e.data for e in events if e.event == "preview")
    assert preview["width"] == 384 and preview["height"] == 384 and len(preview["blurhash"]) > 6
    assert 25 <= preview["percent"] < 100
    done = events[-1].data
    assert done["url"] == f"/imagine/{job['jobId']}/image" and done["seconds"] > 0


def test_post_answers_202_with_location_and_position(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """The answer names the job, its place in line, and where to watch it."""
    response = httpx.post(web + "/imagine", json={"prompt": "night city", **SMALL})
    assert response.status_code == 202
    body = response.json()
    assert body["position"] >= 1 and body["status"] == f"/imagine/{body['jobId']}"
    assert response.headers["Location"] == body["status"]
    assert body["stream"] == body["status"] + "/stream"
    assert len(body["jobId"]) >= 21  # 128 random bits, url-safe
    collect(web, body["jobId"])


def test_image_and_status_after_done(web: str, worker: Proc, rds: redis.Redis) -> None:
    """The PNG has the requested size; the status shows the result; 404 before that."""
    # A long job ahead holds the (one) worker, so the small one is surely not done yet
    # when its image is asked for (alone, it could finish before the GET).
    ahead = post_job(web, prompt="a long one ahead", **LONG)
    job = post_job(web, prompt="snowy mountain forest", **SMALL)
    early = httpx.get(f"{web}/imagine/{job['jobId']}/image")
    assert early.status_code == 404 and early.json()["error"]["code"] == "not_found"
    collect(web, ahead["jobId"])
    collect(web, job["jobId"])
    png = httpx.get(f"{web}/imagine/{job['jobId']}/image")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (96, 64)
    status = httpx.get(f"{web}/imagine/{job['jobId']}").json()
    assert status["state"] == "succeeded" and status["percent"] == 100
    assert status["url"] == f"/imagine/{job['jobId']}/image"


def test_reconnect_with_last_id_gets_exactly_the_rest(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """Drop the stream mid-job, resume with Last-Event-ID: the missing events, none twice."""
    job = post_job(web, **LONG)
    first: list[Received] = []
    for event in iter_events(web, job["jobId"]):
        first.append(event)
        if event.event == "progress" and event.data["percent"] >= 20:
            break  # the client goes away mid-job
    last_id = [e.id for e in first if e.id][-1]
    rest = collect(web, job["jobId"], last_id=last_id)
    seen = ids_and_phases(first) + ids_and_phases(rest)
    assert seen == logged(rds, job["jobId"])
    assert rest[-1].event == "done"


def test_last_event_id_as_query_parameter(web: str, worker: Proc, rds: redis.Redis) -> None:
    """Clients that cannot set headers resume with ?lastEventId=."""
    job = post_job(web, **SMALL)
    events = collect(web, job["jobId"])
    log = logged(rds, job["jobId"])
    middle = log[2][0]
    with httpx.stream("GET", f"{web}/imagine/{job['jobId']}/stream?lastEventId={middle}") as r:
        body = r.read().decode()
    assert f"id: {log[2][0]}\n" not in body and f"id: {log[3][0]}\n" in body
    assert body.count("id: ") == len(log) - 3
    assert events[-1].event == "done"


def test_two_watchers_get_everything(web: str, worker: Proc, rds: redis.Redis) -> None:
    """Two clients of one job each receive the whole log, once."""
    job = post_job(web, **LONG)
    results: dict[int, list[Received]] = {}

    def watch(n: int) -> None:
        results[n] = collect(web, job["jobId"])

    threads = [threading.Thread(target=watch, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    log = logged(rds, job["jobId"])
    assert ids_and_phases(results[0]) == log == ids_and_phases(results[1])


def test_stream_after_done_replays_then_ends_and_204_when_nothing_left(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """A late viewer gets the whole history; a viewer who saw the end gets 204 (stop)."""
    job = post_job(web, **SMALL)
    collect(web, job["jobId"])
    replay = collect(web, job["jobId"])
    assert ids_and_phases(replay) == logged(rds, job["jobId"])
    last = logged(rds, job["jobId"])[-1][0]
    finished = httpx.get(f"{web}/imagine/{job['jobId']}/stream", headers={"Last-Event-ID": last})
    assert finished.status_code == 204


def test_stream_headers_and_retry_first(web: str, worker: Proc, rds: redis.Redis) -> None:
    """The stream declares itself SSE, uncached, unbuffered, and starts with retry."""
    job = post_job(web, **SMALL)
    with httpx.stream("GET", f"{web}/imagine/{job['jobId']}/stream") as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        body = response.read().decode()
    assert body.startswith("retry: 3000\n\n")


def test_unknown_job_is_404_on_every_route(web: str, rds: redis.Redis) -> None:
    """Unknown or malformed ids are 404 with a JSON error."""
    for job_id in ("A" * 22, "short", "bad%0Aid", "..%2F..%2Fetc"):
        for method, suffix in (("GET", ""), ("GET", "/stream"), ("GET", "/image"), ("DELETE", "")):
            response = httpx.request(method, f"{web}/imagine/{job_id}{suffix}")
            assert response.status_code == 404, (method, job_id, suffix)
            assert response.json()["error"]["code"] == "not_found"


def test_redis_connection_killed_mid_stream_loses_nothing(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """CLIENT KILL of the web's pub/sub and pool connections: the stream still gets every event once."""
    job = post_job(web, **LONG)
    events: list[Received] = []
    killed = False
    for event in iter_events(web, job["jobId"]):
        events.append(event)
        if not killed and event.event == "progress":
            wait_until(lambda: _kill_subscribers(rds), 10, "a pub/sub client to kill")
            killed = True
    assert killed
    assert ids_and_phases(events) == logged(rds, job["jobId"])


def _kill_subscribers(client: redis.Redis) -> int:
    """Kill every connection in pub/sub mode (the web hub's)."""
    return sum(
        client.client_kill_filter(_id=c["id"])
        for c in client.client_list()
        if int(c.get("sub", 0)) > 0 or "P" in c.get("flags", "")
    )


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "bad_json"),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400, "bad_json"),
        (
            b"prompt=x",
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        (
            b'{"prompt": "' + b"x" * 40000 + b'"}',
            {"Content-Type": "application/json"},
            413,
            "too_large",
        ),
        (b"[]", {"Content-Type": "application/json"}, 422, "invalid_fields"),
        (b'{"prompt": ""}', {"Content-Type": "application/json"}, 422, "invalid_fields"),
        (
            b'{"prompt": "x", "width": -5}',
            {"Content-Type": "application/json"},
            422,
            "invalid_fields",
        ),
        (
            b'{"prompt": "x", "steps": 100000}',
            {"Content-Type": "application/json"},
            422,
            "invalid_fields",
        ),
        (
            b'{"prompt": "x", "height": true}',
            {"Content-Type": "application/json"},
            422,
            "invalid_fields",
        ),
        (
            b'{"prompt": "x", "seed": 1.5}',
            {"Content-Type": "application/json"},
            422,
            "invalid_fields",
        ),
        (
            b'{"prompt": "x", "colour": "red"}',
            {"Content-Type": "application/json"},
            422,
            "invalid_fields",
        ),
    ],
)
def test_bad_posts_are_refused_and_change_nothing(
    web: str, rds: redis.Redis, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    """Each bad request gets its status and a JSON error; Redis is left exactly as it was."""
    before = job_state(rds)
    response = httpx.post(web + "/imagine", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert job_state(rds) == before


def test_invalid_fields_are_named_with_the_reason(web: str, rds: redis.Redis) -> None:
    """A 422 lists every bad field and why."""
    response = httpx.post(web + "/imagine", json={"width": 10, "steps": 0})
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"prompt", "width", "steps"}
    assert "64" in fields["width"] and "1" in fields["steps"]


def test_cancel_running_job_ends_with_cancelled(web: str, worker: Proc, rds: redis.Redis) -> None:
    """DELETE while running: the worker stops at its next step and the stream ends cancelled."""
    job = post_job(web, width=512, height=512, steps=40)
    events: list[Received] = []
    for event in iter_events(web, job["jobId"]):
        events.append(event)
        if event.event == "progress":
            response = httpx.delete(f"{web}/imagine/{job['jobId']}")
            assert response.status_code == 202 and response.json()["state"] == "cancelling"
    assert events[-1].event == "cancelled"
    assert httpx.get(f"{web}/imagine/{job['jobId']}").json()["state"] == "cancelled"
    again = httpx.delete(f"{web}/imagine/{job['jobId']}")
    assert again.status_code == 409


def test_cancel_queued_job_at_once(web: str, worker: Proc, rds: redis.Redis) -> None:
    """DELETE while waiting: cancelled immediately, and the worker never starts it."""
    blocker = post_job(web, width=512, height=512, steps=40)
    waiting = post_job(web, **SMALL)
    response = httpx.delete(f"{web}/imagine/{waiting['jobId']}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    events = collect(web, waiting["jobId"])
    assert [e.event for e in events if e.id] == ["queued", "cancelled"]
    httpx.delete(f"{web}/imagine/{blocker['jobId']}")
    assert collect(web, blocker["jobId"])[-1].event == "cancelled"
    assert [p for _, p in logged(rds, waiting["jobId"])] == ["queued", "cancelled"]


def test_one_pubsub_connection_for_many_streams(web: str, worker: Proc, rds: redis.Redis) -> None:
    """100 open streams over 20 jobs: the web holds one pub/sub connection and a bounded pool."""
    jobs = [post_job(web, **LONG)["jobId"] for _ in range(2)]
    jobs += [post_job(web, **SMALL)["jobId"] for _ in range(18)]
    before = {c["id"] for c in rds.client_list()}
    clients = [httpx.Client(timeout=30) for _ in range(100)]
    streams = [
        c.stream("GET", f"{web}/imagine/{job}/stream").__enter__()
        for c, job in zip(clients, itertools.cycle(jobs), strict=False)
    ]
    try:
        for s in streams:
            assert s.status_code == 200
        listing = rds.client_list()
        subscribers = [c for c in listing if int(c.get("sub", 0)) > 0]
        assert len(subscribers) == 1
        assert int(subscribers[0]["sub"]) >= 20
        new = [c for c in listing if c["id"] not in before]
        assert len(new) <= 1 + 32  # hub + the bounded pool (JOBCAST_REDIS_POOL_SIZE)
    finally:
        for s in streams:
            s.close()
        for c in clients:
            c.close()
        for job in jobs:
            httpx.delete(f"{web}/imagine/{job}")


def test_reset_when_the_clients_last_id_was_trimmed_away(web: str, rds: redis.Redis) -> None:
    """A client whose Last-Event-ID is older than the capped log gets `reset` + snapshot first."""
    from tasks.events import JobEvents

    events = JobEvents(rds, maxlen=50)
    job_id = "trimmed-job-0123456789"
    first = events.publish(job_id, "started", {"worker": "w"})
    for n in range(400):
        events.publish(job_id, "progress", {"percent": n % 100})
    events.publish(job_id, "done", {"url": "/x"})
    assert rds.xlen(f"jobcast:job:{{{job_id}}}:events") < 400  # the start was trimmed
    received = collect(web, job_id, last_id=first)
    assert received[0].event == "reset"
    assert received[0].data["state"] == "succeeded" and received[0].data["jobId"] == job_id
    assert ids_and_phases(received[1:]) == logged(rds, job_id)
