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

from web.cli import web_argv


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
        assert (tmp_path / "var" / "media" / job["jobId"] / "image.png").exists()
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


def test_jobcast_dev_stops_on_sigint_inherited_ignored_worker_before_redis(tmp_path: Path) -> None:
    """Started with SIGINT ignored (as `cmd &` in a script does), `jobcast dev` still stops
    every child on SIGINT, and stops the worker before Redis."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    log = tmp_path / "dev.log"
    argv = [
        sys.executable,
        "-m",
        "web.cli",
        "dev",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "var"),
    ]
    with log.open("wb") as out:
        dev = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(base) or dev.poll() is not None, 90, "the dev stack to serve")
        assert dev.poll() is None, log.read_text()
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0, log.read_text()
    finally:
        if dev.poll() is None:  # today's bug: SIGINT did nothing; take it down by SIGTERM
            dev.terminate()
            dev.wait(60)
    text = log.read_text()
    pids = [int(p) for p in re.findall(r"started \w+ \(pid (\d+)\)", text)]
    assert len(pids) == 4, text
    wait_until(lambda: not any(_alive(pid) for pid in pids), 30, "every child to exit")
    stopped = re.findall(r"jobcast: stopped (\w+) \(pid", text)
    assert stopped[0] == "worker" and stopped[-1] == "redis", text
    assert set(stopped) == {"redis", "worker", "monitor", "web"}, text


def test_jobcast_web_refuses_a_dangerous_setting(tmp_path: Path) -> None:
    """`jobcast web` and plain gunicorn with JOBCAST_RETENTION_SECONDS=0 exit non-zero and
    say which variable is wrong, instead of serving and expiring every job at once."""
    env = dict(os.environ, JOBCAST_RETENTION_SECONDS="0", REDIS_URL="redis://127.0.0.1:1/0")
    port = str(free_port())
    for argv in (
        [sys.executable, "-m", "web.cli", "web", "--port", port],
        web_argv("127.0.0.1", free_port()),
    ):
        done = subprocess.run(
            argv, env=env, capture_output=True, timeout=120, start_new_session=True
        )
        output = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode != 0, output
        assert "JOBCAST_RETENTION_SECONDS must be from 60" in output, output
