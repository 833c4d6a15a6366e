"""One job's SSE stream: exactly once, in order, resumable.

open:    404 unknown job · 204 finished and nothing after Last-Event-ID
         watch the job channel (subscription confirmed) ─┐
body:    retry ─ [reset] ─ backlog (XRANGE after L) ─ place in line ─ live ─ end
live:    frames from the hub, skipping ids ≤ the last sent; a keep-alive comment
         after each ``heartbeat`` of silence; RESYNC → read the log after the last
         sent id (after a Redis reconnect or when this reader fell behind)
finally: unwatch (the hub unsubscribes the job once nobody watches it)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tasks.events import TERMINAL_STATES, EventId, dumps, format_id, parse_id
from web.extension import Jobcast
from web.hub import RESYNC, Watcher
from web.sse import KEEP_ALIVE, Event, frame

PAGE = 500
TERMINAL_FRAMES = (b"done", b"failed", b"cancelled")


class Stream:
    def __init__(self, ext: Jobcast, job_id: str, last: EventId | None, watcher: Watcher) -> None:
        self.ext = ext
        self.job_id = job_id
        self.sent = last
        self.watcher = watcher
        self.finished = False
        self.events_key = ext.keys.events(job_id)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield Event(retry=self.ext.settings.retry_ms).encode() + self._start()
            heartbeat = self.ext.settings.heartbeat_seconds
            while not self.finished:
                batch = self.watcher.drain(heartbeat)
                yield self._live(batch) if batch else KEEP_ALIVE
        finally:
            self.ext.hub.unwatch(self.watcher)

    def _start(self) -> bytes:
        """The reset notice if history is gone, the backlog, then the place in line."""
        parts = [self._reset_if_trimmed(), self._catch_up()]
        if not self.finished:
            place = self.ext.line.track(self.job_id)
            if place is not None:
                parts.append(place.item().frame)
        return b"".join(parts)

    def _reset_if_trimmed(self) -> bytes:
        if self.sent is None:
            return b""
        oldest = self.ext.redis.xrange(self.events_key, count=1)
        if not oldest or parse_id(oldest[0][0]) <= self.sent:  # type: ignore[operator]
            return b""
        # The client's last id is older than anything left: say so, with the snapshot.
        return Event(event="reset", data=dumps(snapshot(self.ext, self.job_id) or {})).encode()

    def _catch_up(self) -> bytes:
        """Everything in the log after the last sent id, page by page."""
        parts: list[bytes] = []
        while True:
            start = "-" if self.sent is None else "(" + format_id(self.sent)
            entries = self.ext.redis.xrange(self.events_key, min=start, count=PAGE)
            for raw_id, fields in entries:
                phase = fields[b"phase"]
                parts.append(frame(raw_id, phase, fields[b"data"]))
                self.sent = parse_id(raw_id)
                if phase in TERMINAL_FRAMES:
                    self.finished = True
                    return b"".join(parts)
            if len(entries) < PAGE:
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
                parts.append(item.frame)  # derived (queue position): never replayed
            elif sent is None or item.key > sent:
                parts.append(item.frame)
                sent = item.key
                if item.terminal:
                    self.finished = True
            if self.finished:
                break
        self.sent = sent
        return b"".join(parts)


def snapshot(ext: Jobcast, job_id: str) -> dict[str, Any] | None:
    """The job's current state as ``GET /imagine/<id>`` shows it; ``None`` if unknown."""
    raw = ext.redis.hgetall(ext.keys.job(job_id))
    if not raw:
        return None
    record = {k.decode(): v.decode() for k, v in raw.items()}
    state = record.get("state", "running")
    last = _last_events(record)
    progress = last.get("progress") or {}
    snap: dict[str, Any] = {
        "jobId": job_id,
        "state": state,
        "position": None,
        "queueLength": None,
        "etaSeconds": None,
        "percent": 100 if state == "succeeded" else progress.get("percent", 0),
        "preview": last.get("preview"),
        "url": (last.get("done") or {}).get("url"),
        "error": (last.get("failed") or {}).get("error"),
        "attempt": int(record.get("attempt", 0)),
        "lastEventId": record.get("lastEventId"),
        "prompt": record.get("prompt"),
        "width": _int(record.get("width")),
        "height": _int(record.get("height")),
    }
    if state == "queued":
        place = ext.line.place(job_id)
        if place is not None:
            snap.update(place.as_data())
    return snap


def is_terminal(state: str | None) -> bool:
    return state in TERMINAL_STATES


def _last_events(record: dict[str, str]) -> dict[str, Any]:
    return {k[5:]: json.loads(v) for k, v in record.items() if k.startswith("last:")}


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None
