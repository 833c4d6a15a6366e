"""``GET /jobs/stream?job=A&job=B…``: many jobs' events on one SSE connection.

open:    1 to ``max_stream_jobs`` distinct ids (else 400), the composite cursor from
         Last-Event-ID or ``?lastEventId=`` (:mod:`jobcast.cursor`; a bad one is a 400); one
         hub watcher per job, all sharing one wake event; each job opened as its own
         stream would be: unknown or not allowed → an ``error`` event for it · ended at
         or before its cursor id → nothing (not replayed) · else a :class:`Part`
         (a :class:`web.stream.Stream` without its own loop). 204 if nothing is left.
body:    retry ─ errors ─ each part's start (reset, backlog, place) ─ live: the items any
         watcher got ─ end once every job has ended (``?idle=1``: keep-alives, up to
         ``stream_idle_seconds``)
frames:  a logged frame keeps its event and data bytes, with the id line replaced by the
         connection's cursor and ``"jobId":"…"`` spliced in front of the data's fields
         (no JSON is parsed or encoded; the splice is made once per item and kept on it for
         every other connection); derived frames get the jobId only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import gevent
import gevent.event

from jobcast import cursor as cursors
from tasks.events import EventId, dumps
from tasks.tokens import opens
from web.api import JOB_ID, admit_stream
from web.errors import ApiError
from web.extension import Jobcast
from web.hub import Item, Watcher
from web.sse import KEEP_ALIVE, Event
from web.stream import Opening, Stream, open_stream


class Part(Stream):
    """One job of a multiplexed stream: its frames relabelled for the connection."""

    __slots__ = ("index", "mux", "tag")

    def __init__(
        self,
        mux: MultiStream,
        index: int,
        last: EventId | None,
        watcher: Watcher,
        opening: Opening,
    ) -> None:
        super().__init__(mux.ext, mux.jobs[index], last, watcher, opening)
        self.mux = mux
        self.index = index
        self.tag = b'{"jobId":"' + self.job_id.encode() + b'"'

    def _logged(self, item: Item) -> bytes:
        assert item.key is not None
        mux = self.mux
        mux.entries[self.index] = cursors.entry(self.index, mux.base, item.key)
        return b"id: " + mux.cursor() + self._relabelled(item)

    def _relabelled(self, item: Item) -> bytes:
        """The item's frame after its own id line, with the jobId spliced in: made once per
        item for every multiplexed connection that sends it (the hub shares the Item)."""
        for tag, rest in item.muxed:
            if tag == self.tag:
                return rest
        frame = item.frame
        rest = with_job(frame[frame.index(b"\n") :], self.tag)  # after the job's own id line
        item.muxed.append((self.tag, rest))
        return rest

    def _derived(self, item: Item) -> bytes:
        if item.frame.startswith(b":"):
            self.mux.beat = True  # the connection sends one keep-alive for all its jobs
            return b""
        return with_job(item.frame, self.tag)

    def _reset(self) -> bytes:
        return with_job(super()._reset(), self.tag)


def with_job(frame: bytes, tag: bytes) -> bytes:
    """``frame`` with ``tag`` (``{"jobId":"…"``) in front of its data object's fields."""
    if frame.startswith(b"data: {"):
        start = 7
    else:
        at = frame.find(b"\ndata: {")
        if at < 0:
            return frame
        start = at + 8  # just after the "{"
    if frame.startswith(b'"jobId":', start):
        return frame
    comma = b"" if frame[start : start + 1] == b"}" else b","
    return frame[: start - 1] + tag + comma + frame[start:]


class MultiStream:
    """The WSGI body of a multiplexed stream; :meth:`close` releases every watcher."""

    def __init__(self, ext: Jobcast, jobs: list[str], cursor: cursors.Cursor, idle: bool) -> None:
        self.ext = ext
        self.jobs = jobs
        self.idle = idle
        self.given = cursor
        self.base = cursor.base if cursor.covered else int(time.time() * 1000)
        self.prefix = cursors.header(jobs, self.base)
        self.entries: list[bytes] = [b""] * len(jobs)  # by job index: b"" sent nothing yet
        for index, last in cursor.last.items():
            self.entries[index] = cursors.entry(index, self.base, last)
        self.wake = gevent.event.Event()
        self.parts: list[Part] = []
        self.beat = False
        self.head = b""
        self.closed = False

    def cursor(self) -> bytes:
        return cursors.encode(self.prefix + b"".join(self.entries))

    def open(self, tokens: list[str]) -> bool:
        """Open every job; whether there is anything to send (False: 204)."""
        head = [Event(retry=self.ext.settings.retry_ms).encode()]
        news = False  # an error, or a job with events after its cursor id
        for index, job_id in enumerate(self.jobs):
            known = index in self.given.last
            last = self.given.last.get(index)
            if known and last is None:
                continue  # reported gone on an earlier connection
            problem = self._refuse(job_id, tokens[index] if index < len(tokens) else "")
            if problem is None:
                problem, part = self._open_part(index, last)
                if part is not None:
                    self.parts.append(part)  # from now on close() releases it
                    head.append(part._start())
                    news = True
                    if part.finished:
                        part.close()
                        self.parts.remove(part)
            if problem is not None:
                head.append(self._error(index, *problem))
                news = True
        self.head = b"".join(head)
        return news

    def _refuse(self, job_id: str, token: str) -> tuple[str, str] | None:
        if not JOB_ID.fullmatch(job_id):
            return ("not_found", "No such job.")
        key = self.ext.settings.signing_key
        if key and not opens(key, job_id, token):
            return ("bad_token", "This job needs the token that came with it.")
        return None

    def _open_part(self, index: int, last: EventId | None) -> tuple[Any, Part | None]:
        ext = self.ext
        job_id = self.jobs[index]
        watcher = ext.hub.watch(ext.keys.channel(job_id), self.wake)
        try:
            opening = open_stream(ext, job_id, last)
        except BaseException:
            ext.hub.unwatch(watcher)
            raise
        if opening.state is None:
            ext.hub.unwatch(watcher)
            return ("not_found", "No such job."), None
        if self.given.foreign:
            opening = replace(opening, unknown_last=True)  # a reset, then the whole log
        if opening.nothing_after(last):
            ext.hub.unwatch(watcher)  # ended at or before the cursor: not replayed
            return None, None
        return None, Part(self, index, last, watcher, opening)

    def _error(self, index: int, code: str, message: str) -> bytes:
        self.entries[index] = cursors.entry(index, self.base, None)
        data = dumps({"jobId": self.jobs[index][:100], "code": code, "message": message})
        return Event(id=self.cursor().decode(), event="error", data=data).encode()

    def __iter__(self) -> Iterator[bytes]:
        try:
            if self.closed:
                return
            yield self.head
            self.head = b""
            while self.parts:
                chunk = self._next(self.ext.settings.heartbeat_seconds)
                if chunk:
                    yield chunk
            if self.idle:
                yield from self._linger()
        finally:
            self.close()

    def _next(self, heartbeat: float) -> bytes:
        """The frames of whatever the watchers got, or a keep-alive after a silence."""
        ready = [part for part in self.parts if part.watcher and part.watcher.items]
        if not ready:
            self.wake.clear()
            if not self.wake.wait(heartbeat):
                return KEEP_ALIVE
            return b""
        out = []
        for part in ready:
            assert part.watcher is not None
            out.append(part._live(part.watcher.take()))
            if part.finished:
                part.close()
                self.parts.remove(part)
        chunk = b"".join(out)
        if not chunk and self.beat:
            chunk = KEEP_ALIVE
        self.beat = False
        return chunk

    def _linger(self) -> Iterator[bytes]:
        """Keep-alives until the idle time is over (every job has ended)."""
        settings = self.ext.settings
        ends = time.monotonic() + settings.stream_idle_seconds
        yield KEEP_ALIVE  # at once: the client sees the stream stay
        while (left := ends - time.monotonic()) > 0:
            gevent.sleep(min(settings.heartbeat_seconds, left))
            yield KEEP_ALIVE

    def close(self) -> None:
        """Stop watching every job (idempotent)."""
        self.closed = True
        parts, self.parts = self.parts, []
        for part in parts:
            part.close()


def parse_jobs(ext: Jobcast, jobs: list[str]) -> list[str]:
    """The ``?job=`` list: 1 to ``max_stream_jobs`` distinct values, else a 400."""
    limit = ext.settings.max_stream_jobs
    if not jobs:
        raise ApiError(400, "no_jobs", "Name the jobs to stream: ?job=<id>&job=<id>…")
    if len(jobs) > limit:
        raise ApiError(
            400, "too_many_jobs",
            f"A stream carries at most {limit} jobs (JOBCAST_MAX_STREAM_JOBS); got {len(jobs)}.",
        )  # fmt: skip
    if len(set(jobs)) != len(jobs):
        raise ApiError(400, "duplicate_job", "Each job may be named once per stream.")
    return jobs


def parse_cursor(raw: str | None, jobs: list[str]) -> cursors.Cursor:
    """The client's cursor: 400 if it is not base64url text at all; one that does not
    decode for ``jobs`` (forged, or of another list) is *foreign*: as a single stream
    does with an id it never sent, every job starts over with a ``reset``."""
    if not raw:
        return cursors.Cursor()
    if not cursors.TEXT.fullmatch(raw):
        raise ApiError(
            400, "bad_last_event_id", "Last-Event-ID must be a cursor this stream sent."
        )  # fmt: skip
    try:
        return cursors.decode(raw, jobs)
    except ValueError:
        return cursors.Cursor(foreign=True)


def start_many(
    ext: Jobcast,
    jobs: list[str],
    tokens: list[str],
    raw_cursor: str | None,
    idle: bool,
    environ: dict[str, Any],
) -> MultiStream | None:
    """Open a multiplexed stream: its body, or None for 204 (every job ended before the
    cursor); ApiError for a bad request or a full server."""
    cursor = parse_cursor(raw_cursor, parse_jobs(ext, jobs))
    admit_stream(ext, environ)
    body = MultiStream(ext, jobs, cursor, idle)
    try:
        if not body.open(tokens):
            body.close()
            return None
    except BaseException:
        body.close()
        raise
    return body
