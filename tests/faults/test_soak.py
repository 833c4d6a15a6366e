"""The chaos soak, short: one minute of jobs, crashes and restless clients (bench/soak.py)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from support import ROOT

from bench.soak import END_GRACE, Job, Options, Soak, Stack
from tasks.events import JobEvents

pytestmark = pytest.mark.slow

MINUTES = 1.0
# Start-up, the minute itself, the drain (90 s), the wind-down and the checks, on a loaded box.
TIMEOUT = 60 + MINUTES * 60 + 90 + 60 + 120


def test_a_minute_of_chaos_breaks_no_guarantee(tmp_path: Path, artifacts: Path) -> None:
    """Under a minute of steady jobs while pool processes, workers, gunicorn workers and
    Redis are killed or restarted and 200+ SSE clients drop, resume, probe with HEAD and
    bad ids or never read: every client got exactly the log after its Last-Event-ID, every
    job ended, positions never rose, the line is empty, and nothing leaked (streams,
    sockets, descriptors, memory)."""
    run_dir = artifacts / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"  # every process's log, kept
    summary_path = tmp_path / "summary.json"
    argv = [sys.executable, "-m", "bench.soak", "--minutes", str(MINUTES)]
    argv += ["--clients", "220", "--json", str(summary_path), "--workdir", str(run_dir)]
    log = tmp_path / "soak.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGTERM)  # the soak stops its stack by PID
            proc.wait(60)
    output = log.read_text(errors="replace")
    assert summary_path.exists(), output[-5000:]
    summary = json.loads(summary_path.read_text())
    assert summary["jobs"] > 20 and summary["reconnects"] > 100, output[-5000:]
    assert all(summary["faults"].get(kind) for kind in FAULT_KINDS), summary["faults"]
    assert summary["violations"] == {}, output[-8000:]
    assert proc.returncode == 0, output[-5000:]


def test_the_future_id_probe_gives_a_stream_its_grace_from_when_it_opened(
    web: str, rds: redis.Redis, tmp_path: Path
) -> None:
    """The soak's Last-Event-ID-from-the-future probe of a job that ended longer ago than
    the grace gets the reset, the whole log and the end of the body, and blames no one: a
    stream only hangs if it is still open the grace after its job ended AND after it opened."""
    events = JobEvents(rds)
    job_id = secrets.token_urlsafe(16)
    events.enqueue(job_id, {"prompt": "a job that ended before the probe"})
    events.publish(job_id, "started")
    events.publish(job_id, "done", {"url": "/nowhere.png"})
    stack = Stack(tmp_path, 3600)  # never started: the probe only needs the web's port
    stack.web_port = urlsplit(web).port or 80
    soak = Soak(Options(), stack)
    now = time.monotonic()
    job = Job(job_id, now - END_GRACE - 10, state="succeeded", ended=now - END_GRACE - 5)
    # Its own thread and loop: a browser test may leave an event loop running in this one.
    probe = threading.Thread(target=asyncio.run, args=(soak._future_id(job),), daemon=True)
    probe.start()
    probe.join(30)
    assert not probe.is_alive(), "the probe did not see the end of the body"
    assert soak.record.statuses["future id 200"] == 1
    assert soak.record.violations == {}, soak.record.examples


FAULT_KINDS = ("pool_kill", "worker_kill", "web_worker_kill", "redis_restart", "pubsub_kill")
