"""Hardening of the line and its edges: no ghosts, no stray keys, readable images.

Real processes throughout: redis-server, a celery worker, gunicorn gevent servers and the
monitor (``python -m web.cli monitor``).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from support import (
    Proc,
    RedisServer,
    celery_worker,
    collect,
    gunicorn_web,
    logged,
    monitor_ready,
    post_job,
    wait_until,
)

from tasks.app import create_celery
from tasks.config import Settings
from tasks.events import JobEvents
from tasks.retention import Sweeper
from tasks.submit import broker_message, submit, task_fields

FETCH_AND_DIE = """
import os
from tasks.app import create_celery
message = create_celery().connection_for_write().default_channel.basic_get("jobcast", no_ack=False)
print(message.headers["id"], flush=True)
os._exit(0)
"""
SMALL = {"prompt": "a small one", "width": 64, "height": 64, "steps": 2, "seed": 7}


def _state(rds: redis.Redis, job_id: str) -> str | None:
    raw = rds.hget(f"jobcast:job:{{{job_id}}}", "state")
    return raw.decode() if raw else None


def _monitor(env: dict[str, str], log: Path) -> Proc:
    env = {**env, "JOBCAST_SWEEP_SECONDS": "1", "JOBCAST_GHOST_GRACE_SECONDS": "1"}
    proc = Proc([sys.executable, "-m", "web.cli", "monitor"], env, log).start()
    wait_until(lambda: monitor_ready(proc, "leading"), 60, "the monitor to lead and follow")
    assert proc.alive(), proc.output()[-3000:]
    return proc


def test_the_enqueue_pushes_the_message_send_task_would(tmp_path: Path) -> None:
    """The message the enqueue script pushes is byte for byte what Celery's send_task
    pushes on the Redis broker (same list, same envelope), but for its delivery tag."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        app = create_celery(Settings.from_env({"REDIS_URL": server.url}))
        kwargs: dict[str, Any] = dict(SMALL)
        app.send_task("jobcast.imagine", kwargs=kwargs, task_id="j" * 22)
        key, payload = broker_message(app, "jobcast.imagine", "j" * 22, kwargs)
        sent = json.loads(server.client().lpop(key) or b"{}")
        ours = json.loads(payload)
        for message in (sent, ours):
            assert message["properties"].pop("delivery_tag")
        assert key == "jobcast" and ours == sent
    finally:
        server.stop()


