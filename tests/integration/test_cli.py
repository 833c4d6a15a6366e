"""`jobcast dev`: the README's first command brings the whole stack up and Ctrl-C takes it down."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from support import collect, free_port, post_job, wait_until


def test_jobcast_dev_runs_everything_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    """Embedded Redis, worker, monitor and web start; a job completes; SIGINT leaves no process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "web.cli", "dev", "--port", str(port), "--data-dir", str(tmp_path / "var")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(base) or dev.poll() is not None, 90, "the dev stack to serve")
        assert dev.poll() is None, log.read_text()
        text = log.read_text()
        names = set(re.findall(r"started (\w+) \(pid", text))
        assert names == {"redis", "worker", "monitor", "web"}, text
        job = post_job(base, prompt="dev smoke test", width=64, height=64, steps=2)
        assert collect(base, job["jobId"])[-1].event == "done"
        assert (tmp_path / "var" / "media" / f"{job['jobId']}.png").exists()
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(60)
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", log.read_text())]
    wait_until(lambda: not any(_alive(pid) for pid in pids), 30, "every child to exit")
    assert "jobcast: stopped" in log.read_text()


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()
