"""Faults under one multiplexed connection (``GET /jobs/stream?job=…``): 50 jobs on one
connection through a SIGKILLed gunicorn worker, a killed Redis pub/sub connection and a
SIGKILLed, restarted web server; each job gets exactly its log, in order, once.

The jobs' events are published straight into Redis (as a worker's reporter does), paced
by the test, so every fault lands while all 50 jobs are mid-log. Each test runs its own
Redis and web server so it can break them freely.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from support import (
    Muxed,
    Proc,
    RedisServer,
    free_port,
    gunicorn_web,
    logged,
    muxed_events,
    wait_until,
)

from jobcast import cursor as cursors
from tasks.events import JobEvents

pytestmark = pytest.mark.slow

JOBS = 50


class MuxFollower:
    """One EventSource-like client of a multiplexed stream: after any drop it reconnects
    with the last cursor it got as Last-Event-ID, until the server ends the stream (every
    job ended) or answers 204. Keeps every event, and the connections it opened."""

    def __init__(self, base: str, jobs: list[str]) -> None:
        self.base = base
        self.jobs = jobs
        self.events: list[Muxed] = []
        self.connections = 0
        self.drops = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def cursor(self) -> str | None:
        return next((e.cursor for e in reversed(self.events) if e.cursor), None)

    def _run(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if self._connect():
                    return
            except (httpx.HTTPError, OSError):
                self.drops += 1
                time.sleep(0.2)  # as EventSource's retry: the server may be restarting

    def _connect(self) -> bool:
        """One connection; True once the stream is over for good."""
        last = self.cursor
        headers = {"Last-Event-ID": last} if last else {}
        params = [("job", job) for job in self.jobs]
        with (
            httpx.Client(timeout=httpx.Timeout(30, connect=5)) as client,
            connect_sse(
                client, "GET", self.base + "/jobs/stream", params=params, headers=headers
            ) as source,
        ):
            if source.response.status_code == 204:
                return True
            source.response.raise_for_status()
            self.connections += 1
            for event in muxed_events(source, last):
                self.events.append(event)  # one by one: a drop keeps what came before
        return True  # the server ended the stream: every job has ended

    def rounds(self, jobs: list[str] | None = None) -> int:
        """The lowest progress round each of ``jobs`` (all) reached here (-1: none yet)."""
        best = {job: -1 for job in jobs or self.jobs}
        for event in list(self.events):
            if event.event == "progress":
                job = event.data["jobId"]
                if job in best:
                    best[job] = max(best[job], event.data["percent"])
        return min(best.values())

    def join(self) -> list[Muxed]:
        self.thread.join(260)
        assert not self.thread.is_alive(), "the multiplexed stream never ended"
        return self.events


def per_job(seen: list[Muxed], jobs: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each job's durable events as (event id, phase), the ids read from the cursors."""
    got: dict[str, list[tuple[str, str]]] = {job: [] for job in jobs}
    for item in seen:
        if item.cursor is None:
            continue
        job = item.data["jobId"]
        last = cursors.decode(item.cursor, jobs).last[jobs.index(job)]
        assert last is not None, f"{job} reported gone"
        got[job].append((f"{last[0]}-{last[1]}", item.event))
    return got


class Publisher:
    """Rounds of one ``progress`` event per job (``percent`` = the round), 10 a second,
    until :meth:`finish` (at most 900: the log keeps 1000 events); then ``done``."""

    def __init__(self, events: JobEvents, jobs: list[str]) -> None:
        self.events = events
        self.jobs = list(jobs)  # those still running
        self.lock = threading.Lock()
        self.round = -1
        self.stop = threading.Event()
        for job in jobs:
            events.publish(job, "started", {"worker": "fault-test", "attempt": 1})
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and self.round < 899:
            with self.lock:
                self.round += 1
                for job in self.jobs:
                    self.events.publish(job, "progress", {"percent": self.round})
            self.stop.wait(0.1)  # pacing the publisher, not waiting for anything
        self.end(list(self.jobs))

    def end(self, jobs: list[str]) -> None:
        """``done`` for ``jobs`` now, between two rounds."""
        with self.lock:
            for job in jobs:
                self.jobs.remove(job)
                self.events.publish(job, "done", {"rounds": self.round + 1})

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


