"""Faults under a canvas job: the pool process running one of its children is killed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from celery import chord, group
from support import wait_until
from test_platform_faults import Stack, stack  # noqa: F401  (the fixture)

import jobcast

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_canvas_whose_child_loses_its_pool_process_still_ends_done(stack: Stack) -> None:  # noqa: F811
    """A chord of 3 and a callback on a one-process worker; the pool process is SIGKILLed
    while child 1 is past a third of its work: child 1 is redelivered and runs again
    (attempt 2), the parent's percent never goes back (each child counts by its highest
    percent), every child ends with one `done` and the parent ends `done` at 100."""
    worker = stack.worker("w1")
    client = stack.client()
    part, total = stack.app.signature("user.part"), stack.app.signature("user.total")
    members = group(part.clone(kwargs={"n": 40, "every": 0.05}) for _ in range(3))
    handle = jobcast.submit(chord(members, total), queue="user", app=stack.app)
    child = f"{handle.id}.1"

    def child_past_a_third() -> bool:
        raw = client.hget(f"jobcast:job:{{{handle.id}}}.1", "last:progress")
        return raw is not None and json.loads(raw)["percent"] >= 35

    wait_until(child_past_a_third, 60, "child 1 to be a third done")
    (pool,) = children(worker.pid)
    os.kill(pool, signal.SIGKILL)
    done = handle.wait(timeout=120)
    assert done["results"][3] == {"result": 120}
    log = [
        (fields[b"phase"].decode(), json.loads(fields[b"data"]))
        for _, fields in client.xrange(f"jobcast:job:{{{handle.id}}}:events")
    ]
    percents = [data["percent"] for phase, data in log if phase == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100, percents
    assert [phase for phase, _ in log].count("done") == 1 and log[-1][0] == "done"
    child_log = [f[b"phase"] for _, f in client.xrange(f"jobcast:job:{{{handle.id}}}.1:events")]
    assert child_log.count(b"started") == 2 and child_log.count(b"done") == 1, child
