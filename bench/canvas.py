"""Canvas jobs: what a child's event costs (round trips, parent events), printed.

    python -m bench.canvas [--children 6] [--steps 100] [--shape group|chain|chord]

Starts its own redis-server on a free port, submits a canvas of ``user``-style tasks
(no worker: the children's events are published here, through ``JobEvents.publish`` as
``JobTask`` and the reporter do), and prints, per child event: the Redis round trips
(commands written on the connection: must be 1), the parent events it caused, and the
microseconds it took. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from typing import Any

import redis
from celery import Celery, chain, chord, group
from redis.connection import Connection

from bench.procs import free_port, wait_for
from tasks.canvas import submit_canvas
from tasks.config import Settings
from tasks.events import JobEvents
from web.cli import redis_server_binary


class CountingConnection(Connection):
    """A connection that counts the commands (round trips) written on it."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def canvas(app: Celery, shape: str, n: int) -> Any:
    tasks = [app.signature("user.part", kwargs={"n": 10}) for _ in range(n)]
    if shape == "group":
        return group(tasks)
    if shape == "chain":
        return chain(*tasks)
    return chord(tasks[:-1], app.signature("user.total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--children", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100, help="progress events per child")
    parser.add_argument("--shape", choices=("group", "chain", "chord"), default="group")
    opts = parser.parse_args()
    port = free_port()
    folder = tempfile.mkdtemp(prefix="jobcast-bench-canvas-")
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = subprocess.Popen(argv, cwd=folder, stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        probe = redis.Redis(port=port)
        wait_for(lambda: _pings(probe), 10, "redis-server")
        settings = Settings.from_env({"REDIS_URL": url})
        app = Celery("bench", broker=url)
        app.conf.task_default_queue = "jobcast"
        pool = redis.ConnectionPool(port=port, connection_class=CountingConnection)
        client = redis.Redis(connection_pool=pool)
        events = JobEvents.for_settings(client, settings)
        parent = "benchcanvas000000"
        submit_canvas(app, events, settings, parent, canvas(app, opts.shape, opts.children),
                      kind="bench")  # fmt: skip
        k = events.keys
        events.publish(f"{parent}.0", "progress", {"percent": 0})  # loads the script once
        trips: list[int] = []
        caused: list[int] = []
        took: list[float] = []

        def child_event(job_id: str, phase: str, data: dict[str, Any]) -> None:
            before_sent, before_len = CountingConnection.sent, probe.xlen(k.events(parent))
            began = time.perf_counter()
            events.publish(job_id, phase, data)
            took.append((time.perf_counter() - began) * 1e6)
            trips.append(CountingConnection.sent - before_sent)
            caused.append(probe.xlen(k.events(parent)) - before_len)

        order = range(opts.children)
        for i in order:  # in index order: a chain's or chord's links are released in turn
            child = f"{parent}.{i}"
            child_event(child, "started", {"worker": "bench"})
            for step in range(1, opts.steps + 1):
                child_event(child, "progress", {"percent": 100 * step // opts.steps})
            child_event(child, "done", {"n": 10})
        state = probe.hget(k.job(parent), "state")
        print(f"canvas {opts.shape} of {opts.children} children, {opts.steps} progress each")
        print(f"  parent ended: {state.decode() if state else None}")
        print(f"  child events: {len(trips)}")
        print(f"  Redis round trips per child event: min {min(trips)} max {max(trips)}")
        print(f"  parent events per child event: {sum(caused) / len(caused):.3f} "
              f"(total {sum(caused)}, parent log {probe.xlen(k.events(parent))})")  # fmt: skip
        print(f"  µs per child event: median {statistics.median(took):.0f} "
              f"p99 {sorted(took)[int(len(took) * 0.99) - 1]:.0f}")  # fmt: skip
        client.close()
        probe.close()
    finally:
        server.terminate()
        server.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


if __name__ == "__main__":
    main()
