"""The monitor end to end: real Celery workers and their events → snapshots in Redis → /ops/stream.

The monitor runs as ``python -m web.cli monitor`` (what ``jobcast monitor`` runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from support import (
    Proc,
    RedisServer,
    celery_worker,
    collect,
    jobcast_monitor,
    monitor_ready,
    post_job,
    wait_until,
)

from tasks.app import create_celery
from tasks.config import Settings
from tasks.events import JobEvents

SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
LONG = {"prompt": "a slow one", "width": 384, "height": 384, "steps": 20}
HEARTBEAT = 2.0  # Celery's default worker heartbeat interval
TIMEOUT = 2.5 * HEARTBEAT  # the monitor's default offline timeout


def start_monitor(env: dict[str, str], log: Path) -> Proc:
    proc = Proc([sys.executable, "-m", "web.cli", "monitor"], env, log).start()
    wait_until(lambda: monitor_ready(proc, "leading", "standing by"), 30, "monitor up")
    assert proc.alive(), proc.output()[-3000:]
    return proc


@pytest.fixture(scope="module")
def monitors(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:  # fmt: skip
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture
def monitor(
    monitors: list[Proc], stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Proc:
    """The module's monitor; started again if a test killed it."""
    if not monitors or not monitors[0].alive():
        log = tmp_path_factory.mktemp("logs") / "monitor.log"
        monitors[:1] = [start_monitor({**stack_env, "JOBCAST_SWEEP_SECONDS": "1"}, log)]
    return monitors[0]


def snapshot(rds: redis.Redis) -> dict[str, Any]:
    raw = rds.get("jobcast:ops:snapshot")
    return json.loads(raw) if raw else {}


