"""Retention sweep: old images go, ghosts leave the line, fresh things stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import redis

from tasks.events import JobEvents
from tasks.keys import Keys
from tasks.retention import sweep


def test_old_images_are_deleted_and_new_ones_kept(rds: redis.Redis, tmp_path: Path) -> None:
    """Files older than the retention are removed; younger ones stay."""
    old, new = tmp_path / "old.png", tmp_path / "new.png"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    swept = sweep(rds, Keys(), str(tmp_path), retention_seconds=60)
    assert swept.images == 1 and not old.exists() and new.exists()


def test_expired_jobs_leave_the_line(rds: redis.Redis, tmp_path: Path) -> None:
    """A waiting job whose record expired is removed from the line; live ones keep their place."""
    events = JobEvents(rds, retention_seconds=60)
    for job_id in ("first", "second", "third"):
        events.enqueue(job_id, {"prompt": "p"})
    rds.delete("jobcast:job:{first}", "jobcast:job:{first}:events")  # as if expired
    swept = sweep(rds, Keys(), str(tmp_path), retention_seconds=60)
    assert swept.ghosts == 1
    assert [m.decode() for m in rds.zrange("jobcast:queue", 0, -1)] == ["second", "third"]


def test_the_job_index_forgets_jobs_older_than_the_retention(
    rds: redis.Redis, tmp_path: Path
) -> None:
    """The sweep drops index members created before the retention; newer ones stay."""
    events = JobEvents(rds, retention_seconds=60)
    for job_id in ("old", "new"):
        events.enqueue(job_id, {"prompt": "p"})
    rds.zadd(Keys().job_index, {"old": int((time.time() - 120) * 1000)})  # created 2 min ago
    swept = sweep(rds, Keys(), str(tmp_path), retention_seconds=60)
    assert swept.unindexed == 1
    assert [m.decode() for m in rds.zrange(Keys().job_index, 0, -1)] == ["new"]
