"""Several Celery queues, several lines: each queue's jobs have their own positions,
ETAs and counts, and only that queue's workers move them.

Jobs go to queues "a" and "b" through ``tasks.submit.submit(..., queue=...)`` (the demo
task ``jobcast.imagine``, which Celery sends to any queue by name); the session worker
consumes only the default queue, so they wait until a worker of their queue starts.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from support import (
    Proc,
    Received,
    RedisServer,
    celery_worker,
    iter_events,
    jobcast_monitor,
    wait_until,
)

from tasks.app import create_celery
from tasks.config import Settings
from tasks.events import Enqueued, JobEvents
from tasks.keys import Keys
from tasks.retention import Sweeper, sweep
from tasks.submit import submit, task_fields

TINY = {"width": 64, "height": 64, "steps": 1, "seed": 1}
MEDIUM = {"width": 256, "height": 256, "steps": 10, "seed": 1}
BLOCKER = {"width": 512, "height": 512, "steps": 60, "seed": 1}
A, B = Keys().line("a"), Keys().line("b")


@pytest.fixture
def app(stack_env: dict[str, str]) -> Celery:
    """A Celery client of the session's Redis, as a web process or a script has one."""
    return create_celery(Settings.from_env(stack_env))


def enqueue(app: Celery, queue: str | None, size: dict[str, int] = TINY) -> tuple[str, Enqueued]:
    """Submit one demo job to ``queue`` as any Python process would."""
    job_id = secrets.token_urlsafe(16)
    params: dict[str, Any] = {"prompt": f"a lighthouse for {queue}", **size}
    ctx = app.jobcast
    fields = {k: str(v) for k, v in params.items()}
    kwargs = dict(params)
    line = submit(
        app, ctx.events, ctx.settings, job_id, "jobcast.imagine", kwargs, fields, queue=queue
    )
    return job_id, line


