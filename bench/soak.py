"""Chaos soak: a real stack under steady jobs, random crashes and restless SSE clients,
then every guarantee checked against Redis's own logs.

    python -m bench.soak --minutes 10 [--clients 240] [--json summary.json]

Stack (own temp dirs, free ports, 127.0.0.1 only, each process in its own session and
stopped by PID): redis-server with AOF (fsync always), 2 Celery workers, gunicorn with 2
gevent workers, the monitor. For ``--minutes`` it posts small jobs through ``POST
/imagine`` (some cancelled with DELETE) while a chaos loop SIGKILLs a pool process, a
whole worker (restarted), a gunicorn worker (respawned by the master), restarts Redis
(SIGTERM, same port and AOF) and kills pub/sub connections (``CLIENT KILL TYPE pubsub``).
Clients: watchers that drop and resume with Last-Event-ID, HEAD probes, malformed and
future Last-Event-IDs, and streams that are opened and never read.

After the chaos stops and jobs drain (with a deadline), it checks: each connection's
durable frames are exactly the log after the id it resumed from (none lost, none twice,
in order; ``reset`` accounted), every job ended, queue positions never rose within a
connection, streams ended when their job did, the line and running set are empty, no
stream, socket or file descriptor is left open in the web workers, and server RSS and
Redis memory are back near where they started. Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.procs import AofRedis, Service, children, free_port, rss_kb, wait_for
from tasks.events import JobEvents
from web.cli import monitor_argv, redis_server_binary, web_argv, worker_argv

PREFIX = "jobcast:"
TERMINAL_STATES = {"succeeded", "failed", "cancelled"}
TERMINAL_PHASES = {"done", "failed", "cancelled"}
FAULTS = ("pool_kill", "worker_kill", "web_worker_kill", "redis_restart", "pubsub_kill")
FAULT_WEIGHTS = (3, 1, 2, 1, 2)
MALFORMED_IDS = ("garbage", "12-ab", "-1", "1-2-3", "9" * 60, "18446744073709551616-0", "1 2")
FUTURE_ID = "99999999999999-0"
END_GRACE = 30.0  # a stream still open this long after its job ended has hung (loaded box)
WATCH_LIMIT = 90.0  # a watcher gives up on a job after this long (a stranded job)
LIVE_WINDOW = 60.0  # watchers follow jobs posted this recently that have not ended
RSS_TOLERANCE = (1.5, 20 * 1024)  # end ≤ max(start × 1.5, start + 20 MB), in kB
REDIS_TOLERANCE = 20 * 1024 * 1024  # growth not explained by the keys that remain
FD_TOLERANCE = 4  # other descriptors (files, pipes, unix sockets) a worker may gain
# A web worker's Redis connections: its pool (Settings.redis_pool_size, 32), Celery's producer
# pool (broker_pool_limit, 10), the hub, and the rate limiter's few.
REDIS_FDS = 32 + 10 + 8


@dataclass
class Options:
    minutes: float = 10.0
    clients: int = 240
    seed: int = 0
    json: str = ""
    workdir: str = ""
    drain_seconds: float = 90.0
    visibility_timeout: int = 3600  # the product default: a dead worker's job waits this
    skip: frozenset[str] = frozenset()  # client or fault kinds to leave out


# -- what happened --------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    posted: float  # monotonic
    state: str = "queued"
    ended: float | None = None  # monotonic, when the soak saw it terminal
    long: bool = False  # a job of another kind that logs more than a page of events


@dataclass
class Conn:
    """One HTTP connection of a watcher, and the frames it got."""

    job: str
    after: str | None  # the Last-Event-ID it sent
    status: int = 0
    ids: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    reset: bool = False
    terminal: bool = False
    end: str = "open"  # eof · drop · cancel · error


@dataclass
class Watch:
    client: int
    job: str
    conns: list[Conn] = field(default_factory=list)
    outcome: str = "open"  # terminal · 204 · 404 · cut
    cut_at: float | None = None  # monotonic: when the watcher gave up or the soak ended


@dataclass
class Record:
    jobs: dict[str, Job] = field(default_factory=dict)
    watches: list[Watch] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, float, str]] = field(default_factory=list)  # unix start, end
    statuses: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)

    def violation(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(detail)

    def active_jobs(self, within: float | None = None) -> list[Job]:
        """Jobs not seen ended (posted in the last ``within`` seconds)."""
        since = time.monotonic() - within if within is not None else 0.0
        return [j for j in self.jobs.values() if j.ended is None and j.posted >= since]


# -- the stack ------------------------------------------------------------------------------


class Stack:
    """Redis (AOF), 2 Celery workers, gunicorn with 2 workers, the monitor."""

    def __init__(self, directory: Path, visibility_timeout: int) -> None:
        self.dir = directory
        self.redis = AofRedis(directory / "redis", redis_server_binary())
        self.web_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            REDIS_URL=self.redis.url,
            JOBCAST_MEDIA_DIR=str(directory / "media"),
            JOBCAST_POST_RATE_LIMIT="100000/minute",
            JOBCAST_VISIBILITY_TIMEOUT=str(visibility_timeout),
            # A message lost to a fault (a worker's BRPOP answered as Redis went down,
            # before kombu kept it as unacked) leaves its job in line until the leader's
            # sweep sends it again (two sweeps, the grace after). The defaults (60 s, 30 s)
            # would outlast the drain; these let the soak see that healing happen.
            JOBCAST_SWEEP_SECONDS="5",
            JOBCAST_GHOST_GRACE_SECONDS="10",
            PYTHONUNBUFFERED="1",
        )
        self.workers: dict[str, Service] = {}
        self.web: Service | None = None
        self.monitor: Service | None = None
        self.restarts: Counter[str] = Counter()

    def start(self) -> None:
        self.redis.start()
        for name in ("w1", "w2"):
            self.start_worker(name)
        self.monitor = Service("monitor", monitor_argv(), self.env, self.dir / "monitor.log")
        self.monitor.start().wait_output("leading", 60)
        argv = web_argv("127.0.0.1", self.web_port, 2, "--graceful-timeout", "3")
        self.web = Service("web", argv, self.env, self.dir / "web.log").start()
        wait_for(lambda: len(self.web_workers()) == 2 and self._healthy(), 60, "gunicorn")

    def start_worker(self, name: str) -> None:
        self.restarts[name] += 1
        argv = worker_argv(1, "-P", "prefork", f"--hostname={name}@%h")
        argv += ["--without-mingle", "--without-gossip"]
        log = self.dir / f"{name}.{self.restarts[name]}.log"
        self.workers[name] = Service(name, argv, self.env, log).start()
        self.workers[name].wait_output("ready.", 120)

    def web_workers(self) -> list[int]:
        return children(self.web.pid) if self.web is not None and self.web.alive() else []

    def _healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.web_port), timeout=2) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                return sock.recv(64).split(b"\r\n", 1)[0].endswith(b" 200 OK")
        except OSError:
            return False

    def stop(self) -> None:
        for service in [self.web, self.monitor, *self.workers.values()]:
            if service is not None:
                service.stop(10)
        self.redis.stop()


# -- HTTP over raw sockets (HTTP/1.0: no chunking; the server closes at the end) -------------


class Http:
    def __init__(self, port: int) -> None:
        self.port = port

    async def open(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        lines = [f"{method} {path} HTTP/1.0", "Host: soak"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except BaseException:
            writer.close()
            raise
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            if name:
                parsed[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), parsed, reader, writer

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, bytes]:
        """A whole request: status and body (TimeoutError, an OSError, after a minute)."""
        async with asyncio.timeout(60):
            status, _, reader, writer = await self.open(method, path, headers, body)
            try:
                return status, await reader.read()
            finally:
                writer.close()


@dataclass
class Frame:
    id: str | None
    event: str
    data: str


async def frames(reader: asyncio.StreamReader) -> AsyncIterator[Frame]:
    """SSE frames with data, as EventSource dispatches them; an unfinished one is dropped."""
    fields: dict[str, str] = {}
    data: list[str] = []
    while True:
        raw = await reader.readline()
        if not raw.endswith(b"\n"):
            return  # EOF (a partial line is not an event)
        line = raw.rstrip(b"\r\n").decode()
        if not line:
            if data:
                yield Frame(fields.get("id"), fields.get("event", "message"), "\n".join(data))
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value


# -- the soak -------------------------------------------------------------------------------


class Soak:
    def __init__(self, options: Options, stack: Stack) -> None:
        self.options = options
        self.stack = stack
        self.http = Http(stack.web_port)
        self.record = Record()
        self.rng = random.Random(options.seed)
        self.posting = True  # jobs keep coming
        self.watching = True  # clients start new watches and probes
        self.idle: list[socket.socket] = []
        self.seen: dict[str, set[str]] = {}  # job → ids some connection received
        self.background: set[asyncio.Task[None]] = set()

    # jobs ------------------------------------------------------------------------------

    async def post_jobs(self) -> None:
        n = 0
        while self.posting:
            n += 1
            await self._post(n)
            await asyncio.sleep(self.rng.uniform(0.15, 0.6))

    async def post_long_jobs(self, events: JobEvents) -> None:
        """Now and then a job of another kind that logs more than a page (500) of events:
        published by the soak itself, as any Celery task could through JobEvents."""
        while self.posting:
            await asyncio.sleep(self.rng.uniform(8, 20))
            job_id = secrets.token_urlsafe(16)
            try:
                await asyncio.to_thread(events.publish, job_id, "queued", {"jobId": job_id})
                self.record.jobs[job_id] = Job(job_id, time.monotonic(), long=True)
                self.record.statuses["long-log jobs"] += 1
                await asyncio.to_thread(_publish_long, events, job_id, self.rng.randint(520, 900))
            except redis.RedisError as exc:  # Redis down longer than the publish retries
                self.record.violation("stack_recovery", f"long-log job {job_id}: {exc}")

    async def _post(self, n: int) -> None:
        side = self.rng.choice((64, 64, 96))
        body = {"prompt": f"soak job {n}", "width": side, "height": side}
        body["steps"] = self.rng.randint(4, 40)
        try:
            status, reply = await self.http.call("POST", "/imagine", body=json.dumps(body).encode())
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.record.statuses[f"POST {type(exc).__name__}"] += 1
            return
        self.record.statuses[f"POST {status}"] += 1
        self._server_error("POST /imagine", status, reply)
        if status != 202:
            return
        job_id = json.loads(reply)["jobId"]
        self.record.jobs[job_id] = Job(job_id, time.monotonic())
        if self.rng.random() < 0.1:
            task = asyncio.create_task(self._cancel(job_id, self.rng.uniform(0, 1.5)))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def _cancel(self, job_id: str, after: float) -> None:
        await asyncio.sleep(after)
        try:
            status, reply = await self.http.call("DELETE", f"/imagine/{job_id}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.record.statuses[f"DELETE {type(exc).__name__}"] += 1
            return
        self.record.statuses[f"DELETE {status}"] += 1
        self._server_error("DELETE", status, reply)
        if status == 404:
            self.record.violation("job_lost", f"DELETE {job_id}: 404 for an accepted job")

    def _server_error(self, what: str, status: int, reply: bytes) -> None:
        if status >= 500 and status != 503:
            self.record.violation("server_error", f"{what}: {status} {reply[:200]!r}")

    async def track_jobs(self, client: redis.Redis) -> None:
        """Note when each job becomes terminal (from its record in Redis)."""
        while True:
            active = self.record.active_jobs()
            if active:
                with contextlib.suppress(redis.RedisError):
                    states = await asyncio.to_thread(_states, client, [j.id for j in active])
                    now = time.monotonic()
                    for job, state in zip(active, states, strict=True):
                        job.state = state or "missing"
                        if state in TERMINAL_STATES:
                            job.ended = now
            await asyncio.sleep(0.5)

    def pick_job(self) -> Job | None:
        active = self.record.active_jobs(LIVE_WINDOW)
        if active and self.rng.random() < 0.85:
            return self.rng.choice(active)
        jobs = list(self.record.jobs.values())
        return self.rng.choice(jobs) if jobs else None

    # watchers --------------------------------------------------------------------------

    async def watcher(self, client: int) -> None:
        while self.watching:
            job = self.pick_job()
            if job is None:
                await asyncio.sleep(0.2)
                continue
            watch = Watch(client, job.id)
            self.record.watches.append(watch)
            try:
                async with asyncio.timeout(WATCH_LIMIT):
                    await self._watch(watch, self._resume_point(job.id))
            except TimeoutError:
                watch.outcome, watch.cut_at = "cut", time.monotonic()
            await asyncio.sleep(self.rng.uniform(0, 1))

    def _resume_point(self, job_id: str) -> str | None:
        """Mostly from the start; sometimes from an id the job's stream sent to someone."""
        seen = self.seen.get(job_id)
        return self.rng.choice(sorted(seen)) if seen and self.rng.random() < 0.2 else None

    async def _watch(self, watch: Watch, last: str | None = None) -> None:
        """Follow one job to its end, dropping and resuming like EventSource would."""
        while watch.outcome == "open":
            conn = Conn(watch.job, last)
            watch.conns.append(conn)
            drop = self.rng.uniform(0.05, 2.5) if self.rng.random() < 0.4 else None
            try:
                async with asyncio.timeout(drop):
                    await self._follow(conn, watch)
            except TimeoutError:
                conn.end = "drop"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.end = "error"
                self.record.statuses[f"stream {type(exc).__name__}"] += 1
            except asyncio.CancelledError:
                conn.end = "cancel"
                watch.outcome, watch.cut_at = "cut", time.monotonic()
                raise
            last = conn.ids[-1] if conn.ids else last
            if watch.outcome == "open":
                await asyncio.sleep(self.rng.uniform(0, 0.5))

    async def _follow(self, conn: Conn, watch: Watch) -> None:
        headers = {"Last-Event-ID": conn.after} if conn.after else {}
        path = f"/imagine/{conn.job}/stream"
        status, _, reader, writer = await self.http.open("GET", path, headers)
        conn.status = status
        self.record.statuses[f"stream {status}"] += 1
        try:
            if status == 200:
                await self._read(conn, reader)
                watch.outcome = "terminal" if conn.terminal else "open"
            elif status in (204, 404):
                watch.outcome = str(status)
            else:
                body = await reader.read()
                self._server_error("stream", status, body)
                if 400 <= status < 500:
                    self.record.violation("stream_refused", f"{conn.job}: {status} {body[:200]!r}")
                    watch.outcome = str(status)
        finally:
            writer.close()
        if conn.end == "open":
            conn.end = "eof"

    async def _read(self, conn: Conn, reader: asyncio.StreamReader) -> None:
        async for frame in frames(reader):
            if frame.event == "reset":
                conn.reset = True
            if frame.event == "queued":
                position = json.loads(frame.data).get("position")
                if isinstance(position, int):
                    conn.positions.append(position)
            if frame.id is not None:
                event_id = sys.intern(frame.id)  # thousands of clients hold the same ids
                conn.ids.append(event_id)
                self.seen.setdefault(conn.job, set()).add(event_id)
                conn.terminal = conn.terminal or frame.event in TERMINAL_PHASES

    # probes ----------------------------------------------------------------------------

    async def prober(self, kind: str) -> None:
        probe = {"head": self._head, "bad_id": self._bad_id, "future_id": self._future_id}
        while self.watching:
            job = self.pick_job()
            if job is None:
                await asyncio.sleep(0.2)
                continue
            try:
                await probe[kind](job)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.record.statuses[f"{kind} {type(exc).__name__}"] += 1
            await asyncio.sleep(self.rng.uniform(0.3, 3))

    async def _head(self, job: Job) -> None:
        try:
            async with asyncio.timeout(10):
                status, body = await self.http.call("HEAD", f"/imagine/{job.id}/stream")
        except TimeoutError:
            self.record.violation("head_hang", f"HEAD {job.id}: no end of response in 10 s")
            return
        self.record.statuses[f"HEAD {status}"] += 1
        self._server_error("HEAD", status, body)

    async def _bad_id(self, job: Job) -> None:
        bad = self.rng.choice(MALFORMED_IDS)
        async with asyncio.timeout(10):
            status, body = await self.http.call(
                "GET", f"/imagine/{job.id}/stream", {"Last-Event-ID": bad}
            )
        self.record.statuses[f"bad id {status}"] += 1
        if status != 400 or "code" not in json.loads(body or b"{}").get("error", {}):
            self.record.violation("bad_id_not_400", f"Last-Event-ID {bad!r}: {status} {body!r}")

    async def _future_id(self, job: Job) -> None:
        """A valid id newer than the log: whatever the answer, the stream must end."""
        path = f"/imagine/{job.id}/stream"
        status, _, reader, writer = await self.http.open("GET", path, {"Last-Event-ID": FUTURE_ID})
        opened = time.monotonic()
        self.record.statuses[f"future id {status}"] += 1
        try:
            while await _read_some(reader, 1.0) is not None:
                # The grace runs from the later of the job's end and the stream's opening: a
                # job that ended long ago gets its whole log at once, then the end of the body.
                if job.ended is not None and time.monotonic() - max(job.ended, opened) > END_GRACE:
                    self.record.violation(
                        "future_id_no_end",
                        f"{job.id} ({job.state}): stream with Last-Event-ID {FUTURE_ID} still "
                        f"open {END_GRACE:.0f} s after the job ended",
                    )
                    return
                if not self.watching and job.ended is None:
                    return
        finally:
            writer.close()

    async def idler(self) -> None:
        """Open a stream, never read it, close it after a while."""
        loop = asyncio.get_running_loop()
        while self.watching:
            job = self.pick_job()
            if job is None:
                await asyncio.sleep(0.2)
                continue
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            self.idle.append(sock)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", self.stack.web_port))
                request = f"GET /imagine/{job.id}/stream HTTP/1.0\r\nHost: soak\r\n\r\n"
                await loop.sock_sendall(sock, request.encode())
                self.record.statuses["idle stream opened"] += 1
                await asyncio.sleep(self.rng.uniform(3, 30))
            except OSError as exc:
                self.record.statuses[f"idle {type(exc).__name__}"] += 1
            finally:
                self.idle.remove(sock)
                sock.close()

    # chaos -----------------------------------------------------------------------------

    async def chaos(self, until: float) -> None:
        kinds = [k for k in FAULTS if k not in self.options.skip]
        weights = [w for k, w in zip(FAULTS, FAULT_WEIGHTS, strict=True) if k in kinds]
        first = list(kinds)
        self.rng.shuffle(first)  # every kind at least once, even in a short run
        pace = min(1.0, self.options.minutes / 2)  # a short run still sees every kind
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(3, 7) * pace)
            if time.monotonic() >= until:
                break
            if not kinds:
                continue
            kind = first.pop() if first else self.rng.choices(kinds, weights)[0]
            began = time.time()
            try:
                done = await asyncio.to_thread(self._inject, kind)
            except Exception as exc:
                self.record.violation("stack_recovery", f"{kind}: {exc}")
                continue
            finally:
                self.record.timeline.append((began, time.time(), kind))
            self.record.faults[kind if done else f"{kind} (skipped)"] += 1

    def _inject(self, kind: str) -> bool:
        """One fault, and wait for the stack to be whole again; False if nothing to hit."""
        stack = self.stack
        if kind == "pool_kill":
            pools = [p for w in stack.workers.values() if w.alive() for p in children(w.pid)]
            return bool(pools) and _kill(self.rng.choice(pools))
        if kind == "worker_kill":
            name = self.rng.choice(sorted(stack.workers))
            stack.workers[name].kill()
            stack.start_worker(name)
            return True
        if kind == "web_worker_kill":
            pids = stack.web_workers()
            if not pids or not _kill(self.rng.choice(pids)):
                return False
            wait_for(lambda: len(stack.web_workers()) == 2, 60, "gunicorn to respawn a worker")
            return True
        if kind == "redis_restart":
            stack.redis.restart()
            return True
        with stack.redis.client(socket_timeout=5) as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        return True