def test_a_web_killed_right_after_the_enqueue_leaves_a_job_that_runs(
    stack_env: dict[str, str], worker: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """The web process dies right after the enqueue script (before it could answer):
    the job is in line *with* its task message, so a worker runs it to `done`."""
    env = {**stack_env, "JOBCAST_TEST_CRASH_AFTER_ENQUEUE": "1"}
    proc, base = gunicorn_web(env, tmp_path / "web.log")
    try:
        with pytest.raises(httpx.HTTPError):
            httpx.post(base + "/imagine", json=SMALL, timeout=30)
        job_id = wait_until(lambda: _only_job(rds), 30, "the job record")
        wait_until(lambda: _state(rds, job_id) == "succeeded", 90, "the worker to run it")
        assert logged(rds, job_id)[-1][1] == "done"
        assert rds.zcard("jobcast:queue") == 0
    finally:
        proc.stop()


def _only_job(rds: redis.Redis) -> str | None:
    keys = [k.decode() for k in rds.scan_iter("jobcast:job:{*}", count=1000)]
    jobs = [k[len("jobcast:job:{") : -1] for k in keys if k.endswith("}")]
    return jobs[0] if len(jobs) == 1 else None


def test_the_sweep_sends_a_ghost_again_and_fails_one_it_cannot(
    stack_env: dict[str, str], worker: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """Jobs in line with no broker message (a web died between the script and send_task):
    the monitor's sweep sends one again from its record (a worker then runs it) and ends
    one whose record cannot be sent (made by an older version) `failed`, with a reason."""
    events = JobEvents(rds)
    healable, orphan = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    kwargs = dict(SMALL)
    events.enqueue(healable, {"prompt": SMALL["prompt"], **task_fields("jobcast.imagine", kwargs)})
    events.enqueue(orphan, {"prompt": "no task fields"})
    monitor = _monitor(stack_env, tmp_path / "monitor.log")
    try:
        wait_until(lambda: _state(rds, healable) == "succeeded", 90, "the ghost to run")
        wait_until(lambda: _state(rds, orphan) == "failed", 30, "the orphan to fail")
    finally:
        monitor.stop()
    failed = json.loads(rds.hget(f"jobcast:job:{{{orphan}}}", "last:failed") or b"{}")
    assert "cannot be sent again" in failed["error"]
    assert (
        rds.zcard("jobcast:queue") == 0
        and rds.hget(f"jobcast:job:{{{healable}}}", "resent") == b"1"
    )


def test_cancel_of_an_unknown_or_expired_job_writes_nothing(web: str, rds: redis.Redis) -> None:
    """DELETE of an id with no record answers 404 and creates no key (a record without a
    TTL); cancelling a running job keeps its record's TTL."""
    gone = secrets.token_urlsafe(16)
    response = httpx.delete(f"{web}/imagine/{gone}", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert not rds.exists(f"jobcast:job:{{{gone}}}")
    running, events = secrets.token_urlsafe(16), JobEvents(rds, retention_seconds=600)
    events.publish(running, "started", {"worker": "w"})  # a job no worker runs
    response = httpx.delete(f"{web}/imagine/{running}", timeout=10)
    assert response.status_code == 202 and response.json()["state"] == "cancelling"
    key = f"jobcast:job:{{{running}}}"
    assert rds.hget(key, "cancel") == b"1" and 0 < rds.ttl(key) <= 600
    events.publish(running, "cancelled", {})  # as its worker would


def test_images_are_readable_by_others_and_stale_temp_files_are_swept(
    stack_env: dict[str, str], web: str, worker: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """A finished image is mode 0644 (less the umask), so a web running as another user
    can serve it; the sweep deletes a killed worker's old `.tmp` files, not fresh ones."""
    job = post_job(web, **SMALL)
    assert collect(web, job["jobId"])[-1].event == "done"
    media = Path(stack_env["JOBCAST_MEDIA_DIR"])
    mode = stat.S_IMODE((media / job["jobId"] / "image.png").stat().st_mode)
    assert mode == 0o644 & ~_umask(), oct(mode)
    stale, fresh = media / "dead.png.0a1b2c.tmp", media / "live.png.3d4e5f.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half a png")
    eleven_minutes_ago = time.time() - 11 * 60
    os.utime(stale, (eleven_minutes_ago, eleven_minutes_ago))
    monitor = _monitor(stack_env, tmp_path / "monitor.log")
    try:
        wait_until(lambda: not stale.exists(), 30, "the sweep to remove the stale temp file")
    finally:
        monitor.stop()
    assert fresh.exists()
    fresh.unlink()


def _umask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return 0o022


def test_a_stopped_web_process_leaves_metrics_within_the_bound(
    stack_env: dict[str, str], web: str, rds: redis.Redis, tmp_path: Path
) -> None:
    """After a web process stops, its field in `web:streams` disappears within the stale
    bound (10 s + a flush) though nobody scrapes /metrics."""
    httpx.get(web + "/healthz", timeout=10)  # the session server reports from now on
    proc, _ = gunicorn_web(stack_env, tmp_path / "web.log")

    def fields() -> set[str]:
        return {k.decode() for k in rds.hkeys("jobcast:web:streams")}

    before = wait_until(lambda: len(fields()) >= 2 and fields(), 30, "both processes to report")
    proc.stop()
    stopped = time.monotonic()
    wait_until(lambda: len(fields()) == len(before) - 1, 30, "the stopped process's field to go")
    assert time.monotonic() - stopped < 20


def test_the_sweep_never_sends_again_a_job_whose_message_a_worker_holds(
    redis_server: RedisServer, rds: redis.Redis
) -> None:
    """A job in line whose message sits in kombu's `unacked` hash (a worker reserved it)
    is not a ghost, however many sweeps run; a real ghost beside it is sent exactly once."""
    settings = Settings.from_env(
        {"REDIS_URL": redis_server.url, "JOBCAST_GHOST_GRACE_SECONDS": "1"}
    )
    app = create_celery(settings)
    sweeper = Sweeper(settings, rds, app)
    held, ghost = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    events = JobEvents(rds)
    for job_id in (held, ghost):
        kwargs = dict(SMALL)
        events.enqueue(job_id, task_fields("jobcast.imagine", kwargs))
    _, payload = broker_message(app, "jobcast.imagine", held, dict(SMALL))
    tag = json.loads(payload)["properties"]["delivery_tag"]
    rds.hset("unacked", tag, json.dumps([json.loads(payload), "", "jobcast"]))
    try:
        wait_until(lambda: len(sweeper._waiting_longer_than(1)) == 2, 30, "the grace time")
        for _ in range(3):
            sweeper.heal_line()
    finally:
        rds.hdel("unacked", tag)
    assert rds.hget(f"jobcast:job:{{{held}}}", "resent") is None
    assert rds.hget(f"jobcast:job:{{{ghost}}}", "resent") == b"1"


def test_the_sweep_finds_messages_in_the_queue_a_task_is_routed_to(
    redis_server: RedisServer, rds: redis.Redis
) -> None:
    """With `task_routes` sending jobs to their own queue, a job waiting there with its
    message is no ghost: however many sweeps run, it is never sent again nor failed, and
    its queue holds exactly its one message."""
    settings = Settings.from_env(
        {"REDIS_URL": redis_server.url, "JOBCAST_GHOST_GRACE_SECONDS": "1"}
    )
    app = create_celery(settings, task_routes={"jobcast.imagine": {"queue": "images"}})
    sweeper = Sweeper(settings, rds, app)
    job_id = secrets.token_urlsafe(16)
    kwargs = dict(SMALL)
    submit(app, JobEvents(rds), settings, job_id, "jobcast.imagine", kwargs, {"prompt": "x"})
    assert rds.llen("images") == 1
    wait_until(lambda: len(sweeper._waiting_longer_than(1)) == 1, 30, "the grace time")
    for _ in range(8):  # enough to send it again three times and then fail it
        sweeper.heal_line()
    assert _state(rds, job_id) == "queued"
    assert rds.hget(f"jobcast:job:{{{job_id}}}", "resent") is None
    assert rds.llen("images") == 1


def test_a_process_keeps_reporting_its_streams_after_redis_refuses_a_write(
    tmp_path: Path,
) -> None:
    """Redis refusing writes for a while (maxmemory reached, `noeviction`) does not stop a
    web process from reporting its streams: once Redis takes writes again, its field in
    `web:streams` is fresh again (it used to freeze, then vanish from /metrics for good)."""
    redis_server = RedisServer(tmp_path / "redis").start()  # its own: no other reporters
    env = {**os.environ, "REDIS_URL": redis_server.url, "JOBCAST_MEDIA_DIR": str(tmp_path)}
    proc, _ = gunicorn_web(env, tmp_path / "web.log")
    rds = redis_server.client()
    try:
        wait_until(lambda: rds.hlen("jobcast:web:streams") == 1, 30, "the first report")
        rds.config_set("maxmemory-policy", "noeviction")
        rds.config_set("maxmemory", "1")
        try:
            wait_until(lambda: "maxmemory" in proc.output(), 30, "a report refused")
        finally:
            rds.config_set("maxmemory", "0")
        frozen = rds.hgetall("jobcast:web:streams")
        wait_until(
            lambda: rds.hgetall("jobcast:web:streams") not in ({}, frozen), 30, "a fresh report"
        )
    finally:
        proc.stop()
        redis_server.stop()


def test_a_message_fetched_by_a_consumer_that_died_before_starting_runs_again(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    """A worker killed between fetching a job's message and its first event leaves the
    message in kombu's unacked hash and the job queued, unknown to the monitor (the soak
    found it): the sweep hands the message out again (kombu's own restore), and a worker
    runs the job, instead of the line waiting out the visibility timeout (an hour)."""
    server = RedisServer(tmp_path / "redis").start()  # no session worker may take it first
    rds = server.client()
    env = {**stack_env, "REDIS_URL": server.url}
    try:
        settings = Settings.from_env(env)
        app = create_celery(settings)
        job_id = secrets.token_urlsafe(16)
        kwargs = dict(SMALL)
        fields = {"prompt": SMALL["prompt"]}
        assert submit(app, JobEvents(rds), settings, job_id, "jobcast.imagine", kwargs, fields)
        # A consumer that takes the message and dies (a clean close would give it back).
        took = Proc([sys.executable, "-c", FETCH_AND_DIE], env, tmp_path / "fetch.log").start()
        wait_until(lambda: not took.alive(), 30, "the consumer to take the message and die")
        assert job_id in took.output()
        assert rds.llen("jobcast") == 0 and rds.hlen("unacked") == 1
        monitor = _monitor(env, tmp_path / "monitor.log")
        try:
            wait_until(lambda: rds.llen("jobcast") == 1, 30, "the message back on its queue")
            assert _state(rds, job_id) == "queued"
            worker = celery_worker(env, tmp_path / "worker.log", "stalled")
            try:
                wait_until(lambda: _state(rds, job_id) == "succeeded", 60, "the job to run")
            finally:
                worker.stop()
        finally:
            monitor.stop()
        assert [phase for _, phase in logged(rds, job_id)].count("started") == 1
    finally:
        rds.close()
        server.stop()
