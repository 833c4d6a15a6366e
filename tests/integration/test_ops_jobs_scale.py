"""The job browser at scale (issue 16): thirty jobs of two kinds across two web
processes, restarts of the monitor and the web, and the index's bound under 10,000 jobs;
real Redis, worker, monitor and gunicorn web processes."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from opsupport import (
    ENDED,
    SMALL,
    TOKEN,
    cancelled_imagine,
    failing_analyze,
    get,
    kind_numbers,
    metrics,
    post,
    sample,
)
from support import Proc, free_port, gunicorn_web, jobcast_monitor, wait_until

from tasks.app import create_celery
from tasks.config import Settings
from tasks.handle import submit
from tasks.keys import Keys

BOUND = 1000
IDLE = "scale-idle"  # a Celery queue no worker consumes


def thirty_jobs(base: str, rds: redis.Redis, env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Thirty jobs, imagine and analyze, some failing and some cancelled, all ended:
    id → (kind, state)."""
    expected: dict[str, tuple[str, str]] = {}
    for n in range(30):
        if n % 6 == 0:
            expected[cancelled_imagine(base, rds, env)] = ("imagine", "cancelled")
        elif n % 6 == 1:
            expected[failing_analyze(env, rds)] = ("analyze", "failed")
        elif n % 2 == 0:
            expected[post(base, "imagine", SMALL)] = ("imagine", "succeeded")
        else:
            expected[post(base, "analyze", {"prompt": f"picture {n}"})] = ("analyze", "succeeded")
    for job_id in expected:
        wait_until(
            lambda j=job_id: get(base, f"/ops/jobs/{j}.json")["state"] in ENDED, 60, f"{job_id}"
        )
    return expected


def listed(base: str, **query: Any) -> list[dict[str, Any]]:
    page = get(base, "/ops/jobs.json", limit=200, **query)
    assert page["next"] is None
    jobs: list[dict[str, Any]] = page["jobs"]
    return jobs


def test_thirty_jobs_are_listed_filtered_and_searched_alike_by_two_webs(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Thirty jobs of two kinds appear newest first with the state each ended in; the
    state and kind filters and an id-prefix search find exactly theirs, and a second
    gunicorn on the same Redis answers the very same list."""
    first = web_with(JOBCAST_OPS_TOKEN=TOKEN)
    second = web_with(JOBCAST_OPS_TOKEN=TOKEN)
    expected = thirty_jobs(first, rds, stack_env)
    jobs = listed(first)
    assert {j["jobId"]: (j["kind"], j["state"]) for j in jobs} == expected
    assert [j["created"] for j in jobs] == sorted((j["created"] for j in jobs), reverse=True)
    assert len({s for _, s in expected.values()}) == 3

    for state in ("succeeded", "failed", "cancelled"):
        found = {j["jobId"] for j in listed(first, state=state)}
        assert found == {i for i, (_, s) in expected.items() if s == state}
    for kind in ("imagine", "analyze"):
        found = {j["jobId"] for j in listed(first, kind=kind)}
        assert found == {i for i, (k, _) in expected.items() if k == kind}
    both = {j["jobId"] for j in listed(first, kind="imagine", state="cancelled")}
    assert both == {i for i, v in expected.items() if v == ("imagine", "cancelled")}
    for job_id in list(expected)[::7]:
        found = [j["jobId"] for j in listed(first, id=job_id[:6])]
        assert job_id in found and all(i.startswith(job_id[:6]) for i in found)

    assert listed(second) == jobs
    assert listed(second, kind="analyze", state="failed") == listed(
        first, kind="analyze", state="failed"
    )


def test_a_monitor_and_a_web_restart_keep_the_list_and_the_kind_numbers(
    worker: Proc, rds: redis.Redis, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """After thirty jobs, the monitor and the web server are stopped and started again:
    the same list and the same per-kind numbers are served on the same address, and the
    new monitor goes on counting from them."""
    env = {**stack_env, "JOBCAST_OPS_TOKEN": TOKEN}
    port = free_port()
    monitor = jobcast_monitor(env, tmp_path / "monitor-a.log")
    web, base = gunicorn_web(env, tmp_path / "web-a.log", port=port)
    try:
        expected = thirty_jobs(base, rds, stack_env)
        # Every task end counted: the five cancelled before a message was sent ran none.
        wait_until(lambda: _counted(base) == 25, 30, "all 25 task ends counted")
        failed = sum(1 for v in expected.values() if v == ("analyze", "failed"))
        assert sample(metrics(base), "jobcast_kind_jobs_total", kind="analyze",
                      outcome="failed") == failed  # fmt: skip
        before_list, before_kinds = listed(base), kind_numbers(metrics(base))
    finally:
        web.stop()
        monitor.stop()
    monitor = jobcast_monitor(env, tmp_path / "monitor-b.log")
    web, again = gunicorn_web(env, tmp_path / "web-b.log", port=port)
    try:
        assert again == base
        assert listed(again) == before_list
        assert kind_numbers(metrics(again)) == before_kinds
        more = post(again, "imagine", SMALL)
        wait_until(lambda: get(again, f"/ops/jobs/{more}.json")["state"] in ENDED, 60, "more")
        wait_until(lambda: _counted(again) == 26, 30, "the new monitor to count on")
        assert listed(again)[0]["jobId"] == more
    finally:
        web.stop()
        monitor.stop()


def _counted(base: str) -> float:
    numbers = metrics(base)
    return sum(v for k, v in numbers.items() if k[0] == "jobcast_kind_jobs_total")


def test_the_index_stays_within_its_bound_through_ten_thousand_jobs(
    web_with: Callable[..., str], rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """With JOBCAST_JOB_INDEX_MAX=1000, 10,000 jobs submitted as an app does (``submit``,
    to a queue no worker serves, so none runs) leave exactly the 1000 newest in the index,
    and the list starts at the newest."""
    env = {**stack_env, "JOBCAST_JOB_INDEX_MAX": str(BOUND), "JOBCAST_MAX_QUEUE": "0"}
    app = create_celery(Settings.from_env(env))
    ids = [f"scale-{n:05}-{secrets.token_hex(4)}" for n in range(10_000)]
    for job_id in ids:
        submit("demo.small", kwargs={}, kind="small", queue=IDLE, app=app, job_id=job_id)
    index = Keys().job_index
    assert rds.zcard(index) == BOUND
    kept = [m.decode() for m in rds.zrange(index, 0, -1)]
    newest = set(ids[-BOUND:])
    # Ties in one ms order by id; the ids sort in submit order, so the set is exact.
    assert set(kept) == newest
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN, JOBCAST_JOB_INDEX_MAX=str(BOUND))
    page = [j["jobId"] for j in get(base, "/ops/jobs.json", limit=5)["jobs"]]
    fifth = rds.zrevrange(index, 0, 4, withscores=True)[-1][1]
    top = rds.zrevrangebyscore(index, "+inf", fifth)
    # The index's newest (by creation ms, ties by id), which are the last ones submitted
    # unless the wall clock stepped back meanwhile; a page that fills up takes in the rest
    # of its last row's ms (thousands of submits a second share one), so that the next
    # page, from that ms, misses none of them.
    assert page == [m.decode() for m in top], (page, top, ids[:-6:-1])
    assert len(page) >= 5
    assert set(page) <= newest
    assert rds.hget(Keys().kind_waiting, "small") == str(10_000).encode()
