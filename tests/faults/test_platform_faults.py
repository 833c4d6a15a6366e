"""Faults under a user's own job tasks (tests/platform_app.py): Redis restarting under a
waiting handle, a worker killed mid-job, an attempt that lost its lease. Each test runs
its own Redis and workers of the user's app, so it can break them freely."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from support import Proc, Stack, logged, own_stack, wait_until

import jobcast
from tasks.config import Settings
from tasks.keys import Keys
from web.cli import worker_argv

pytestmark = pytest.mark.slow

QUEUE = "user"


class UserStack(Stack):
    """A stack whose workers run the user's app (tests/platform_app.py) on its queue, and
    which submits as that app does."""

    @functools.cached_property
    def app(self) -> Celery:
        app = Celery("client", broker=self.redis.url)
        jobcast.configure_celery(app, Settings.from_env(self.env))
        return app

    def worker(self, name: str = "w1", **kwargs: Any) -> Proc:
        """``celery -A platform_app worker -Q user``, one pool process."""
        argv = worker_argv(1, "-P", "prefork", "-Q", QUEUE, f"--hostname={name}@%h")
        argv[argv.index("tasks")] = "platform_app"
        proc = self.keep(name, Proc(argv, self.env, self.tmp / f"{name}.log").start())
        wait_until(lambda: "ready." in proc.output() or not proc.alive(), 60, f"worker {name}")
        assert proc.alive(), proc.output()[-3000:]
        return proc

    def submit(self, name: str, **kwargs: Any) -> jobcast.JobHandle:
        return jobcast.submit(name, kwargs=kwargs, queue=QUEUE, app=self.app)

    def stop(self) -> None:
        if "app" in self.__dict__:
            self.app.jobcast.redis.close()
        super().stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path, UserStack, PYTHONPATH=str(Path(__file__).parents[1])) as s:
        yield s


def phases(client: redis.Redis, job_id: str) -> list[str]:
    return [phase for _, phase in logged(client, job_id)]


def test_wait_rides_out_a_redis_restart(stack: UserStack) -> None:
    """handle.wait() blocked on a running job while Redis restarts (AOF on, down a
    second): it reconnects and returns the job's `done` data, as the worker's publishes
    ride the restart out, instead of raising redis.ConnectionError."""
    stack.worker("w1")
    handle = stack.submit("user.chatter", lines=150, every=0.04)
    client = stack.client()
    wait_until(lambda: "log" in phases(client, handle.id), 30, "the job to log")
    outcome: dict[str, Any] = {}

    def waiting() -> None:
        try:
            outcome["done"] = handle.wait(timeout=90)
        except Exception as exc:  # what the assertion below reports
            outcome["error"] = exc

    thread = threading.Thread(target=waiting, daemon=True)
    thread.start()
    stack.redis.restart(down_for=1.0)
    thread.join(100)
    assert not thread.is_alive()
    assert outcome.get("done") == {"lines": 150}, outcome
    assert phases(stack.client(), handle.id).count("done") == 1


def started_on(client: redis.Redis, job_id: str) -> str | None:
    """The worker the job's latest ``started`` event names, once it has one."""
    raw = client.hget(f"jobcast:job:{{{job_id}}}", "last:started")
    return raw.decode().split('"worker":"')[1].split('"')[0] if raw else None


def test_a_user_job_whose_worker_is_killed_runs_again_and_ends_once(stack: UserStack) -> None:
    """The worker running a user's job is SIGKILLed (whole process group) after some of
    its lines: the monitor hands the job to the other worker, which runs it as attempt 2
    and ends it with one `done`, counted once in the stats; the handle's wait() gets it."""
    stack.monitor()
    stack.worker("first"), stack.worker("second")
    client = stack.client()
    handle = stack.submit("user.chatter", lines=100, every=0.05)
    wait_until(lambda: phases(client, handle.id).count("log") >= 5, 30, "the job to log")
    victim = started_on(client, handle.id)
    assert victim is not None
    stack.procs[victim.split("@")[0]].kill()
    assert handle.wait(timeout=90) == {"lines": 100}
    log = phases(client, handle.id)
    assert log.count("started") == 2 and log.count("done") == 1
    assert started_on(client, handle.id) != victim
    line = Keys().line(QUEUE)  # the job's own line counts it
    assert client.hget(line.stats, "done") == b"1"
    assert client.zcard(line.running) == 0


def test_an_attempt_that_lost_its_lease_publishes_nothing_more(stack: UserStack) -> None:
    """Another attempt takes the job's lease (as one does after this attempt stalled past
    the lease TTL): this attempt's body, which only logs, stops at its next log line once
    its lease keeper notices, and publishes neither more lines nor `done`."""
    worker = stack.worker("w1")
    client = stack.client()
    handle = stack.submit("user.chatter", lines=400, every=0.02)
    wait_until(lambda: "log" in phases(client, handle.id), 30, "the job to log")
    client.set(f"jobcast:job:{{{handle.id}}}:lease", "another-attempt", px=120_000)
    ended = f"Task user.chatter[{handle.id}] succeeded"
    wait_until(lambda: ended in worker.output(), 30, "the attempt to end")
    log = phases(client, handle.id)
    assert "done" not in log
    assert log.count("log") < 400
