"""The operators' job browser (issue 16): the job index, /ops/jobs.json, a job's detail,
retry, and the ops token in front of them; real Redis, worker and gunicorn web."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import connect_sse
from opsupport import AUTH, ENDED, SMALL, TOKEN, failing_analyze, get, post
from support import Proc, collect, jobcast_monitor, logged, wait_until

from tasks.config import Settings
from tasks.events import JobEvents
from tasks.jobindex import TRACEBACK_MAX, bounded_traceback
from tasks.keys import Keys
from tasks.submit import task_fields

LONG = {"prompt": "a slow harbour", "width": 512, "height": 512, "steps": 80}  # ends by cancel


@pytest.fixture
def ops(web_with: Callable[..., str]) -> str:
    """A web server with the ops token set."""
    return web_with(JOBCAST_OPS_TOKEN=TOKEN)


def ended(base: str, job_id: str) -> dict[str, Any]:
    """The job's detail once it has ended (polled with a deadline)."""
    found: dict[str, Any] = wait_until(
        lambda: (d := get(base, f"/ops/jobs/{job_id}.json"))["state"] in ENDED and d,
        timeout=60,
        what=f"job {job_id} to end",
    )
    return found


def cancelled_imagine(base: str, rds: redis.Redis, stack_env: dict[str, str]) -> str:
    """An imagine job cancelled while it waits: recorded with its task and kwargs but no
    Celery message yet (so no worker can take it first), then DELETE /jobs/<id>."""
    job_id = secrets.token_urlsafe(16)
    events = JobEvents.for_settings(rds, Settings.from_env(stack_env))
    kwargs = {**SMALL, "steps": 3, "seed": 7}  # what the route would hand the task
    fields = {
        "kind": "imagine",
        "prompt": SMALL["prompt"],
        **task_fields("jobcast.imagine", kwargs),
    }
    assert events.enqueue(job_id, fields).position >= 1
    answer = httpx.delete(f"{base}/jobs/{job_id}", timeout=10)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled", answer.text
    return job_id


