"""The reporter: what any Celery task uses to tell watchers how it is doing.

    reporter = Reporter(events, job_id)
    if reporter.started(worker="celery@host") is None:
        return                      # the job was cancelled or finished already
    for step in range(steps):
        reporter.check_cancelled()  # raises JobCancelled after DELETE /imagine/<id>
        ...
        reporter.progress(step + 1, steps)
    reporter.done(url=..., width=..., height=...)

Progress is coalesced: an update goes out only once it crosses the next ``every_percent``
mark and at least ``min_interval`` seconds after the previous one (100 % always goes out),
so a tight loop costs a few events, not thousands.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from PIL import Image

from tasks import preview as preview_mod
from tasks.errors import JobCancelled
from tasks.events import JobEvents


class Reporter:
    def __init__(
        self,
        events: JobEvents,
        job_id: str,
        *,
        every_percent: int = 5,
        min_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events
        self.job_id = job_id
        self.every_percent = every_percent
        self.min_interval = min_interval
        self.clock = clock
        self.attempt = 0
        self._last_percent = -1
        self._last_at = float("-inf")

    def publish(self, phase: str, data: dict[str, Any] | None = None) -> str | None:
        return self.events.publish(self.job_id, phase, data or {})

    def queued(self, **data: Any) -> str | None:
        """Log a ``queued`` event for a job that did not come through ``POST /imagine``."""
        return self.publish("queued", {"jobId": self.job_id, **data})

    def started(self, worker: str, *, expect: str = "", **data: Any) -> int | None:
        """Log ``started``; return the attempt number, or ``None`` if the job has ended.

        ``expect="queued,running"`` refuses to start a job whose record is gone.
        """
        event_id = self.events.publish(
            self.job_id, "started", {"worker": worker, **data}, expect=expect
        )
        if event_id is None:
            return None
        key = self.events.keys.job(self.job_id)
        raw = self.events.retrying(lambda: self.events.redis.hget(key, "attempt"))
        self.attempt = int(raw or 1)
        return self.attempt

    def progress(self, step: int, steps: int, **data: Any) -> str | None:
        """Report step ``step`` of ``steps``; coalesced, so most calls send nothing."""
        percent = min(100, max(0, (100 * step) // max(1, steps)))
        now = self.clock()
        mark = percent // self.every_percent
        due = self._last_percent < 0 or mark > self._last_percent // self.every_percent
        if percent < 100 and not (due and now - self._last_at >= self.min_interval):
            return None
        if percent == self._last_percent:
            return None
        self._last_percent, self._last_at = percent, now
        return self.publish("progress", {"percent": percent, "step": step, "steps": steps, **data})

    def preview(
        self, image: Image.Image, *, percent: int, width: int, height: int, **data: Any
    ) -> str | None:
        """Send a blurhash of the partial ``image``; ``width``/``height`` are the final size."""
        blurhash = preview_mod.blurhash_of(image)
        return self.publish(
            "preview",
            {"percent": percent, "blurhash": blurhash, "width": width, "height": height, **data},
        )

    def done(self, **data: Any) -> str | None:
        return self.publish("done", data)

    def failed(self, message: str, *, retryable: bool = False, **data: Any) -> str | None:
        return self.publish("failed", {"error": message, "retryable": retryable, **data})

    def cancelled(self, **data: Any) -> str | None:
        return self.publish("cancelled", data)

    def cancel_requested(self) -> bool:
        try:
            flag = self.events.redis.hget(self.events.keys.job(self.job_id), "cancel")
        except (redis.ConnectionError, redis.TimeoutError):
            return False  # Redis is restarting: keep working; the next step asks again
        return flag is not None

    def check_cancelled(self) -> None:
        if self.cancel_requested():
            raise JobCancelled(self.job_id)