def status(web: str, job_id: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{web}/imagine/{job_id}", timeout=10).json()
    return result


def state(rds: redis.Redis, job_id: str) -> bytes | None:
    raw: bytes | None = rds.hget(f"jobcast:job:{{{job_id}}}", "state")
    return raw


def scrape(web: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(web + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def positions(events: list[Received]) -> list[int]:
    return [e.data["position"] for e in events if e.event == "queued"]


class Watch:
    """Read a job's stream in a thread, keeping every event, until it ends."""

    def __init__(self, base: str, job_id: str) -> None:
        self.events: list[Received] = []
        self.thread = threading.Thread(target=self._run, args=(base, job_id), daemon=True)
        self.thread.start()

    def _run(self, base: str, job_id: str) -> None:
        for event in iter_events(base, job_id, timeout=120):
            self.events.append(event)

    def join(self) -> list[Received]:
        self.thread.join(60)
        assert not self.thread.is_alive(), "stream did not end"
        return self.events


@pytest.fixture
def worker_a(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    """A worker that consumes queue "a" only."""
    proc = celery_worker(stack_env, tmp_path / "worker-a.log", "only-a", queues="a")
    yield proc
    proc.stop()


@pytest.fixture
def monitor(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    proc = jobcast_monitor(stack_env, tmp_path / "monitor.log")
    yield proc
    proc.stop()


def test_two_queues_number_their_jobs_apart(
    web: str, worker: Proc, app: Celery, rds: redis.Redis
) -> None:
    """Jobs of queue "a" and of queue "b" get places 1, 2, ... in their own line; each
    record and status names its queue; each Celery message is in its queue's list."""
    a = [enqueue(app, "a") for _ in range(3)]
    b = [enqueue(app, "b") for _ in range(2)]
    assert [line.position for _, line in a] == [1, 2, 3]
    assert [line.position for _, line in b] == [1, 2]
    assert [line.queue_length for _, line in b] == [1, 2]
    assert rds.zcard(A.queue) == 3 and rds.zcard(B.queue) == 2
    assert rds.llen("a") == 3 and rds.llen("b") == 2
    assert rds.zcard("jobcast:queue") == 0 and rds.llen("jobcast") == 0
    assert {b"a", b"b"} <= rds.smembers("jobcast:lines")
    assert rds.hget(f"jobcast:job:{{{a[1][0]}}}", "queue") == b"a"
    snap = status(web, a[1][0])
    assert (snap["queue"], snap["position"], snap["queueLength"]) == ("a", 2, 3)
    snap = status(web, b[1][0])
    assert (snap["queue"], snap["position"], snap["queueLength"]) == ("b", 2, 2)


def test_a_queue_name_that_cannot_be_a_line_is_refused_and_writes_nothing(
    app: Celery, rds: redis.Redis
) -> None:
    """``submit(queue=...)`` with a name outside ``[A-Za-z0-9_.-]{1,64}`` raises a
    ValueError naming it, and leaves Redis as it was."""
    before = {
        key: rds.dump(key) for key in rds.scan_iter("*") if not key.startswith(b"jobcast:web:")
    }
    for bad in ("two words", "", "a" * 65, "x}{y", "a:b"):
        with pytest.raises(ValueError, match="queue name"):
            enqueue(app, bad)
    after = {
        key: rds.dump(key) for key in rds.scan_iter("*") if not key.startswith(b"jobcast:web:")
    }
    assert after == before


def test_a_worker_of_one_queue_moves_only_that_line(
    web: str, worker: Proc, app: Celery, rds: redis.Redis, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """With a worker consuming only queue "a": line a's last job sees its place fall to 1
    and runs; line b's watchers keep their places (2 stays 2) until a job of b is
    cancelled, which moves line b by one (two streams of one job in one process agree)."""
    a = [enqueue(app, "a", MEDIUM)[0] for _ in range(3)]
    b = [enqueue(app, "b")[0] for _ in range(2)]
    last_a, first_b, second_b = Watch(web, a[-1]), Watch(web, b[0]), Watch(web, b[1])
    again_b = Watch(web, b[1])  # a second stream of the job in the same process
    watches = [last_a, first_b, second_b, again_b]
    wait_until(lambda: all(len(positions(w.events)) >= 2 for w in watches), 20, "places")
    done_before = rds.hget("jobcast:stats", "done")
    proc = celery_worker(stack_env, tmp_path / "worker-a.log", "only-a", queues="a")
    try:
        wait_until(lambda: all(state(rds, j) == b"succeeded" for j in a), 90, "line a to run")
    finally:
        proc.stop()
    events = last_a.join()
    seen = positions(events)
    assert seen[0] == 3 and seen[-1] == 1 and seen == sorted(seen, reverse=True), seen
    assert [e.event for e in events][-1] == "done"
    assert rds.hget(A.stats, "done") == b"3"
    assert rds.hget("jobcast:stats", "done") == done_before  # the default line's count
    for watch, place in ((first_b, 1), (second_b, 2), (again_b, 2)):
        assert positions(watch.events) == [place, place], watch.events
        assert {e.event for e in watch.events} == {"queued"}
    assert status(web, b[1])["position"] == 2
    assert httpx.delete(f"{web}/imagine/{b[0]}").json()["state"] == "cancelled"
    wait_until(lambda: positions(second_b.events)[-1:] == [1], 20, "line b to move")
    wait_until(lambda: positions(again_b.events)[-1:] == [1], 20, "its other stream too")
    snap = status(web, b[1])
    assert (snap["queue"], snap["position"], snap["queueLength"]) == ("b", 1, 1)
    assert first_b.join()[-1].event == "cancelled"


def test_etas_come_from_the_line_of_the_job(
    web: str, worker: Proc, app: Celery, rds: redis.Redis, worker_a: Proc
) -> None:
    """While a job of line a runs and line a knows its average run time, a waiting job of
    line a gets an ETA; a job of line b, where nothing ran nor runs, gets none."""
    enqueue(app, "a")
    wait_until(lambda: rds.hget(A.stats, "avgMs"), 60, "line a's first run time")
    blocker, _ = enqueue(app, "a", BLOCKER)
    wait_until(lambda: state(rds, blocker) == b"running", 60, "the blocker to run")
    waiting_a, line_a = enqueue(app, "a")
    waiting_b, line_b = enqueue(app, "b")
    assert line_a.busy == 1 and line_a.avg_ms is not None
    assert line_b.busy == 0 and line_b.avg_ms is None
    assert isinstance(status(web, waiting_a)["etaSeconds"], int)
    assert status(web, waiting_b)["etaSeconds"] is None
    httpx.delete(f"{web}/imagine/{blocker}")  # running: stops at its next step
    wait_until(lambda: state(rds, waiting_a) == b"succeeded", 60, "line a to drain")


def test_metrics_and_ops_snapshot_count_each_line(
    web: str, worker: Proc, monitor: Proc, app: Celery, rds: redis.Redis
) -> None:
    """/metrics has waiting jobs and broker messages per line (``queue`` label) besides
    the totals; the monitor's snapshot has them per line too."""
    for queue, count in (("a", 3), ("b", 2)):
        for _ in range(count):
            enqueue(app, queue)
    m = scrape(web)
    assert m[("jobcast_line_jobs", (("queue", "a"), ("state", "queued")))] == 3
    assert m[("jobcast_line_jobs", (("queue", "b"), ("state", "queued")))] == 2
    assert m[("jobcast_line_jobs", (("queue", "jobcast"), ("state", "queued")))] == 0
    assert m[("jobcast_line_broker_messages", (("queue", "a"),))] == rds.llen("a") == 3
    assert m[("jobcast_jobs", (("state", "queued"),))] == 5
    assert m[("jobcast_queue_depth", (("queue", "waiting"),))] == 5
    assert m[("jobcast_queue_depth", (("queue", "broker"),))] == 5

    def lines() -> dict[str, Any]:
        snap = json.loads(rds.get("jobcast:ops:snapshot") or b"{}")
        per: dict[str, Any] = snap.get("queue", {}).get("lines", {})
        return per

    wait_until(lambda: lines().get("b", {}).get("waiting") == 2, 10, "the snapshot")
    per = lines()
    assert per["a"] == {"broker": 3, "waiting": 3, "running": 0}
    assert json.loads(rds.get("jobcast:ops:snapshot") or b"{}")["queue"]["waiting"] == 5


def test_the_sweep_heals_every_line(redis_server: RedisServer, rds: redis.Redis) -> None:
    """A job of line a whose message was lost is sent again to queue "a" (not the default
    queue); a member of line b whose record is gone is dropped from line b."""
    settings = Settings.from_env(
        {"REDIS_URL": redis_server.url, "JOBCAST_GHOST_GRACE_SECONDS": "1"}
    )
    app = create_celery(settings)
    sweeper = Sweeper(settings, rds, app)
    ghost = secrets.token_urlsafe(16)
    kwargs = {"prompt": "lost", **TINY}
    JobEvents(rds).enqueue(ghost, task_fields("jobcast.imagine", kwargs), queue="a")
    assert rds.llen("a") == 0  # no message: what a crash between record and send leaves
    wait_until(lambda: len(sweeper._waiting_longer_than(1)) == 1, 30, "the grace time")
    sweeper.heal_line()
    sweeper.heal_line()  # seen on two sweeps in a row
    assert rds.llen("a") == 1 and rds.llen("jobcast") == 0
    assert json.loads(rds.lindex("a", 0) or b"{}")["headers"]["id"] == ghost
    assert rds.hget(f"jobcast:job:{{{ghost}}}", "resent") == b"1"
    rds.sadd("jobcast:lines", "b")
    rds.zadd(B.queue, {"a-job-without-record": 1})
    assert sweep(rds, Keys(), str(Path(redis_server.directory) / "media"), 60).ghosts == 1
    assert rds.zcard(B.queue) == 0 and rds.zcard(A.queue) == 1


def test_a_task_sent_after_the_script_goes_to_the_queue_of_its_line(
    redis_server: RedisServer, rds: redis.Redis
) -> None:
    """With Celery's broker apart from the job records (another Redis db), the message
    Celery sends after the enqueue script still goes to the job's queue, "a"."""
    settings = Settings.from_env({"REDIS_URL": redis_server.url})
    broker_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    app = create_celery(settings, broker_url=broker_url)
    broker = redis.Redis.from_url(broker_url)
    try:
        job_id, line = enqueue(app, "a")
        assert line.position == 1 and rds.zscore(A.queue, job_id) is not None
        assert broker.llen("a") == 1 and broker.llen("jobcast") == 0
        assert json.loads(broker.lindex("a", 0) or b"{}")["headers"]["id"] == job_id
        assert rds.llen("a") == 0  # not pushed by the script on the records' Redis
    finally:
        broker.delete("a")
        broker.close()


def test_the_scripts_name_a_line_as_keys_do_under_any_prefix(rds: redis.Redis) -> None:
    """Under another prefix, the enqueue and publish scripts use the very keys
    ``Keys(prefix).line("a")`` names: the job waits, runs and is counted in line a."""
    prefix = f"other{secrets.token_hex(4)}:"
    events, keys = JobEvents(rds, prefix=prefix), Keys(prefix)
    line = keys.line("a")
    job_id = secrets.token_urlsafe(16)
    try:
        assert events.enqueue(job_id, {"prompt": "p"}, queue="a").position == 1
        assert rds.smembers(keys.lines) == {b"a"} and rds.zcard(line.queue) == 1
        events.publish(job_id, "started", {"worker": "w"})
        assert rds.zcard(line.queue) == 0 and rds.zcard(line.running) == 1
        assert rds.get(line.version) == b"1"
        events.publish(job_id, "failed", {"error": "no"})
        assert rds.zcard(line.running) == 0 and rds.hget(line.stats, "failed") == b"1"
        assert not rds.exists(keys.queue, keys.running, keys.queue_version)
        assert rds.hget(keys.stats, "published") == b"2"  # every line's, in one place
    finally:
        rds.delete(*rds.scan_iter(f"{prefix}*"))