def test_jobs_are_listed_newest_first_with_their_states_and_found_by_filters(
    ops: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Imagine and analyze jobs, some cancelled and one failing, are listed newest first
    with the state each ended in; state, kind and id-prefix filters find exactly them, and
    pages joined by `before` are the whole list."""
    expected: dict[str, tuple[str, str]] = {}
    for n in range(6):
        if n % 3 == 1:
            expected[cancelled_imagine(ops, rds, stack_env)] = ("imagine", "cancelled")
        else:
            expected[post(ops, "imagine", SMALL)] = ("imagine", "succeeded")
        if n % 2 == 0:
            expected[post(ops, "analyze", {"prompt": f"picture {n}"})] = ("analyze", "succeeded")
    expected[failing_analyze(stack_env, rds)] = ("analyze", "failed")
    for job_id in expected:
        ended(ops, job_id)

    listed = get(ops, "/ops/jobs.json", limit=200)
    jobs = listed["jobs"]
    assert listed["next"] is None
    assert {j["jobId"]: (j["kind"], j["state"]) for j in jobs} == expected
    created = [j["created"] for j in jobs]
    assert created == sorted(created, reverse=True)
    newest = max(expected, key=lambda i: int(rds.hget(Keys().job(i), "created") or 0))
    assert jobs[0]["created"] == int(rds.hget(Keys().job(newest), "created") or 0)
    done = next(j for j in jobs if j["state"] == "succeeded")
    assert done["percent"] == 100 and done["attempt"] == 1 and done["worker"]
    assert done["durationMs"] == done["finishedAt"] - done["startedAt"] >= 0

    def ids(**query: Any) -> set[str]:
        return {j["jobId"] for j in get(ops, "/ops/jobs.json", **query)["jobs"]}

    assert ids(state="cancelled") == {i for i, (_, s) in expected.items() if s == "cancelled"}
    assert ids(kind="analyze") == {i for i, (k, _) in expected.items() if k == "analyze"}
    assert ids(kind="analyze", state="failed") == {
        i for i, v in expected.items() if v == ("analyze", "failed")
    }
    some = next(iter(expected))
    found = ids(id=some[:8])
    assert some in found and all(i.startswith(some[:8]) for i in found)

    paged: list[str] = []
    before: int | None = None
    for _ in range(len(expected)):
        page = get(ops, "/ops/jobs.json", limit=2, **({"before": before} if before else {}))
        paged += [j["jobId"] for j in page["jobs"]]
        before = page["next"]
        if before is None:
            break
    assert paged == [j["jobId"] for j in jobs]


def test_detail_has_the_whole_log_and_the_error_of_a_failed_job(
    ops: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """A finished job's detail carries every event of its Redis log in order, its params,
    its attempts with their worker, and its result; a failed one its error."""
    job_id = post(ops, "imagine", SMALL)
    job = ended(ops, job_id)
    assert [(e["id"], e["kind"]) for e in job["events"]] == logged(rds, job_id)
    assert job["events"][-1]["kind"] == "done" and job["result"] is not None
    assert job["params"]["prompt"] == SMALL["prompt"]
    assert [a["attempt"] for a in job["attempts"]] == [1] and job["attempts"][0]["worker"]
    failed = ended(ops, failing_analyze(stack_env, rds))
    assert failed["state"] == "failed"
    assert "damaged" in failed["error"]["error"]
    assert [(e["id"], e["kind"]) for e in failed["events"]] == logged(rds, failed["jobId"])


def test_retry_of_a_cancelled_job_runs_a_linked_job_once(
    ops: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Retrying a cancelled job answers a new job that links to it and runs to done; the
    old one names its retry, a second retry and a retry of a succeeded job are 409s."""
    old = cancelled_imagine(ops, rds, stack_env)
    assert ended(ops, old)["state"] == "cancelled"
    answer = httpx.post(f"{ops}/ops/jobs/{old}/retry", headers=AUTH, timeout=10)
    assert answer.status_code == 202, answer.text
    new = answer.json()["jobId"]
    assert new != old
    assert collect(ops, new)[-1].event == "done"
    job = get(ops, f"/ops/jobs/{new}.json")
    assert job["retryOf"] == old and job["params"]["steps"] == 3
    assert get(ops, f"/ops/jobs/{old}.json")["retriedAs"] == new
    again = httpx.post(f"{ops}/ops/jobs/{old}/retry", headers=AUTH, timeout=10)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_retried"
    done = httpx.post(f"{ops}/ops/jobs/{new}/retry", headers=AUTH, timeout=10)
    assert done.status_code == 409 and done.json()["error"]["code"] == "not_retryable"
    missing = httpx.post(f"{ops}/ops/jobs/{'x' * 22}/retry", headers=AUTH, timeout=10)
    assert missing.status_code == 404


def test_the_browser_needs_the_ops_token(web: str, ops: str, rds: redis.Redis) -> None:
    """Without a token configured the routes are 403 JSON; with one, a request without it
    (or with a wrong one, or a HEAD) is 401, and nothing is retried; bad filters are 400."""
    job_id = post(ops, "imagine", SMALL)
    for path in ("/ops/jobs.json", f"/ops/jobs/{job_id}.json"):
        closed = httpx.get(web + path, headers=AUTH, timeout=10)
        assert closed.status_code == 403 and closed.json()["error"]["code"] == "forbidden"
        for headers in ({}, {"Authorization": "Bearer nope"}):
            refused = httpx.get(ops + path, headers=headers, timeout=10)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
    head = httpx.head(f"{ops}/ops/jobs.json", timeout=10)
    assert head.status_code == 401 and head.content == b""
    retry = httpx.post(f"{ops}/ops/jobs/{job_id}/retry", timeout=10)
    assert retry.status_code == 401 and rds.hget(Keys().job(job_id), "retriedAs") is None
    bad = httpx.get(f"{ops}/ops/jobs.json", params={"state": "x", "limit": 0}, headers=AUTH)
    assert bad.status_code == 400 and set(bad.json()["error"]["fields"]) == {"state", "limit"}
    page = httpx.get(f"{ops}/ops/jobs", timeout=10)
    assert page.status_code == 303 and "/ops/login" in page.headers["Location"]


def test_the_index_stays_within_its_bound(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis
) -> None:
    """With JOBCAST_JOB_INDEX_MAX=10, fifteen jobs leave the ten newest in the index and
    in the list."""
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN, JOBCAST_JOB_INDEX_MAX="10")
    submitted = [post(base, "imagine", SMALL) for _ in range(15)]
    assert rds.zcard(Keys().job_index) == 10
    listed = [j["jobId"] for j in get(base, "/ops/jobs.json", limit=200)["jobs"]]
    assert len(listed) == 10
    assert listed == submitted[:4:-1]  # one HTTP round trip apart: no two in one ms


