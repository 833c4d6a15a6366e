"""``GET /jobs/stream?job=A&job=B…``: many jobs on one SSE connection, resumed per job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from support import Muxed, Proc, collect, gunicorn_web, logged, muxed_events, wait_until

from jobcast import cursor as cursors

TINY = {"width": 64, "height": 64, "steps": 2}
UNKNOWN = "AAAAAAAAAAAAAAAAAAAAAA"


def submit(base: str, **body: Any) -> str:
    body = {"prompt": "a lighthouse", **TINY, **body}
    response = httpx.post(base + "/jobs/imagine", json=body, timeout=10)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["jobId"]
    return job_id


def muxed(base: str, jobs: list[str], last: str | None = None) -> Iterator[Muxed]:
    """The multiplexed stream's events as a third-party SSE client (httpx-sse) sees them."""
    headers = {"Last-Event-ID": last} if last else {}
    params = [("job", job) for job in jobs]
    with (
        httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client,
        connect_sse(client, "GET", base + "/jobs/stream", params=params, headers=headers) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        yield from muxed_events(source, last)


def per_job(seen: list[Muxed], jobs: list[str]) -> dict[str, list[tuple[str, str]]]:
    """The durable events of each job as (event id, phase), the ids read from the cursors."""
    got: dict[str, list[tuple[str, str]]] = {job: [] for job in jobs}
    for item in seen:
        if item.cursor is None or item.event == "error":
            continue
        job = item.data["jobId"]
        last = cursors.decode(item.cursor, jobs).last[jobs.index(job)]
        assert last is not None
        got[job].append((f"{last[0]}-{last[1]}", item.event))
    return got


def hub_streams(base: str) -> int:
    streams: int = httpx.get(base + "/healthz").json()["hub"]["streams"]
    return streams


def test_many_jobs_on_one_connection_each_get_exactly_their_log(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """22 jobs on one connection: every event names its job; each job's events (ids from
    the composite cursor) are exactly its Redis log in order; the stream ends once all
    have ended, and this process watches nothing more than before."""
    before = hub_streams(web)
    jobs = [submit(web, seed=i) for i in range(22)]
    seen = list(muxed(web, jobs))
    assert {item.data["jobId"] for item in seen} == set(jobs)
    got = per_job(seen, jobs)
    for job in jobs:
        assert got[job] == logged(rds, job), job
        assert got[job][-1][1] == "done"
    wait_until(lambda: hub_streams(web) == before, 20, "the watchers to be released")


def test_resume_with_the_cursor_has_no_duplicate_no_gap_and_skips_finished_jobs(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """Disconnect once some jobs have finished and others not; reconnecting with the last
    cursor as Last-Event-ID gives each job exactly the rest of its log, and a job finished
    before the cursor sends nothing at all; a cursor after every end gets 204; the
    connection cut mid-way left no watcher behind."""
    before_streams = hub_streams(web)
    jobs = [submit(web, seed=i, steps=6) for i in range(8)]
    first: list[Muxed] = []
    for item in muxed(web, jobs):
        first.append(item)
        if sum(1 for f in first if f.event == "done") == 3:
            break
    cursor = next(f.cursor for f in reversed(first) if f.cursor)
    finished = {f.data["jobId"] for f in first if f.event == "done"}
    second = list(muxed(web, jobs, last=cursor))
    assert not finished & {item.data["jobId"] for item in second}
    before, after = per_job(first, jobs), per_job(second, jobs)
    for job in jobs:
        assert before[job] + after[job] == logged(rds, job), job
        assert logged(rds, job)[-1][1] == "done"
    assert any(after[job] for job in jobs)  # the cut was mid-way: some jobs went on
    again = httpx.get(
        web + "/jobs/stream",
        params=[("job", job) for job in jobs],
        headers={"Last-Event-ID": next(s.cursor for s in reversed(second) if s.cursor)},
    )
    assert again.status_code == 204  # every job ended before this cursor: stop reconnecting
    wait_until(lambda: hub_streams(web) == before_streams, 20, "the watchers to be released")


def test_past_the_limit_is_a_clean_400_naming_it(web: str, rds: redis.Redis) -> None:
    """101 jobs is a 400 JSON error naming the limit of 100; nothing is watched."""
    before = hub_streams(web)
    params = [("job", f"{i:022d}") for i in range(101)]
    response = httpx.get(web + "/jobs/stream", params=params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many_jobs" and "100" in error["message"]
    assert hub_streams(web) == before


@pytest.mark.parametrize(
    ("params", "headers", "code"),
    [
        ([], {}, "no_jobs"),
        ([("job", UNKNOWN), ("job", UNKNOWN)], {}, "duplicate_job"),
        ([("job", UNKNOWN)], {"Last-Event-ID": "not a cursor!"}, "bad_last_event_id"),
        ([("job", UNKNOWN), ("lastEventId", "a b")], {"Last-Event-ID": "AQ"}, "bad_last_event_id"),
    ],
)
def test_bad_requests_are_json_errors(
    web: str, params: list[tuple[str, str]], headers: dict[str, str], code: str
) -> None:
    """No jobs, a job twice, or a cursor that is not base64url (in the header, or in the
    query even when the header's would do): a 400 naming the problem."""
    response = httpx.get(web + "/jobs/stream", params=params, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_a_cursor_of_another_list_starts_over_and_one_of_its_prefix_resumes(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """A cursor made for one list of jobs is foreign to a list that is not that list with
    jobs appended: each job gets a ``reset`` then its whole log. With jobs appended it
    resumes: the finished job is not replayed, the new one is reported."""
    job = submit(web)
    cursor = [item.cursor for item in muxed(web, [job]) if item.cursor][-1]  # after done
    jobs = [UNKNOWN, job]
    other = list(muxed(web, jobs, last=cursor))
    mine = [item for item in other if item.data["jobId"] == job]
    assert mine[0].event == "reset" and mine[0].data["state"] == "succeeded"
    assert per_job(mine[1:], jobs)[job] == logged(rds, job)
    appended = list(muxed(web, [job, UNKNOWN], last=cursor))
    assert [(item.event, item.data["jobId"]) for item in appended] == [("error", UNKNOWN)]


def test_an_unknown_job_gets_its_error_event_while_the_others_stream(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """An unknown id and a malformed one each get an ``error`` event naming them; the real
    jobs stream to done on the same connection."""
    jobs = [submit(web), UNKNOWN, "nope", submit(web)]
    seen = list(muxed(web, jobs))
    errors = {item.data["jobId"]: item.data["code"] for item in seen if item.event == "error"}
    assert errors == {UNKNOWN: "not_found", "nope": "not_found"}
    got = per_job(seen, jobs)
    for job in (jobs[0], jobs[3]):
        assert got[job] == logged(rds, job)


@pytest.mark.parametrize(
    "last",
    [{}, {0: (1763900000000, 0)}, {2: None, 0: (1763900004120, 7), 1: (1763899000000, 2**64 - 1)}],
)
def test_cursor_round_trips(last: dict[int, tuple[int, int] | None]) -> None:
    """A cursor decodes to the ids (and gone marks) it was made from, for its list."""
    jobs = [UNKNOWN, "B" * 22, "C" * 22]
    base = 1763900000500
    raw = cursors.header(jobs, base) + b"".join(
        cursors.entry(i, base, value) for i, value in sorted(last.items())
    )
    decoded = cursors.decode(cursors.encode(raw).decode(), jobs)
    assert decoded.last == last and decoded.covered == 3
    with pytest.raises(ValueError):
        cursors.decode(cursors.encode(raw).decode(), list(reversed(jobs)))


@pytest.mark.parametrize("query", ["idle=2", "idle=1&idle=1", "lastEventId=a&lastEventId=b"])
def test_single_parameters_out_of_their_values_are_400(web: str, query: str) -> None:
    """``idle`` other than 0/1, or ``idle``/``lastEventId`` given twice: a 400, nothing opened."""
    response = httpx.get(f"{web}/jobs/stream?job={UNKNOWN}&{query}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_parameter"


def test_idle_keeps_the_connection_after_every_job_ended(web: str) -> None:
    """With ``?idle=1`` the stream of a single unknown job sends its error, then stays open
    with keep-alive comments instead of ending."""
    params = {"job": UNKNOWN, "idle": "1"}
    with (
        httpx.Client(timeout=httpx.Timeout(30, connect=5)) as client,
        client.stream("GET", web + "/jobs/stream", params=params) as response,
    ):
        seen = ""
        for text in response.iter_text():
            seen += text
            if ": keep-alive" in seen:
                break
    assert "event: error" in seen and ": keep-alive" in seen


def test_with_signing_each_job_needs_its_token(
    stack_env: dict[str, str], tmp_path: Path, worker: Proc, rds: redis.Redis
) -> None:
    """With JOBCAST_SIGNING_KEY, a job given with a wrong token gets a ``bad_token`` error
    event; the job given with its own token (``token=`` in the order of ``job=``) streams."""
    proc, base = gunicorn_web({**stack_env, "JOBCAST_SIGNING_KEY": "s3cret"}, tmp_path / "web.log")
    try:
        posted = [
            httpx.post(base + "/jobs/imagine", json={"prompt": "x", **TINY}).json()
            for _ in range(2)
        ]
        jobs = [job["jobId"] for job in posted]
        params = [
            ("job", jobs[0]),
            ("job", jobs[1]),
            ("token", posted[0]["token"]),
            ("token", "no"),
        ]
        with (
            httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client,
            connect_sse(client, "GET", base + "/jobs/stream", params=params) as source,
        ):
            seen = [(sse.event, json.loads(sse.data)) for sse in source.iter_sse() if sse.data]
        errors = [(data["jobId"], data["code"]) for event, data in seen if event == "error"]
        assert errors == [(jobs[1], "bad_token")]
        assert [event for event, data in seen if data["jobId"] == jobs[0]][-1] == "done"
    finally:
        proc.stop()


def test_a_killed_pubsub_connection_loses_nothing_on_any_job(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """CLIENT KILL of the web's pub/sub connection while 6 jobs stream on one connection:
    each job still gets exactly its log (the hub resubscribes, each job re-reads its log
    after its own last sent id)."""
    jobs = [submit(web, seed=i, steps=8) for i in range(6)]
    seen: list[Muxed] = []
    killed = False
    for item in muxed(web, jobs):
        seen.append(item)
        if not killed and item.event == "progress":
            wait_until(lambda: _kill_subscribers(rds), 10, "a pub/sub client to kill")
            killed = True
    assert killed
    got = per_job(seen, jobs)
    for job in jobs:
        assert got[job] == logged(rds, job), job


def _kill_subscribers(client: redis.Redis) -> int:
    """Kill every connection in pub/sub mode (the web hub's)."""
    return sum(
        client.client_kill_filter(_id=c["id"])
        for c in client.client_list()
        if int(c.get("sub", 0)) > 0 or "P" in c.get("flags", "")
    )


def test_connections_sharing_jobs_each_get_their_own_labels(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """Two multiplexed connections watching the same jobs in another order, and a single
    stream of one of them, all at once (the hub hands all three the same items): each
    multiplexed event names its job and each job's events are its log on both; the single
    stream's frames stay as they were, without a jobId."""
    jobs = [submit(web, seed=i, steps=6) for i in range(2)]
    lists = [jobs, list(reversed(jobs))]
    with ThreadPoolExecutor(3) as pool:
        muxes = [pool.submit(lambda j=j: list(muxed(web, j))) for j in lists]
        single = pool.submit(collect, web, jobs[0])
        seen = [future.result(120) for future in muxes]
        alone = single.result(120)
    for order, items in zip(lists, seen, strict=True):
        got = per_job(items, order)
        for job in jobs:
            assert got[job] == logged(rds, job), job
    assert [(e.id, e.event) for e in alone if e.id] == logged(rds, jobs[0])
    assert all("jobId" not in e.data for e in alone if e.event != "queued")
