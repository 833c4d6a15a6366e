"""Processes the benchmark starts: Redis, a gunicorn subject, load clients; /proc readings.

Every child runs in its own session, pinned to a core with ``taskset``, with the open
file limit raised to the hard limit, and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SERVER_CORE = 1
HARNESS_CORE = 0


def raise_fd_limit() -> None:
    """Preexec hook (and for this process): soft NOFILE limit up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    argv: list[str], core: int | str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.Popen:
    return subprocess.Popen(
        ["taskset", "-c", str(core), *argv],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=raise_fd_limit,
        **kw,
    )


def stop(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM the process (its session leader PID), then SIGKILL after ``grace``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_ns(pid: int) -> int:
    """CPU time (user+system) of every thread of ``pid``, in ns, from schedstat."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def sockets(pid: int) -> int:
    """How many sockets ``pid`` holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RedisServer:
    """A throwaway redis-server on a free port, pinned to the harness core."""

    def __init__(self, binary: str = "redis-server") -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        maxclients = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 64
        self.proc = spawn(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                str(maxclients),
                "--loglevel",
                "warning",
            ],
            HARNESS_CORE,
            stdout=subprocess.DEVNULL,
        )
        self.client = redis.Redis.from_url(self.url, protocol=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def info(self) -> dict[str, Any]:
        return dict(self.client.info())

    def cpu_seconds(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def connected_clients(self) -> int:
        return int(self.client.info("clients")["connected_clients"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        stop(self.proc)


class Server:
    """``gunicorn -k gevent -w 1`` serving ``app`` on the server core."""

    def __init__(
        self,
        app: str,
        redis_url: str,
        probe_path: str,
        env: dict[str, str],
        worker: str = "gevent",
        workers: int = 1,
    ) -> None:
        self.port = free_port()
        self.workers: list[int] = []
        self.log = open(ROOT / "bench" / ".server.log", "ab")  # noqa: SIM115
        argv = [
            str(VENV_BIN / "gunicorn"),
            "-k",
            worker,
            "-w",
            str(workers),
            "--worker-connections",
            "30000",
            "--backlog",
            "4096",
            "--timeout",
            "120",
            "--graceful-timeout",
            "2",
            "--keep-alive",
            "5",
            "--log-level",
            "warning",
            "-b",
            f"127.0.0.1:{self.port}",
            app,
        ]
        # One worker has the server core; more share every core (with the harness).
        cores = str(SERVER_CORE) if workers == 1 else f"{HARNESS_CORE},{SERVER_CORE}"
        self.proc = spawn(
            argv, cores, {"REDIS_URL": redis_url, **env}, stdout=self.log, stderr=self.log
        )
        try:
            self.workers = self._wait_ready(probe_path, workers)
            self.worker = self.workers[0]
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, probe_path: str, count: int) -> list[int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.proc.returncode}; see bench/.server.log"
                )
            workers = children(self.proc.pid)
            if len(workers) >= count and http_status(self.port, probe_path) is not None:
                return workers
            time.sleep(0.1)
        raise RuntimeError("gunicorn did not become ready in 30 s")

    def close(self) -> None:
        stop(self.proc)
        self.log.close()


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status code of ``GET path`` (reading only the status line), or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            line = s.recv(64).split(b"\r\n", 1)[0]
            return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None


class ClientPool:
    """Several ``bench.client`` processes on the harness core, asked in parallel."""

    def __init__(self, count: int) -> None:
        self.procs = [
            spawn(
                [sys.executable, "-m", "bench.client"],
                HARNESS_CORE,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]

    def ask(self, commands: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Send ``commands[i]`` to client i and wait for every reply."""
        for proc, cmd in zip(self.procs, commands, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()
        pool = ThreadPoolExecutor(len(self.procs))
        try:
            futures = [pool.submit(_read_reply, proc) for proc in self.procs]
            deadline = time.monotonic() + timeout
            return [f.result(timeout=max(0.1, deadline - time.monotonic())) for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def ask_all(self, cmd: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        return self.ask([cmd] * len(self.procs), timeout)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in self.procs:
            stop(proc, grace=3)


def _read_reply(proc: subprocess.Popen) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("load client exited")
    return dict(json.loads(line))


def start_profiler(pid: int, directory: str | None, name: str) -> subprocess.Popen | None:
    """``py-spy record`` of ``pid`` into ``directory/name.txt`` (collapsed stacks)."""
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    argv = [str(VENV_BIN / "py-spy"), "record", "-p", str(pid), "-f", "raw", "-r", "250"]
    argv += ["--nonblocking", "-o", f"{directory}/{name}.txt"]
    proc = spawn(argv, HARNESS_CORE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def stop_profiler(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        stop(proc)


def hotspots(path: str, top: int = 15) -> str:
    """Self time by leaf frame from a py-spy raw (collapsed) file, as a Markdown list.

    Samples whose leaf is gevent's hub loop (``gevent/hub.py``: waiting in libev, i.e.
    mostly idle) are left out of the shares and reported on their own.
    """
    leaves: dict[str, int] = {}
    total = idle = 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return f"(no profile at {path})"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if "gevent/hub.py" in leaf:
            idle += int(count)
            continue
        leaves[leaf] = leaves.get(leaf, 0) + int(count)
        total += int(count)
    ranked = sorted(leaves.items(), key=lambda kv: -kv[1])[:top]
    head = f"({total} busy samples; {idle} more in the gevent hub loop, not counted)\n"
    return head + "\n".join(f"- {100 * n / max(total, 1):5.1f}%  {leaf}" for leaf, n in ranked)


# -- the chaos soak's stack (bench/soak.py) -----------------------------------------------
# Unlike the load benchmarks' subjects these are not pinned: the soak is about faults, not
# speed. Each service runs in its own session and is stopped (or crashed) by its PID.


class Service:
    """A child in its own session, its output in ``log``; stopped or killed by its PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=raise_fd_limit,
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

    def wait_output(self, text: str, timeout: float) -> None:
        """Wait until ``text`` appears in the log (the service is ready)."""
        wait_for(lambda: text in self.output() or not self.alive(), timeout, f"{self.name}: {text}")
        if not self.alive():
            raise RuntimeError(f"{self.name} exited:\n{self.output()[-2000:]}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM its process group, SIGKILL what is left after ``grace``."""
        if self.popen is None:
            return
        _signal_group(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a crash."""
        if self.popen is not None:
            _signal_group(self.pid, signal.SIGKILL)
            self.popen.wait()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class AofRedis:
    """redis-server with AOF (fsync always) on a fixed port and directory, restartable."""

    def __init__(self, directory: Path, binary: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.argv += ["--dir", str(directory), "--save", "", "--appendonly", "yes"]
        self.argv += ["--appendfsync", "always", "--maxclients", "4000"]
        self.service: Service | None = None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=self.port, protocol=2, **kwargs)

    def start(self) -> AofRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        self.service = Service("redis", self.argv, dict(os.environ), log).start()
        wait_for(self._pings, 30, "redis-server to answer PING")
        return self

    def _pings(self) -> bool:
        try:
            return bool(self.client(socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SIGTERM: Redis flushes its AOF and exits."""
        if self.service is not None:
            self.service.stop(30)

    def restart(self) -> None:
        self.stop()
        self.start()


def inclusive(path: str, top: int = 40) -> str:
    """Busy samples (not in gevent's hub loop) per function anywhere on the stack, each
    stack counted once per function, as a Markdown list."""
    shares: dict[str, int] = {}
    total = 0
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit() or "gevent/hub.py" in stack.rsplit(";", 1)[-1]:
                continue
            total += int(count)
            # "name (path:line)" -> "name (path)": one entry per function, whatever line.
            for frame in {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}:
                shares[frame] = shares.get(frame, 0) + int(count)
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])[:top]
    return f"({total} busy samples)\n" + "\n".join(
        f"- {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in ranked
    )
