"""One job's SSE stream: exactly once, in order, resumable.

open:    watch the job channel (subscription confirmed), then the job's state and the
         log after Last-Event-ID: from the hub's cache of this job's log, else ONE Lua
         read (which also fills the cache) · 404 unknown job · 204 finished, nothing new
body:    retry ─ [reset] ─ backlog (page by page) ─ place in line (if waiting) ─ live ─ end
live:    frames from the hub, skipping ids ≤ the last sent; keep-alive comments from
         the hub's heartbeat; RESYNC → read the log after the last sent id (after a
         Redis reconnect, or when this reader fell behind)
close:   unwatch (the hub unsubscribes the job once nobody watches it); WSGI servers
         call it on every path, also for a body never iterated
A Last-Event-ID newer than the job's log is not one this job sent: the client gets a
``reset`` with the snapshot, then the whole log as if it had sent no id. So does one
within the log's span that the log does not hold, at the start or on a resync: the
event was lost (a Sentinel failover drops what the old master had not replicated), and
the client hears it rather than getting a log with a hole where its id was.
"""

from __future__ import annotations

import bisect
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

import gevent.socket

from tasks import records
from tasks.canvas import canvas_position, children_status, done_eta
from tasks.events import TERMINAL_STATES, EventId, dumps, format_id, parse_id
from tasks.keys import DEFAULT_QUEUE
from web.extension import Jobcast
from web.hub import RESYNC, TERMINAL_PHASES, Item, Watcher
from web.proxies import is_tls
from web.sse import Event, frame

PAGE = 500
LAST_ID = (2**64 - 1, 2**64 - 1)  # the largest stream id Redis can hold


STATE_AFTER = {
    b"queued": "queued",
    b"done": "succeeded",
    b"failed": "failed",
    b"cancelled": "cancelled",
}


@dataclass(frozen=True, slots=True)
class Opening:
    """What a new stream needs to know: from one Redis round trip, or from the hub's cache."""

    state: str | None
    last_logged: EventId | None
    oldest: EventId | None
    backlog: list[Item]  # the log after the client's last id (a first page of it)
    more: bool = False  # the page was full: the log may go on after the backlog
    unknown_last: bool = False  # the client's id is newer than the log: not from it
    queue: str | None = None  # the job's line, from the record (None: not read)
    lost_last: bool = False  # the client's id is in the log's span but not in the log

    def unfamiliar(self, last: EventId | None) -> bool:
        """Whether the log cannot continue from ``last``: never its id, or lost from it."""
        return self.lost_last or self.is_from_future(last)

    def nothing_after(self, last: EventId | None) -> bool:
        """Whether a client that saw ``last`` of a finished job has nothing to get (→ 204)."""
        return (
            self.state in TERMINAL_STATES
            and last is not None
            and self.last_logged is not None
            and last == self.last_logged
        )

    def is_from_future(self, last: EventId | None) -> bool:
        """Whether ``last`` is newer than anything this job logged (forged or foreign)."""
        return last is not None and self.last_logged is not None and last > self.last_logged

    @classmethod
    def from_log(cls, log: list[Item], last: EventId | None) -> Opening:
        """From a complete log (the hub's cache): no Redis at all."""
        newest = log[-1]
        return cls(
            state=STATE_AFTER.get(newest.phase, "running"),
            last_logged=newest.key,
            oldest=log[0].key,
            backlog=after(log, last),
            lost_last=missing(log, last),
        )


def open_stream(ext: Jobcast, job_id: str, last: EventId | None) -> Opening:
    """The opening of a stream whose channel is subscribed (and confirmed) already."""
    opening = _open(ext, job_id, last)
    if not opening.unfamiliar(last):
        return opening
    # The cache may not have heard yet what another process already delivered: ask Redis.
    opening = read_opening(ext, job_id, last)
    if not opening.unfamiliar(last):
        return opening
    return replace(_open(ext, job_id, None), unknown_last=True)


