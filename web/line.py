"""Live queue positions: "you are #3 in line".

A job's position is one plus the number of waiting jobs enqueued before it (a lower
ticket). When a job leaves the line (started, cancelled, failed) the publish script sends
ONE message on the ``queue`` channel: ``<version> <ticket> <queue length> <busy> <avg ms>``.
Every web process applies it to the waiting jobs *it* streams without asking Redis
anything: each tracked job with a higher ticket moves up by one. So a departure costs one
Redis message and no Redis commands per web process, however many browsers wait.

A departure is O(1) in the common case. The tracked jobs are kept in ticket order, each
with a ``base``: its position is ``base - shift``. A departure below every tracked ticket
(the head of the line left: FIFO) bumps ``shift`` and touches no job; one in the middle
(a cancel, the failure of a job behind others) moves the smaller side: it bumps ``shift``
and adds one to the bases of the jobs ahead of it, or subtracts one from those behind it
(bisected, O(log n + min(ahead, behind))). The flush reads the positions once per
``interval``.

Exactness: a job's place is read atomically together with the departure counter
(``queue:version``), after the ``queue`` subscription is confirmed; a message is applied
to a job only if its version is newer than that reading, and departures that arrive
while a reading is in flight are applied to it from ``recent``. A reading newer than the
last message applied (``applied``: Redis answered before the hub delivered the messages
it counts) waits in ``ahead``, where every message is checked against its version one by
one, until the messages catch up with it; only then does it join the ordered jobs, whose
readings are all at most ``applied``, so that a newer message applies to every one of
them. A message older than ``applied`` (the counter started over) takes the exact path
for every job. After a hub reconnect
(messages may have been missed), a retention sweep (``<version> *``) or a message we
cannot read, every position is read again by a separate greenlet (never the hub's
reader), retried with backoff until Redis answers; a ``track`` whose read overlapped
such a request reads again.

Watchers get a derived ``queued`` event (no ``id:``) at most once per ``interval`` per
job, always with the latest value; positions never go up. ETA = position × moving average
run time ÷ busy workers (both kept in Redis by the publish script); none while nothing
runs (idle workers take the job at once, or there are none: we cannot tell which).

Every Celery queue has its own line (:mod:`tasks.keys`): a :class:`Line` follows one,
on that line's channel, with that line's average and busy count. :class:`Lines` holds
one per line name, made when a job of that line is first watched; a job's line is the
``queue`` field of its record (the stream's opening read brings it along).
"""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import redis

from tasks.events import call_script_directly
from tasks.handle import eta_seconds
from tasks.keys import DEFAULT_QUEUE, LINE_NAME, Keys
from web.hub import AnyHub, Item, tell_place

log = logging.getLogger(__name__)


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
        """The derived ``queued`` frame: the bytes ``Event(event="queued", data=dumps(
        self.as_data()))`` encodes to, formatted directly (every field is an int or null:
        the flush builds one per waiting job, and ``json.dumps`` was most of its cost)."""
        eta = "null" if self.eta_seconds is None else str(int(self.eta_seconds))
        frame = (
            f'event: queued\ndata: {{"position":{int(self.position)},'
            f'"queueLength":{int(self.queue_length)},"etaSeconds":{eta}}}\n\n'
        ).encode()
        return Item(None, False, frame, position=self.position)


TRACK_TRIES = 3

# KEYS: the line's version, queue, running, stats; ARGV: job ids. Returns the departure
# counter, the line's length, busy count and average, then each job's rank and ticket
# (false for a job not in line), all read at one instant.
READ_PLACES_LUA = """
local out = {redis.call('GET', KEYS[1]), redis.call('ZCARD', KEYS[2]),
             redis.call('ZCARD', KEYS[3]), redis.call('HGET', KEYS[4], 'avgMs')}
for _, job in ipairs(ARGV) do
  out[#out + 1] = redis.call('ZRANK', KEYS[2], job)
  out[#out + 1] = redis.call('ZSCORE', KEYS[2], job)
end
return out
"""
SLICE = 64  # frames a flush hands out between two pauses


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
    position: int  # while in ``ahead``; once in the order, ``base - shift`` is
    sent: int  # the position watchers last got
    base: int = 0  # in the order: ``position + shift`` when it joined, kept so
    ordered: bool = False  # in the ticket order (else in ``ahead``)
    channel: bytes = b""  # the job's channel, whose watchers the flush tells
    sent_at: float = float("-inf")  # when watchers last got a place (time.monotonic)


@dataclass
class _Line:
    length: int = 0
    busy: int = 0
    avg_ms: float | None = None


