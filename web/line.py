"""Live queue positions: "you are #3 in line".

When a job leaves the waiting line (it started, was cancelled or failed) the worker
publishes one message on the ``queue`` channel. Each web process then recomputes, in one
pipelined round trip, the positions of the queued jobs *it* streams, and sends each of
their watchers a derived ``queued`` event (no ``id:``; it is recomputed, not replayed).
Recomputations are throttled to one per ``interval`` seconds; the last one always runs,
so no stream shows a stale position for longer than that.

Position is ``ZRANK + 1`` in the sorted set scored by enqueue ticket: one plus the number
of jobs enqueued earlier that have not started or been cancelled. The ETA is the
position times the moving average of recent run times, divided by the busy workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gevent
import redis

from tasks.events import dumps
from tasks.keys import Keys
from web.hub import Hub, Item
from web.sse import Event


@dataclass(frozen=True)
class Place:
    position: int
    queue_length: int
    eta_seconds: int | None

    def as_data(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "queueLength": self.queue_length,
            "etaSeconds": self.eta_seconds,
        }

    def item(self) -> Item:
        return Item(None, False, Event(event="queued", data=dumps(self.as_data())).encode())


def eta_seconds(position: int, avg_ms: float | None, busy: int) -> int | None:
    """Seconds until a job at ``position`` starts, from the average run time."""
    if avg_ms is None:
        return None
    return math.ceil(position * avg_ms / 1000 / max(1, busy))


class Line:
    def __init__(self, hub: Hub, client: redis.Redis, keys: Keys, interval: float = 0.2) -> None:
        self.hub = hub
        self.redis = client
        self.keys = keys
        self.interval = interval
        self.tracked: dict[str, int] = {}  # job id -> position last sent
        self.recomputes = 0
        self._dirty = False
        self._runner: gevent.Greenlet | None = None
        self._listening = False

    def place(self, job_id: str) -> Place | None:
        """The job's current place in line, or ``None`` if it is not waiting."""
        return self._places([job_id])[0]

    def track(self, job_id: str, place: Place) -> None:
        """Send this process's watchers of ``job_id`` its new place whenever the line moves."""
        if not self._listening:
            self.hub.listen(self.keys.queue, self._moved)
            self._listening = True
        self.tracked[job_id] = min(place.position, self.tracked.get(job_id, place.position))

    def _moved(self, _payload: bytes) -> None:
        self._dirty = True
        if self._runner is None:
            self._runner = gevent.spawn(self._run)

    def _run(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                self._recompute()
                gevent.sleep(self.interval)
        finally:
            self._runner = None

    def _recompute(self) -> None:
        for job_id in [j for j in self.tracked if not self._watchers(j)]:
            del self.tracked[job_id]
        if not self.tracked:
            return
        self.recomputes += 1
        job_ids = list(self.tracked)
        try:
            places = self._places(job_ids)
        except (redis.ConnectionError, redis.TimeoutError):
            self._dirty = True  # try again on the next round
            return
        for job_id, place in zip(job_ids, places, strict=True):
            self._send(job_id, place)

    def _send(self, job_id: str, place: Place | None) -> None:
        if place is None:
            self.tracked.pop(job_id, None)  # it started; its own events take over
            return
        last = self.tracked.get(job_id)
        if last is not None and place.position >= last:
            return  # positions only ever go down; nothing new to say
        self.tracked[job_id] = place.position
        item = place.item()
        for watcher in self._watchers(job_id):
            watcher.put(item)

    def _watchers(self, job_id: str) -> set[Any]:
        return self.hub.watchers_of(self.keys.channel(job_id).encode())

    def _places(self, job_ids: list[str]) -> list[Place | None]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.zrank(self.keys.queue, job_id)
        pipe.zcard(self.keys.queue)
        pipe.hget(self.keys.stats, "avgMs")
        pipe.zcard(self.keys.running)
        *ranks, length, avg_raw, busy = pipe.execute()
        avg = float(avg_raw) if avg_raw else None
        return [
            None if rank is None else Place(rank + 1, length, eta_seconds(rank + 1, avg, busy))
            for rank in ranks
        ]
