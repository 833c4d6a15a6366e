"""The monitor's cost: its CPU at a steady job rate, and the snapshot's size.

    python -m bench.monitor_cpu --rate 10 --seconds 30

Starts its own Redis, a Celery worker with two processes and ``jobcast monitor``, then
enqueues tiny jobs (64×64, one step) at ``--rate`` per second exactly as ``POST /imagine``
does (``JobEvents.enqueue`` + ``send_task``), and reads the monitor's utime+stime from
/proc before and after. Prints the CPU share of one core and the snapshot sizes seen.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time

import redis

from bench import procs
from tasks.app import create_celery
from tasks.config import Settings


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    rds = procs.RedisServer()
    env = {**os.environ, "REDIS_URL": rds.url, "JOBCAST_MEDIA_DIR": "/tmp/jobcast-bench-media"}
    worker = start([sys.executable, "-m", "celery", "-A", "tasks", "worker", "-E", "-c", "2"], env)
    monitor = start([sys.executable, "-m", "web.cli", "monitor"], env)
    client = redis.Redis.from_url(rds.url)
    try:
        wait_for(lambda: client.get("jobcast:ops:snapshot"), 60, "the first snapshot")
        wait_for(
            lambda: json.loads(client.get("jobcast:ops:snapshot"))["workers"], 60, "the worker"
        )
        measure(args, client, monitor.pid, rds.url)
    finally:
        for proc in (monitor, worker):
            procs.stop(proc, grace=10)
        rds.close()


def measure(args: argparse.Namespace, client: redis.Redis, pid: int, url: str) -> None:
    app = create_celery(Settings.from_env({"REDIS_URL": url}))
    events = app.jobcast.events
    sizes: list[int] = []
    cpu0, t0, sent = cpu_seconds(pid), time.monotonic(), 0
    while time.monotonic() - t0 < args.seconds:
        pause = t0 + sent / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the posters
            continue
        job_id = secrets.token_urlsafe(16)
        params = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": sent}
        events.enqueue(job_id, {k: str(v) for k, v in params.items()})
        app.send_task("jobcast.imagine", kwargs=params, task_id=job_id)
        sent += 1
        if sent % 10 == 0:
            sizes.append(len(client.get("jobcast:ops:snapshot") or b""))
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    sizes.sort()
    print(f"sent {sent} jobs in {wall:.1f} s ({sent / wall:.1f}/s)")
    print(f"monitor CPU: {cpu:.2f} s over {wall:.1f} s = {100 * cpu / wall:.1f} % of one core")
    print(f"snapshot bytes: min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}")


if __name__ == "__main__":
    main()