def _open(ext: Jobcast, job_id: str, last: EventId | None) -> Opening:
    channel = ext.keys.channel(job_id).encode()
    log = ext.hub.cached_log(channel)
    if log is not None:
        return Opening.from_log(log, last)
    token = ext.hub.begin_fill(channel)
    if not token:
        return read_opening(ext, job_id, last)
    try:
        whole = read_opening(ext, job_id, None)
    except BaseException:
        ext.hub.finish_fill(channel, token, None)
        raise
    complete = whole.state is not None and not whole.more
    ext.hub.finish_fill(channel, token, whole.backlog if complete else None)
    if last is None:
        return whole
    if not complete:
        return read_opening(ext, job_id, last)  # a long log: let Redis look the id up
    oldest = whole.backlog[0].key if whole.backlog else None
    return replace(
        whole,
        oldest=oldest,
        backlog=after(whole.backlog, last),
        lost_last=missing(whole.backlog, last),
    )


def after(items: list[Item], last: EventId | None) -> list[Item]:
    """The logged items newer than ``last`` (all of them without one)."""
    if last is None:
        return items
    return [item for item in items if item.key > last]  # type: ignore[operator]


def missing(log: list[Item], last: EventId | None) -> bool:
    """Whether ``last`` falls within the complete ``log`` but is not one of its ids."""
    if last is None or not log or not log[0].key <= last <= log[-1].key:  # type: ignore[operator]
        return False
    at = bisect.bisect_left(log, last, key=lambda item: item.key)  # type: ignore[arg-type,return-value]
    return log[at].key != last


def read_opening(ext: Jobcast, job_id: str, last: EventId | None) -> Opening:
    """State, last logged id, oldest id and first backlog page, and whether ``last`` is
    still logged: one round trip."""
    lookup = format_id(last) if last is not None and last < LAST_ID else ""
    state, last_logged, oldest, backlog, queue, logged = ext.events.read(
        job_id, _after_bound(last), PAGE, oldest=last is not None, lookup=lookup
    )
    first, newest = parse_id(oldest), parse_id(last_logged)
    return Opening(
        state=state.decode() if state is not None else None,
        last_logged=newest,
        oldest=first,
        backlog=after([_item(entry) for entry in backlog], last),
        more=len(backlog) >= PAGE,
        # A record without the field is one of the default line (written before lines).
        queue=queue.decode(errors="replace") if queue else DEFAULT_QUEUE,
        lost_last=(
            logged == 0
            and last is not None
            and first is not None
            and newest is not None
            and first <= last <= newest
        ),
    )


def _after_bound(last: EventId | None) -> str:
    """The XRANGE start for entries after ``last``."""
    if last is None:
        return "-"
    if last >= LAST_ID:
        # Redis refuses an exclusive bound at its largest id; "+" reads at most that
        # one entry, which after() drops.
        return "+"
    return "(" + format_id(last)


def _item(entry: list[Any]) -> Item:
    raw_id, (_, phase, _, data) = entry  # fields as logged: phase, data
    return Item(parse_id(raw_id), phase in TERMINAL_PHASES, frame(raw_id, phase, data), phase)


@functools.cache
def gunicorn_protocol() -> str | None:
    """The ``--protocol`` of the gunicorn worker serving this process (``http``, ``uwsgi``),
    or None when no gunicorn worker is up the calling stack. It decides how gunicorn frames
    a body and is not in the environ, so it is read off the worker once, on the first
    request that asks (a greenlet's stack starts in the worker's ``handle``)."""
    from gunicorn.workers.base import Worker

    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Worker):
            return str(getattr(owner.cfg, "protocol", "http"))
        frame = frame.f_back
    return None