def worker_row(snap: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((w for w in snap.get("workers", []) if w["name"].startswith(prefix)), None)


def newer_snapshot(rds: redis.Redis, after_ms: int) -> dict[str, Any]:
    """The first snapshot written after ``after_ms`` (wall clock, ms)."""
    return wait_until(lambda: (s := snapshot(rds)) and s["at"] > after_ms and s, 10, "a new snapshot")  # type: ignore[no-any-return]  # fmt: skip


def test_snapshot_is_a_ready_sse_frame_published_every_second(
    worker: Proc, monitor: Proc, rds: redis.Redis
) -> None:
    """The channel carries finished id-less SSE frames, about once a second; the key keeps the latest."""
    pubsub = rds.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("jobcast:ops")
    try:
        frames: list[bytes] = []
        began = time.monotonic()
        while len(frames) < 4:
            message = pubsub.get_message(timeout=5)
            assert message is not None or time.monotonic() - began < 15, "no snapshots"
            if message:
                frames.append(message["data"])
        elapsed = time.monotonic() - began
    finally:
        pubsub.close()
    assert 1.5 <= elapsed <= 10  # ~1 s apart: neither a flood nor silence
    for frame in frames:
        assert frame.startswith(b"event: snapshot\ndata: {") and frame.endswith(b"}\n\n")
        assert b"\nid:" not in frame and frame.count(b"\n") == 3
    snap = json.loads(frames[-1][len(b"event: snapshot\ndata: ") :])
    assert {"workers", "queue", "rate", "runtime", "failRate", "failures", "hist"} <= set(snap)
    assert worker_row(snap, "main@")["up"] is True  # type: ignore[index]


def test_worker_online_then_offline_after_sigkill(
    stack_env: dict[str, str], monitor: Proc, rds: redis.Redis, tmp_path: Path
) -> None:
    """A new worker shows online within two heartbeats; SIGKILLed, offline within the timeout."""
    victim = celery_worker(stack_env, tmp_path / "victim.log", "victim")
    try:
        ready = time.monotonic()
        wait_until(lambda: (w := worker_row(snapshot(rds), "victim@")) and w["up"], 2 * HEARTBEAT, "victim online")  # fmt: skip
        row = worker_row(snapshot(rds), "victim@")
        assert row is not None and row["load"] and row["freq"] == HEARTBEAT
        assert time.monotonic() - ready <= 2 * HEARTBEAT
    finally:
        victim.kill()  # SIGKILL: no worker-offline event, only silence
    killed = time.monotonic()
    wait_until(lambda: (w := worker_row(snapshot(rds), "victim@")) and not w["up"], TIMEOUT + 3, "victim offline")  # fmt: skip
    waited = time.monotonic() - killed
    # Not before the timeout has run out since its last heartbeat, not long after it.
    assert HEARTBEAT * 1.0 <= waited <= TIMEOUT + 3
    assert worker_row(snapshot(rds), "main@")["up"] is True  # type: ignore[index]


def test_jobs_move_counters_throughput_and_run_times(
    web: str, worker: Proc, monitor: Proc, rds: redis.Redis
) -> None:
    """Finished jobs raise the worker's processed count, throughput, history and the histogram."""
    before = newer_snapshot(rds, 0)
    processed = worker_row(before, "main@")["processed"]  # type: ignore[index]
    jobs = [post_job(web, **SMALL) for _ in range(3)]
    for job in jobs:
        assert collect(web, job["jobId"])[-1].event == "done"
    snap = wait_until(
        lambda: (s := snapshot(rds)) and worker_row(s, "main@")["processed"] >= processed + 3 and s,  # type: ignore[index]
        10, "processed to grow",
    )  # fmt: skip
    assert snap["rate"]["m1"] >= 3 and snap["rate"]["m15"] > 0
    assert snap["runtime"]["p50"] > 0 and snap["runtime"]["p95"] >= snap["runtime"]["p50"]
    assert sum(snap["hist"]["done"]) >= 3 and len(snap["hist"]["done"]) <= 60
    assert int(rds.hget("jobcast:ops:tasks", "succeeded")) >= 3
    assert int(rds.hget("jobcast:ops:runtime", "count")) >= 3


def test_running_job_shows_on_its_worker_with_percent(
    web: str, worker: Proc, monitor: Proc, rds: redis.Redis
) -> None:
    """While a job runs, its worker's row names it with the percent the job reported."""
    job = post_job(web, **LONG)

    def running_with_percent() -> dict[str, Any] | None:
        row = worker_row(snapshot(rds), "main@")
        ours = [j for j in (row or {}).get("jobs", []) if j["id"] == job["jobId"]]
        return ours[0] if ours and ours[0]["pct"] else None

    seen = wait_until(running_with_percent, 30, "the job with a percent on main@")
    assert seen["task"] == "jobcast.imagine" and 0 < seen["pct"] <= 100
    assert collect(web, job["jobId"])[-1].event == "done"
    wait_until(lambda: not worker_row(snapshot(rds), "main@")["jobs"], 10, "the row to empty")  # type: ignore[index]


def test_failing_task_appears_among_failures(
    stack_env: dict[str, str], worker: Proc, monitor: Proc, rds: redis.Redis
) -> None:
    """A task that raises shows among the latest failures with its error, and counts."""
    before = newer_snapshot(rds, 0)
    failed = worker_row(before, "main@")["failed"]  # type: ignore[index]
    app = create_celery(Settings.from_env(stack_env))
    try:
        # Missing arguments: the worker raises TypeError before the task body runs.
        app.send_task("jobcast.imagine", kwargs={"job_id": "nope"}, task_id="doomed-task-1")
    finally:
        app.close()
        app.jobcast.redis.close()
    snap = wait_until(
        lambda: (s := snapshot(rds)) and any(f["id"] == "doomed-task-1" for f in s["failures"]) and s,
        20, "the failure in the snapshot",
    )  # fmt: skip
    failure = next(f for f in snap["failures"] if f["id"] == "doomed-task-1")
    assert failure["task"] == "jobcast.imagine" and failure["worker"].startswith("main@")
    assert "TypeError" in failure["error"] and "missing" in failure["error"]
    assert worker_row(snap, "main@")["failed"] == failed + 1  # type: ignore[index]
    assert snap["failRate"] > 0
    assert int(rds.hget("jobcast:ops:tasks", "failed")) >= 1


def test_two_monitors_one_writer_and_takeover(
    web: str,
    worker: Proc,
    monitor: Proc,
    stack_env: dict[str, str],
    rds: redis.Redis,
    tmp_path: Path,
) -> None:
    """A second monitor stands by: one writer, counts not doubled; it takes over when the leader dies."""
    second = start_monitor(stack_env, tmp_path / "second.log")
    try:
        procs = {monitor.pid: monitor, second.pid: second}
        leader = newer_snapshot(rds, int(time.time() * 1000))["by"]
        assert rds.get("jobcast:ops:leader").decode() == leader
        assert int(leader.split(":")[1]) in procs
        counted = int(rds.hget("jobcast:ops:tasks", "succeeded") or 0)
        jobs = [post_job(web, **SMALL) for _ in range(2)]
        for job in jobs:
            collect(web, job["jobId"])
        done = wait_until(lambda: int(rds.hget("jobcast:ops:tasks", "succeeded") or 0) >= counted + 2, 10, "counts")  # fmt: skip
        newer_snapshot(rds, int(time.time() * 1000) + 1500)  # a couple more publishes
        assert int(rds.hget("jobcast:ops:tasks", "succeeded")) == counted + 2, "double counted"
        assert done and snapshot(rds)["by"] == leader
        procs[int(leader.split(":")[1])].kill()  # the leader dies without giving up its lease
        killed = time.monotonic()
        taken = wait_until(lambda: (s := snapshot(rds)) and s["by"] != leader and s, 15, "takeover")  # fmt: skip
        assert time.monotonic() - killed <= 5 + 3  # the lease (5 s) ran out, then the next tick
        assert rds.get("jobcast:ops:leader").decode() == taken["by"]
        assert worker_row(taken, "main@")["up"] is True  # type: ignore[index]
    finally:
        second.stop()


def test_ops_stream_sends_latest_then_live_over_one_subscription(
    web: str, worker: Proc, monitor: Proc, rds: redis.Redis
) -> None:
    """Every viewer gets the latest snapshot at once, then live ones; one Redis subscription for all."""
    newer_snapshot(rds, 0)
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=httpx.Timeout(20, connect=5)))
        sources = [
            stack.enter_context(connect_sse(client, "GET", f"{web}/ops/stream")) for _ in range(3)
        ]
        for source in sources:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            assert source.response.headers["cache-control"] == "no-cache"
        numsub = rds.execute_command("PUBSUB", "NUMSUB", "jobcast:ops")
        assert numsub[1] == 1  # one web process: one subscription, three viewers
        events = sources[0].iter_sse()
        opening = next(events)  # the retry field in a block of its own
        assert opening.retry == 3000 and not opening.data
        first = next(events)
        assert first.event == "snapshot"
        stamps = [json.loads(first.data)["at"]]
        while len(stamps) < 3:
            sse = next(events)
            assert sse.event == "snapshot" and not sse.id
            stamps.append(json.loads(sse.data)["at"])
        # The first live one may repeat the latest (published while we connected).
        assert stamps == sorted(stamps) and stamps[2] > stamps[0]


