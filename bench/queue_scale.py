"""Queue positions at scale: N waiting jobs, each with an open stream, drained in order.

    python -m bench.queue_scale --jobs 5000 --drain 300 --rate 20

What it does: starts Redis and one pinned ``gunicorn -k gevent`` Jobcast web process,
enqueues N jobs (``JobEvents.enqueue``, as ``POST /imagine`` does), opens one SSE stream
per job from a separate raw-socket client process, then plays the part of the workers:
takes ``--drain`` jobs off the front of the line at ``--rate`` per second (``started``
then ``done`` through ``JobEvents.publish``, exactly what a Celery worker's reporter
sends). It prints, per dequeue: the Redis commands the *web process* sent (read off
``MONITOR``, matched to the web's connections by client name), its CPU time, and the
derived ``queued`` frames the browsers received; and the position update interval the
web used (``/healthz``, sampled through the drain: it stretches with the tracked jobs).
``--profile DIR`` runs ``py-spy`` on the web worker during the drain and splits its CPU
into the line's own work (``web/line.py``: applying departures, the flush's walk) and
the rest (mostly the streams writing the frames the flush handed them).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from typing import Any

import redis

from bench import procs
from tasks.events import JobEvents


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        return dict(json.loads(reply.read()))


class CommandTap:
    """Count the commands each client name sends, through MONITOR, while it runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommandTap:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as monitor:
            for command in monitor.listen():
                self.lines.append(f"{command['client_address']}:{command['client_port']}")
                if self._stop.is_set():
                    return

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        redis.Redis.from_url(self.url).ping()  # one more command wakes the reader
        self._thread.join(10)

    def count_from(self, addresses: set[str]) -> int:
        return sum(1 for line in self.lines if line in addresses)


def web_addresses(client: redis.Redis, web_pid_port: int) -> set[str]:
    """Addresses of the web process's connections (everything but ours and the tap's)."""
    return {
        c["addr"]
        for c in client.client_list()
        if c.get("name", "") != "bench" and c["cmd"] != "monitor"
    }


def line_share(path: str) -> tuple[float, int]:
    """The share of busy py-spy samples with a ``web/line.py`` frame on the stack (the
    line's inclusive time), and the busy sample count."""
    busy = in_line = 0
    try:
        lines = open(path).read().splitlines()  # noqa: SIM115
    except OSError:
        return float("nan"), 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "gevent/hub.py" in stack.rsplit(";", 1)[-1]:
            continue
        busy += int(count)
        if "web/line.py" in stack:
            in_line += int(count)
    return in_line / max(busy, 1), busy


class IntervalSampler:
    """The web's position update interval (``/healthz``), sampled while it runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IntervalSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.seen.append(float(health(self.port)["line"]["interval"]))

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--drain", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--profile", metavar="DIR", help="py-spy the web worker during the drain")
    args = parser.parse_args(argv)
    procs.raise_fd_limit()
    rds = procs.RedisServer()
    env = {
        "JOBCAST_MAX_QUEUE": "0",
        "JOBCAST_MAX_STREAMS": str(args.jobs + 100),
        "JOBCAST_POST_RATE_LIMIT": "",
    }
    server = procs.Server("web:create_app()", rds.url, "/healthz", env)
    clients = procs.ClientPool(max(1, args.jobs // 5000 + (args.jobs % 5000 > 0)))
    try:
        run(args, rds, server, clients)
    finally:
        clients.close()
        server.close()
        rds.close()


def run(
    args: argparse.Namespace,
    rds: procs.RedisServer,
    server: procs.Server,
    clients: procs.ClientPool,
) -> None:
    client = redis.Redis.from_url(rds.url, client_name="bench")
    events = JobEvents(client)
    jobs = [f"line-{n:06d}-{'x' * 12}" for n in range(args.jobs)]
    for job_id in jobs:
        events.enqueue(job_id, {"prompt": "bench"})
    paths = [f"/imagine/{job}/stream" for job in jobs]
    share = -(-len(paths) // len(clients.procs))
    clients.ask(
        [
            {"cmd": "open", "host": "127.0.0.1", "port": server.port, "mode": "sse",
             "paths": paths[i * share : (i + 1) * share], "wait_headers": True}
            for i in range(len(clients.procs))
        ],
        timeout=300,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while health(server.port)["hub"]["streams"] < args.jobs:
        assert time.monotonic() < deadline, "streams did not all open"
        time.sleep(0.2)
    before = health(server.port)["line"]
    addresses = web_addresses(client, server.port)
    profiler = procs.start_profiler(server.worker, args.profile, "queue_scale")
    cpu0 = procs.cpu_ns(server.worker)
    started = time.monotonic()
    with CommandTap(rds.url) as tap, IntervalSampler(server.port) as intervals:
        for n, job_id in enumerate(jobs[: args.drain]):
            events.publish(job_id, "started", {"worker": "bench"})
            events.publish(job_id, "done", {})
            pause = started + (n + 1) / args.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the simulated workers
        time.sleep(1.0)  # the web's last throttled update goes out within its interval
    cpu = (procs.cpu_ns(server.worker) - cpu0) / 1e3
    elapsed = time.monotonic() - started
    procs.stop_profiler(profiler)
    after = health(server.port)["line"]
    frames = after["sent"] - before["sent"]
    web_commands = tap.count_from(addresses)
    waiting = args.jobs
    print(
        f"\n## queue positions: {waiting} waiting streams, {args.drain} dequeues at {args.rate}/s"
    )
    print(
        "| waiting streams | dequeues | web Redis commands / dequeue | web CPU µs / dequeue | derived frames / dequeue | frames / stream / s |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {waiting} | {args.drain} | {web_commands / args.drain:.2f} | {cpu / args.drain:.0f} "
        f"| {frames / args.drain:.0f} | {frames / waiting / elapsed:.2f} |"
    )
    seen = intervals.seen or [after["interval"]]
    print(
        f"\nweb CPU {cpu / 1e6:.2f} s over {elapsed:.1f} s; position update interval "
        f"{before['interval']} s before the drain, {min(seen)}–{max(seen)} s during it; "
        f"{len(addresses)} web connections; departures seen {after['departures'] - before['departures']}"
    )
    if args.profile:
        in_line, busy = line_share(f"{args.profile}/queue_scale.txt")
        print(
            f"py-spy: {busy} busy samples, {100 * in_line:.1f} % with web/line.py on the stack: "
            f"the line's own work ≈ {in_line * cpu / args.drain:.0f} µs / dequeue, the rest "
            f"(streams writing frames, the hub) ≈ {(1 - in_line) * cpu / args.drain:.0f} µs / dequeue"
        )
        print(procs.hotspots(f"{args.profile}/queue_scale.txt", top=10))


if __name__ == "__main__":
    main()