class Stream:
    """A job stream's WSGI body: iterate it for the frames; :meth:`close` releases its
    watcher, whether or not it was ever iterated (HEAD, a client gone at once)."""

    __slots__ = (
        "ext", "finished", "head", "job_id", "opening", "position", "sent", "sock", "watcher",
    )  # fmt: skip

    def __init__(
        self, ext: Jobcast, job_id: str, last: EventId | None, watcher: Watcher, opening: Opening
    ) -> None:
        self.ext = ext
        self.job_id = job_id
        self.sent = None if opening.unknown_last else last
        self.watcher: Watcher | None = watcher
        self.opening = opening
        self.finished = False
        self.head: bytes | None = None
        # The place this connection last got: the line's flusher may have put an older,
        # higher one in the mailbox between the watch and the place read at the start.
        self.position: int | None = None
        # The client's socket, when the hub may write live frames to it itself.
        self.sock: Any = None

    def send_directly(self, environ: dict[str, Any]) -> None:
        """Let the hub write this stream's live frames to its client socket itself, when
        gunicorn's gevent worker serves it over plain TCP (see :class:`web.hub.Watcher`)."""
        sock = environ.get("gunicorn.socket")
        protocol = environ.get("SERVER_PROTOCOL")
        watcher = self.watcher
        if (
            watcher is None  # closed already
            or not isinstance(sock, gevent.socket.socket)
            or is_tls(sock)  # gunicorn must encrypt
            or protocol not in ("HTTP/1.1", "HTTP/1.0")
            or environ.get("REQUEST_METHOD") not in ("GET", "POST")  # HEAD has no body
            or not environ.get("SERVER_SOFTWARE", "").startswith("gunicorn")
            or gunicorn_protocol() != "http"  # uwsgi: gunicorn sends bodies unframed
        ):
            return
        self.sock = sock
        watcher.sock = sock._sock  # the OS socket under gevent's: send() never waits
        watcher.chunked = protocol == "HTTP/1.1"  # gunicorn frames a body of unknown length

    def prepare(self) -> None:
        """Build the first chunk now, before the status line goes out: a Redis error while
        reading the backlog is then a JSON 503 the client retries, not a server's 500."""
        self.head = self._first()

    def _first(self) -> bytes:
        return Event(retry=self.ext.settings.retry_ms).encode() + self._start()

    def __iter__(self) -> Iterator[bytes]:
        watcher = self.watcher
        if watcher is None:
            return  # closed before the first byte
        try:
            head = self.head if self.head is not None else self._first()
            self.head = None
            yield head
            sock = self.sock
            while not self.finished:
                if sock is None:
                    yield self._live(watcher.drain())
                    continue
                # Everything so far is on the wire (gunicorn resumes us after its write):
                # the hub may send what comes next itself, until it hands something back.
                if watcher.items:
                    yield self._live(watcher.take())
                    continue
                watcher.lend(self.sent, self.position)
                batch = watcher.drain()
                self.sent = watcher.reclaim()
                self.position = watcher.place
                if watcher.pending:
                    rest, watcher.pending = watcher.pending, b""
                    sock.sendall(rest)  # blocks (up to the send timeout) like gunicorn's write
                yield self._live(batch)
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching the job (idempotent)."""
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            self.ext.hub.unwatch(watcher)

    def _start(self) -> bytes:
        """The reset notice if history is gone, the backlog, then the place in line."""
        opening = self.opening
        reset = opening.unknown_last or self._trimmed(opening.oldest)
        parts = [self._reset() if reset else b"", self._frames(opening.backlog)]
        if opening.more and not self.finished:
            parts.append(self._catch_up())
        if not self.finished and opening.state == "queued":
            place = self.ext.lines.track(self.job_id, opening.queue)
            if place is not None:
                parts.append(self._place(place.item()))
        return b"".join(parts)

    def _place(self, item: Item) -> bytes:
        """A derived frame, unless it would move this connection back in line."""
        if item.position is None:
            return self._derived(item)
        if self.position is not None and item.position >= self.position:
            return b""
        self.position = item.position
        return self._derived(item)

    def _logged(self, item: Item) -> bytes:
        """The bytes to send for a logged item (a multiplexed stream relabels them)."""
        return item.frame

    def _derived(self, item: Item) -> bytes:
        """The bytes to send for a derived item or a keep-alive comment."""
        return item.frame

    def _trimmed(self, oldest: EventId | None) -> bool:
        """Whether the client's last id is older than anything left in the log."""
        return self.sent is not None and oldest is not None and oldest > self.sent

    def _reset(self) -> bytes:
        """Tell the client its history is gone (or was never ours), with the snapshot."""
        return Event(event="reset", data=dumps(snapshot(self.ext, self.job_id) or {})).encode()

    def _catch_up(self) -> bytes:
        """Everything in the log after the last sent id, page by page; a reset and the
        whole log if the log no longer holds that id (lost in a failover)."""
        parts: list[bytes] = []
        while not self.finished:
            opening = read_opening(self.ext, self.job_id, self.sent)
            if opening.unfamiliar(self.sent):
                parts.append(self._reset())
                self.sent = None
                continue
            entries = opening.backlog
            parts.append(self._frames(entries))
            if len(entries) < PAGE:
                break
        return b"".join(parts)

    def _frames(self, items: list[Item]) -> bytes:
        """Frames of logged items, up to and including a terminal one."""
        parts: list[bytes] = []
        for item in items:
            self.sent = item.key
            parts.append(self._logged(item))
            if item.terminal:
                self.finished = True
                break
        return b"".join(parts)

    def _live(self, batch: list[Any]) -> bytes:
        parts: list[bytes] = []
        sent = self.sent
        for item in batch:
            if item is RESYNC:
                self.sent = sent
                parts.append(self._catch_up())
                sent = self.sent
                if not self.finished and not self.ext.redis.exists(self.ext.keys.job(self.job_id)):
                    self.finished = True  # Redis lost the job: end; a reconnect gets 404
            elif item.key is None:
                parts.append(self._place(item))  # derived: never replayed
            elif sent is None or item.key > sent:
                sent = item.key
                parts.append(self._logged(item))
                if item.terminal:
                    self.finished = True
            if self.finished:
                break
        self.sent = sent
        return b"".join(parts)