def test_leader_sweeps_old_images_and_ghosts(
    stack_env: dict[str, str], monitor: Proc, rds: redis.Redis
) -> None:
    """The leading monitor runs the retention sweep: expired images and ghosts in the line go."""
    media = Path(stack_env["JOBCAST_MEDIA_DIR"])
    old, fresh = media / "old-job.png", media / "fresh-job.png"
    for path in (old, fresh):
        path.write_bytes(b"png")
    past = time.time() - 2 * 24 * 3600
    os.utime(old, (past, past))
    rds.zadd("jobcast:queue", {"ghost-job-without-record": 1})
    wait_until(lambda: not old.exists() and rds.zcard("jobcast:queue") == 0, 15, "the sweep")
    assert fresh.exists()
    fresh.unlink()


SLOW = {"prompt": "a slow one", "width": 1024, "height": 1024, "steps": 60}  # ends by cancel


def job_on(rds: redis.Redis, worker: str, job_id: str) -> dict[str, Any] | None:
    """The job's entry in the worker's row of the latest snapshot, once it has a percent."""
    row = worker_row(snapshot(rds), worker)
    ours = [j for j in (row or {}).get("jobs", []) if j["id"] == job_id]
    return ours[0] if ours and ours[0]["pct"] else None


def jobs_of(rds: redis.Redis, worker: str) -> list[str]:
    """The ids in the worker's row of the latest snapshot."""
    return [j["id"] for j in (worker_row(snapshot(rds), worker) or {}).get("jobs", [])]


