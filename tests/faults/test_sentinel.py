"""A Sentinel set loses its master mid-job, by SENTINEL FAILOVER and by SIGKILL: the web,
the worker and the monitor follow the new master.

Each test runs its own stack on a Sentinel set (a master, two replicas, three sentinels;
REDIS_URL in kombu's ``sentinel://…;sentinel://…/0`` form, so Celery's broker goes
through kombu's sentinel transport too). A reader that follows a job's stream through the
switch ends with the new master's log exactly (a ``reset`` and the whole log when an
event it saw did not survive), POSTs during the switch answer 202 or 503 with
Retry-After, and the stack takes new jobs after it. The timeline is printed (``-s``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from support import (
    Proc,
    Received,
    SentinelSet,
    Stack,
    iter_events,
    logged,
    own_stack,
    wait_until,
)

from tasks.keys import Keys

pytestmark = pytest.mark.slow

LONG = {"width": 256, "height": 256, "steps": 100}
SMALL = {"prompt": "a small one", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path, sentinel=True, JOBCAST_POST_RATE_LIMIT="100000/minute") as stack:
        yield stack


def sentinels(stack: Stack) -> SentinelSet:
    assert isinstance(stack.redis, SentinelSet)
    return stack.redis


class Reader:
    """An EventSource-like client that keeps the log as a client must: it reconnects with
    Last-Event-ID after any drop, and on ``reset`` forgets what it had (the whole log
    follows)."""

    def __init__(self, base: str, job_id: str) -> None:
        self.base, self.job_id = base, job_id
        self.log: list[Received] = []
        self.seen: list[Received] = []  # every logged event, resets or not
        self.resets = 0
        self.drops = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _last(self) -> str | None:
        ids = [e.id for e in self.log if e.id]
        return ids[-1] if ids else None

    def _run(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                for event in iter_events(self.base, self.job_id, self._last(), timeout=30):
                    if event.event == "reset":
                        self.resets += 1
                        self.log = []
                        continue
                    if event.id:
                        self.log.append(event)
                        self.seen.append(event)
                    if event.event in ("done", "failed", "cancelled"):
                        return
                return
            except (httpx.HTTPError, OSError):
                self.drops += 1
                time.sleep(0.2)  # as EventSource's retry while the web finds the master

    def join(self) -> list[tuple[str, str]]:
        self.thread.join(200)
        assert not self.thread.is_alive(), "the stream never ended"
        return [(e.id or "", e.event) for e in self.log]


@dataclass
class Poster:
    """POSTs a small job every 50 ms until stopped; keeps (time, status, Retry-After)."""

    base: str
    answers: list[tuple[float, int, str | None, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=20) as client:
            while not self.stopping.is_set():
                try:
                    r = client.post(self.base + "/imagine", json=SMALL)
                except httpx.HTTPError as exc:  # a hang or a dropped connection: a failure
                    self.failures.append(repr(exc))
                    continue
                job = r.json().get("jobId", "") if r.status_code == 202 else ""
                self.answers.append(
                    (time.monotonic(), r.status_code, r.headers.get("Retry-After"), job)
                )
                self.stopping.wait(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(60)


def switch(stack: Stack, how: str) -> float:
    """Make the sentinels pick a new master; return when it was asked (monotonic time)."""
    ss = sentinels(stack)
    old = ss.master()
    at = time.monotonic()
    if how == "failover":
        with ss.sentinel() as client:
            client.execute_command("SENTINEL", "FAILOVER", ss.master_name)
    else:
        assert old.proc is not None
        old.proc.kill()
    wait_until(lambda: ss.master_port() != old.port, 30, "the sentinels to name a new master")
    return at


@pytest.mark.parametrize("how", ["failover", "sigkill"])
def test_a_job_streams_through_a_failover(ha: Stack, how: str) -> None:
    """The master goes (SENTINEL FAILOVER, or SIGKILL): the reader's log ends equal to the
    new master's, POSTs meanwhile are 202 or 503 with Retry-After (never a 500 or a
    hang), and a job submitted after the switch runs to done."""
    ha.worker()
    ha.monitor()
    _, base = ha.web()
    response = httpx.post(base + "/imagine", json={"prompt": "through", **LONG}, timeout=10)
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    reader = Reader(base, job_id)
    wait_until(lambda: any(e.event == "progress" for e in reader.seen), 60, "progress")
    poster = Poster(base)
    wait_until(lambda: len(poster.answers) >= 3, 30, "POSTs before the switch")
    at = switch(ha, how)
    switched = time.time()
    events = reader.join()
    wait_until(lambda: any(t > at and s == 202 for t, s, _, _ in poster.answers), 60, "a 202")
    poster.stop()

    master = sentinels(ha).client()
    assert events == logged(master, job_id)
    assert events[-1][1] == "done"
    statuses = {status for _, status, _, _ in poster.answers}
    assert poster.failures == [] and statuses <= {202, 503}, (poster.failures, statuses)
    assert all(retry for _, status, retry, _ in poster.answers if status == 503)
    after = httpx.post(base + "/imagine", json=SMALL, timeout=10)
    assert after.status_code == 202, after.text
    final = Reader(base, after.json()["jobId"]).join()
    assert final[-1][1] == "done"
    # The monitor follows too: the ops snapshot is written to the new master again.
    wait_until(lambda: snapshot_at(master) > switched, 30, "a snapshot on the new master")
    _report(how, at, reader, poster, events, master)


def test_sentinels_with_a_password(tmp_path: Path) -> None:
    """Sentinels that require a password: with JOBCAST_SENTINEL_PASSWORD the web, the
    worker (Celery's broker through kombu's sentinel transport) and the monitor find the
    master, and a job runs to done; a monitor without it says it cannot authenticate."""
    with own_stack(tmp_path, sentinel="watchers-secret") as stack:
        stack.worker()
        stack.monitor()
        _, base = stack.web()
        response = httpx.post(base + "/imagine", json=SMALL, timeout=10)
        assert response.status_code == 202, response.text
        events = Reader(base, response.json()["jobId"]).join()
        assert events == logged(sentinels(stack).client(), response.json()["jobId"])
        assert events[-1][1] == "done"
        env = {**stack.env, "JOBCAST_SENTINEL_PASSWORD": ""}
        proc = Proc([sys.executable, "-m", "web.cli", "monitor"], env, tmp_path / "m2.log")
        stack.keep("monitor without the password", proc.start())
        wait_until(lambda: "AuthenticationError" in proc.output(), 30, "an authentication error")
        assert "leading" not in proc.output()


def snapshot_at(client: redis.Redis) -> float:
    """When the monitor last wrote the ops snapshot there (0: never)."""
    raw = client.get(Keys().ops_snapshot)
    return json.loads(raw)["at"] / 1000 if raw else 0.0


def _report(
    how: str,
    at: float,
    reader: Reader,
    poster: Poster,
    log: list[tuple[str, str]],
    master: redis.Redis,
) -> None:
    """Print the switch as a user saw it: seconds of 503, jobs and events lost."""
    refused = [t - at for t, status, _, _ in poster.answers if status == 503]
    accepted = [job for _, status, _, job in poster.answers if status == 202]
    gone = [job for job in accepted if not master.exists(Keys().job(job))]
    lost = {e.id for e in reader.seen} - {event_id for event_id, _ in log}
    span = f"{min(refused):.2f}..{max(refused):.2f} s" if refused else "none"
    print(
        f"\n[{how}] 503s: {len(refused)} of {len(poster.answers)} POSTs, {span} after the "
        f"switch was asked; 202 jobs gone: {len(gone)} of {len(accepted)}; stream events "
        f"seen but lost: {len(lost)}; resets: {reader.resets}; reader drops: {reader.drops}"
    )
