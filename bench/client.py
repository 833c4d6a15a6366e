"""A cheap load client: many HTTP/1.1 connections on one asyncio loop, raw sockets.

Driven by ``bench.load`` over stdin/stdout, one JSON object per line::

    {"cmd": "open", "host": h, "port": p, "mode": "sse"|"poll", "paths": [...],
     "interval": 0.5, "wait_headers": true}   -> {"opened", "headers", "failed", "seconds"}
    {"cmd": "status"}                          -> {"frames", "headers", "open"}
    {"cmd": "mark"}                            -> zero the byte counters
    {"cmd": "collect"}                         -> {"rx", "tx", "streams": [[[key, t], ...]]}
    {"cmd": "quit"}

``sse`` connections de-chunk the body and split SSE frames; each frame with an ``id``
field is recorded as ``[id, receive time]``. ``poll`` connections GET a status route
every ``interval`` seconds on a keep-alive connection and record the first time each
``"percent":N`` value is seen, as ``[N, time]``. Times are ``time.time()`` so they
compare with the publisher's send timestamps on the same machine.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import re
import resource
import sys
import threading
import time
from typing import Any

PERCENT = re.compile(rb'"percent":\s*(\d+)')
CONNECT_CONCURRENCY = 200


class Counters:
    """Bytes and frames across all connections of this process."""

    def __init__(self) -> None:
        self.rx = 0
        self.tx = 0
        self.frames = 0
        self.headers = 0
        self.open = 0


class SseConnection(asyncio.Protocol):
    """One SSE stream: parse headers, chunked framing and frames, record ids."""

    def __init__(self, request: bytes, counters: Counters) -> None:
        self.request = request
        self.counters = counters
        self.events: list[list[Any]] = []
        self.head = bytearray()
        self.body = bytearray()
        self.pending = bytearray()
        self.in_body = False
        self.chunked = False
        self.chunk_left = 0
        self.skip_crlf = False
        self.status = 0
        self.got_headers = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counters.open += 1
        self.counters.tx += len(self.request)
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.open -= 1
        if not self.got_headers.done():
            self.got_headers.set_result(False)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.counters.rx += len(data)
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(bytes(self.head[:end]))
            data = bytes(self.head[end + 4 :])
            self.head.clear()
        if self.chunked:
            self._dechunk(data)
        else:
            self.body += data
        self._frames(now)

    def _parse_head(self, head: bytes) -> None:
        self.in_body = True
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1])
        self.chunked = any(
            line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
            for line in lines[1:]
        )
        self.counters.headers += 1
        if not self.got_headers.done():
            self.got_headers.set_result(self.status == 200)

    def _dechunk(self, data: bytes) -> None:
        buf = self.pending
        buf += data
        pos = 0
        while pos < len(buf):
            if self.skip_crlf:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.skip_crlf = False
            if self.chunk_left:
                take = min(self.chunk_left, len(buf) - pos)
                self.body += buf[pos : pos + take]
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.skip_crlf = True
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                pos = len(buf)
                break
            self.chunk_left = size
        del buf[:pos]

    def _frames(self, now: float) -> None:
        body = self.body
        start = 0
        while True:
            end = body.find(b"\n\n", start)
            if end < 0:
                break
            frame = body[start:end]
            start = end + 2
            at = frame.find(b"id:")
            if at < 0 or (at > 0 and frame[at - 1] != 10):
                continue
            eol = frame.find(b"\n", at)
            value = frame[at + 3 : eol if eol >= 0 else len(frame)].strip()
            self.events.append([value.decode(), now])
            self.counters.frames += 1
        if start:
            del body[:start]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class PollConnection(asyncio.Protocol):
    """GET a status route every ``interval`` s; record the first sighting of each percent."""

    def __init__(self, request: bytes, counters: Counters, interval: float) -> None:
        self.request = request
        self.counters = counters
        self.interval = interval
        self.events: list[list[Any]] = []
        self.seen: set[int] = set()
        self.buf = bytearray()
        self.want = -1
        self.loop = asyncio.get_running_loop()
        self.got_headers = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.next_at = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counters.open += 1
        self.next_at = self.loop.time() + random.random() * self.interval
        self.timer = self.loop.call_at(self.next_at, self._send)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.open -= 1
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if not self.got_headers.done():
            self.got_headers.set_result(False)

    def _send(self) -> None:
        if self.transport is None or self.closed:
            return
        self.counters.tx += len(self.request)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.counters.rx += len(data)
        self.buf += data
        while self._response(now):
            pass

    def _response(self, now: float) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        if self.want < 0:
            match = re.search(rb"(?i)content-length:\s*(\d+)", buf[:end])
            self.want = int(match.group(1)) if match else 0
        total = end + 4 + self.want
        if len(buf) < total:
            return False
        found = PERCENT.search(buf, end + 4, total)
        percent = int(found.group(1)) if found else -1
        del buf[:total]
        self.want = -1
        if not self.got_headers.done():
            self.counters.headers += 1
            self.got_headers.set_result(True)
        if percent >= 0 and percent not in self.seen:
            self.seen.add(percent)
            self.events.append([percent, now])
            self.counters.frames += 1
        self.next_at = max(self.next_at + self.interval, self.loop.time())
        self.timer = self.loop.call_at(self.next_at, self._send)
        return True

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.abort()


Connection = SseConnection | PollConnection


class Client:
    """The connections of this process and the commands that drive them."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.conns: list[Connection] = []

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        host, port, mode = cmd["host"], int(cmd["port"]), cmd["mode"]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        results = await asyncio.gather(
            *(self._open_one(gate, host, port, mode, path, cmd) for path in cmd["paths"])
        )
        return {
            "opened": sum(1 for r in results if r is not None),
            "headers": sum(1 for r in results if r),
            "failed": sum(1 for r in results if r is None),
            "seconds": time.monotonic() - started,
        }

    async def _open_one(
        self, gate: asyncio.Semaphore, host: str, port: int, mode: str, path: str, cmd: dict
    ) -> bool | None:
        accept = b"text/event-stream" if mode == "sse" else b"application/json"
        request = (
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Accept: " + accept + b"\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        async with gate:
            for attempt in range(8):
                try:
                    if mode == "sse":
                        factory: Any = lambda: SseConnection(request, self.counters)  # noqa: E731
                    else:
                        factory = lambda: PollConnection(  # noqa: E731
                            request, self.counters, float(cmd.get("interval", 0.5))
                        )
                    _, conn = await loop.create_connection(factory, host, port)
                    break
                except OSError:
                    await asyncio.sleep(0.05 * 2**attempt)
            else:
                return None
            self.conns.append(conn)
            if not cmd.get("wait_headers", True):
                return False
            try:
                return await asyncio.wait_for(asyncio.shield(conn.got_headers), 30)
            except TimeoutError:
                return False

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {"frames": c.frames, "headers": c.headers, "open": c.open}

    def mark(self) -> dict[str, Any]:
        self.counters.rx = self.counters.tx = 0
        return {"ok": True}

    def collect(self) -> dict[str, Any]:
        streams = [conn.events for conn in self.conns]
        for conn in self.conns:
            conn.close()
        return {"rx": self.counters.rx, "tx": self.counters.tx, "streams": streams}


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, "")


async def serve() -> None:
    client = Client()
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(loop, lines), daemon=True).start()
    while True:
        line = await lines.get()
        if not line:
            return
        cmd = json.loads(line)
        name = cmd["cmd"]
        if name == "quit":
            return
        if name == "open":
            reply = await client.open(cmd)
        elif name == "status":
            reply = client.status()
        elif name == "mark":
            reply = client.mark()
        elif name == "collect":
            reply = client.collect()
        else:
            reply = {"error": f"unknown command {name}"}
        sys.stdout.write(json.dumps(reply, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> None:
    raise_fd_limit()
    # A load client holds a list per received event; the collector's full passes over
    # them paused every stream of this client at once (tens of ms, the same seconds in
    # every subject's run). Its memory is bounded by the run, so do without it.
    gc.disable()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