def test_restarted_monitor_shows_the_jobs_running_before_it_started(
    web: str,
    worker: Proc,
    monitor: Proc,
    monitors: list[Proc],
    stack_env: dict[str, str],
    rds: redis.Redis,
    tmp_path: Path,
) -> None:
    """A monitor started while a job runs (it saw no start event) shows the job on its
    worker, with its task name and percent, from the running set and the job's record."""
    job_id = post_job(web, **SLOW)["jobId"]
    wait_until(lambda: job_on(rds, "main@", job_id), 30, "the job on main@")
    old = snapshot(rds)["by"]
    monitor.kill()  # SIGKILL: its lease runs out before the new one may lead
    monitors[:1] = [start_monitor({**stack_env, "JOBCAST_SWEEP_SECONDS": "1"}, tmp_path / "m.log")]
    wait_until(lambda: snapshot(rds)["by"] != old, 15, "the new monitor to lead")
    seen = wait_until(lambda: job_on(rds, "main@", job_id), 10, "the job on main@ again")
    assert rds.hget(f"jobcast:job:{{{job_id}}}", "state") == b"running"
    assert seen["task"] == "jobcast.imagine" and 0 < seen["pct"] < 100
    assert worker_row(snapshot(rds), "main@")["up"] is True  # type: ignore[index]


def test_two_monitors_count_every_task_once_across_a_takeover(
    web: str,
    worker: Proc,
    monitor: Proc,
    stack_env: dict[str, str],
    rds: redis.Redis,
    tmp_path: Path,
) -> None:
    """The leader SIGKILLed mid-stream of N jobs: every one is counted exactly once in
    ops:tasks and the run time histogram, including those that ended before the standby
    took the lease."""
    second = start_monitor(stack_env, tmp_path / "second.log")
    try:
        procs = {monitor.pid: monitor, second.pid: second}
        leader = newer_snapshot(rds, int(time.time() * 1000))["by"]
        succeeded = int(rds.hget("jobcast:ops:tasks", "succeeded") or 0)
        timed = int(rds.hget("jobcast:ops:runtime", "count") or 0)
        n = 12
        jobs = [post_job(web, prompt="x", width=128, height=128, steps=8) for _ in range(n)]
        wait_until(lambda: int(rds.hget("jobcast:ops:tasks", "succeeded") or 0) >= succeeded + 2, 30, "two counted")  # fmt: skip
        procs[int(leader.split(":")[1])].kill()
        for job in jobs:
            assert collect(web, job["jobId"])[-1].event == "done"
        wait_until(lambda: snapshot(rds)["by"] != leader, 15, "the takeover")
        wait_until(lambda: int(rds.hget("jobcast:ops:tasks", "succeeded") or 0) >= succeeded + n, 10, "all counted")  # fmt: skip
        newer_snapshot(rds, int(time.time() * 1000) + 1500)  # a couple more publishes
        assert int(rds.hget("jobcast:ops:tasks", "succeeded")) == succeeded + n
        assert int(rds.hget("jobcast:ops:runtime", "count")) == timed + n
        buckets = rds.hgetall("jobcast:ops:runtime")
        assert sum(int(v) for k, v in buckets.items() if k.startswith(b"le:")) >= timed + n
    finally:
        second.stop()


