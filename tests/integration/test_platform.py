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
from support import (
    Proc,
    Received,
    collect,
    gunicorn_web,
    iter_events,
    jobcast_monitor,
    logged,
    platform_worker,
    wait_until,
)

import jobcast
from tasks.config import Settings
from web.cli import worker_argv

QUEUE = "user"  # the session's demo worker consumes "jobcast"; user tasks have their own


@pytest.fixture(scope="module")
def user_worker(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:  # fmt: skip
    """``celery -A platform_app worker -Q user``: the user's app, not Jobcast's."""
    log = tmp_path_factory.mktemp("logs") / "user-worker.log"
    proc = platform_worker(stack_env, log, QUEUE, "user")
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

    def jobs() -> set[bytes]:
        return set(rds.scan_iter("jobcast:job:*")) | set(rds.scan_iter("jobcast:idem:*"))

    before, waiting = jobs(), rds.llen(QUEUE)
    with pytest.raises(ValueError, match="idempotency key"):
        submit(user_app, "user.count", n=1, key="has space")
    with pytest.raises(ValueError, match="metadata"):
        submit(user_app, "user.count", n=1, metadata={"blob": "x" * 5000})
    assert jobs() == before and rds.llen(QUEUE) == waiting


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


def _ended(handle: jobcast.JobHandle) -> str | None:
    state = handle.status()["state"]
    return state if state in ("succeeded", "failed", "cancelled") else None


def test_a_body_that_raises_with_unsendable_text_held_still_ends_failed(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A delta of text with a lone surrogate (no UTF-8 for it) raises in the body; the
    job still ends `failed` — with the JobError's message when the body raises one —
    instead of staying `running` with no terminal event; the text sent before is kept."""
    crashed = submit(user_app, "user.misbehave", how="surrogate-then-raise")
    told = submit(user_app, "user.misbehave", how="held-text-then-joberror")
    assert wait_until(lambda: _ended(crashed), 20, "the crashed job to end") == "failed"
    assert wait_until(lambda: _ended(told), 20, "the failed job to end") == "failed"
    with pytest.raises(jobcast.JobError, match="It went wrong after some text"):
        told.wait(timeout=5)
    deltas = [p for _, p in logged(rds, told.id) if p == "delta"]
    assert len(deltas) == 1


def test_text_of_control_characters_longer_than_an_event_is_split_too(
    web: str, user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """20,000 control characters (6 bytes each as JSON) go out as several deltas that
    concatenate to the text, and the job ends done, not failed with EventTooLarge."""
    handle = submit(user_app, "user.misbehave", how="control-text")
    events = collect(web, handle.id)
    assert events[-1].event == "done", events[-1]
    assert "".join(e.data["text"] for e in events if e.event == "delta") == "\x01" * 20_000


def test_a_body_that_rejects_its_message_ends_the_job(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """``raise Reject(requeue=False)`` drops the message, so no attempt follows: the job
    ends `failed` rather than `running` until its retention."""
    handle = submit(user_app, "user.misbehave", how="reject")
    assert wait_until(lambda: _ended(handle), 20, "the rejected job to end") == "failed"


def test_retry_counts_as_an_attempt_up_to_the_limit(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """``self.retry()`` runs the body again as the next attempt (started says so); a job
    retrying past JOBCAST_MAX_ATTEMPTS (3) ends failed, one terminal event, not running."""
    ok = submit(user_app, "user.retrying", times=2)
    assert ok.wait(timeout=30) == {"attempt": 3}
    assert [p for _, p in logged(rds, ok.id)].count("started") == 3
    over = submit(user_app, "user.retrying", times=10)
    with pytest.raises(jobcast.JobError, match="Gave up after 3 attempts"):
        over.wait(timeout=30)
    log = [p for _, p in logged(rds, over.id)]
    assert log.count("started") == 4 and log.count("log") == 3
    assert over.status()["state"] == "failed" and rds.zscore("jobcast:running", over.id) is None


def test_waiting_on_an_unknown_job_says_so(user_app: Celery, rds: redis.Redis) -> None:
    """wait() on an id no job has (never made, or expired) raises JobError saying so,
    with or without a timeout, instead of blocking forever (or timing out)."""
    handle = jobcast.JobHandle(
        id="no-such-job", kind=None, queue=None, position=0, queue_length=0,
        eta_seconds=None, created=False, _ctx=user_app.jobcast,
    )  # fmt: skip
    with pytest.raises(jobcast.JobError, match="unknown or has expired"):
        handle.wait(timeout=5)
    with pytest.raises(jobcast.JobError, match="unknown or has expired"):
        handle.wait(timeout=0)


def test_a_job_task_sent_without_submit_runs_nothing_and_says_so(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """``task.apply_async()`` instead of ``jobcast.submit()`` makes no job record: the
    worker runs nothing, writes nothing, and logs a warning naming the task and the way
    to submit it, instead of a silent success."""
    result = user_app.tasks["user.count"].apply_async(kwargs={"n": 3}, queue=QUEUE)
    warned = f"job {result.id} (user.count) has no job record"
    wait_until(lambda: warned in user_worker.output(), 20, "the worker's warning")
    assert "jobcast.submit" in user_worker.output()
    assert not rds.exists(f"jobcast:job:{{{result.id}}}")
    assert not rds.exists(f"jobcast:job:{{{result.id}}}:events")


def test_a_file_name_the_temp_sweep_would_remove_is_refused() -> None:
    """Half-written files are ``*.tmp``, which the sweep deletes after ten minutes, so
    ``save_file("notes.tmp")`` is refused (ValueError, outside a job too) rather than
    listed in `done` and gone long before the retention."""
    with pytest.raises(ValueError, match=r"\.tmp"):
        jobcast.JobContext(None, None).save_file("notes.tmp", b"kept for a day")
    assert jobcast.JobContext(None, None).save_file("notes.txt", b"fine") is None


def test_submit_refuses_a_job_id_that_is_taken_or_not_an_id(
    user_app: Celery, rds: redis.Redis
) -> None:
    """``submit(job_id=...)`` of an id a job has already raises ValueError (not a handle
    saying created at position -2), and an id that is no URL-safe token (``../x``, which
    would put the job's files outside the media folder) is refused before any write."""
    first = jobcast.submit(user_app.tasks["user.spin"].s(limit=1), queue=QUEUE, job_id="my-id_1")
    assert first.created and first.id == "my-id_1"
    created = rds.hget("jobcast:job:{my-id_1}", "created")
    for bad in ("my-id_1", "../escape", "a/b", "", "x" * 65, "nul\x00"):
        with pytest.raises(ValueError, match="job id"):
            jobcast.submit(user_app.tasks["user.spin"].s(limit=1), queue=QUEUE, job_id=bad)
        if bad != "my-id_1":
            assert not list(rds.scan_iter(f"jobcast:job:{{{bad}}}*"))
    # The job that has the id is untouched (its worker may be running it meanwhile).
    assert rds.hget("jobcast:job:{my-id_1}", "created") == created


def test_an_idempotency_key_is_scoped_to_exactly_its_kind(
    user_app: Celery, rds: redis.Redis
) -> None:
    """Kind ``a`` with key ``b:c`` and kind ``a:b`` with key ``c`` are two jobs: the key's
    scope cannot be forged by a colon in either."""
    task = user_app.tasks["user.spin"]
    one = jobcast.submit(task.s(limit=1), queue=QUEUE, kind="a", key="b:c")
    two = jobcast.submit(task.s(limit=1), queue=QUEUE, kind="a:b", key="c")
    assert two.created and two.id != one.id
    again = jobcast.submit(task.s(limit=1), queue=QUEUE, kind="a:b", key="c")
    assert again.id == two.id and not again.created


def test_a_job_error_whose_message_cannot_be_sent_still_fails_the_job(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A JobError whose message is past the event limit (a tool's whole output) or has no
    UTF-8 ends the job `failed` with the task's generic message, instead of leaving it
    `running` because its `failed` event could not be written."""
    long = submit(user_app, "user.misbehave", how="long-error")
    bad = submit(user_app, "user.misbehave", how="surrogate-error")
    for handle in (long, bad):
        with pytest.raises(jobcast.JobError, match=r"^The job failed\.$"):
            handle.wait(timeout=20)


def test_a_job_past_its_hard_time_limit_ends_failed(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """A job task with Celery's ``time_limit`` (2 s) whose body runs longer is killed by
    Celery, which acks its message: the job ends `failed` (no attempt would follow)
    instead of `running` with no terminal event until its retention."""
    handle = submit(user_app, "user.overtime", seconds=30)
    with pytest.raises(jobcast.JobError):
        handle.wait(timeout=25)
    assert handle.status()["state"] == "failed"
    assert rds.zscore("jobcast:running", handle.id) is None


def test_a_body_raising_a_base_exception_ends_the_job_failed(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """asyncio.CancelledError (a BaseException, not an Exception) out of a body: the pool
    reports it and acks, so the job ends `failed` with the generic message rather than
    staying `running` with no terminal event."""
    handle = submit(user_app, "user.misbehave", how="async-cancelled")
    with pytest.raises(jobcast.JobError, match=r"^The job failed\.$"):
        handle.wait(timeout=20)
    assert rds.zscore("jobcast:running", handle.id) is None


def test_a_job_cancelled_between_attempts_does_not_run_again(
    user_worker: Proc, user_app: Celery, rds: redis.Redis
) -> None:
    """Cancelled while it waits out a ``self.retry(countdown=3)``, the job (`cancelling`)
    ends `cancelled` when the next attempt comes, before its body runs, instead of
    running it to `done` because the body never reached a check."""
    handle = submit(user_app, "user.retrying", times=1, countdown=3)
    retried = f"Task user.retrying[{handle.id}] retry"
    wait_until(lambda: retried in user_worker.output(), 20, "the first attempt to retry")
    assert handle.cancel() == "cancelling"
    with pytest.raises(jobcast.JobCancelled):
        handle.wait(timeout=20)
    assert [p for _, p in logged(rds, handle.id)].count("log") == 1


def test_the_sweep_finds_a_job_message_in_the_queue_submit_named(
    user_app: Celery, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """A job submitted to a queue of its own (``queue="slow"``, no worker on it yet) that
    waits past the ghost grace time keeps its one message: the monitor's sweeper (built
    on Jobcast's app, which knows no such queue) neither sends it again nor, after three
    resends, fails a job that is only waiting its turn."""
    from tasks.app import create_celery
    from tasks.retention import Sweeper

    settings = Settings.from_env({**stack_env, "JOBCAST_GHOST_GRACE_SECONDS": "1"})
    sweeper = Sweeper(settings, rds, create_celery(settings))
    handle = jobcast.submit(user_app.tasks["user.spin"].s(limit=1), queue="slow")
    assert rds.llen("slow") == 1
    wait_until(lambda: handle.id in sweeper._waiting_longer_than(1), 30, "the grace time")
    for _ in range(8):  # enough to send it again three times and then fail it
        sweeper.heal_line()
    assert handle.status()["state"] == "queued"
    assert rds.hget(f"jobcast:job:{{{handle.id}}}", "resent") is None
    assert rds.llen("slow") == 1
    rds.delete("slow")


def test_configure_celery_keeps_the_apps_own_transport_options(stack_env: dict[str, str]) -> None:
    """An app whose broker transport options say where its messages live (a key prefix,
    priority steps) keeps them after configure_celery, which only sets its own three
    (visibility timeout and the unacked restore pace) on top."""
    app = Celery("theirs", broker=stack_env["REDIS_URL"])
    app.conf.broker_transport_options = {"global_keyprefix": "theirs:", "priority_steps": [0, 5]}
    jobcast.configure_celery(
        app, Settings.from_env({**stack_env, "JOBCAST_VISIBILITY_TIMEOUT": "60"})
    )
    options = app.conf.broker_transport_options
    assert options["global_keyprefix"] == "theirs:" and options["priority_steps"] == [0, 5]
    assert options["visibility_timeout"] == 60
    app.jobcast.redis.close()


@pytest.fixture(scope="module")
def user_web(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # fmt: skip
    """A web server that imports the user's module (JOBCAST_IMPORTS): it offers the
    user's kind ``count`` at ``POST /jobs/count``."""
    env = {
        **stack_env,
        "JOBCAST_IMPORTS": "platform_app",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    proc, base = gunicorn_web(env, tmp_path_factory.mktemp("logs") / "user-web.log")
    yield base
    proc.stop()


def test_a_kind_the_user_declares_is_offered_over_http_and_documented(
    user_web: str, user_worker: Proc, rds: redis.Redis
) -> None:
    """``POST /jobs/count`` validates by the user's model (a 422 naming ``n``, nothing
    written), queues in the kind's own line, streams to done through ``/jobs/<id>/stream``,
    and /openapi.json carries the model's schema with its limits."""
    before = set(rds.scan_iter("jobcast:job:*"))
    bad = httpx.post(f"{user_web}/jobs/count", json={"n": 0})
    assert bad.status_code == 422 and set(bad.json()["error"]["fields"]) == {"n"}
    assert set(rds.scan_iter("jobcast:job:*")) == before
    made = httpx.post(f"{user_web}/jobs/count", json={"n": 12})
    assert made.status_code == 202, made.text
    job = made.json()
    assert job["kind"] == "count" and job["stream"] == f"/jobs/{job['jobId']}/stream"
    events = collect(user_web, job["jobId"])
    assert events[-1].event == "done" and events[-1].data["counted"] == 12
    status = httpx.get(f"{user_web}/jobs/{job['jobId']}").json()
    assert status["kind"] == "count" and status["queue"] == QUEUE
    doc = httpx.get(f"{user_web}/openapi.json").json()
    assert "/jobs/count" in doc["paths"]
    schema = json.dumps(doc["components"]["schemas"])
    assert '"maximum": 1000' in schema