class Line:
    def __init__(
        self,
        hub: AnyHub,
        client: redis.Redis,
        keys: Keys,
        interval: float = 0.25,
        max_updates_per_second: int = 2000,
        name: str | None = None,
        call_script: Callable[[Any, list[Any], list[Any]], Any] = call_script_directly,
    ) -> None:
        self.hub = hub
        self.redis = client
        self.call_script: Callable[[Any, list[Any], list[Any]], Any] = call_script
        self._read_places = client.register_script(READ_PLACES_LUA)
        self.keys = keys
        self.line_keys = keys.line(name)  # None: the default line
        self.name = self.line_keys.name
        self.interval = interval
        # A departure moves every job behind it, so one flush writes to every waiting
        # stream: the flush hands out at most this many frames a second (then the time
        # between two updates of a job stretches), to bound the CPU and the stall.
        self.max_updates_per_second = max_updates_per_second
        self.sent = 0  # derived frames handed to watchers
        self.tracked: dict[str, _Tracked] = {}
        # The tracked jobs whose reading is at most ``applied``, by (ticket, id), from
        # ``_head`` on (the head leaves in O(1): the slots before it are dead). Tickets
        # are unique (an INCR), so the job itself is never compared.
        self._order: list[tuple[float, str, _Tracked]] = []
        self._head = 0
        self.shift = 0  # FIFO departures: an ordered job's position is base - shift
        self.applied = 0  # the version of the last departure applied
        self.ahead: dict[str, _Tracked] = {}  # readings newer than ``applied``
        self.line = _Line()
        self.departures = 0  # messages applied (for the benchmark)
        self.out_of_order = 0  # departures that were not below every ordered job
        # The departures since the last reread request, for readings made meanwhile.
        self.recent: deque[tuple[int, float]] = deque(maxlen=4096)
        self.rereads = 0
        self.direct_sends = 0  # places the flush wrote to lent sockets itself
        self.shortcuts = 0  # tracks answered from the job's tracked place (no read)
        self.reread_failures = 0
        self.bad_messages = 0
        self.crashes = 0  # unexpected exceptions the flusher and rereader survived
        # Bumped by every reread request: a reading that overlapped one may miss messages.
        self.epoch = 0
        self._reread_done = 0  # the epoch the last completed reread answered
        self._rereader: gevent.Greenlet | None = None
        self._dirty = False
        self._flusher: gevent.Greenlet | None = None
        self._last_frames = 0  # handed out by the last flush

    # -- what streams call ------------------------------------------------------------

    def place(self, job_id: str) -> Place | None:
        """The job's current place in line, read from Redis; ``None`` if it is not waiting."""
        reading = self._read([job_id])[job_id]
        return None if reading is None else self._place(reading.position)

    def track(self, job_id: str) -> Place | None:
        """Follow ``job_id`` for this process's watchers; return its place now, or ``None``."""
        self.hub.listen(self.line_keys.queue, self._on_message)
        known = self.tracked.get(job_id)
        if known is not None and self._reread_done == self.epoch:
            # Followed here already and no reread is due: the departures keep its place
            # current, so another stream of the job costs no Redis round trip.
            self.shortcuts += 1
            return self._place(self._position(known))
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
                reading.sent, reading.sent_at = known.sent, known.sent_at
            self._store(job_id, reading)
        if self.epoch != epoch:
            self._want_reread()  # still overlapping after every try: let a reread fix it
        position = self.position(job_id)
        assert position is not None
        return self._place(position)

    def position(self, job_id: str) -> int | None:
        """The tracked job's position as this process knows it now (no Redis)."""
        job = self.tracked.get(job_id)
        return None if job is None else self._position(job)

    def _catch_up(self, reading: _Tracked) -> bool:
        """Apply departures the hub handled while we were reading; False if it left."""
        for version, ticket in self.recent:
            if version > reading.version:
                if ticket == reading.ticket:
                    return False
                if ticket < reading.ticket:
                    reading.position -= 1
        return True

    # -- the tracked jobs: an order by ticket, and the readings ahead of it -----------

    def _position(self, job: _Tracked) -> int:
        return job.base - self.shift if job.ordered else job.position

    def _store(self, job_id: str, reading: _Tracked) -> None:
        """Track ``reading`` (caught up with every departure applied) in place of any other."""
        if job_id in self.tracked:
            self._forget(job_id)
        self.tracked[job_id] = reading
        if reading.version <= self.applied:
            self._join_order(job_id, reading)
        else:
            self.ahead[job_id] = reading  # messages it counts are still on their way

    def _join_order(self, job_id: str, job: _Tracked) -> None:
        job.base, job.ordered = job.position + self.shift, True
        insort(self._order, (job.ticket, job_id, job), lo=self._head)

    def _leave_order(self, job_id: str, job: _Tracked) -> None:
        order = self._order
        at = bisect_left(order, (job.ticket, job_id), self._head)
        if at == self._head:
            self._head += 1  # the front: O(1); compact once half the list is dead
            if self._head > 64 and 2 * self._head > len(order):
                del order[: self._head]
                self._head = 0
        else:
            del order[at]
        job.position, job.ordered = job.base - self.shift, False

    def _forget(self, job_id: str) -> None:
        job = self.tracked.pop(job_id)
        if job.ordered:
            self._leave_order(job_id, job)
        else:
            del self.ahead[job_id]

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
        if version <= self.applied:
            self._departed_exactly(version, ticket)  # the counter went back: Redis lost it
            return
        ahead = self.ahead
        for job_id, job in list(ahead.items()):
            if version <= job.version:
                continue  # already counted when its place was read
            if ticket < job.ticket:
                job.position -= 1
            elif ticket == job.ticket:
                self._forget(job_id)  # it started: its own events take over
        self._departed_ordered(ticket)  # every ordered reading is older than this one
        self.applied = version
        for job_id, job in list(ahead.items()):
            if job.version <= version:  # the messages caught up with its reading
                del ahead[job_id]
                self._join_order(job_id, job)

    def _departed_ordered(self, ticket: float) -> None:
        """Apply a departure to every ordered job: O(1) if it left ahead of them all."""
        order, head = self._order, self._head
        if head == len(order) or ticket < order[head][0]:
            self.shift += 1  # FIFO: the head of the line left
            return
        at = bisect_left(order, (ticket,), head)
        gone = order[at][1] if at < len(order) and order[at][0] == ticket else None
        if at == head:
            self.shift += 1  # the first of ours left
            if gone is not None:
                self._forget(gone)  # it started: its own events take over
            return
        if gone is not None:
            self._forget(gone)  # not the head: the slots before ``at`` stay where they are
        self.out_of_order += 1
        if len(order) - at <= at - head:
            for entry in order[at:]:
                entry[2].base -= 1  # the jobs behind it move up
        else:
            self.shift += 1  # everyone moves up, but for the jobs ahead of it
            for entry in order[head:at]:
                entry[2].base += 1

    def _departed_exactly(self, version: int, ticket: float) -> None:
        """Apply a departure job by job, as its version says (O(n): a counter restart)."""
        for job_id, job in list(self.tracked.items()):
            if version <= job.version:
                continue
            if ticket == job.ticket:
                self._forget(job_id)
            elif ticket < job.ticket:
                if job.ordered:
                    job.base -= 1
                else:
                    job.position -= 1
        self.applied = version
        for job_id, job in list(self.tracked.items()):
            if job.ordered and job.version > version:
                self._leave_order(job_id, job)  # ordered readings must be ≤ applied
                self.ahead[job_id] = job

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
                try:
                    done = self._reread_all()
                except Exception:  # a bug or a reply we cannot read: the positions must not
                    # stay stale until the next request, so log it and read again, later
                    self.crashes += 1
                    log.exception("line %s: rereading the places failed", self.name)
                    done = False
                if done:
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
                self._forget(job_id)
            else:
                reading.sent, reading.sent_at = known.sent, known.sent_at
                self._store(job_id, reading)
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
                began = time.monotonic()
                try:
                    self._flush()
                except Exception:  # a watcher's queue or a bug: the other watchers still
                    # wait for their places, so log it and flush again after the interval
                    self.crashes += 1
                    log.exception("line %s: sending the places failed", self.name)
                    self._dirty = True
                gevent.sleep(max(0.0, began + self.interval - time.monotonic()))  # the throttle
        finally:
            self._flusher = None

    def current_interval(self) -> float:
        """Seconds between two updates of a job: ``interval``, longer when the last flush
        handed out more frames than ``max_updates_per_second`` allows in one."""
        return max(self.interval, self._last_frames / self.max_updates_per_second)

    def stats(self) -> dict[str, Any]:
        return {
            "tracked": len(self.tracked),
            "departures": self.departures,
            "outOfOrder": self.out_of_order,
            "rereads": self.rereads,
            "shortcuts": self.shortcuts,
            "directSends": self.direct_sends,
            "rereadFailures": self.reread_failures,
            "badMessages": self.bad_messages,
            "crashes": self.crashes,
            "sent": self.sent,
            "interval": round(self.current_interval(), 3),
        }

    def _flush(self) -> None:
        """Tell every watcher whose job moved its latest place, at most once per
        ``interval`` per job, paced: after every ``SLICE`` frames, a pause that keeps the
        rate at ``max_updates_per_second``, so live events are never stuck behind a wave
        of thousands of frames (and a job reached later gets a fresher place)."""
        frames = pending = 0
        for job_id in list(self.tracked):
            job = self.tracked.get(job_id)  # dropped or read again during a pause?
            if job is None:
                continue
            watchers = self.hub.watchers_of(job.channel)
            if not watchers:
                self._forget(job_id)
                continue
            position = self._position(job)
            if position >= job.sent:
                continue
            now = time.monotonic()
            if now - job.sent_at < self.interval:
                self._dirty = True  # told too recently: the next flush will
                continue
            job.sent, job.sent_at = position, now
            item = self._place(position).item()
            self.sent += len(watchers)
            self.direct_sends += tell_place(watchers, item)
            pending += len(watchers)
            if pending >= SLICE:
                frames += pending
                gevent.sleep(pending / self.max_updates_per_second)
                pending = 0
        self._last_frames = frames + pending

    # -- reading from Redis -----------------------------------------------------------

    def _place(self, position: int) -> Place:
        line = self.line
        return Place(position, line.length, eta_seconds(position, line.avg_ms, line.busy))

    def _read(self, job_ids: list[str]) -> dict[str, _Tracked | None]:
        """Read places atomically (one script) with the departure counter and the line's
        stats; through the web's script funnel, so the reads of a burst of new streams
        share round trips with each other and with the opening reads."""
        k = self.line_keys
        reply = self.call_script(
            self._read_places, [k.version, k.queue, k.running, k.stats], job_ids
        )
        version, length, busy, avg, *places = reply
        self.line = _Line(int(length), int(busy), float(avg) if avg else None)
        result: dict[str, _Tracked | None] = {}
        for n, job_id in enumerate(job_ids):
            rank, ticket = places[2 * n], places[2 * n + 1]
            result[job_id] = (
                None
                if rank is None
                else _Tracked(
                    float(ticket),  # (a cluster's MULTI answers the raw reply: bytes)
                    int(version or 0),
                    int(rank) + 1,
                    sent=int(rank) + 1,
                    channel=self.keys.channel(job_id).encode(),
                )
            )
        return result


