"""Retention: what stays bounded over time.

Job records and event logs carry a TTL (set by every publish), so Redis forgets them by
itself. Two things need a sweep, which the monitor runs every minute:

* image files older than the retention in ``media_dir``;
* waiting/running set members whose job record has expired (a job that waited longer
  than the retention), so positions never count ghosts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tasks.keys import Keys


@dataclass(frozen=True)
class Swept:
    images: int
    ghosts: int


def sweep(
    client: redis.Redis,
    keys: Keys,
    media_dir: str,
    retention_seconds: int,
    now: float | None = None,
) -> Swept:
    """Delete expired images and forget ghost members of the waiting and running sets."""
    now = time.time() if now is None else now
    return Swept(
        images=_sweep_images(Path(media_dir), now - retention_seconds),
        ghosts=_sweep_ghosts(client, keys),
    )


def _sweep_images(media: Path, cutoff: float) -> int:
    removed = 0
    if not media.is_dir():
        return 0
    for path in media.glob("*.png"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass  # a concurrent sweep (a second monitor) got there first
    return removed


def _sweep_ghosts(client: redis.Redis, keys: Keys) -> int:
    removed = 0
    for zset in (keys.queue, keys.running):
        members = [m.decode() for m in client.zrange(zset, 0, -1)]
        if not members:
            continue
        pipe = client.pipeline(transaction=False)
        for job_id in members:
            pipe.exists(keys.job(job_id))
        gone = [m for m, alive in zip(members, pipe.execute(), strict=True) if not alive]
        if gone:
            removed += client.zrem(zset, *gone)
            if zset == keys.queue:
                # The line moved in no simple way: web processes recompute positions.
                version = client.incr(keys.queue_version)
                client.publish(keys.queue, f"{version} *")
    return removed
