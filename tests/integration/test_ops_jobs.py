"""The operators' job browser (issue 16): the job index, /ops/jobs.json, a job's detail,
retry, and the ops token in front of them; real Redis, worker and gunicorn web."""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from support import Proc, collect, logged, wait_until

from tasks.app import create_celery
from tasks.config import Settings
from tasks.demo.analyze_params import TASK as ANALYZE_TASK
from tasks.events import JobEvents
from tasks.keys import Keys
from tasks.submit import submit, task_fields

TOKEN = "ops-" + secrets.token_urlsafe(12)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = {"prompt": "a quiet harbour", "width": 64, "height": 64, "steps": 2}
ENDED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def ops(web_with: Callable[..., str]) -> str:
    """A web server with the ops token set."""
    return web_with(JOBCAST_OPS_TOKEN=TOKEN)


def post(base: str, kind: str, body: dict[str, Any]) -> str:
    answer = httpx.post(f"{base}/jobs/{kind}", json=body, timeout=10)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["jobId"]
    return job_id


def get(base: str, path: str, **params: Any) -> Any:
    answer = httpx.get(base + path, params=params, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


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


def failing_analyze(stack_env: dict[str, str], rds: redis.Redis) -> str:
    """An analyze job of a damaged PNG, sent straight to the task (the route refuses it)."""
    noise = Image.effect_noise((96, 96), 64).convert("RGB")
    out = io.BytesIO()
    noise.save(out, format="PNG")
    cut = out.getvalue()[:600]
    url = "data:image/png;base64," + base64.b64encode(cut[: len(cut) - len(cut) % 3]).decode()
    settings = Settings.from_env(stack_env)
    job_id = secrets.token_urlsafe(16)
    events = JobEvents.for_settings(rds, settings)
    line = submit(
        create_celery(settings), events, settings, job_id, ANALYZE_TASK, {"image": url},
        {"kind": "analyze"},
    )  # fmt: skip
    assert line.position >= 1
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
