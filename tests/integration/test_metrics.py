"""``/metrics`` on a two-process gunicorn, and the ops token guarding /ops, /ops/stream, /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from support import Proc, collect, gunicorn_web, jobcast_monitor, post_job, wait_until

SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
TOKEN = "s3cret-ops-token"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def monitor(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = jobcast_monitor(stack_env, tmp_path_factory.mktemp("logs") / "monitor.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def web2(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two gunicorn worker processes behind one port: any of them may answer a scrape."""
    proc, base = gunicorn_web(stack_env, tmp_path_factory.mktemp("logs") / "web2.log", workers=2)
    yield base
    proc.stop()


@pytest.fixture(scope="module")
def guarded(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A web server with ``JOBCAST_OPS_TOKEN`` set."""
    env = {**stack_env, "JOBCAST_OPS_TOKEN": TOKEN}
    proc, base = gunicorn_web(env, tmp_path_factory.mktemp("logs") / "guarded.log")
    yield base
    proc.stop()


def scrape(base: str, headers: dict[str, str] | None = None, cookies: object = None) -> Samples:
    """Fetch /metrics and parse it with prometheus-client's own parser."""
    response = httpx.get(base + "/metrics", headers=headers, cookies=cookies, timeout=10)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_parse_and_agree_with_redis(
    web2: str, worker: Proc, monitor: Proc, rds: redis.Redis
) -> None:
    """Every family parses; jobs, queue, events, workers and run times match what Redis holds."""
    wait_until(lambda: b'"up":true' in (rds.get("jobcast:ops:snapshot") or b""), 10, "a worker online")  # fmt: skip
    jobs = [post_job(web2, **SMALL) for _ in range(3)]
    for job in jobs:
        assert collect(web2, job["jobId"])[-1].event == "done"
    wait_until(lambda: int(rds.hget("jobcast:ops:runtime", "count") or 0) >= 3, 10, "the monitor to count")  # fmt: skip
    m = scrape(web2)
    stats = {k.decode(): v.decode() for k, v in rds.hgetall("jobcast:stats").items()}
    runtime = {k.decode(): float(v) for k, v in rds.hgetall("jobcast:ops:runtime").items()}
    snap = json.loads(rds.get("jobcast:ops:snapshot"))
    assert one(m, "jobcast_jobs_finished_total", state="succeeded") == float(stats["done"]) == 3
    assert one(m, "jobcast_events_published_total") == float(stats["published"])
    assert one(m, "jobcast_jobs", state="queued") == rds.zcard("jobcast:queue") == 0
    assert one(m, "jobcast_jobs", state="running") == rds.zcard("jobcast:running") == 0
    assert one(m, "jobcast_queue_depth", queue="broker") == rds.llen("jobcast") == 0
    online = sum(1 for w in snap["workers"] if w["up"])
    assert one(m, "jobcast_workers_online") == online >= 1
    assert one(m, "jobcast_tasks_total", outcome="succeeded") == float(
        rds.hget("jobcast:ops:tasks", "succeeded")
    )
    count = one(m, "jobcast_task_runtime_seconds_count")
    assert count == runtime["count"] == 3
    assert one(m, "jobcast_task_runtime_seconds_bucket", le="+Inf") == count
    assert one(m, "jobcast_task_runtime_seconds_sum") == pytest.approx(runtime["sum"])
    buckets = [v for (name, _), v in m.items() if name == "jobcast_task_runtime_seconds_bucket"]
    assert buckets == sorted(buckets)  # cumulative
    assert 0 <= one(m, "jobcast_monitor_snapshot_age_seconds") < 5


def test_open_streams_and_deliveries_summed_across_processes(
    web2: str, worker: Proc, monitor: Proc, rds: redis.Redis
) -> None:
    """Whichever process answers, it reports every process's open streams; deliveries only grow."""

    def streams_everywhere(expected: int) -> bool:
        return all(one(scrape(web2), "jobcast_sse_streams") == expected for _ in range(6))

    delivered = one(scrape(web2), "jobcast_events_delivered_total")
    readers = []  # kept referenced: a collected iterator would close its connection
    with ExitStack() as stack:
        for _ in range(5):
            client = stack.enter_context(httpx.Client(timeout=20))
            response = stack.enter_context(client.stream("GET", web2 + "/ops/stream"))
            readers.append(response.iter_bytes())
            assert next(readers[-1]).startswith(b"retry: 3000\n\n")
        wait_until(lambda: streams_everywhere(5), 20, "5 streams from every process")
        # The monitor's next snapshots are handed to the five streams.
        after = wait_until(
            lambda: (d := one(scrape(web2), "jobcast_events_delivered_total")) >= delivered + 5 and d,
            10, "deliveries to be counted",
        )  # fmt: skip
        assert after <= float(rds.hget("jobcast:web:stats", "delivered"))
        # Every web process on this Redis reports (the session server too).
        assert one(scrape(web2), "jobcast_web_processes") == rds.hlen("jobcast:web:streams") >= 1
    wait_until(lambda: streams_everywhere(0), 20, "the streams to be gone everywhere")


def test_ops_routes_open_without_a_token(web: str) -> None:
    """Without JOBCAST_OPS_TOKEN the dashboard and metrics need nothing."""
    assert httpx.get(web + "/ops").status_code == 200
    assert httpx.get(web + "/metrics").status_code == 200


def test_ops_token_guards_page_stream_and_metrics(guarded: str) -> None:
    """With a token: 401 JSON or the login form without it; Bearer or the login cookie let in."""
    for path in ("/metrics", "/ops/stream"):
        denied = httpx.get(guarded + path)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        assert denied.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.get(guarded + path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    page = httpx.get(guarded + "/ops")
    assert page.status_code == 303 and page.headers["location"] == "/ops/login?next=/ops"
    assert scrape(guarded, headers={"Authorization": f"Bearer {TOKEN}"})
    with httpx.Client(base_url=guarded) as browser:
        form = browser.get("/ops/login?next=/ops")
        assert form.status_code == 200 and 'name="token"' in form.text
        bad = browser.post("/ops/login", data={"token": "guess", "next": "/ops"})
        assert bad.status_code == 401 and not browser.cookies
        good = browser.post("/ops/login", data={"token": TOKEN, "next": "/ops"})
        assert good.status_code == 303 and good.headers["location"] == "/ops"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert browser.get("/ops").status_code == 200
        assert scrape(guarded, cookies=browser.cookies)
        with browser.stream("GET", "/ops/stream") as stream:
            assert stream.status_code == 200
            assert next(stream.iter_bytes()).startswith(b"retry: 3000")
        browser.post("/ops/logout")
        assert browser.get("/ops").status_code == 303


def test_login_never_redirects_off_site(guarded: str) -> None:
    """The ``next`` of the login form only ever leads to a path on this site."""
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "ops"):
        response = httpx.post(guarded + "/ops/login", data={"token": TOKEN, "next": target})
        assert response.status_code == 303 and response.headers["location"] == "/ops"
