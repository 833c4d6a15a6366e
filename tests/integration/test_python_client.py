"""The Python client against the real stack: submit, watch, resume, wait, errors, cancel."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image
from support import Proc, free_port, gunicorn_web, logged

from jobcast.client import (
    ApiError,
    AsyncClient,
    Client,
    ConnectionGaveUp,
    DeltaText,
    Event,
    JobCancelled,
    JobFailed,
    WaitTimeout,
)
from tasks.events import JobEvents

QUICK = {"prompt": "a lighthouse on a cliff", "width": 64, "height": 64, "steps": 4}
LONG = {"prompt": "a slow harbour at night", "width": 384, "height": 384, "steps": 24}


def ids(events: list[Event]) -> list[tuple[str, str]]:
    """(id, kind) of the durable events, as support.logged lists the Redis log."""
    return [(e.id, e.kind) for e in events if e.id is not None]


def test_submit_and_watch_to_done_in_the_logs_order(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """Every logged event arrives once, in order, typed; the watch ends at done."""
    with Client(web) as client:
        job = client.submit("imagine", QUICK)
        assert job.kind == "imagine" and job.position is not None and job.position >= 0
        events = list(client.watch(job))
    assert ids(events) == logged(rds, job.id)
    assert events[-1].kind == "done" and events[-1].percent == 100
    progress = [e.percent for e in events if e.kind == "progress"]
    assert progress == sorted(progress) and progress[-1] == 100
    assert all(e.job_id == job.id for e in events)


def test_watch_resumes_through_a_killed_web_process(
    stack_env: dict[str, str], worker: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """SIGKILL of the whole web server mid-stream, restarted on the same port: the watch
    goes on by itself, with no event twice and none missing."""
    port = free_port()
    web, base = gunicorn_web(stack_env, tmp_path / "web1.log", port=port)
    procs = [web]
    restart = threading.Thread(
        target=lambda: procs.append(gunicorn_web(stack_env, tmp_path / "web2.log", port=port)[0])
    )
    try:
        with Client(base, max_retries=20) as client:
            job = client.submit("imagine", LONG)
            events: list[Event] = []
            for event in client.watch(job):
                events.append(event)
                if event.kind == "progress" and restart.ident is None:  # not started yet
                    assert rds.hget(f"jobcast:job:{{{job.id}}}", "state") == b"running"
                    web.kill()  # SIGKILL, the whole process group: master and worker
                    restart.start()  # on the same port, while the client retries
        restart.join(60)
        assert len(procs) == 2, "the web server was killed and started again"
        assert events[-1].kind == "done"
        assert ids(events) == logged(rds, job.id)
    finally:
        if restart.ident is not None:
            restart.join(60)
        for proc in procs:
            proc.stop()


def test_wait_returns_the_result_and_download_saves_the_png(
    web: str, worker: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """wait() gives the done data; the result names the image; download writes a PNG."""
    with Client(web) as client:
        job = client.submit("imagine", QUICK)
        result = client.wait(job, timeout=60)
        assert (result["width"], result["height"]) == (64, 64)
        assert "image.png" in client.result(job)["files"]
        saved = client.download(job, "image.png", tmp_path / "out.png")
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == (64, 64)
    assert list(tmp_path.iterdir()) == [saved]  # no partial file left behind


def test_last_event_id_gets_exactly_the_rest_then_nothing(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """watch(last_event_id=) resumes after that id; after the end it yields nothing (204)."""
    with Client(web) as client:
        job = client.submit("imagine", QUICK)
        client.wait(job, timeout=60)
        log = logged(rds, job.id)
        middle = log[len(log) // 2][0]
        rest = list(client.watch(job, last_event_id=middle))
        assert ids(rest) == [entry for entry in log if entry[0] > middle]
        assert list(client.watch(job, last_event_id=log[-1][0])) == []


def test_validation_error_is_typed_with_its_fields(web: str, rds: redis.Redis) -> None:
    """A 422 carries the API's code, message and the reasons per field; nothing is queued."""
    with Client(web) as client:
        with pytest.raises(ApiError) as caught:
            client.submit("imagine", {"prompt": "", "width": 5})
        with pytest.raises(ApiError) as unknown:
            client.submit("no-such-kind", {})
        with pytest.raises(ApiError) as missing:
            client.status("A" * 22)
    error = caught.value
    assert error.status == 422 and error.code and error.message
    assert {"prompt", "width"} <= set(error.fields)
    assert unknown.value.status == 404 and unknown.value.code
    assert missing.value.status == 404
    assert rds.zcard("jobcast:queue") == 0


