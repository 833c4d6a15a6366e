"""The platform API end to end: a user's own tasks (tests/platform_app.py, outside
``tasks/``) submitted from Python, run by a real worker of the user's own Celery app,
watched through a real gunicorn server."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from support import Proc, Received, collect, iter_events, jobcast_monitor, logged, wait_until

import jobcast
from tasks.config import Settings
from web.cli import worker_argv

QUEUE = "user"  # the session's demo worker consumes "jobcast"; user tasks have their own


@pytest.fixture(scope="module")
def user_worker(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:  # fmt: skip
    """``celery -A platform_app worker -Q user``: the user's app, not Jobcast's."""
    argv = worker_argv(2, "-P", "prefork", "-Q", QUEUE, "--hostname=user@%h")
    argv[argv.index("tasks")] = "platform_app"
    env = {**stack_env, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = Proc(argv, env, tmp_path_factory.mktemp("logs") / "user-worker.log").start()
    wait_until(lambda: "ready." in proc.output() or not proc.alive(), 60, "the user's worker")
    assert proc.alive(), proc.output()[-3000:]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def user_app(stack_env: dict[str, str]) -> Iterator[Celery]:
    """The user's Celery app as a web view or a script would hold it."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    import platform_app

    settings = Settings.from_env(stack_env)
    platform_app.app.conf.broker_url = settings.redis_url
    jobcast.configure_celery(platform_app.app, settings)
    yield platform_app.app
    platform_app.app.jobcast.redis.close()


def phases(events: list[Received]) -> list[str]:
    return [e.event for e in events if e.id is not None]


def submit(user_app: Celery, name: str, **kwargs: Any) -> jobcast.JobHandle:
    options = {k: kwargs.pop(k) for k in ("key", "metadata") if k in kwargs}
    return jobcast.submit(user_app.tasks[name].s(**kwargs), queue=QUEUE, **options)


