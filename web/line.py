"""Live queue positions: "you are #3 in line".

A job's position is one plus the number of waiting jobs enqueued before it (a lower
ticket). When a job leaves the line (started, cancelled, failed) the publish script sends
ONE message on the ``queue`` channel: ``<version> <ticket> <queue length> <busy> <avg ms>``.
Every web process applies it to the waiting jobs *it* streams without asking Redis
anything: each tracked job with a higher ticket moves up by one. So a departure costs one
Redis message and no Redis commands per web process, however many browsers wait.

Exactness: a job's place is read atomically together with the departure counter
(``queue:version``), after the ``queue`` subscription is confirmed; a message is applied
to a job only if its version is newer than that reading, and departures that arrive
while a reading is in flight are applied to it from ``recent``. After a hub reconnect
(messages may have been missed), a retention sweep (``<version> *``) or a message we
cannot read, every position is read again by a separate greenlet (never the hub's
reader), retried with backoff until Redis answers; a ``track`` whose read overlapped
such a request reads again.

Watchers get a derived ``queued`` event (no ``id:``) at most once per ``interval`` per
job, always with the latest value; positions never go up. ETA = position × moving average
run time ÷ busy workers (both kept in Redis by the publish script); none while nothing
runs (idle workers take the job at once, or there are none: we cannot tell which).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import gevent
import redis

from tasks.events import dumps
from tasks.handle import eta_seconds
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
        frame = Event(event="queued", data=dumps(self.as_data())).encode()
        return Item(None, False, frame, position=self.position)


TRACK_TRIES = 3


def _parse_departure(payload: bytes) -> tuple[int, float, _Line] | None:
    """``<version> <ticket> <length> <busy> <avg ms|->`` as the publish script sends it."""
    parts = payload.split()
    if len(parts) != 5:
        return None
    try:
        avg = None if parts[4] == b"-" else float(parts[4])
        return int(parts[0]), float(parts[1]), _Line(int(parts[2]), int(parts[3]), avg)
    except ValueError:
        return None


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
        # The departures since the last reread request, for readings made meanwhile.
        self.recent: deque[tuple[int, float]] = deque(maxlen=4096)
        self.rereads = 0
        self.reread_failures = 0
        self.bad_messages = 0
        # Bumped by every reread request: a reading that overlapped one may miss messages.
        self.epoch = 0
        self._reread_done = 0  # the epoch the last completed reread answered
        self._rereader: gevent.Greenlet | None = None
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
        for _ in range(TRACK_TRIES):
            epoch = self.epoch
            reading = self._read([job_id])[job_id]
            if self.epoch == epoch:
                break
            # A reread was asked for while we read: messages may be missing from recent.
        if reading is None or not self._catch_up(reading):
            return None
        known = self.tracked.get(job_id)
        if known is None or known.version < reading.version:
            if known is not None:
                reading.sent = known.sent
            self.tracked[job_id] = reading
        if self.epoch != epoch:
            self._want_reread()  # still overlapping after every try: let a reread fix it
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
        departure = _parse_departure(payload)
        if departure is not None:
            self._departed(*departure)
        else:
            if payload != b"*" and not payload.endswith(b" *"):
                self.bad_messages += 1
            self._want_reread()  # a sweep, a reconnect, or a message we cannot read
        self._schedule()

    def _departed(self, version: int, ticket: float, line: _Line) -> None:
        self.departures += 1
        self.recent.append((version, ticket))
        self.line = line
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

    def _want_reread(self) -> None:
        """Have every tracked position read again, soon, outside the hub's reader."""
        self.epoch += 1
        self.recent.clear()  # after a Redis restart the counter may have started over
        if self._rereader is None:
            self._rereader = gevent.spawn(self._reread_until_done)

    def _reread_until_done(self) -> None:
        """Reread until one reading spans no newer request; retry while Redis fails."""
        backoff = 0.1
        try:
            while self._reread_done != self.epoch:
                epoch = self.epoch
                if self._reread_all():
                    self._reread_done = epoch
                    backoff = 0.1
                elif epoch == self.epoch:  # Redis failed us: back off
                    gevent.sleep(backoff * (1 + random.random()))
                    backoff = min(backoff * 2, 5.0)
        finally:
            self._rereader = None

    def _reread_all(self) -> bool:
        """Read every tracked place again; False if it must be retried."""
        self.rereads += 1
        epoch = self.epoch
        try:
            readings = self._read(list(self.tracked))
        except (redis.ConnectionError, redis.TimeoutError):
            self.reread_failures += 1  # Redis away or the pool exhausted: try again later
            return False
        if len(self.recent) == self.recent.maxlen:
            self._want_reread()  # departures were dropped from recent: read once more
        if self.epoch != epoch:
            return False  # asked again meanwhile: this reading may miss messages
        for job_id, reading in readings.items():
            known = self.tracked.get(job_id)
            if known is None:
                continue  # dropped meanwhile (no watcher left): do not bring it back
            if reading is None or not self._catch_up(reading):
                del self.tracked[job_id]
            else:
                reading.sent = known.sent
                self.tracked[job_id] = reading
        self._schedule()
        return True

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
            "rereadFailures": self.reread_failures,
            "badMessages": self.bad_messages,
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
