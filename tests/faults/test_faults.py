"""Faults real deployments see — a killed worker, a restarted Redis, a killed web process,
a reconnect storm, slow and dead readers, Redis down at POST — and no event lost or doubled.

Each test runs its own stack (Redis, worker, web) so it can break it freely.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from support import (
    Received,
    Stack,
    iter_events,
    logged,
    own_stack,
    post_job,
    wait_until,
)

from tasks.events import JobEvents

pytestmark = pytest.mark.slow

LONG = {"width": 384, "height": 384, "steps": 24}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path, JOBCAST_VISIBILITY_TIMEOUT="6") as s:
        yield s


class Follower:
    """An EventSource-like client: reads a stream, reconnects with Last-Event-ID after any
    drop, until the terminal event. Keeps every event it was sent."""

    def __init__(self, base: str, job_id: str) -> None:
        self.base = base
        self.job_id = job_id
        self.events: list[Received] = []
        self.reconnects = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def last_id(self) -> str | None:
        ids = [e.id for e in self.events if e.id]
        return ids[-1] if ids else None

    def _run(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                for event in iter_events(self.base, self.job_id, self.last_id, timeout=30):
                    self.events.append(event)
                    if event.event in ("done", "failed", "cancelled"):
                        return
                return  # the server ended the stream
            except (httpx.HTTPError, OSError):
                self.reconnects += 1
                time.sleep(0.2)  # as EventSource's retry: the server may be restarting

    def join(self) -> list[Received]:
        self.thread.join(200)
        assert not self.thread.is_alive(), "the stream never ended"
        return self.events


def by_id(events: list[Received]) -> list[tuple[str, str]]:
    return [(e.id, e.event) for e in events if e.id]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def first_progress(follower: Follower, percent: int = 10) -> Callable[[], bool]:
    return lambda: any(
        e.event == "progress" and e.data["percent"] >= percent for e in follower.events
    )


def test_pool_process_killed_job_runs_again_and_finishes(stack: Stack) -> None:
    """SIGKILL of the pool process mid-task: redelivered, a second started (attempt 2), done."""
    worker = stack.worker()
    _, base = stack.web()
    job = post_job(base, **LONG)
    follower = Follower(base, job["jobId"])
    wait_until(first_progress(follower), 60, "the job to make progress")
    (pool,) = children(worker.pid)
    os.kill(pool, signal.SIGKILL)
    events = follower.join()
    assert by_id(events) == logged(stack.client(), job["jobId"])
    started = [e.data["attempt"] for e in events if e.event == "started"]
    assert started == [1, 2]
    assert events[-1].event == "done"


def test_whole_worker_killed_another_worker_finishes_the_job(stack: Stack) -> None:
    """SIGKILL of the whole worker: after the visibility timeout a new worker runs it again."""
    worker = stack.worker("first")
    _, base = stack.web()
    job = post_job(base, **LONG)
    follower = Follower(base, job["jobId"])
    wait_until(first_progress(follower), 60, "the job to make progress")
    worker.kill()
    stack.worker("second")
    events = follower.join()
    assert by_id(events) == logged(stack.client(), job["jobId"])
    assert [e.data["attempt"] for e in events if e.event == "started"] == [1, 2]
    assert events[-1].event == "done"


def test_job_that_keeps_killing_its_worker_ends_failed(stack: Stack) -> None:
    """Attempts are bounded: past JOBCAST_MAX_ATTEMPTS the job ends failed with a clear message."""
    stack.env["JOBCAST_MAX_ATTEMPTS"] = "2"
    worker = stack.worker()
    _, base = stack.web()
    job = post_job(base, **LONG)
    follower = Follower(base, job["jobId"])
    for attempt in (1, 2):
        wait_until(
            lambda a=attempt: any(
                e.event == "progress" for e in follower.events[_after_start(follower, a) :]
            ),
            60,
            f"attempt {attempt} to make progress",
        )
        (pool,) = children(worker.pid)
        os.kill(pool, signal.SIGKILL)
    events = follower.join()
    assert events[-1].event == "failed"
    assert "attempts" in events[-1].data["error"]
    assert stack.client().hget(f"jobcast:job:{{{job['jobId']}}}", "state") == b"failed"


def _after_start(follower: Follower, attempt: int) -> int:
    for n, e in enumerate(follower.events):
        if e.event == "started" and e.data["attempt"] == attempt:
            return n
    return len(follower.events)


def test_redis_restart_mid_job_loses_nothing(stack: Stack) -> None:
    """Redis restarted (AOF on) mid-job: everything reconnects, every event arrives once."""
    stack.worker()
    _, base = stack.web()
    job = post_job(base, **LONG)
    follower = Follower(base, job["jobId"])
    wait_until(first_progress(follower), 60, "the job to make progress")
    before = list(follower.events)
    stack.redis.restart()
    events = follower.join()
    log = logged(stack.client(), job["jobId"])
    assert set(by_id(before)) <= set(log)  # acknowledged before the restart, still there
    assert by_id(events) == log
    assert events[-1].event == "done"
    # And the stack still takes new work.
    assert [
        e.event
        for e in Follower(base, post_job(base, width=64, height=64, steps=2)["jobId"]).join()
    ][-1] == "done"


def test_web_worker_killed_clients_resume_exactly_once(stack: Stack) -> None:
    """SIGKILL of the gunicorn worker serving the stream: clients resume with Last-Event-ID."""
    stack.worker()
    master, base = stack.web()
    job = post_job(base, **LONG)
    followers = [Follower(base, job["jobId"]) for _ in range(3)]
    wait_until(lambda: all(first_progress(f)() for f in followers), 60, "progress everywhere")
    (web_worker,) = children(master.pid)
    os.kill(web_worker, signal.SIGKILL)
    log_holder: list[list[tuple[str, str]]] = []
    for follower in followers:
        events = follower.join()
        log_holder.append(by_id(events))
        assert follower.reconnects >= 1
    log = logged(stack.client(), job["jobId"])
    assert all(seen == log for seen in log_holder)


def test_reconnect_storm(stack: Stack) -> None:
    """500 clients over 50 jobs, each dropping 5 times at random: 0 lost, 0 doubled, in order."""
    _, base = stack.web(JOBCAST_HEARTBEAT_SECONDS="2")
    client = stack.client()
    events = JobEvents(client)
    jobs = [f"storm-job-{n:03d}-abcdefgh" for n in range(50)]
    for job_id in jobs:
        events.publish(job_id, "started", {"worker": "storm"})
    # In a thread of its own: Playwright's sync API (browser tests) may own this thread's loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(asyncio.run, _storm(base, jobs, events, clients=500, drops=5)).result()
    print(f"\nreconnect storm: {result}")
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["out_of_order"] == 0
    assert result["reconnects"] == 500 * 5
    assert result["complete_streams"] == 500


async def _storm(
    base: str, jobs: list[str], events: JobEvents, clients: int, drops: int
) -> dict[str, int]:
    rng = random.Random(7)
    per_job = 40
    received: dict[int, list[str]] = {n: [] for n in range(clients)}
    reconnects = 0

    async def client_task(n: int, job_id: str) -> None:
        nonlocal reconnects
        drop_after = sorted(rng.sample(range(1, per_job), drops))
        last: str | None = None
        async with httpx.AsyncClient(timeout=60) as http:
            while True:
                headers = {"Last-Event-ID": last} if last else {}
                async with aconnect_sse(
                    http, "GET", f"{base}/imagine/{job_id}/stream", headers=headers
                ) as source:
                    async for sse in source.aiter_sse():
                        if not sse.id or sse.id == last:
                            continue
                        received[n].append(sse.id)
                        last = sse.id
                        if sse.event == "done":
                            return
                        if drop_after and len(received[n]) >= drop_after[0]:
                            drop_after.pop(0)
                            reconnects += 1
                            break  # drop the connection mid-stream

    async def publisher() -> None:
        for step in range(per_job - 2):
            for job_id in jobs:
                events.publish(job_id, "progress", {"percent": step})
            await asyncio.sleep(0.05)  # pacing the publisher: 20 rounds a second
        for job_id in jobs:
            events.publish(job_id, "done", {})

    tasks = [asyncio.create_task(client_task(n, jobs[n % len(jobs)])) for n in range(clients)]
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + 60
        while (await http.get(base + "/healthz")).json()["hub"]["streams"] < clients:
            assert time.monotonic() < deadline, "clients did not all connect"
            await asyncio.sleep(0.1)  # polling /healthz with a deadline
    await publisher()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    client = events.redis
    lost = duplicated = disorder = complete = 0
    for n, got in received.items():
        truth = [
            i.decode() for i, _ in client.xrange(f"jobcast:job:{{{jobs[n % len(jobs)]}}}:events")
        ]
        lost += len(set(truth) - set(got))
        duplicated += len(got) - len(set(got))
        disorder += int(got != sorted(got, key=lambda i: tuple(map(int, i.split("-")))))
        complete += int(got == truth)
    return {
        "clients": clients,
        "reconnects": reconnects,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": disorder,
        "complete_streams": complete,
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_reader_that_stops_reading_is_bounded_then_dropped(stack: Stack) -> None:
    """A client that never reads: server memory stays bounded and the stream is dropped."""
    master, base = stack.web(JOBCAST_SEND_TIMEOUT_SECONDS="3", JOBCAST_WATCHER_QUEUE_SIZE="32")
    (web_worker,) = children(master.pid)
    events = JobEvents(stack.client())
    job_id = "slow-reader-job-0123456789"
    events.publish(job_id, "started", {"worker": "x"})
    port = int(base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /imagine/{job_id}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    wait_until(lambda: _health(base)["hub"]["streams"] == 1, 10, "the stream to open")
    baseline = rss_kib(web_worker)
    blob = "x" * 8000
    for n in range(3000):  # 24 MB of events that the client never reads
        events.publish(job_id, "progress", {"percent": n % 100, "pad": blob})
    grown = rss_kib(web_worker) - baseline
    wait_until(lambda: _health(base)["hub"]["streams"] == 0, 30, "the server to drop the reader")
    sock.close()
    print(f"\nslow reader: server RSS grew {grown} KiB while 24 MB was published")
    assert grown < 16 * 1024


def _health(base: str) -> dict[str, object]:
    result: dict[str, object] = httpx.get(base + "/healthz", timeout=5).json()
    return result


def test_redis_down_at_post(stack: Stack) -> None:
    """Redis down: POST gets 503 JSON with Retry-After, /healthz says so, nothing half-written."""
    _, base = stack.web()
    client = stack.client()
    stack.redis.stop()
    response = httpx.post(base + "/imagine", json={"prompt": "while redis is down"}, timeout=15)
    assert response.status_code == 503
    assert response.headers["Retry-After"] and response.json()["error"]["code"] == "unavailable"
    health = httpx.get(base + "/healthz", timeout=15)
    assert health.status_code == 503 and health.json()["redis"] == "unreachable"
    stack.redis.start()
    # Nothing of a job; the web processes' own metrics (jobcast:web:*) may be back already.
    assert [k for k in client.scan_iter("jobcast:*") if not k.startswith(b"jobcast:web:")] == []
    assert httpx.get(base + "/healthz", timeout=15).status_code == 200
    ok = httpx.post(base + "/imagine", json={"prompt": "after"}, timeout=15)
    assert ok.status_code == 202, ok.text
    assert json.loads(ok.text)["position"] == 1