def snapshot(ext: Jobcast, job_id: str, *, details: bool = False) -> dict[str, Any] | None:
    """The job's current state as ``GET /imagine/<id>`` shows it; ``None`` if unknown.

    ``details`` adds what ``GET /jobs/<id>`` shows besides: the kind, the queue (the line)
    and the metadata given at submit (``meta``, when there is any)."""
    raw = ext.redis.hgetall(ext.keys.job(job_id))
    if not raw:
        return None
    record = records.decode(raw)
    state = record.get("state", "running")
    last = records.last_events(record)
    snap: dict[str, Any] = {
        "jobId": job_id,
        "state": state,
        "queue": record.get("queue", DEFAULT_QUEUE),
        "position": None,
        "queueLength": None,
        "etaSeconds": None,
        **records.progress(state, last, record),
        "preview": last.get("preview"),
        "url": (last.get("done") or {}).get("url"),
        "lastEventId": record.get("lastEventId"),
        "prompt": record.get("prompt"),
        "width": _int(record.get("width")),
        "height": _int(record.get("height")),
    }
    if details:
        snap["kind"] = record.get("kind")
        snap["queue"] = record.get("queue")
        meta = records.json_object(record.get("meta"))
        if meta is not None:
            snap["meta"] = meta
    if record.get("canvas") == "1":
        # A canvas: its own percent, its children, and the place of its first waiting one.
        children = children_status(ext.events, job_id, int(record.get("children", "0")))
        snap["children"] = children
        waiting = [c for c in children if c["position"] is not None]
        if state == "queued" and waiting:
            # Its place: that of its first waiting child, with that child's ETA to start.
            first = min(waiting, key=lambda c: c["position"])
            child_queue = ext.redis.hget(ext.keys.job(first["jobId"]), "queue")
            place = ext.lines.place(first["jobId"], child_queue.decode() if child_queue else None)
            snap["position"] = canvas_position(children)
            if place is not None:
                snap.update(place.as_data())
        if not is_terminal(state):
            start = snap["etaSeconds"] if state == "queued" else 0
            snap["doneEtaSeconds"] = done_eta(ext.events, children, start)
        return snap
    if record.get("parent"):
        snap["parent"] = record["parent"]
    if state == "queued":
        place = ext.lines.place(job_id, snap["queue"])
        if place is not None:
            snap.update(place.as_data())
    return snap


def is_terminal(state: str | None) -> bool:
    return state in TERMINAL_STATES


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None