def test_cancel_a_running_job_and_wait_raises_cancelled(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """cancel() of a running job: it ends cancelled, wait() raises JobCancelled, and a
    second cancel is a typed 409."""
    with Client(web) as client:
        job = client.submit("imagine", LONG)
        events = client.watch(job)
        assert next(e for e in events if e.kind == "progress")
        assert client.cancel(job)["state"] == "cancelling"
        assert [e.kind for e in events][-1] == "cancelled"
        with pytest.raises(JobCancelled) as caught:
            client.wait(job, timeout=30)
        with pytest.raises(ApiError) as again:
            client.cancel(job)
        assert client.status(job.id)["state"] == "cancelled"
    assert caught.value.job_id == job.id
    assert (again.value.status, again.value.code) == (409, "already_finished")


def test_failed_job_raises_job_failed_with_its_message(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """wait() on a job that fails raises JobFailed carrying the job's error message."""
    with Client(web) as client:
        blocker = client.submit("imagine", LONG)
        job = client.submit("imagine", QUICK)
        assert client.status(job)["state"] == "queued"
        JobEvents(rds).publish(job.id, "failed", {"error": "The kiln broke.", "retryable": False})
        with pytest.raises(JobFailed) as caught:
            client.wait(job, timeout=30)
        client.cancel(blocker)
    assert caught.value.error == "The kiln broke."


def test_wait_times_out_on_a_job_that_does_not_end(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """wait(timeout=) raises WaitTimeout (a TimeoutError) about on time; the job goes on."""
    with Client(web) as client:
        blocker = client.submit("imagine", LONG)
        job = client.submit("imagine", QUICK)
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            client.wait(job, timeout=1.0)
        took = time.monotonic() - began
        assert client.status(job)["state"] in ("queued", "running")
        client.cancel(blocker)
    assert took < 10, took  # bounded, not a hang (heartbeats come every 15 s)
    assert issubclass(WaitTimeout, TimeoutError)


def test_watch_gives_up_with_a_typed_error(rds: redis.Redis) -> None:
    """With no server at all, watch() retries max_retries times, then ConnectionGaveUp."""
    client = Client(f"http://127.0.0.1:{free_port()}", max_retries=2, max_backoff=0.2)
    client.backoff = 0.05
    with client, pytest.raises(ConnectionGaveUp) as caught:
        list(client.watch("A" * 22))
    assert caught.value.attempts == 3


def counting(base: str, paths: list[str]) -> httpx.Client:
    """An httpx client for Client(http=) that notes the path of every request it sends."""
    hook = [lambda request: paths.append(request.url.path)]
    return httpx.Client(base_url=base, timeout=10, event_hooks={"request": hook})


def test_watch_many_gets_each_jobs_log(web: str, worker: Proc, rds: redis.Redis) -> None:
    """watch_many merges several jobs' streams on one connection; each job's events are
    its log, in order, with the job's own event ids."""
    paths: list[str] = []
    with Client(web, http=counting(web, paths)) as client:
        jobs = [client.submit("imagine", {**QUICK, "seed": n}) for n in range(3)]
        paths.clear()
        events = list(client.watch_many(jobs))
    for job in jobs:
        assert ids([e for e in events if e.job_id == job.id]) == logged(rds, job.id)
    assert paths == ["/jobs/stream"]  # one connection for the three jobs


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_watch_many_resumes_through_a_killed_web_worker(
    stack_env: dict[str, str], worker: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """SIGKILL of the gunicorn worker serving a watch_many of 4 jobs (the master starts
    another): the one multiplexed watch reconnects with its composite cursor and each job
    still gets exactly its log, once; an unknown job gets its error event and the watch
    ends when the real jobs have. Then the last cursor, given to a new watch, resumes
    after the end: nothing more."""
    master, base = gunicorn_web(stack_env, tmp_path / "web.log")
    paths: list[str] = []
    try:
        with Client(base, max_retries=20, http=counting(base, paths)) as client:
            jobs = [client.submit("imagine", {**QUICK, "steps": 8, "seed": n}) for n in range(4)]
            paths.clear()
            events: list[Event] = []
            for event in client.watch_many([*jobs, "A" * 22]):
                events.append(event)
                if event.kind == "progress" and len(paths) == 1:
                    (web_worker,) = children(master.pid)
                    os.kill(web_worker, signal.SIGKILL)
                    paths.append("killed")
            cursor = [e.cursor for e in events if e.cursor][-1]
            assert list(client.watch_many([*jobs, "A" * 22], last_event_id=cursor)) == []
    finally:
        master.stop()
    assert paths[:2] == ["/jobs/stream", "killed"] and len(paths) >= 3  # it reconnected
    assert set(paths) == {"/jobs/stream", "killed"}  # and only ever on the one route
    for job in jobs:
        mine = [e for e in events if e.job_id == job.id]
        assert ids(mine) == logged(rds, job.id)
        assert mine[-1].kind == "done"
    errors = [(e.job_id, e.data["code"]) for e in events if e.kind == "error"]
    assert errors == [("A" * 22, "not_found")]


def test_async_client_submit_watch_wait_and_watch_many(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """AsyncClient has the same methods: watch is the log, wait the result, watch_many each log."""

    async def scenario() -> None:
        async with AsyncClient(web) as client:
            job = await client.submit("imagine", QUICK)
            events = [event async for event in client.watch(job)]
            assert ids(events) == logged(rds, job.id)
            assert (await client.wait(job, timeout=30))["width"] == 64
            jobs = [await client.submit("imagine", {**QUICK, "seed": n}) for n in (1, 2)]
            merged = [event async for event in client.watch_many(jobs)]
            for other in jobs:
                assert ids([e for e in merged if e.job_id == other.id]) == logged(rds, other.id)
            assert [e async for e in client.watch_many([])] == []
            with pytest.raises(ApiError) as caught:
                await client.submit("imagine", {"prompt": ""})
            assert caught.value.status == 422 and "prompt" in caught.value.fields

    # A loop of its own on a thread of its own: an earlier test (Playwright's sync API) may
    # leave an event loop running in this thread, where asyncio.run() refuses to start.
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as exc:  # re-raised below, in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the asyncio scenario did not finish"
    if failures:
        raise failures[0]


def test_custom_events_arrive_typed_and_delta_text_joins(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """log, step, delta and any custom kind come through as Events in log order; DeltaText
    joins the deltas; the job's failure ends the watch."""
    with Client(web) as client:
        blocker = client.submit("imagine", LONG)
        job = client.submit("imagine", QUICK)
        events_log = JobEvents(rds)
        for kind, data in [
            ("log", {"message": "Reading file 1 of 2", "level": "info"}),
            ("step", {"name": "palette", "index": 2, "total": 5}),
            ("delta", {"text": "Hel"}),
            ("tool_call", {"name": "search"}),
            ("delta", {"text": "lo"}),
            ("failed", {"error": "stopped by the test"}),
        ]:
            events_log.publish(job.id, kind, data)
        events = list(client.watch(job))
        client.cancel(blocker)
    assert ids(events) == logged(rds, job.id)
    text = DeltaText()
    for event in events:
        text.feed(event)
    assert str(text) == "Hello"
    assert [e.message for e in events if e.kind == "log"] == ["Reading file 1 of 2"]
    assert [e.data for e in events if e.kind == "tool_call"] == [{"name": "search"}]
    assert events[-1].error == "stopped by the test"


def test_signed_mode_uses_the_jobs_token(
    stack_env: dict[str, str], worker: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """With job tokens on, the client sends the token from the 202 on every job route;
    without it the API's 403 comes back typed; client.job(id, token) attaches to a job,
    and watch_many sends each job's token (a job without one gets a bad_token error event)."""
    env = {**stack_env, "JOBCAST_SIGNING_KEY": "a-test-signing-key-of-some-length"}
    proc, base = gunicorn_web(env, tmp_path / "signed.log")
    try:
        with Client(base) as client, Client(base) as stranger, Client(base) as friend:
            job = client.submit("imagine", QUICK)
            assert job.token and "token=" in job.urls["stream"]
            assert client.wait(job.id, timeout=60)["width"] == 64
            with pytest.raises(ApiError) as caught:
                stranger.status(job.id)
            assert ids(list(friend.watch(friend.job(job.id, job.token)))) == logged(rds, job.id)
            handle = friend.job(job.id, job.token)
            many = list(friend.watch_many([handle, stranger.job("A" * 22)]))
            assert ids([e for e in many if e.job_id == job.id]) == logged(rds, job.id)
            assert [(e.job_id, e.data["code"]) for e in many if e.kind == "error"] == [
                ("A" * 22, "bad_token")
            ]
    finally:
        proc.stop()
    assert (caught.value.status, caught.value.code) == (403, "bad_token")


def test_idempotency_key_gives_back_the_same_job(web: str, worker: Proc, rds: redis.Redis) -> None:
    """Submitting twice with one Idempotency-Key makes one job; a bad key is a typed 400."""
    with Client(web) as client:
        first = client.submit("imagine", QUICK, idempotency_key="order-17")
        again = client.submit("imagine", QUICK, idempotency_key="order-17")
        with pytest.raises(ApiError) as caught:
            client.submit("imagine", QUICK, idempotency_key="no spaces allowed")
        client.wait(first, timeout=60)
    assert again.id == first.id
    assert (caught.value.status, caught.value.code) == (400, "bad_idempotency_key")


def test_async_watch_many_resumes_through_a_killed_web_worker(
    stack_env: dict[str, str], worker: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """AsyncClient.watch_many through a SIGKILLed gunicorn worker: it reconnects on the
    one multiplexed route and each of 3 jobs gets exactly its log, once."""
    master, base = gunicorn_web(stack_env, tmp_path / "web.log")
    paths: list[str] = []

    async def scenario() -> dict[str, list[Event]]:
        hook = [lambda request: _note(paths, request)]
        http = httpx.AsyncClient(base_url=base, timeout=10, event_hooks={"request": hook})
        async with AsyncClient(base, max_retries=20, http=http) as client:
            jobs = [await client.submit("imagine", {**QUICK, "steps": 8}) for _ in range(3)]
            paths.clear()
            got: dict[str, list[Event]] = {job.id: [] for job in jobs}
            async for event in client.watch_many(jobs):
                got[event.job_id].append(event)
                if event.kind == "progress" and len(paths) == 1:
                    (web_worker,) = children(master.pid)
                    os.kill(web_worker, signal.SIGKILL)
                    paths.append("killed")
            return got

    results: list[dict[str, list[Event]]] = []
    failures: list[BaseException] = []

    def run() -> None:  # a loop of its own (see the asyncio test above)
        try:
            results.append(asyncio.run(scenario()))
        except BaseException as exc:  # re-raised below, in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run)
    try:
        thread.start()
        thread.join(120)
    finally:
        master.stop()
    assert not thread.is_alive(), "the asyncio scenario did not finish"
    if failures:
        raise failures[0]
    assert paths[:2] == ["/jobs/stream", "killed"] and len(paths) >= 3
    assert set(paths) == {"/jobs/stream", "killed"}
    for job_id, events in results[0].items():
        assert ids(events) == logged(rds, job_id)
        assert events[-1].kind == "done"


async def _note(paths: list[str], request: httpx.Request) -> None:
    paths.append(request.url.path)
