"""Real processes for the tests: redis-server, celery workers, gunicorn web servers.

Each process runs in its own session, on a free port, logs to a file, and is stopped by
its PID (and process group) — never by name. Readiness is awaited with deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from httpx_sse import connect_sse

from tasks.keys import Keys
from web.cli import redis_server_binary, web_argv, worker_argv

ROOT = Path(__file__).resolve().parent.parent


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its name and IP address) and its key, made by openssl
    in ``directory``: (cert.pem, key.pem)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class Proc:
    """A child process in its own session, with its output in ``log``."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    cwd: Path = ROOT

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
        if self.popen is None:
            return
        _killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        _killpg(self.pid, signal.SIGKILL)
        self.popen.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash)."""
        if self.popen is not None:
            _killpg(self.pid, signal.SIGKILL)
            self.popen.wait()


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass  # already gone


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    proc: Proc | None = None
    options: list[str] = field(default_factory=list)  # more redis-server arguments

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=self.port, protocol=2, **kwargs)

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            *self.options,
        ]
        self.proc = Proc(argv, dict(os.environ), self.directory / "redis.log").start()
        wait_until(self._pings, 15, "redis-server to answer PING")
        return self

    def _pings(self) -> bool:
        try:
            return bool(self.client(socket_connect_timeout=0.2).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def restart(self, down_for: float = 0.0) -> None:
        """Stop (SIGTERM: AOF flushed) and start again on the same port and data."""
        self.stop()
        if down_for:
            time.sleep(down_for)  # the outage itself is what is being tested
        self.start()


@dataclass
class SentinelSet:
    """A Redis master, its replicas and the sentinels that watch them, on free ports, with
    short timeouts so that a failover takes seconds (1 s to call a master down)."""

    directory: Path
    replicas: int = 2
    sentinels: int = 3
    master_name: str = "mymaster"
    password: str = ""  # the sentinels' own (requirepass), if any
    servers: list[RedisServer] = field(default_factory=list)
    watchers: list[Proc] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """kombu's form: every sentinel, the database on the last one."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.ports) + "/0"

    def start(self) -> SentinelSet:
        master = RedisServer(self.directory / "redis0").start()
        self.servers.append(master)
        for n in range(1, self.replicas + 1):
            replica = RedisServer(
                self.directory / f"redis{n}",
                options=[
                    "--replicaof", "127.0.0.1", str(master.port),
                    "--replica-announce-ip", "127.0.0.1",
                ],
            )  # fmt: skip
            self.servers.append(replica.start())
        for n in range(self.sentinels):
            self.ports.append(self._sentinel(n, master.port))
        wait_until(self._ready, 30, "the sentinels to know every replica and each other")
        return self

    def _sentinel(self, n: int, master_port: int) -> int:
        port = free_port()
        directory = self.directory / f"sentinel{n}"
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "sentinel.conf"  # the sentinel rewrites it: its own copy
        name = self.master_name
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel announce-ip 127.0.0.1\n"
            f"sentinel monitor {name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 3000\n"
            f"sentinel parallel-syncs {name} 2\n"
        )
        if self.password:  # asked of clients, and of each other
            with conf.open("a") as out:
                out.write(f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n")
        argv = [redis_server_binary(), str(conf), "--sentinel"]
        self.watchers.append(Proc(argv, dict(os.environ), directory / "sentinel.log").start())
        return port

    def sentinel(self, n: int = 0) -> redis.Redis:
        return redis.Redis(
            port=self.ports[n],
            password=self.password or None,
            socket_timeout=2,
            decode_responses=True,
        )

    def _ready(self) -> bool:
        try:
            for n in range(self.sentinels):
                with self.sentinel(n) as client:
                    state = client.sentinel_master(self.master_name)
                    replicas = client.sentinel_slaves(self.master_name)
                    up = [r for r in replicas if r["master-link-status"] == "ok"]
                    up = [r for r in up if not r["is_sdown"]]
                    if state["num-other-sentinels"] < self.sentinels - 1 or len(up) < self.replicas:
                        return False
            return True
        except (redis.ConnectionError, redis.ResponseError):
            return False

    def master_port(self) -> int:
        """The master's port as the sentinels report it now."""
        with self.sentinel() as client:
            return int(client.sentinel_get_master_addr_by_name(self.master_name)[1])

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(server for server in self.servers if server.port == port)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of the current master (asked of the sentinels at each call)."""
        return self.master().client(**kwargs)

    def stop(self) -> None:
        for proc in reversed(self.watchers):
            proc.stop()
        for server in reversed(self.servers):
            server.stop()


@dataclass
class ClusterSet:
    """A Redis Cluster of ``masters`` servers (no replicas) on free ports, slots split
    evenly; ``url`` names one node, from which clients learn the rest."""

    directory: Path
    masters: int = 3
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}/0"

    def start(self) -> ClusterSet:
        buses = [free_port() for _ in range(self.masters)]
        for n in range(self.masters):
            server = RedisServer(
                self.directory / f"node{n}",
                appendonly=False,
                options=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000",
                    "--cluster-announce-ip", "127.0.0.1",
                    # Its bus port is not port + 10000, which a free port may not allow.
                    "--cluster-port", str(buses[n]),
                ],
            )  # fmt: skip
            self.servers.append(server)
            server.start()
        per = 16384 // self.masters
        for n, server in enumerate(self.servers):
            last = 16383 if n == self.masters - 1 else (n + 1) * per - 1
            with server.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", n * per, last)
        with self.servers[0].client() as first:
            for server, bus in zip(self.servers[1:], buses[1:], strict=True):
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", server.port, bus)
        wait_until(self._ready, 30, "every node to see the cluster state ok")
        return self

    def _ready(self) -> bool:
        for server in self.servers:
            with server.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if (
                    "cluster_state:ok" not in text
                    or f"cluster_known_nodes:{self.masters}" not in text
                ):
                    return False
        return True

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.servers[0].port, **kwargs)

    def node_of(self, key: str) -> RedisServer:
        """The server that holds ``key``'s slot."""
        with self.servers[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        return self.servers[min(slot // (16384 // self.masters), self.masters - 1)]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def celery_worker(
    env: dict[str, str], log: Path, name: str, concurrency: int = 1, queues: str = ""
) -> Proc:
    """A worker consuming ``queues`` (comma-separated Celery queues; "": the default)."""
    argv = worker_argv(
        concurrency,
        "-P",
        "prefork",
        f"--hostname={name}@%h",
        "--without-mingle",
        "--without-gossip",
        *(["-Q", queues] if queues else []),
    )
    proc = Proc(argv, env, log).start()
    wait_until(lambda: "ready." in proc.output() or not proc.alive(), 60, "celery worker ready")
    assert proc.alive(), proc.output()[-3000:]
    return proc


def platform_worker(env: dict[str, str], log: Path, queue: str, hostname: str) -> Proc:
    """``celery -A platform_app worker -Q <queue>`` with two pool processes: the user's
    app (tests/platform_app.py), not Jobcast's, once it is ready."""
    argv = worker_argv(2, "-P", "prefork", "-Q", queue, f"--hostname={hostname}@%h")
    argv[argv.index("tasks")] = "platform_app"
    env = {**env, "PYTHONPATH": str(Path(__file__).parent)}
    proc = Proc(argv, env, log).start()
    wait_until(lambda: "ready." in proc.output() or not proc.alive(), 60, "the user's worker")
    assert proc.alive(), proc.output()[-3000:]
    return proc


def jobcast_monitor(env: dict[str, str], log: Path) -> Proc:
    """``jobcast monitor``, once it leads (publishes snapshots) and is subscribed to the
    workers' events (an event sent before that never reaches it)."""
    proc = Proc([sys.executable, "-m", "web.cli", "monitor"], env, log).start()
    wait_until(lambda: monitor_ready(proc, "leading"), 30, "monitor leading and following")
    return proc


def monitor_ready(proc: Proc, *roles: str) -> bool:
    """True once the monitor has logged one of ``roles`` and that it follows events (or
    it has exited, for the caller to report)."""
    out = proc.output()
    return not proc.alive() or ("following events" in out and any(r in out for r in roles))


def gunicorn_web(
    env: dict[str, str], log: Path, workers: int = 1, port: int = 0, worker_class: str = "gevent"
) -> tuple[Proc, str]:
    port = port or free_port()
    argv = web_argv("127.0.0.1", port, workers, "--graceful-timeout", "3", "-k", worker_class)
    proc = Proc(argv, env, log).start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(base) or not proc.alive(), 30, "gunicorn to serve /healthz")
    assert proc.alive(), proc.output()[-3000:]
    return proc, base


@dataclass
class Stack:
    """A stack of a test's own, for a test that breaks it: a Redis, and the workers, web
    servers and monitors started on it, each under a name, stopped in reverse order."""

    tmp: Path
    redis: RedisServer | SentinelSet
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)

    def keep(self, name: str, proc: Proc) -> Proc:
        assert name not in self.procs, f"{name} started twice"
        self.procs[name] = proc
        return proc

    def worker(self, name: str = "w1", **kwargs: Any) -> Proc:
        return self.keep(name, celery_worker(self.env, self.tmp / f"{name}.log", name, **kwargs))

    def web(self, workers: int = 1, name: str = "web", **env: str) -> tuple[Proc, str]:
        proc, base = gunicorn_web({**self.env, **env}, self.tmp / f"{name}.log", workers=workers)
        return self.keep(name, proc), base

    def monitor(self) -> Proc:
        return self.keep("monitor", jobcast_monitor(self.env, self.tmp / "monitor.log"))

    def client(self) -> redis.Redis:
        return self.redis.client()

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            proc.stop()
        self.redis.stop()


@contextmanager
def own_stack(
    tmp: Path, kind: type[Stack] = Stack, sentinel: bool | str = False, **env: str
) -> Iterator[Stack]:
    """A Redis of its own under ``tmp`` (with ``sentinel``, a Sentinel set: a master, two
    replicas, three sentinels; a string: their password) and the environment its processes
    get: that Redis, a
    private media folder, Celery's default visibility timeout (an hour) unless ``env``
    says, and ``env``. Everything the stack started is stopped on the way out."""
    server: RedisServer | SentinelSet
    if sentinel:
        password = sentinel if isinstance(sentinel, str) else ""
        server = SentinelSet(tmp / "sentinels", password=password)
        env = {
            "JOBCAST_SENTINEL_MASTER": server.master_name,
            "JOBCAST_SENTINEL_PASSWORD": password,
            **env,
        }
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
    else:
        server = RedisServer(tmp / "redis").start()
    environ = dict(os.environ)
    environ.pop("JOBCAST_VISIBILITY_TIMEOUT", None)
    environ.update(
        REDIS_URL=server.url,
        JOBCAST_MEDIA_DIR=str(tmp / "media"),
        PYTHONUNBUFFERED="1",
        **env,
    )
    stack = kind(tmp, server, environ)
    try:
        yield stack
    finally:
        stack.stop()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class Received:
    event: str
    data: dict[str, Any]
    id: str | None


def post_job(base: str, **body: Any) -> dict[str, Any]:
    body.setdefault("prompt", "a lighthouse on a cliff at sunset")
    response = httpx.post(base + "/imagine", json=body, timeout=10)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def iter_events(
    base: str, job_id: str, last_id: str | None = None, timeout: float = 60.0
) -> Iterator[Received]:
    """Events of a job's stream (the generic ``/jobs/<id>/stream``, which serves every kind)
    as a third-party SSE client (httpx-sse) sees them."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    with (
        httpx.Client(timeout=httpx.Timeout(timeout, connect=5)) as client,
        connect_sse(client, "GET", f"{base}/jobs/{job_id}/stream", headers=headers) as source,
    ):
        source.response.raise_for_status()
        previous_id = last_id
        for sse in source.iter_sse():
            if sse.event == "message" and not sse.data:
                continue  # a frame with only `retry:`, which EventSource does not dispatch
            # httpx-sse repeats the last id on events that carry none (as the spec says);
            # a derived event is one whose id did not change.
            own_id = sse.id if sse.id and sse.id != previous_id else None
            previous_id = sse.id or previous_id
            yield Received(sse.event, json.loads(sse.data) if sse.data else {}, own_id)


def collect(
    base: str, job_id: str, last_id: str | None = None, timeout: float = 60.0
) -> list[Received]:
    """Read a stream to its end (the server closes it after the terminal event)."""
    return list(iter_events(base, job_id, last_id, timeout))


def logged(client: redis.Redis, job_id: str, prefix: str = "jobcast:") -> list[tuple[str, str]]:
    """The (id, phase) pairs in the job's event log, the ground truth for streams."""
    entries = client.xrange(Keys(prefix).events(job_id))
    return [(raw_id.decode(), fields[b"phase"].decode()) for raw_id, fields in entries]


def job_state(client: redis.Redis) -> dict[bytes, object]:
    """Every key and its content, but the web processes' own metrics (rewritten every 2 s)
    and the bookkeeping Celery's workers rewrite on their own (kombu's binding deadlines,
    unacked messages of jobs other tests left running): what a refused request must not
    change."""
    return {
        key: client.dump(key)
        for key in client.scan_iter("*")
        if not key.startswith((b"jobcast:web:", b"LIMITS:", b"_kombu.", b"unacked"))
    }


@dataclass(frozen=True)
class Muxed:
    """An event of a multiplexed stream (``GET /jobs/stream``)."""

    event: str
    data: dict[str, Any]
    cursor: str | None  # the frame's own id (None: a derived event, which has none)


def muxed_events(source: Any, last: str | None) -> Iterator[Muxed]:
    """The events of an open multiplexed stream (httpx-sse's ``EventSource``) resumed
    after the cursor ``last``; a frame repeating the id before it is a derived event."""
    previous = last
    for sse in source.iter_sse():
        if not sse.data:
            continue  # the retry-only frame
        own = sse.id if sse.id and sse.id != previous else None
        previous = sse.id or previous
        yield Muxed(sse.event, json.loads(sse.data), own)


def gevent_scenario(module: str, name: str, server: RedisServer) -> None:
    """Run ``<module>.main()`` with scenario ``name`` in a child process that patches the
    standard library with gevent first (the web's own setting), against ``server``; the
    child prints ``ok`` at the end of a scenario that held."""
    child = f"from gevent import monkey; monkey.patch_all(); import {module} as t; t.main()"
    unit = ROOT / "tests" / "unit"
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(unit)])
    result = subprocess.run(
        [sys.executable, "-c", child, name, server.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok"), result.stdout[-3000:]
