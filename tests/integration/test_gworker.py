"""Our gunicorn worker class (one send() per write when the kernel takes it all)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import Proc, collect, gunicorn_web, logged, post_job

from tasks.events import JobEvents


@pytest.fixture
def fast_web(stack_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    proc, base = gunicorn_web(
        stack_env, tmp_path / "web.log", worker_class="web.gworker.GeventWorker"
    )
    yield base
    proc.stop()


def test_a_job_streams_exactly_its_log(fast_web: str, worker: Proc, rds: redis.Redis) -> None:
    """Under web.gworker.GeventWorker a whole job arrives as logged, in order."""
    job = post_job(fast_web, width=128, height=96, steps=8)
    events = collect(fast_web, job["jobId"])
    assert [(e.id, e.event) for e in events if e.id] == logged(rds, job["jobId"])
    assert events[-1].event == "done"


def test_a_backlog_bigger_than_the_send_buffer_arrives_whole(
    fast_web: str, rds: redis.Redis
) -> None:
    """Megabytes in one write: the part the kernel does not take goes through gevent's loop."""
    events = JobEvents(rds)
    job_id = "big-backlog-job-0123456789"
    events.publish(job_id, "started", {"worker": "w"})
    for n in range(900):
        events.publish(job_id, "progress", {"percent": n % 100, "pad": "z" * 4000})
    events.publish(job_id, "done", {})
    received = collect(fast_web, job_id)
    assert [(e.id, e.event) for e in received if e.id] == logged(rds, job_id)