@dataclass
class Stack:
    tmp: Path
    redis: RedisServer
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def web(self, port: int) -> Proc:
        proc, _ = gunicorn_web(self.env, self.tmp / f"web-{len(self.procs)}.log", port=port)
        self.procs.append(proc)
        return proc


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    server = RedisServer(tmp_path / "redis").start()
    env = dict(os.environ)
    env.update(
        REDIS_URL=server.url,
        JOBCAST_MEDIA_DIR=str(tmp_path / "media"),
        JOBCAST_HEARTBEAT_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    s = Stack(tmp_path, server, env)
    yield s
    for proc in reversed(s.procs):
        proc.stop()
    server.stop()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def hub_streams(base: str) -> int:
    streams: int = httpx.get(base + "/healthz", timeout=5).json()["hub"]["streams"]
    return streams


def test_fifty_jobs_on_one_connection_through_web_and_pubsub_kills(stack: Stack) -> None:
    """50 jobs on one multiplexed connection while their logs grow: SIGKILL of the
    gunicorn worker serving it (the master starts another), CLIENT KILL TYPE pubsub of the
    hub's Redis connection, then SIGKILL of the whole web server and a restart on the same
    port, after 10 of the jobs have ended (the cursor names them finished: not replayed).
    The client resumes with the composite cursor each time; every job's events
    (ids read from the cursors) are exactly its Redis log in order, each naming its job,
    and the stream ends by itself once all 50 are done."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    master = stack.web(port)
    client = stack.redis.client()
    jobs = [f"mux-fault-{n:03d}-abcdefghij" for n in range(JOBS)]
    publisher = Publisher(JobEvents(client), jobs)
    follower = MuxFollower(base, jobs)
    try:
        wait_until(lambda: follower.rounds() >= 3, 30, "every job to stream")

        (web_worker,) = children(master.pid)
        os.kill(web_worker, signal.SIGKILL)  # the master forks a new worker
        wait_until(lambda: follower.connections >= 2, 30, "the client to reconnect")
        mark = publisher.round
        wait_until(lambda: follower.rounds() > mark, 30, "every job to go on after the kill")

        killed = client.client_kill_filter(_type="pubsub")
        assert killed == 1  # the hub's single pub/sub connection, no other
        mark = publisher.round
        wait_until(lambda: follower.rounds() > mark, 30, "every job to go on after pub/sub")
        assert follower.connections == 2  # the hub resubscribed under the open stream

        early = jobs[::5]  # done before the restart: the cursor names them ended
        publisher.end(early)
        wait_until(
            lambda: {e.data["jobId"] for e in follower.events if e.event == "done"} == set(early),
            30,
            "the early jobs' ends to arrive",
        )
        master.kill()  # SIGKILL of master and worker: nothing answers on the port
        while_down = publisher.round
        wait_until(lambda: publisher.round > while_down + 5, 20, "events published while down")
        stack.web(port)
        wait_until(lambda: follower.connections >= 3, 30, "the client to reconnect again")
        mark = publisher.round
        running = list(publisher.jobs)
        wait_until(lambda: follower.rounds(running) > mark, 30, "the rest to go on after restart")
    finally:
        publisher.finish()
    events = follower.join()
    print(
        f"\nmultiplexed faults: {len(events)} events of {JOBS} jobs over"
        f" {follower.connections} connections, {follower.drops} refused or cut"
    )

    assert follower.drops >= 1  # the whole server was gone for a while: refused connects
    assert {e.data["jobId"] for e in events} == set(jobs)
    got = per_job(events, jobs)
    for job in jobs:
        assert got[job] == logged(client, job), job
        assert got[job][-1][1] == "done"
    # Each end arrived once; the early jobs' (before the restart) were not sent again.
    done = [e.data["jobId"] for e in events if e.event == "done"]
    assert sorted(done) == sorted(jobs)
    assert set(done[: len(early)]) == set(early)
    wait_until(lambda: hub_streams(base) == 0, 20, "the watchers to be released")
    client.close()