def test_a_user_task_streams_every_kind_in_order_and_ends_with_its_result(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """queued → started → step/log/progress … → done with the return value; the stream
    is exactly the job's log, and the handle's wait() returns the same result."""
    handle = submit(user_app, "user.count", n=40, metadata={"user": "u-7", "plan": "pro"})
    assert handle.created and handle.position >= 1 and handle.queue == QUEUE
    assert handle.stream_url == f"/jobs/{handle.id}/stream"
    events = collect(web, handle.id)
    assert [(e.id, e.event) for e in events if e.id] == logged(rds, handle.id)
    seen = phases(events)
    assert seen[:2] == ["queued", "started"] and seen[-1] == "done"
    assert seen.count("log") == 40 and seen.count("step") == 5
    assert [e.data["index"] for e in events if e.event == "step"] == [1, 2, 3, 4, 5]
    percents = [e.data["percent"] for e in events if e.event == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100
    done = events[-1].data
    assert done["counted"] == 40 and done["meta"] == {"user": "u-7", "plan": "pro"}
    assert handle.wait(timeout=10) == done
    status = handle.status()
    assert status["state"] == "succeeded" and status["result"] == done
    assert status["meta"] == {"user": "u-7", "plan": "pro"} and status["kind"] == "user.count"


def test_a_long_log_resumes_exactly_from_any_event(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A job of hundreds of events, read again from several of its ids, continues with
    exactly the events after that id: none twice, none missing."""
    handle = submit(user_app, "user.count", n=300)
    handle.wait(timeout=60)
    log = logged(rds, handle.id)
    assert len(log) > 300
    for cut in (1, 57, 150, 299, len(log) - 2):
        rest = collect(web, handle.id, last_id=log[cut][0])
        assert [(e.id, e.event) for e in rest if e.id] == log[cut + 1 :]


def test_a_safe_error_is_shown_and_a_crash_shows_only_the_generic_message(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """JobError's message reaches watchers; any other exception fails the job with the
    task's generic message, and its text (a path, here) never reaches the stream."""
    told = submit(user_app, "user.count", n=10, fail="job")
    crashed = submit(user_app, "user.count", n=10, fail="crash")
    first = collect(web, told.id)[-1]
    assert (
        first.event == "failed" and first.data["error"] == "Stopped at 5: the input asked for it."
    )
    last = collect(web, crashed.id)
    assert last[-1].event == "failed" and last[-1].data["error"] == "The job failed."
    assert "shadow" not in json.dumps([e.data for e in last])
    with pytest.raises(jobcast.JobError, match="Stopped at 5"):
        told.wait(timeout=5)
    assert "RuntimeError: secret /etc/shadow" in user_worker.output()  # the logs have it


def test_cancelling_a_running_user_task_ends_it_with_cancelled(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """handle.cancel() on a running job: the body stops at its next progress call and
    the stream ends with `cancelled`."""
    handle = submit(user_app, "user.spin")
    stream = iter_events(web, handle.id)
    for event in stream:
        if event.event == "progress":
            break
    assert handle.cancel() == "cancelling"
    rest = [e.event for e in stream if e.id]
    assert rest[-1] == "cancelled"
    with pytest.raises(jobcast.JobCancelled):
        handle.wait(timeout=5)
    assert handle.cancel() == "cancelled"  # already over: its final state


def test_streamed_text_is_batched_into_few_delta_events(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """300 tokens at 60 per second arrive as a handful of `delta` events whose texts,
    concatenated, are the answer: not 300 entries in Redis."""
    handle = submit(user_app, "user.chat", tokens=300)
    events = collect(web, handle.id)
    deltas = [e.data["text"] for e in events if e.event == "delta"]
    done = events[-1]
    assert done.event == "done" and "".join(deltas) == done.data["text"]
    assert 3 <= len(deltas) <= 60, len(deltas)


def test_the_same_idempotency_key_returns_the_same_job(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A second submit with the key returns the first job (created False) and writes
    nothing; another key, or none, makes a new job."""
    first = submit(user_app, "user.count", n=5, key="order-42")
    again = submit(user_app, "user.count", n=999, key="order-42")
    other = submit(user_app, "user.count", n=5, key="order-43")
    assert again.id == first.id and not again.created and first.created
    assert other.id != first.id
    assert first.wait(timeout=30)["counted"] == 5
    assert len([p for _, p in logged(rds, first.id) if p == "queued"]) == 1


def test_bad_submit_options_are_refused_before_anything_is_written(
    user_app: Celery, rds: redis.Redis
) -> None:
    """A key with bad characters, oversized metadata, or a canvas raise ValueError and
    leave Redis as it was."""
    before = rds.dbsize()
    with pytest.raises(ValueError, match="idempotency key"):
        submit(user_app, "user.count", n=1, key="has space")
    with pytest.raises(ValueError, match="metadata"):
        submit(user_app, "user.count", n=1, metadata={"blob": "x" * 5000})
    assert rds.dbsize() == before


def test_a_user_job_shows_on_ops_and_metrics(
    web: str,
    user_worker: Proc,
    user_app: Celery,
    rds: redis.Redis,
    stack_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """While a user's job runs, the monitor lists it on its worker (task name and
    percent) and /metrics counts it; after, it counts as succeeded."""
    monitor = jobcast_monitor(stack_env, tmp_path / "monitor.log")
    try:
        handle = submit(user_app, "user.spin")
        snap = wait_until(lambda: _active(rds, handle.id), 30, "the job in the ops snapshot")
        assert snap["task"] == "user.spin"
        text = httpx.get(web + "/metrics").text
        assert 'jobcast_jobs{state="running"}' in text
        assert handle.cancel() == "cancelling"
        handle_done = wait_until(lambda: handle.status()["state"] == "cancelled", 30, "cancel")
        assert handle_done
    finally:
        monitor.stop()


def _active(rds: redis.Redis, job_id: str) -> dict[str, Any] | None:
    raw = rds.get("jobcast:ops:snapshot")
    if not raw:
        return None
    for row in json.loads(raw).get("workers", []):
        for job in row.get("jobs", []):
            if job["id"] == job_id:
                return dict(job)
    return None


def test_text_longer_than_an_event_is_split_and_an_oversized_result_fails_cleanly(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A 200 KB delta goes out as several events that concatenate to it; a result past
    the 64 KiB event limit fails the job with a message saying so (not a hung job)."""
    handle = submit(user_app, "user.oversize", text_bytes=200_000, result_bytes=70_000)
    events = collect(web, handle.id)
    text = "".join(e.data["text"] for e in events if e.event == "delta")
    assert text == "é" * 100_000 and sum(e.event == "delta" for e in events) >= 4
    assert events[-1].event == "failed"
    assert events[-1].data["error"] == "The job's result is too large to send; save it as a file."


def test_jobcasts_own_worker_runs_user_tasks_named_in_jobcast_imports(
    stack_env: dict[str, str], user_app: Celery, rds: redis.Redis, tmp_path: Path
) -> None:
    """With JOBCAST_IMPORTS=platform_app, ``celery -A tasks worker`` (what ``jobcast
    worker`` runs) knows the user's tasks and runs their jobs to done."""
    env = {
        **stack_env,
        "JOBCAST_IMPORTS": "platform_app",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    argv = worker_argv(1, "-P", "solo", "-Q", "imported", "--hostname=imported@%h")
    proc = Proc(argv, env, tmp_path / "worker.log").start()
    try:
        wait_until(lambda: "ready." in proc.output() or not proc.alive(), 60, "the worker")
        assert "user.count" in proc.output()  # the worker lists the tasks it knows
        handle = jobcast.submit(user_app.tasks["user.count"].s(n=3), queue="imported")
        assert handle.wait(timeout=30)["counted"] == 3
    finally:
        proc.stop()
