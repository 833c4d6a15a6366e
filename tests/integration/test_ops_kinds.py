"""Numbers per job kind (issue 16): outcomes, failure rate, run times and the line per
kind in /metrics and in the monitor's snapshot; real Redis, worker, monitor, gunicorn."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from opsupport import TOKEN, failing_analyze, metrics, post, sample
from support import Proc, celery_worker, collect, jobcast_monitor, wait_until

from tasks.app import create_celery
from tasks.config import Settings
from tasks.handle import submit
from tasks.keys import Keys
from tasks.kindstats import MAX_KINDS, OTHER

SMALL = {"prompt": "a quiet harbour", "width": 64, "height": 64, "steps": 2}
IDLE = "kinds-idle"  # a Celery queue no worker consumes: its jobs wait


@pytest.fixture
def ops(web_with: Callable[..., str]) -> str:
    return web_with(JOBCAST_OPS_TOKEN=TOKEN)


@pytest.fixture
def monitor(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    proc = jobcast_monitor(stack_env, tmp_path / "monitor.log")
    yield proc
    proc.stop()


def snapshot_kinds(rds: redis.Redis) -> dict[str, dict[str, Any]]:
    raw = rds.get(Keys().ops_snapshot)
    return {row["kind"]: row for row in json.loads(raw or b"{}").get("kinds", [])}


def test_metrics_and_snapshot_count_outcomes_per_kind(
    ops: str, worker: Proc, monitor: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Three imagine jobs succeed and four analyze jobs run, two of them failing: /metrics
    counts each kind's outcomes, says analyze fails half and imagine never, has one run
    time per success in each kind's histogram; the dashboard's snapshot has both rows."""
    jobs = [post(ops, "imagine", SMALL) for _ in range(3)]
    jobs += [post(ops, "analyze", {"prompt": f"picture {n}"}) for n in range(2)]
    jobs += [failing_analyze(stack_env, rds) for _ in range(2)]
    for job_id in jobs:
        collect(ops, job_id)

    def counted() -> dict[Any, float] | None:
        numbers = metrics(ops)
        want = {("imagine", "succeeded"): 3, ("analyze", "succeeded"): 2, ("analyze", "failed"): 2}
        got = {
            key: sample(numbers, "jobcast_kind_jobs_total", kind=key[0], outcome=key[1])
            for key in want
        }
        return numbers if got == want else None

    numbers = wait_until(counted, 30, "the monitor to count both kinds")
    assert sample(numbers, "jobcast_kind_jobs_total", kind="imagine", outcome="failed") is None
    assert sample(numbers, "jobcast_kind_failure_ratio", kind="analyze") == 0.5
    assert sample(numbers, "jobcast_kind_failure_ratio", kind="imagine") == 0.0
    assert sample(numbers, "jobcast_kind_runtime_seconds_count", kind="imagine") == 3
    assert sample(numbers, "jobcast_kind_runtime_seconds_count", kind="analyze") == 2
    assert sample(numbers, "jobcast_kind_runtime_seconds_bucket", kind="imagine", le="+Inf") == 3
    assert (sample(numbers, "jobcast_kind_runtime_seconds_sum", kind="imagine") or 0) > 0
    assert sample(numbers, "jobcast_kind_finished_per_minute", kind="analyze") == 4 / 5
    assert sample(numbers, "jobcast_kind_waiting", kind="imagine") == 0

    rows = wait_until(
        lambda: (r := snapshot_kinds(rds)).get("analyze", {}).get("done") == 4 and r,
        10, "the snapshot's kind rows",
    )  # fmt: skip
    assert rows["analyze"]["failRate"] == 0.5 and rows["analyze"]["rate"] == 0.8
    assert rows["imagine"]["done"] == 3 and rows["imagine"]["failRate"] == 0.0
    assert 0 < rows["imagine"]["p50"] <= rows["imagine"]["p95"]
    assert rows["analyze"]["waiting"] == rows["imagine"]["waiting"] == 0


def test_waiting_per_kind_follows_the_line_with_names_bounded(
    ops: str, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Jobs waiting in a line no worker serves count per kind, and a cancelled one leaves
    its kind's count; a kind name with quotes, markup and newlines shows with those as
    ``_``; past MAX_KINDS kinds the rest wait as "other", and nothing is lost."""
    app = create_celery(Settings.from_env(stack_env))
    render = [
        submit("demo.render", kwargs={}, kind="render", queue=IDLE, app=app) for _ in range(3)
    ]
    submit("demo.render", kwargs={}, kind='bad"<b>|\n', queue=IDLE, app=app)
    numbers = metrics(ops)
    assert sample(numbers, "jobcast_kind_waiting", kind="render") == 3
    assert sample(numbers, "jobcast_kind_waiting", kind="bad__b___") == 1

    for handle in render[:2]:
        answer = httpx.delete(f"{ops}/jobs/{handle.id}", timeout=10)
        assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    assert sample(metrics(ops), "jobcast_kind_waiting", kind="render") == 1

    for n in range(MAX_KINDS + 5):
        submit("demo.render", kwargs={}, kind=f"k{n:03}", queue=IDLE, app=app)
    waiting = {k.decode(): int(v) for k, v in rds.hgetall(Keys().kind_waiting).items()}
    assert len(waiting) == MAX_KINDS + 1
    assert waiting[OTHER] == 2 + MAX_KINDS + 5 - MAX_KINDS  # the kinds that found it full
    assert sum(waiting.values()) == 2 + MAX_KINDS + 5 == rds.zcard(Keys().line(IDLE).queue)
    labels = {key[1] for key in metrics(ops) if key[0] == "jobcast_kind_waiting"}
    assert len(labels) == MAX_KINDS + 1


def test_past_max_kinds_task_ends_count_as_other_and_cancelled_jobs_as_cancelled(
    ops: str, monitor: Proc, rds: redis.Redis, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """Jobs of MAX_KINDS + 5 kinds, each cancelled while it waits in a line no worker
    serves; a worker then started on that line drops their messages (a success to Celery):
    each counts as cancelled, the first MAX_KINDS kinds under their names, the rest under
    "other"; none is lost or counted twice."""
    app = create_celery(Settings.from_env(stack_env))
    total = MAX_KINDS + 5
    for n in range(total):
        handle = submit(
            "jobcast.imagine", kwargs={**SMALL, "seed": n}, kind=f"c{n:03}", queue=IDLE, app=app
        )
        answer = httpx.delete(f"{ops}/jobs/{handle.id}", timeout=10)
        assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    assert not rds.hgetall(Keys().kind_waiting)  # every count back to none, and dropped

    def ends() -> dict[str, float] | None:
        got = {
            dict(labels)["kind"]: value
            for (name, labels), value in metrics(ops).items()
            if name == "jobcast_kind_jobs_total" and dict(labels)["outcome"] == "cancelled"
        }
        return got if sum(got.values()) >= total else None

    idle = celery_worker(stack_env, tmp_path / "idle.log", "idle", queues=IDLE)
    try:
        counted = wait_until(ends, 60, "every cancelled job's task end counted")
    finally:
        idle.stop()
    assert sum(counted.values()) == total
    assert len(counted) == MAX_KINDS + 1 and counted[OTHER] == 5
    assert rds.scard("jobcast:ops:kinds") == MAX_KINDS + 1
    numbers = metrics(ops)
    assert sample(numbers, "jobcast_kind_jobs_total", kind="c000", outcome="succeeded") is None