def _publish_long(events: JobEvents, job_id: str, count: int) -> None:
    events.publish(job_id, "started", {"worker": "soak", "attempt": 1})
    for n in range(1, count + 1):
        events.publish(job_id, "progress", {"percent": 100 * n // count, "step": n, "steps": count})
        if n % 25 == 0:
            time.sleep(0.05)  # spread over a few seconds, so watchers drop and resume inside
    events.publish(job_id, "done", {"url": None, "seconds": 0})


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def _states(client: redis.Redis, job_ids: list[str]) -> list[str | None]:
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"{PREFIX}job:{{{job_id}}}", "state")
    return [s.decode() if s is not None else None for s in pipe.execute()]


async def _read_some(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """Up to 64 KiB, b"" if nothing came in ``seconds``, None at EOF."""
    try:
        async with asyncio.timeout(seconds):
            chunk = await reader.read(65536)
    except TimeoutError:
        return b""
    return chunk or None


# -- readings of the server -----------------------------------------------------------------


@dataclass
class Reading:
    rss_kb: int
    fds: dict[int, dict[str, int]]  # web worker pid → descriptor kinds
    redis_used: int
    redis_keys_bytes: int
    redis_keys: int


def read_server(stack: Stack, client: redis.Redis) -> Reading:
    web = stack.web
    assert web is not None
    pids = [web.pid, *stack.web_workers()]
    rss = sum(rss_kb(pid) for pid in pids if Path(f"/proc/{pid}").exists())
    sockets = _sockets()
    fds = {pid: _fd_kinds(pid, sockets, stack) for pid in stack.web_workers()}
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key)
    sizes = [size or 0 for size in pipe.execute()]
    used = int(client.info("memory")["used_memory"])
    return Reading(rss, fds, used, sum(sizes), len(keys))


def _sockets() -> dict[str, tuple[int, int, str]]:
    """inode → (local port, remote port, state) of every TCP socket; (0, 0, "unix") for
    unix sockets. A socket fd in neither is a TCP connection already torn down."""
    found: dict[str, tuple[int, int, str]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            found[line.split()[6]] = (0, 0, "unix")
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                local, remote = (
                    int(cols[1].rsplit(":", 1)[1], 16),
                    int(cols[2].rsplit(":", 1)[1], 16),
                )
                found[cols[9]] = (local, remote, cols[3])
    return found


def _fd_kinds(pid: int, sockets: dict[str, tuple[int, int, str]], stack: Stack) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                kinds[_fd_kind(os.readlink(fd), sockets, stack)] += 1
    return dict(kinds)


def _fd_kind(target: str, sockets: dict[str, tuple[int, int, str]], stack: Stack) -> str:
    if not target.startswith("socket:["):
        return "other"
    local, remote, state = sockets.get(target[8:-1], (0, 0, "gone"))
    if state == "gone":
        return "closed socket"  # the peer reset it; only this process still holds it
    if local == stack.web_port:
        return "listen" if state == "0A" else "client"
    if remote == stack.redis.port:
        return "redis"
    return "other"


def open_streams(client: redis.Redis) -> dict[str, int]:
    """Open streams per web process, from the reports each makes every 2 s (live ones)."""
    now_ms = time.time() * 1000
    reports = client.hgetall(f"{PREFIX}web:streams")
    fresh = {}
    for name, value in reports.items():
        count, at = value.decode().split()
        if now_ms - int(at) < 6000:
            fresh[name.decode()] = int(count)
    return fresh


# -- the checks -----------------------------------------------------------------------------


def _key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def check_watches(record: Record, logs: dict[str, list[tuple[str, str]]]) -> None:
    for watch in record.watches:
        log = logs.get(watch.job, [])
        job = record.jobs.get(watch.job)
        # Told apart: a long log (more than a page) takes other paths through the stream.
        scope = Scoped(record, " (long log)" if job is not None and job.long else "")
        for conn in watch.conns:
            _check_conn(scope, conn, log)
        _check_outcome(scope, watch, log)


@dataclass
class Scoped:
    """Violations of one kind of job: their names get ``suffix``."""

    record: Record
    suffix: str

    def violation(self, kind: str, detail: str) -> None:
        self.record.violation(kind + self.suffix, detail)

    @property
    def jobs(self) -> dict[str, Job]:
        return self.record.jobs

    @property
    def timeline(self) -> list[tuple[float, float, str]]:
        return self.record.timeline


def _check_conn(record: Scoped, conn: Conn, log: list[tuple[str, str]]) -> None:
    """The durable frames must be exactly the log after the id the connection sent."""
    ids = [event_id for event_id, _ in log]
    start = _key(conn.after) if conn.after else (-1, -1)
    expected = [i for i in ids if _key(i) > start]
    where = f"{conn.job} after {conn.after}"
    if conn.ids != expected[: len(conn.ids)]:
        kind = _diagnose(conn.ids, expected, ids, start)
        difference = _difference(conn.ids, expected)
        record.violation(kind, f"{where} ({len(ids)} logged): {difference}{_near(record, ids)}")
    elif conn.terminal and conn.ids != expected:
        record.violation("lost", f"{where}: stream ended before the log did")
    if any(b > a for a, b in zip(conn.positions, conn.positions[1:], strict=False)):
        near = _near(record, ids, ended=False)
        record.violation("position_rose", f"{conn.job}: positions {conn.positions}{near}")


def _near(record: Record | Scoped, ids: list[str], ended: bool = True) -> str:
    """The faults injected while the job was logging (for telling causes apart)."""
    if not ids:
        return ""
    first, last = _key(ids[0])[0] / 1000, _key(ids[-1])[0] / 1000
    last += 0 if ended else 10  # what stranded it came after its last event
    near = [
        f"{kind} at {began - first:+.1f}..{ended - first:+.1f} s"
        for began, ended, kind in record.timeline
        if began <= last + 1 and ended >= first - 1
    ]
    return f"; faults during the job (from its first event): {', '.join(near) or 'none'}"


def _difference(got: list[str], expected: list[str]) -> str:
    """Where the frames first differ from the log, and what is missing or extra."""
    first = next(n for n, (a, b) in enumerate(zip(got, [*expected, ""], strict=False)) if a != b)
    missing = [i for i in expected if i not in set(got) and _key(i) < _key(got[-1])]
    extra = [i for i in got if i not in set(expected)]
    return (
        f"got {len(got)} ids, first difference at #{first + 1} (got {got[first]}, log "
        f"{expected[first] if first < len(expected) else 'nothing'}); missing {len(missing)} "
        f"{missing[:3]}; not expected {len(extra)} {extra[:3]}"
    )


def _diagnose(got: list[str], expected: list[str], ids: list[str], start: tuple[int, int]) -> str:
    keys = [_key(i) for i in got]
    if len(set(got)) < len(got) or any(k <= start for k in keys):
        return "duplicated"
    if keys != sorted(keys):
        return "out_of_order"
    if any(i not in ids for i in got):
        return "not_in_log"
    return "lost"


def _check_outcome(record: Scoped, watch: Watch, log: list[tuple[str, str]]) -> None:
    job = record.jobs.get(watch.job)
    if watch.outcome == "404":
        record.violation("job_lost", f"stream {watch.job}: 404 for an accepted job")
    elif watch.outcome == "204":
        sent = watch.conns[-1].after
        if not log or log[-1][1] not in TERMINAL_PHASES or sent != log[-1][0]:
            record.violation("bad_204", f"{watch.job}: 204 after {sent}, log ends {log[-1:]}")
    elif watch.cut_at is not None and _ended_long_before(job, watch.cut_at):
        assert job is not None and job.ended is not None
        got = [i for c in watch.conns for i in c.ids]
        record.violation(
            "stream_not_ended",
            f"{watch.job}: no end {watch.cut_at - job.ended:.0f} s after "
            f"the job ended; got {got[-3:]} of {len(log)} logged, log ends {log[-1:]}",
        )


def _ended_long_before(job: Job | None, cut_at: float) -> bool:
    """Whether a watch cut at ``cut_at`` had had time to see its job end."""
    return job is not None and job.ended is not None and job.ended < cut_at - END_GRACE


def check_jobs(record: Record, client: redis.Redis, logs: dict[str, list[tuple[str, str]]]) -> None:
    outcomes: Counter[str] = Counter()
    for job_id in record.jobs:
        state = client.hget(f"{PREFIX}job:{{{job_id}}}", "state")
        attempt = client.hget(f"{PREFIX}job:{{{job_id}}}", "attempt")
        state_text = state.decode() if state is not None else "missing"
        outcomes[state_text] += 1
        phases = [phase for _, phase in logs[job_id]]
        if int(attempt or 0) > 1:
            outcomes["ran more than once"] += 1
        if state_text not in TERMINAL_STATES:
            record.violation(
                f"job_stuck_{state_text}", f"{job_id}: attempt {int(attempt or 0)}, "
                f"log {phases[-4:]}{_near(record, [i for i, _ in logs[job_id]], ended=False)}",
            )  # fmt: skip
        elif not phases or phases[-1] not in TERMINAL_PHASES:
            record.violation("log_not_ended", f"{job_id}: state {state_text}, log {phases[-4:]}")
        if sum(phase in TERMINAL_PHASES for phase in phases) > 1:
            record.violation("two_ends", f"{job_id}: log {phases}")
    record.numbers["outcomes"] = dict(outcomes)
    for name in ("queue", "running"):
        left = [job_id.decode() for job_id in client.zrange(f"{PREFIX}{name}", 0, -1)]
        ghosts = [job_id for job_id in left if job_id not in record.jobs]
        if left:
            record.violation(
                f"{name}_not_empty",
                f"{len(left)} left {left[:5]}, {len(ghosts)} of them never answered 202 "
                f"(the POST's reply was lost) {ghosts[:5]}",
            )


def read_logs(client: redis.Redis, job_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    logs = {}
    for job_id in job_ids:
        entries = client.xrange(f"{PREFIX}job:{{{job_id}}}:events")
        logs[job_id] = [(i.decode(), f[b"phase"].decode()) for i, f in entries]
    return logs


def check_server(record: Record, start: Reading, end: Reading, streams: dict[str, int]) -> None:
    for name, count in streams.items():
        if count:
            record.violation("streams_not_released", f"{name}: {count} streams still open")
    factor, extra = RSS_TOLERANCE
    if end.rss_kb > max(start.rss_kb * factor, start.rss_kb + extra):
        record.violation("rss_grew", f"web RSS {start.rss_kb} kB → {end.rss_kb} kB")
    unexplained = (end.redis_used - start.redis_used) - (
        end.redis_keys_bytes - start.redis_keys_bytes
    )
    if unexplained > REDIS_TOLERANCE:
        record.violation(
            "redis_memory_grew",
            f"used_memory {start.redis_used} → {end.redis_used}; keys {start.redis_keys} → "
            f"{end.redis_keys} ({start.redis_keys_bytes} → {end.redis_keys_bytes} bytes)",
        )
    before = max((kinds.get("other", 0) for kinds in start.fds.values()), default=0)
    for pid, kinds in end.fds.items():
        where = f"web worker {pid}: {kinds} (at start {start.fds.get(pid, 'not yet running')})"
        if kinds.get("client", 0) or kinds.get("closed socket", 0):
            record.violation("fd_leak", f"{where}: client sockets open after all clients closed")
        if kinds.get("redis", 0) > REDIS_FDS:
            record.violation("fd_leak", f"{where}: more Redis connections than the pool holds")
        if kinds.get("other", 0) > before + FD_TOLERANCE:
            record.violation("fd_leak", f"{where}: other descriptors grew")


# -- running it ------------------------------------------------------------------------------


async def run_soak(options: Options, stack: Stack) -> Record:
    soak = Soak(options, stack)
    record = soak.record
    client = stack.redis.client(socket_timeout=10)
    tracker = asyncio.create_task(soak.track_jobs(client))
    start = await _warm_up(soak, client)
    tasks = _start_clients(soak)
    posters = [asyncio.create_task(soak.post_jobs())]
    if "long" not in options.skip:
        events = JobEvents(stack.redis.client(socket_timeout=10), retry_seconds=60)
        posters.append(asyncio.create_task(soak.post_long_jobs(events)))
    until = time.monotonic() + options.minutes * 60
    await soak.chaos(until)
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    soak.posting = False
    await asyncio.gather(*posters)
    await _drain(soak, client, options.drain_seconds)
    await _wind_down(soak, tasks)
    tracker.cancel()
    streams = await asyncio.to_thread(_settled_streams, client)
    await asyncio.to_thread(wait_for, lambda: len(stack.web_workers()) == 2, 60, "web workers")
    end = await asyncio.to_thread(read_server, stack, client)
    logs = await asyncio.to_thread(read_logs, client, list(record.jobs))
    check_watches(record, logs)
    await asyncio.to_thread(check_jobs, record, client, logs)
    check_server(record, start, end, streams)
    _check_alive(record, stack)
    record.numbers.update(_numbers(record, start, end))
    return record


async def _warm_up(soak: Soak, client: redis.Redis) -> Reading:
    """A few jobs streamed to the end, so the baseline has pools and caches filled."""
    for n in range(4):
        await soak._post(n)
    for job in list(soak.record.jobs.values()):
        watch = Watch(-1, job.id)
        soak.record.watches.append(watch)
        async with asyncio.timeout(120):
            await soak._watch(watch)
    return await asyncio.to_thread(read_server, soak.stack, client)


def _start_clients(soak: Soak) -> list[asyncio.Task[None]]:
    """Per 12 clients: 9 watchers, one HEAD, one bad-id/future-id prober, one idler."""
    tasks = []
    for n in range(soak.options.clients):
        kind = _client_kind(n)
        if kind in soak.options.skip or kind == "watcher":
            coroutine: Any = soak.watcher(n)
        elif kind == "idle":
            coroutine = soak.idler()
        else:
            coroutine = soak.prober(kind)
        tasks.append(asyncio.create_task(coroutine))
    return tasks


def _client_kind(n: int) -> str:
    slot = n % 12
    if slot < 9:
        return "watcher"
    if slot == 9:
        return "head"
    if slot == 10:
        return "bad_id" if n % 24 < 12 else "future_id"
    return "idle"


async def _drain(soak: Soak, client: redis.Redis, seconds: float) -> None:
    """Wait (up to ``seconds``) for every job to end and the line to empty; clients keep
    watching meanwhile. The line too: a job whose POST lost its reply (no 202, so not in
    the record) is still the sweep's to send and the worker's to run."""
    deadline = time.monotonic() + seconds

    def line_busy() -> bool:
        return bool(client.zcard(f"{PREFIX}queue") or client.zcard(f"{PREFIX}running"))

    while time.monotonic() < deadline:
        if not soak.record.active_jobs() and not await asyncio.to_thread(line_busy):
            return
        await asyncio.sleep(0.5)


async def _wind_down(soak: Soak, tasks: list[asyncio.Task[None]]) -> None:
    """No new watches; give open ones time to see their job's end, then cut the rest."""
    soak.watching = False
    await asyncio.wait(tasks, timeout=END_GRACE + 10)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for sock in soak.idle:
        sock.close()


def _settled_streams(client: redis.Redis) -> dict[str, int]:
    """Open streams per web process once they have had time to notice closed clients (a
    stream waiting for events finds out with its second keep-alive, 15 s apart)."""
    deadline = time.monotonic() + 45
    while True:
        try:
            streams = open_streams(client)
        except redis.RedisError:
            streams = {"?": -1}
        if not any(streams.values()) or time.monotonic() > deadline:
            return streams
        time.sleep(0.5)


def _check_alive(record: Record, stack: Stack) -> None:
    for service in [stack.web, stack.monitor, *stack.workers.values()]:
        if service is not None and not service.alive():
            record.violation("process_died", f"{service.name} exited: {service.output()[-500:]}")


def _numbers(record: Record, start: Reading, end: Reading) -> dict[str, Any]:
    conns = [c for w in record.watches for c in w.conns]
    return {
        "jobs": len(record.jobs),
        "watches": len(record.watches),
        "connections": len(conns),
        "reconnects": sum(max(0, len(w.conns) - 1) for w in record.watches),
        "drops": sum(c.end == "drop" for c in conns),
        "resets": sum(c.reset for c in conns),
        "events_received": sum(len(c.ids) for c in conns),
        "web_rss_kb": [start.rss_kb, end.rss_kb],
        "redis_used_memory": [start.redis_used, end.redis_used],
        "redis_keys": [start.redis_keys, end.redis_keys],
        "web_fds": [start.fds, end.fds],
    }


def table(record: Record, options: Options) -> str:
    n = record.numbers
    rows = [
        ("minutes", f"{options.minutes:g}"),
        ("jobs accepted", n["jobs"]),
        ("job outcomes", _fmt(n.get("outcomes", {}))),
        ("clients", f"{options.clients} ({n['watches']} watches, {n['connections']} connections)"),
        ("reconnects", f"{n['reconnects']} ({n['drops']} dropped by the client)"),
        ("durable events received", n["events_received"]),
        ("resets", n["resets"]),
        ("faults injected", _fmt(record.faults)),
        ("responses", _fmt(record.statuses)),
        ("web RSS kB start → end", "{} → {}".format(*n["web_rss_kb"])),
        ("redis used_memory start → end", "{} → {}".format(*n["redis_used_memory"])),
        ("violations", _fmt(record.violations) or "0"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {name:<{width}} | {value} |" for name, value in rows]
    for kind, examples in record.examples.items():
        lines.append(f"\n{kind}:")
        lines += [f"  - {example}" for example in examples]
    return "\n".join(lines)


def _fmt(counts: dict[str, int] | Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def summary(record: Record, options: Options) -> dict[str, Any]:
    return {
        "options": {**options.__dict__, "skip": sorted(options.skip)},
        "faults": dict(record.faults),
        "timeline": record.timeline,
        "statuses": dict(record.statuses),
        "violations": dict(record.violations),
        "examples": record.examples,
        **record.numbers,
    }


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=240)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--json", default="", help="write the summary here")
    parser.add_argument("--workdir", default="", help="keep logs and data here")
    parser.add_argument("--drain-seconds", type=float, default=90.0)
    parser.add_argument("--visibility-timeout", type=int, default=3600)
    parser.add_argument(
        "--skip", default="", help="comma-separated kinds to leave out, to isolate a failure: "
        "head, bad_id, future_id, idle, long (clients/jobs) or any fault kind",
    )  # fmt: skip
    args = parser.parse_args(argv)
    skip = frozenset(filter(None, args.skip.split(",")))
    return Options(
        args.minutes, args.clients, args.seed, args.json, args.workdir,
        args.drain_seconds, args.visibility_timeout, skip,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="jobcast-soak-"))
    # SIGTERM (a test's timeout) unwinds like Ctrl-C, so the stack is stopped by PID.
    signal.signal(signal.SIGTERM, lambda *_: _interrupt())
    stack = Stack(workdir, options.visibility_timeout)
    print(f"soak: seed {options.seed}, logs in {workdir}", flush=True)
    try:
        stack.start()
        record = asyncio.run(run_soak(options, stack))
    finally:
        stack.stop()
    print(table(record, options), flush=True)
    if options.json:
        Path(options.json).write_text(json.dumps(summary(record, options), indent=2))
    if not options.workdir and not record.violations:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if record.violations else 0


def _interrupt() -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
