"""``schemathesis run --checks all`` against the live API, from its own ``/openapi.json``.

A real gunicorn gevent server and a real Celery worker on a Redis of their own. Every
phase runs: examples, coverage (boundary and invalid values of every parameter and
field), fuzzing (random valid and invalid inputs) and stateful (sequences that follow the
document's links: submit a job, then read, stream, cancel and fetch its result). Checked
on each response: no 5xx, a documented status, content type, headers and body (streams
event by event), valid input accepted, invalid input refused with a 4xx, a missing
required header refused, undocumented methods 405 with ``Allow``, ``Allow`` on OPTIONS
as documented, a resource just created readable, auth not ignored.

One check is off, by design: ``use_after_free``. ``DELETE /jobs/{job_id}`` cancels a
job; it does not delete it: a cancelled job stays readable (its status, its stream, its
log) until its retention runs out, as the document's description says.

Nothing can hang. The server is configured with tiny limits (sides up to 64 px, 3 steps),
which the document shows and the fuzzer keeps to, so every job the fuzzer submits ends in
milliseconds and so does its stream (a multiplexed one asked to idle lingers 2 s).
``JOBCAST_OPS_TOKEN`` is set, so the never-ending
``/ops/stream`` answers 401 to the fuzzer, which does not know it. Every call has a read
timeout, and the whole run a time limit (the subprocess is killed past it).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RedisServer, celery_worker, gunicorn_web

EXAMPLES = int(os.environ.get("JOBCAST_FUZZ_EXAMPLES", "50"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
RUN_LIMIT = 1200  # seconds for the whole run
PARTS = ("FAILURES", "WARNINGS", "SUMMARY")  # where the run's report begins
PHASE = r"(✅|❌|⏭)\s+(Examples|Coverage|Fuzzing|Stateful)\b"  # the summary's phase lines


@pytest.fixture(scope="module")
def fuzz_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A web server and a worker of their own (own Redis, tiny job limits, no rate limit,
    ops token on)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    server = RedisServer(tmp / "redis").start()
    env = dict(os.environ)
    env.update(
        REDIS_URL=server.url,
        JOBCAST_MEDIA_DIR=str(tmp / "media"),
        JOBCAST_POST_RATE_LIMIT="",
        JOBCAST_OPS_LOGIN_RATE_LIMIT="",
        JOBCAST_OPS_TOKEN=secrets.token_urlsafe(16),
        JOBCAST_MIN_SIDE="8",
        JOBCAST_MAX_SIDE="64",
        JOBCAST_DEFAULT_SIDE="32",
        JOBCAST_MAX_STEPS="3",
        JOBCAST_MAX_QUEUE="200",
        # A multiplexed stream asked to idle (?idle=1) stays this long after its jobs end.
        JOBCAST_STREAM_IDLE_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    try:
        worker = celery_worker(env, tmp / "worker.log", "fuzz")
        try:
            proc, base = gunicorn_web(env, tmp / "web.log")
            try:
                yield base
            finally:
                proc.stop()
        finally:
            worker.stop()
    finally:
        server.stop()


def schemathesis_argv(base: str) -> list[str]:
    return [
        str(SCHEMATHESIS),
        "run",
        base + "/openapi.json",
        "--checks", "all",
        # DELETE cancels; a cancelled job stays readable (see the module docstring).
        "--exclude-checks", "use_after_free",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(EXAMPLES),
        "--generation-deterministic",  # the same inputs every run
        "--workers", "1",  # two cores shared with the worker and the server
        "--request-timeout", "20",
        "--no-color",
    ]  # fmt: skip


@pytest.mark.slow
def test_api_passes_every_schemathesis_check(
    fuzz_web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every operation of the live document, in every phase including stateful sequences
    on real jobs, passes every check but ``use_after_free`` (cancelled jobs stay readable)."""
    run = subprocess.run(
        schemathesis_argv(fuzz_web), capture_output=True, text=True, timeout=RUN_LIMIT
    )
    output = run.stdout + run.stderr
    start = next((output.find(f"=== {part}") for part in PARTS if f"=== {part}" in output), -1)
    summary = output[start:] if start >= 0 else output[-3000:]
    with capsys.disabled():  # the counts belong in every run's output, not only failures
        print("\n" + summary)
    assert run.returncode == 0, output[-20000:]
    phases = {name: mark for mark, name in re.findall(PHASE, summary)}
    assert all(phases.get(name) == "✅" for name in ("Coverage", "Fuzzing", "Stateful")), summary