def test_a_canvas_is_listed_as_one_job(ops: str, worker: Proc, rds: redis.Redis) -> None:
    """A contact sheet (a canvas) appears in the list once, as its parent, and ends done."""
    body = {"prompt": "a lighthouse at dusk", "count": 2, "side": 64, "steps": 2}
    parent = post(ops, "contact-sheet", body)
    assert collect(ops, parent)[-1].event == "done"
    jobs = get(ops, "/ops/jobs.json")["jobs"]
    assert [(j["jobId"], j["kind"], j["state"]) for j in jobs] == [
        (parent, "contact-sheet", "succeeded")
    ]


def as_operator(name: str) -> dict[str, str]:
    return {**AUTH, "X-Jobcast-Operator": name}


def running(base: str, job_id: str) -> dict[str, Any]:
    """The job's detail once a worker runs it."""
    found: dict[str, Any] = wait_until(
        lambda: (d := get(base, f"/ops/jobs/{job_id}.json"))["state"] == "running" and d,
        timeout=60,
        what=f"job {job_id} to run",
    )
    return found


def test_a_failed_job_shows_its_traceback_to_operators_only(
    ops: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """A failed job's detail carries the worker's traceback of the failure; the public
    status, its stream, its result route and the open dashboard's failures never show it."""
    monitor = jobcast_monitor(stack_env, tmp_path / "monitor.log")
    try:
        job_id = failing_analyze(stack_env, rds)
        job = ended(ops, job_id)
        trace = job["traceback"]
        assert job["state"] == "failed" and trace.startswith("Traceback (most recent call last)")
        assert "JobError" in trace and len(trace.encode()) <= TRACEBACK_MAX
        assert "traceback" not in job["record"]  # once, not twice
        status = httpx.get(f"{ops}/jobs/{job_id}", timeout=10)
        assert status.status_code == 200 and status.json()["state"] == "failed"
        imagine = httpx.get(f"{ops}/imagine/{job_id}", timeout=10)
        result = httpx.get(f"{ops}/jobs/{job_id}/result", timeout=10)
        events = collect(ops, job_id)
        assert events[-1].event == "failed"
        public = [status.text, imagine.text, result.text, *(json.dumps(e.data) for e in events)]
        assert not any("Traceback" in text or 'File "' in text for text in public)
        # The open dashboard (no token on this server) lists the failure, not its trace.
        seen = wait_until(
            lambda: (s := rds.get(Keys().ops_snapshot)) and job_id in s.decode() and s,
            timeout=30,
            what="the failure in the monitor's snapshot",
        )
        assert b"Traceback" not in seen and b'File \\"' not in seen
    finally:
        monitor.stop()


def test_a_traceback_is_kept_to_its_last_8_kb() -> None:
    """A traceback past 8 KB keeps its end (where the error is), marked as cut; a short
    one is kept as it is."""
    long = "Traceback (most recent call last)\n" + '  File "x.py", line 1\n' * 2000 + "E: é"
    kept = bounded_traceback(long)
    assert len(kept.encode()) <= TRACEBACK_MAX and kept.endswith("E: é")
    assert kept.startswith("…(start cut)")
    assert bounded_traceback("short") == "short"
    # A message with a lone surrogate (bytes that were not UTF-8) keeps a '?' in its place,
    # so the record can be written: the job still ends failed.
    assert bounded_traceback("E: bad \udcff here") == "E: bad ? here"


def test_detail_pages_its_log(ops: str, worker: Proc, rds: redis.Redis) -> None:
    """`limit` and `after` page a job's log: pages joined are the whole log in order, the
    last page has no `eventsNext`; a bad `after` or `limit` is a 400."""
    job_id = post(ops, "imagine", SMALL)
    whole = ended(ops, job_id)["events"]
    assert len(whole) >= 4
    paged: list[str] = []
    after: str | None = None
    while True:
        page = get(ops, f"/ops/jobs/{job_id}.json", limit=2, **({"after": after} if after else {}))
        assert page["eventCount"] == len(whole)
        paged += [e["id"] for e in page["events"]]
        after = page["eventsNext"]
        if after is None:
            break
        assert len(page["events"]) == 2
    assert paged == [e["id"] for e in whole] == [i for i, _ in logged(rds, job_id)]
    for bad in ({"after": "x"}, {"limit": 0}, {"limit": 501}):
        answer = httpx.get(f"{ops}/ops/jobs/{job_id}.json", params=bad, headers=AUTH)
        assert answer.status_code == 400 and answer.json()["error"]["fields"].keys() == bad.keys()


def test_cancel_from_ops_ends_a_running_job_and_is_audited(
    ops: str, worker: Proc, rds: redis.Redis
) -> None:
    """Cancelling a running job from the browser ends it as cancelled; its audit names
    the operator (X-Jobcast-Operator), and a second cancel is a 409."""
    job_id = post(ops, "imagine", LONG)
    running(ops, job_id)
    answer = httpx.post(f"{ops}/ops/jobs/{job_id}/cancel", headers=as_operator("alice"))
    assert answer.status_code == 202 and answer.json()["state"] == "cancelling", answer.text
    assert collect(ops, job_id)[-1].event == "cancelled"
    job = ended(ops, job_id)
    assert job["state"] == "cancelled" and job["cancelBy"] == "alice"
    assert [(a["action"], a["by"], a["outcome"]) for a in job["audit"]] == [
        ("cancel", "alice", "cancelling")
    ]
    assert job["audit"][0]["at"] <= job["finishedAt"]
    again = httpx.post(f"{ops}/ops/jobs/{job_id}/cancel", headers=as_operator("bob"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_finished"
    assert len(get(ops, f"/ops/jobs/{job_id}.json")["audit"]) == 1
    assert rds.ttl(Keys().audit(job_id)) > 0


def test_a_signed_in_operator_is_named_and_a_bad_name_is_refused(
    ops: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """The name given at sign-in is who the audit names for that session; a bearer
    caller's bad X-Jobcast-Operator is a 400 that changes nothing; without a name the
    audit says "bearer"."""
    job_id = cancelled_imagine(ops, rds, stack_env)
    bad = httpx.post(f"{ops}/ops/jobs/{job_id}/retry", headers=as_operator("x" * 65))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_operator"
    assert rds.hget(Keys().job(job_id), "retriedAs") is None
    with httpx.Client(base_url=ops, timeout=10) as browser:
        form = {"token": TOKEN, "operator": "carol", "next": "/ops/jobs"}
        assert browser.post("/ops/login", data=form).status_code == 303
        retried = browser.post(f"/ops/jobs/{job_id}/retry")
        assert retried.status_code == 202, retried.text
        refused = browser.post("/ops/login", data={**form, "operator": "a\tb"})
        assert refused.status_code == 400
    audit = get(ops, f"/ops/jobs/{job_id}.json")["audit"]
    assert [(a["action"], a["by"]) for a in audit] == [("retry", "carol")]
    queued = post(ops, "imagine", LONG)
    answer = httpx.post(f"{ops}/ops/jobs/{queued}/cancel", headers=AUTH)
    assert answer.status_code in (200, 202), answer.text
    assert get(ops, f"/ops/jobs/{queued}.json")["audit"][0]["by"] == "bearer"


def test_retry_is_audited_and_links_both_ways(
    ops: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """A retry's audit on the old job names the operator and the new job; the new job's
    audit names the old one; the records link both ways."""
    old = cancelled_imagine(ops, rds, stack_env)
    answer = httpx.post(f"{ops}/ops/jobs/{old}/retry", headers=as_operator("dora"))
    assert answer.status_code == 202, answer.text
    new = answer.json()["jobId"]
    assert collect(ops, new)[-1].event == "done"
    was, now = get(ops, f"/ops/jobs/{old}.json"), get(ops, f"/ops/jobs/{new}.json")
    assert was["retriedAs"] == new and was["retriedBy"] == "dora" and now["retryOf"] == old
    assert [(a["action"], a["by"], a.get("newJob")) for a in was["audit"]] == [
        ("retry", "dora", new)
    ]
    assert [(a["action"], a["by"], a.get("job")) for a in now["audit"]] == [
        ("retryOf", "dora", old)
    ]


def race(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """The calls at once, on threads of their own."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_racing_actions_have_one_winner_and_409s(
    ops: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """Two cancels of a running job, two retries of one job, and a cancel racing a retry:
    in each, exactly one wins and the others are 409 JSON errors; one audit entry each."""
    job_id = post(ops, "imagine", LONG)
    running(ops, job_id)
    cancel = f"{ops}/ops/jobs/{job_id}/cancel"
    answers = race(
        [lambda n=n: httpx.post(cancel, headers=as_operator(n)) for n in ("a", "b", "c")]
    )
    assert sorted(a.status_code for a in answers) == [202, 409, 409], [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} <= {
        "already_cancelling", "already_finished"
    }  # fmt: skip
    retry = f"{ops}/ops/jobs/{job_id}/retry"
    assert collect(ops, job_id)[-1].event == "cancelled"
    assert len(ended(ops, job_id)["audit"]) == 1

    answers = race([lambda: httpx.post(retry, headers=AUTH) for _ in range(3)])
    assert sorted(a.status_code for a in answers) == [202, 409, 409], [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "already_retried"
    }
    new = next(a.json()["jobId"] for a in answers if a.status_code == 202)
    assert get(ops, f"/ops/jobs/{job_id}.json")["retriedAs"] == new
    assert httpx.delete(f"{ops}/jobs/{new}").status_code in (200, 202)  # frees the worker

    other = post(ops, "imagine", LONG)
    running(ops, other)
    both = race([
        lambda: httpx.post(f"{ops}/ops/jobs/{other}/cancel", headers=AUTH),
        lambda: httpx.post(f"{ops}/ops/jobs/{other}/retry", headers=AUTH),
    ])  # fmt: skip
    assert [a.status_code for a in both] == [202, 409]
    assert both[1].json()["error"]["code"] == "not_retryable"
    assert collect(ops, other)[-1].event == "cancelled"
    late = httpx.post(f"{ops}/ops/jobs/{other}/cancel", headers=AUTH)
    assert late.status_code == 409 and late.json()["error"]["code"] == "already_finished"


def test_the_ops_feed_tells_of_new_jobs_only_behind_the_token(
    ops: str, web: str, rds: redis.Redis
) -> None:
    """Behind the token, /ops/stream?jobs=1 sends `event: job` for each job created (id,
    kind, created, place; a canvas as its parent); the dashboard's feed and an open feed never subscribes to them (job ids are capabilities)."""
    channel = Keys().job_index
    for base, url, headers in [(web, "/ops/stream?jobs=1", {}), (ops, "/ops/stream", AUTH)]:
        # The open feed, and the dashboard's (which does not ask for them).
        with (
            httpx.Client(timeout=httpx.Timeout(30, connect=5)) as client,
            connect_sse(client, "GET", base + url, headers=headers) as source,
        ):
            assert source.response.status_code == 200
            next(source.iter_sse())  # the feed is live (its first frame)
            assert rds.pubsub_numsub(channel)[0][1] == 0
            assert rds.pubsub_numsub(Keys().ops)[0][1] >= 1
    with (
        httpx.Client(timeout=httpx.Timeout(30, connect=5)) as client,
        connect_sse(client, "GET", f"{ops}/ops/stream?jobs=1", headers=AUTH) as source,
    ):
        assert source.response.status_code == 200
        wait_until(lambda: rds.pubsub_numsub(channel)[0][1] == 1, 10, "the feed to subscribe")
        frames = source.iter_sse()
        job_id = post(ops, "imagine", SMALL)
        created = rds.hget(Keys().job(job_id), "created")
        data = next(json.loads(s.data) for s in frames if s.event == "job")
        assert data == {
            "jobId": job_id, "created": int(created or 0), "position": data["position"],
            "kind": "imagine", "queue": "jobcast",
        }  # fmt: skip
        assert data["position"] >= 1
        sheet = {"prompt": "a lighthouse at dusk", "count": 2, "side": 64, "steps": 2}
        parent = post(ops, "contact-sheet", sheet)  # a canvas: one frame, for its parent
        told = next(json.loads(s.data) for s in frames if s.event == "job")
        assert (told["jobId"], told["kind"]) == (parent, "contact-sheet")


def test_new_routes_refuse_without_the_token(ops: str, web: str, rds: redis.Redis) -> None:
    """The detail page and cancel need the token as the other /ops/jobs routes do: 403
    with none configured, 401 (HEAD bodiless) or the sign-in redirect without it; OPTIONS
    cancels nothing."""
    job_id = post(ops, "imagine", LONG)
    cancel = f"/ops/jobs/{job_id}/cancel"
    closed = httpx.post(web + cancel, headers=AUTH, timeout=10)
    assert closed.status_code == 403 and closed.json()["error"]["code"] == "forbidden"
    refused = httpx.post(ops + cancel, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    options = httpx.options(ops + cancel, timeout=10)
    assert options.status_code in (200, 204) and "POST" in options.headers.get("Allow", "POST")
    page = httpx.get(f"{ops}/ops/jobs/{job_id}", timeout=10)
    assert page.status_code == 303 and "/ops/login" in page.headers["Location"]
    assert httpx.get(f"{web}/ops/jobs/{job_id}", headers=AUTH).status_code == 403
    head = httpx.head(f"{ops}/ops/jobs/{job_id}.json", timeout=10)
    assert head.status_code == 401 and head.content == b""
    shown = httpx.get(f"{ops}/ops/jobs/{job_id}", headers=AUTH, timeout=10)
    assert shown.status_code == 200 and job_id in shown.text
    assert httpx.get(f"{ops}/ops/jobs/{'x' * 3}", headers=AUTH).status_code == 404
    assert rds.hget(Keys().job(job_id), "cancelBy") is None
    assert rds.hget(Keys().job(job_id), "state") in (b"queued", b"running")


def test_signed_mode_hands_operators_the_tokens_to_watch(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis
) -> None:
    """With JOBCAST_SIGNING_KEY, list rows, a job's detail and the feed's new-job frames
    carry each job's token, and that token opens the job's stream; a bad `after` past 64
    bits is a 400, not a Redis error."""
    base = web_with(JOBCAST_OPS_TOKEN=TOKEN, JOBCAST_SIGNING_KEY="s3cret")
    with (
        httpx.Client(timeout=httpx.Timeout(30, connect=5)) as client,
        connect_sse(client, "GET", f"{base}/ops/stream?jobs=1", headers=AUTH) as source,
    ):
        wait_until(lambda: rds.pubsub_numsub(Keys().job_index)[0][1] == 1, 10, "subscribed")
        answer = httpx.post(f"{base}/jobs/imagine", json=SMALL, timeout=10)
        assert answer.status_code == 202
        job_id, token = answer.json()["jobId"], answer.json()["token"]
        told = next(json.loads(s.data) for s in source.iter_sse() if s.event == "job")
    assert told["jobId"] == job_id and told["token"] == token
    row = get(base, "/ops/jobs.json")["jobs"][0]
    assert row["jobId"] == job_id and row["token"] == token
    assert get(base, f"/ops/jobs/{job_id}.json")["token"] == token
    stream = httpx.get(f"{base}/jobs/{job_id}/stream", params={"token": token}, timeout=60)
    assert stream.status_code == 200 and "event: done" in stream.text
    for after in ("18446744073709551616-0", "18446744073709551615-18446744073709551615"):
        bad = httpx.get(f"{base}/ops/jobs/{job_id}.json", params={"after": after}, headers=AUTH)
        assert bad.status_code == 400 and "after" in bad.json()["error"]["fields"]


def test_an_operator_name_in_utf8_is_kept_as_written(ops: str, rds: redis.Redis) -> None:
    """X-Jobcast-Operator carries UTF-8 (HTTP headers are bytes): "José" is audited as
    José, not as its bytes read one by one (JosÃ©); bytes that are not UTF-8 are a 400
    that cancels nothing."""
    job_id = post(ops, "imagine", LONG)
    headers = {**AUTH, "X-Jobcast-Operator": "José".encode()}
    answer = httpx.post(f"{ops}/ops/jobs/{job_id}/cancel", headers=headers, timeout=10)
    assert answer.status_code in (200, 202), answer.text
    assert get(ops, f"/ops/jobs/{job_id}.json")["audit"][0]["by"] == "José"
    other = post(ops, "imagine", LONG)
    headers = {**AUTH, "X-Jobcast-Operator": b"Jos\xe9"}
    bad = httpx.post(f"{ops}/ops/jobs/{other}/cancel", headers=headers, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_operator"
    assert rds.hget(Keys().job(other), "cancelBy") is None
    assert rds.hget(Keys().job(other), "state") in (b"queued", b"running")


@pytest.mark.parametrize(
    "foreign",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site", "Authorization": "Bearer not-the-token"},
    ],
)
def test_a_cross_site_post_with_the_session_cookie_changes_nothing(
    ops: str, rds: redis.Redis, stack_env: dict[str, str], foreign: dict[str, str]
) -> None:
    """Cancel and retry signed by the session cookie are refused (403) when the browser
    says the form or fetch came from another site (Sec-Fetch-Site, else Origin), even
    from a sibling subdomain that SameSite lets the cookie through for; the page's own
    requests (same origin) and bearer callers are not affected."""
    queued = post(ops, "imagine", LONG)
    ended = cancelled_imagine(ops, rds, stack_env)
    with httpx.Client(base_url=ops, timeout=10) as browser:
        form = {"token": TOKEN, "operator": "carol", "next": "/ops/jobs"}
        assert browser.post("/ops/login", data=form).status_code == 303
        for action, job_id in (("cancel", queued), ("retry", ended)):
            refused = browser.post(f"/ops/jobs/{job_id}/{action}", headers=foreign)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "cross_site"
        assert rds.hget(Keys().job(queued), "state") in (b"queued", b"running")
        assert rds.hget(Keys().job(queued), "cancelBy") is None
        assert rds.hget(Keys().job(ended), "retriedAs") is None
        assert get(ops, f"/ops/jobs/{queued}.json")["audit"] == []
        own = {"Sec-Fetch-Site": "same-origin", "Origin": ops}
        assert browser.post(f"/ops/jobs/{queued}/cancel", headers=own).status_code in (200, 202)
    bearer = httpx.post(f"{ops}/ops/jobs/{ended}/retry", headers={**foreign, **AUTH})
    assert bearer.status_code == 202, bearer.text


def test_another_site_cannot_sign_an_operator_out(ops: str, rds: redis.Redis) -> None:
    """POST /ops/logout sent from another site (Sec-Fetch-Site) is a 403 and the session
    goes on working; the page's own logout (same origin) ends it."""
    with httpx.Client(base_url=ops, timeout=10) as browser:
        form = {"token": TOKEN, "operator": "carol", "next": "/ops/jobs"}
        assert browser.post("/ops/login", data=form).status_code == 303
        refused = browser.post("/ops/logout", headers={"Sec-Fetch-Site": "cross-site"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_site"
        assert browser.get("/ops/jobs.json").status_code == 200
        cookie = browser.cookies["jobcast_ops"]
        own = browser.post("/ops/logout", headers={"Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 303
    again = httpx.get(f"{ops}/ops/jobs.json", cookies={"jobcast_ops": cookie}, timeout=10)
    assert again.status_code == 401
