"""Live queue positions: "you are #3 in line".

A job's position is one plus the number of waiting jobs enqueued before it (a lower
ticket). When a job leaves the line (started, cancelled, failed) the publish script sends
ONE message on the ``queue`` channel: ``<version> <ticket> <queue length> <busy> <avg ms>``.
Every web process applies it to the waiting jobs *it* streams without asking Redis
anything: each tracked job with a higher ticket moves up by one. So a departure costs one
Redis message and no Redis commands per web process, however many browsers wait.

Exactness: a job's place is read atomically together with the departure counter
(``queue:version``), after the ``queue`` subscription is confirmed; a message is applied
to a job only if its version is newer than that reading. After a hub reconnect (messages
may have been missed) or a retention sweep (``<version> *``) positions are read again.

Watchers get a derived ``queued`` event (no ``id:``) at most once per ``interval`` per
job, always with the latest value; positions never go up. ETA = position × moving average
run time ÷ busy workers (both kept in Redis by the publish script).
"""

from __future__ import annotations

import math
from collections import deque
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


@dataclass
class _Tracked:
    ticket: float
    version: int  # departures already counted in ``position``
    position: int
    sent: int  # the position watchers last got


@dataclass
class _Line:
    length: int = 0
    busy: int = 0
    avg_ms: float | None = None


class Line:
    def __init__(
        self,
        hub: Hub,
        client: redis.Redis,
        keys: Keys,
        interval: float = 0.25,
        max_updates_per_second: int = 2000,
    ) -> None:
        self.hub = hub
        self.redis = client
        self.keys = keys
        self.interval = interval
        # A departure moves every job behind it, so one flush writes to every waiting
        # stream: past a few hundred of them, stretch the interval to bound the CPU.
        self.max_updates_per_second = max_updates_per_second
        self.sent = 0  # derived frames handed to watchers
        self.tracked: dict[str, _Tracked] = {}
        self.line = _Line()
        self.departures = 0  # messages applied (for the benchmark)
        # The latest departures, for places read while the hub was handling messages.
        self.recent: deque[tuple[int, float]] = deque(maxlen=1024)
        self.rereads = 0
        self._dirty = False
        self._flusher: gevent.Greenlet | None = None

    # -- what streams call ------------------------------------------------------------

    def place(self, job_id: str) -> Place | None:
        """The job's current place in line, read from Redis; ``None`` if it is not waiting."""
        reading = self._read([job_id])[job_id]
        return None if reading is None else self._place(reading.position)

    def track(self, job_id: str) -> Place | None:
        """Follow ``job_id`` for this process's watchers; return its place now, or ``None``."""
        self.hub.listen(self.keys.queue, self._on_message)
        reading = self._read([job_id])[job_id]
        if reading is None or not self._catch_up(reading):
            return None
        known = self.tracked.get(job_id)
        if known is None or known.version < reading.version:
            if known is not None:
                reading.sent = known.sent
            self.tracked[job_id] = reading
        return self._place(self.tracked[job_id].position)

    def _catch_up(self, reading: _Tracked) -> bool:
        """Apply departures the hub handled while we were reading; False if it left."""
        for version, ticket in self.recent:
            if version > reading.version:
                if ticket == reading.ticket:
                    return False
                if ticket < reading.ticket:
                    reading.position -= 1
        return True

    # -- the queue channel -------------------------------------------------------------

    def _on_message(self, payload: bytes) -> None:
        parts = payload.split()
        if len(parts) == 5:
            self._departed(int(parts[0]), float(parts[1]), parts[2:])
        else:
            self._reread_all()  # a sweep, or the hub reconnected: counts may be off
        self._schedule()

    def _departed(self, version: int, ticket: float, line: list[bytes]) -> None:
        self.departures += 1
        self.recent.append((version, ticket))
        self.line = _Line(int(line[0]), int(line[1]), None if line[2] == b"-" else float(line[2]))
        gone = None
        for job_id, job in self.tracked.items():
            if version <= job.version:
                continue  # already counted when its place was read
            if ticket < job.ticket:
                job.position -= 1
            elif ticket == job.ticket:
                gone = job_id  # it started: its own events take over
        if gone is not None:
            del self.tracked[gone]

    def _reread_all(self) -> None:
        self.rereads += 1
        self.recent.clear()  # after a Redis restart the counter may have started over
        try:
            readings = self._read(list(self.tracked))
        except (redis.ConnectionError, redis.TimeoutError):
            return  # the hub is reconnecting; it asks again once resubscribed
        for job_id, reading in readings.items():
            if reading is None:
                self.tracked.pop(job_id, None)
            else:
                reading.sent = self.tracked[job_id].sent
                self.tracked[job_id] = reading

    # -- sending, throttled -----------------------------------------------------------

    def _schedule(self) -> None:
        self._dirty = True
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_forever)

    def _flush_forever(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                self._flush()
                gevent.sleep(self.current_interval())  # the throttle
        finally:
            self._flusher = None

    def current_interval(self) -> float:
        """Seconds between updates: ``interval``, longer when many jobs are tracked."""
        return max(self.interval, len(self.tracked) / self.max_updates_per_second)

    def stats(self) -> dict[str, Any]:
        return {
            "tracked": len(self.tracked),
            "departures": self.departures,
            "rereads": self.rereads,
            "sent": self.sent,
            "interval": round(self.current_interval(), 3),
        }

    def _flush(self) -> None:
        for job_id in list(self.tracked):
            job = self.tracked[job_id]
            watchers = self.hub.watchers_of(self.keys.channel(job_id).encode())
            if not watchers:
                del self.tracked[job_id]
            elif job.position < job.sent:
                job.sent = job.position
                item = self._place(job.position).item()
                self.sent += len(watchers)
                for watcher in watchers:
                    watcher.put(item)

    # -- reading from Redis -----------------------------------------------------------

    def _place(self, position: int) -> Place:
        line = self.line
        return Place(position, line.length, eta_seconds(position, line.avg_ms, line.busy))

    def _read(self, job_ids: list[str]) -> dict[str, _Tracked | None]:
        """Read places atomically (MULTI) with the departure counter and the line's stats."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(k.queue_version).zcard(k.queue).zcard(k.running).hget(k.stats, "avgMs")
        for job_id in job_ids:
            pipe.zrank(k.queue, job_id).zscore(k.queue, job_id)
        version, length, busy, avg, *places = pipe.execute()
        self.line = _Line(length, busy, float(avg) if avg else None)
        result: dict[str, _Tracked | None] = {}
        for n, job_id in enumerate(job_ids):
            rank, ticket = places[2 * n], places[2 * n + 1]
            result[job_id] = (
                None
                if rank is None
                else _Tracked(ticket, int(version or 0), rank + 1, sent=rank + 1)
            )
        return result