def test_a_job_whose_end_event_was_missed_leaves_its_workers_row(
    stack_env: dict[str, str], worker: Proc, monitor: Proc, rds: redis.Redis
) -> None:
    """A task-started with no end event for a job whose record says it ended: the worker's
    row drops it at the next snapshot instead of showing it forever."""
    hostname = wait_until(lambda: (w := worker_row(snapshot(rds), "main@")) and w["name"], 15, "main@ listed")  # fmt: skip
    events = JobEvents(rds)
    job_id = "ended-while-unseen-0123"
    events.publish(job_id, "started", {"worker": hostname})
    app = create_celery(Settings.from_env(stack_env))
    try:
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname=hostname)
            dispatcher.send("task-started", uuid=job_id)
            wait_until(lambda: job_id in jobs_of(rds, "main@"), 10, "the job on main@")
            events.publish(job_id, "done", {})  # its task-succeeded never comes
            wait_until(lambda: job_id not in jobs_of(rds, "main@"), 10, "the row to forget it")
            dispatcher.close()
    finally:
        app.close()
        app.jobcast.redis.close()


def compose_healthcheck(service: str) -> list[str]:
    """The service's healthcheck command in docker-compose.yml, runnable here."""
    text = (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()
    section = text[text.index(f"\n  {service}:\n") :]
    line = next(x for x in section.splitlines() if x.strip().startswith("test: ["))
    form, program, *args = json.loads(line.split("test:", 1)[1])
    assert form == "CMD" and program == "python"
    return [sys.executable, *args]


def test_compose_monitor_healthcheck_reads_the_configured_prefix(tmp_path: Path) -> None:
    """The monitor's compose healthcheck passes for a monitor under JOBCAST_PREFIX, and
    fails where no monitor publishes."""
    server = RedisServer(tmp_path / "redis").start()
    env = {**os.environ, "REDIS_URL": server.url, "JOBCAST_PREFIX": "other:", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    proc = start_monitor(env, tmp_path / "monitor.log")
    try:
        check = compose_healthcheck("monitor")
        wait_until(lambda: server.client().exists("other:ops:snapshot"), 15, "a snapshot")
        assert subprocess.run(check, env=env, timeout=30).returncode == 0
        elsewhere = {**env, "JOBCAST_PREFIX": "nobody-here:"}
        assert subprocess.run(check, env=elsewhere, timeout=30).returncode == 1
    finally:
        proc.stop()
        server.stop()


def test_monitor_with_a_watchdog_exits_when_redis_stays_away(tmp_path: Path) -> None:
    """With JOBCAST_MONITOR_WATCHDOG_SECONDS, a monitor that cannot reach Redis exits
    (status 3) so its supervisor starts a fresh one; compose's restart policy does."""
    server = RedisServer(tmp_path / "redis").start()
    env = {**os.environ, "REDIS_URL": server.url, "JOBCAST_MONITOR_WATCHDOG_SECONDS": "3", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    proc = start_monitor(env, tmp_path / "monitor.log")
    try:
        server.stop()
        stopped = time.monotonic()
        wait_until(lambda: not proc.alive(), 30, "the monitor to exit")
        assert proc.popen is not None and proc.popen.returncode == 3
        assert time.monotonic() - stopped >= 2
        assert "exiting to be restarted" in proc.output()
    finally:
        proc.stop()
        server.stop()


def test_the_monitor_outlives_redis_refusing_writes(tmp_path: Path) -> None:
    """Redis refusing writes for a while (maxmemory reached, `noeviction`) does not end the
    monitor: once Redis takes writes again, it is still running and publishes snapshots."""
    server = RedisServer(tmp_path / "redis").start()
    env = {**os.environ, "REDIS_URL": server.url, "JOBCAST_MEDIA_DIR": str(tmp_path)}
    proc = jobcast_monitor(env, tmp_path / "monitor.log")
    rds = server.client()

    def published_at() -> int:
        return int(json.loads(rds.get("jobcast:ops:snapshot") or b'{"at": 0}')["at"])

    try:
        wait_until(lambda: published_at() > 0, 30, "a first snapshot")
        rds.config_set("maxmemory-policy", "noeviction")
        rds.config_set("maxmemory", "1")
        try:
            wait_until(lambda: "maxmemory" in proc.output() or not proc.alive(), 30, "a refusal")
        finally:
            rds.config_set("maxmemory", "0")
        refused = published_at()
        wait_until(lambda: published_at() > refused or not proc.alive(), 30, "a fresh snapshot")
        assert proc.alive(), proc.output()[-2000:]
    finally:
        proc.stop()
        server.stop()
