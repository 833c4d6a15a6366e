"""A worker that dies holding a job, and a visibility timeout shorter than a job.

The monitor hands a dead worker's job out again within seconds (not after the visibility
timeout); a second copy of a running job's message finds the job's lease held and does
nothing. Each test runs its own Redis, workers, web and (where it matters) monitor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import (
    Stack,
    collect,
    logged,
    own_stack,
    post_job,
    wait_until,
)

pytestmark = pytest.mark.slow

MEDIUM = {"prompt": "a medium one", "width": 320, "height": 320, "steps": 20}
LONG = {"prompt": "longer than the visibility timeout", "width": 1024, "height": 1024, "steps": 24}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path) as s:
        yield s


def started_on(client: redis.Redis, job_id: str) -> str | None:
    """The worker the job's latest ``started`` event names, once it has one."""
    raw = client.hget(f"jobcast:job:{{{job_id}}}", "last:started")
    return raw.decode().split('"worker":"')[1].split('"')[0] if raw else None


def progressed(client: redis.Redis, job_id: str) -> bool:
    return client.hget(f"jobcast:job:{{{job_id}}}", "last:progress") is not None


def test_dead_workers_job_runs_again_within_seconds(stack: Stack) -> None:
    """A whole worker SIGKILLed mid-job (default one-hour visibility timeout): the monitor
    hands the job to the other worker, which finishes it as attempt 2 within ~20 s; the
    log holds each event once and the stream a client reads equals the log."""
    _, base = stack.web()
    stack.monitor()
    stack.worker("first"), stack.worker("second")
    client = stack.client()
    job_id = post_job(base, **MEDIUM)["jobId"]
    wait_until(lambda: progressed(client, job_id), 60, "the job to make progress")
    victim = started_on(client, job_id)
    assert victim is not None
    stack.procs[victim.split("@")[0]].kill()  # the whole process group: no goodbye
    killed = time.monotonic()
    wait_until(lambda: client.hget(f"jobcast:job:{{{job_id}}}", "state") == b"succeeded", 60, "done")  # fmt: skip
    took = time.monotonic() - killed
    print(f"\nworker SIGKILLed mid-job: done {took:.1f} s later")
    log = logged(client, job_id)
    assert [phase for _, phase in log].count("started") == 2
    assert [phase for _, phase in log].count("done") == 1
    assert started_on(client, job_id) != victim
    assert [(e.id, e.event) for e in collect(base, job_id) if e.id] == log
    assert took <= 20


def test_visibility_timeout_shorter_than_a_job_runs_it_once(stack: Stack) -> None:
    """With a 5 s visibility timeout (the lowest allowed), kombu hands a longer job's message
    out again while it runs; the copy finds the job's lease held and does nothing: one
    ``started``, one run."""
    stack.env["JOBCAST_VISIBILITY_TIMEOUT"] = "5"
    _, base = stack.web()
    first, second = stack.worker("first"), stack.worker("second")
    client = stack.client()
    job_id = post_job(base, **LONG)["jobId"]
    events = collect(base, job_id, timeout=120)
    assert events[-1].event == "done"
    received = f"Task jobcast.imagine[{job_id}] received"
    copies = first.output().count(received) + second.output().count(received)
    assert copies >= 2, "the visibility timeout never handed out a second copy"
    log = [phase for _, phase in logged(client, job_id)]
    assert log.count("started") == 1 and log.count("done") == 1
    percents = [e.data["percent"] for e in events if e.event == "progress"]
    assert percents == sorted(set(percents))  # one run: no step reported twice


def test_a_job_whose_copy_gave_up_runs_again_when_its_holder_dies(stack: Stack) -> None:
    """A 10 s visibility timeout and no monitor: a second copy of a running job's message
    finds the lease held and acks it, so no broker holds the job any more. The holder is
    then SIGKILLed; with a monitor started, the job still runs again and ends `done`
    (attempt 2) instead of staying `running` with a frozen bar until the retention."""
    stack.env["JOBCAST_VISIBILITY_TIMEOUT"] = "10"
    stack.env["JOBCAST_WORKER_TIMEOUT"] = "5"
    _, base = stack.web()
    first, second = stack.worker("first"), stack.worker("second")
    client = stack.client()
    # Long enough to outlast the visibility timeout plus the copy's wait for the lease.
    job_id = post_job(base, **{**LONG, "steps": 100})["jobId"]
    wait_until(lambda: started_on(client, job_id), 60, "the job to start")
    holder, other = (first, second) if started_on(client, job_id).startswith("first@") else (second, first)  # type: ignore[union-attr]  # fmt: skip
    gave_up = f"Task jobcast.imagine[{job_id}] succeeded"
    wait_until(lambda: gave_up in other.output(), 90, "the copy to find the lease held")
    assert client.hget(f"jobcast:job:{{{job_id}}}", "state") == b"running"
    holder.kill()
    stack.monitor()
    wait_until(lambda: client.hget(f"jobcast:job:{{{job_id}}}", "state") == b"succeeded", 120, "done")  # fmt: skip
    assert [phase for _, phase in logged(client, job_id)].count("started") == 2