class Lines:
    """One :class:`Line` per line (Celery queue) name in this process, made on demand."""

    def __init__(self, hub: AnyHub, client: redis.Redis, keys: Keys, **options: Any) -> None:
        self.hub = hub
        self.redis = client
        self.keys = keys
        self.options = options
        self.lines: dict[str, Line] = {}
        self.default = self.get(DEFAULT_QUEUE)

    def get(self, name: str | None) -> Line:
        """The line of queue ``name``; the default line for None or a name that cannot be
        one (as the publish script does: such a job moves the default line)."""
        if name is None or not LINE_NAME.fullmatch(name):
            name = DEFAULT_QUEUE
        line = self.lines.get(name)
        if line is None:
            line = self.lines[name] = Line(
                self.hub, self.redis, self.keys, name=name, **self.options
            )
        return line

    def of(self, job_id: str, queue: str | None) -> Line:
        """The line of a job whose record names ``queue``; None if not known here: then
        a line tracking it, else its record tells (one read)."""
        if queue is not None:
            return self.get(queue)
        for line in self.lines.values():
            if job_id in line.tracked:
                return line
        raw = self.redis.hget(self.keys.job(job_id), "queue")
        return self.get(raw.decode(errors="replace") if raw else None)

    def track(self, job_id: str, queue: str | None) -> Place | None:
        """:meth:`Line.track` on the job's line."""
        return self.of(job_id, queue).track(job_id)

    def place(self, job_id: str, queue: str | None) -> Place | None:
        """:meth:`Line.place` on the job's line."""
        return self.of(job_id, queue).place(job_id)

    def stats(self) -> dict[str, Any]:
        """Every line's numbers added up (``interval``: the longest)."""
        total: dict[str, Any] = {}
        for numbers in self.per_line().values():
            for field, value in numbers.items():
                if field == "interval":
                    total[field] = max(total.get(field, 0.0), value)
                else:
                    total[field] = total.get(field, 0) + value
        return total

    def per_line(self) -> dict[str, dict[str, Any]]:
        return {name: line.stats() for name, line in sorted(self.lines.items())}
