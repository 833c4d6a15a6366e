"""Shared fixtures: one real Redis, worker and web server for the session.

Per test, Jobcast's keys are cleared after every running job has stopped, so tests
never see each other's jobs. Fault tests start processes of their own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tasks.events import JobEvents

sys.path.insert(0, str(Path(__file__).parent))

from support import Proc, RedisServer, celery_worker, gunicorn_web, wait_until

pytest_plugins = ["chromium"]  # the `browser` and `new_page` fixtures (tests/chromium.py)

_workers: list[Proc] = []  # the session worker, while it runs
ARTIFACTS = Path(os.environ.get("JOBCAST_TEST_ARTIFACTS", "test-artifacts")).resolve()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack_env(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for the stack's processes: our Redis, a private media folder."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_server.url,
        JOBCAST_MEDIA_DIR=str(tmp_path_factory.mktemp("media")),
        PYTHONUNBUFFERED="1",
        # The suite posts far faster than a person; the limit has its own test.
        JOBCAST_POST_RATE_LIMIT="100000/minute",
    )
    return env


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = celery_worker(stack_env, tmp_path_factory.mktemp("logs") / "worker.log", "main")
    _workers.append(proc)
    yield proc
    _workers.remove(proc)
    proc.stop()


@pytest.fixture(scope="session")
def web(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real gunicorn gevent server running ``web:create_app()``."""
    proc, base = gunicorn_web(stack_env, tmp_path_factory.mktemp("logs") / "web.log")
    yield base
    proc.stop()


@pytest.fixture
def web_with(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``web_with(**env)`` starts a web server of the test's own on the session's Redis,
    with extra environment, and answers its base URL; each is stopped after the test."""
    procs: list[Proc] = []

    def start(**env: str) -> str:
        proc, base = gunicorn_web({**stack_env, **env}, tmp_path / f"web{len(procs)}.log")
        procs.append(proc)
        return base

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def rds(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's Redis; Jobcast's state is cleared after the test."""
    client = redis_server.client()
    yield client
    _quiesce(client)
    client.close()


def _quiesce(client: redis.Redis) -> None:
    """Cancel what waits or runs (open streams end), wait for it to stop, drop every key."""
    events = JobEvents(client)
    lines = events.keys.all_lines(client.smembers(events.keys.lines))  # one per Celery queue
    for line in lines:
        for job_id in client.zrange(line.queue, 0, -1):
            events.publish(job_id.decode(), "cancelled", {"reason": "test over"}, expect="queued")
    for line in lines:
        for job_id in client.zrange(line.running, 0, -1):
            client.hset(events.keys.job(job_id.decode()), "cancel", "1")
    # Celery's lists of waiting task messages, one per queue
    client.delete("jobcast", *(line.name for line in lines))
    try:
        if any(proc.alive() for proc in _workers):
            wait_until(lambda: client.zcard("jobcast:running") == 0, 30, "running jobs to stop")
    except AssertionError:
        # Say which job would not stop and where it ran, then clean up all the same: one
        # test's leak must not fail every later test that uses Redis.
        stuck = {
            job.decode(): client.hget(events.keys.job(job.decode()), "last:started")
            for job in client.zrange("jobcast:running", 0, -1)
        }
        raise AssertionError(f"jobs still running after the test: {stuck}") from None
    finally:
        # The lines' counters only ever grow, as in production: web processes rely on it.
        counters = {c.encode() for line in lines for c in (line.ticket, line.version)}
        counters.add(events.keys.lines.encode())  # and so do the names of the lines
        keys = [k for k in client.scan_iter("jobcast:*", count=1000) if k not in counters]
        if keys:
            client.delete(*keys)
