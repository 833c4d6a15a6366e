"""The whole stack on a real 3-master Redis Cluster as its event store.

`REDIS_URL=redis+cluster://…` and Celery's broker on a Redis of its own
(`JOBCAST_BROKER_URL`): a real Celery worker, gunicorn with gevent and the monitor run on
it, and jobs posted over HTTP stream, resume and show their place in line as on one Redis.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator

import httpx
import pytest
from support import (
    ClusterSet,
    Proc,
    RedisServer,
    celery_worker,
    collect,
    gunicorn_web,
    iter_events,
    jobcast_monitor,
    logged,
    post_job,
    wait_until,
)

from tasks.keys import Keys

SMALL = {"width": 96, "height": 64, "steps": 8}
TOKEN = "ops-" + secrets.token_urlsafe(12)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = Keys(cluster=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterSet, str, dict]]:
    tmp = tmp_path_factory.mktemp("cluster-stack")
    cluster = ClusterSet(tmp / "cluster")
    broker = RedisServer(tmp / "broker")
    procs: list[Proc] = []
    try:
        cluster.start()
        broker.start()
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in cluster.servers)
        env = {
            **os.environ,
            "REDIS_URL": f"redis+cluster://{nodes}",
            "JOBCAST_BROKER_URL": broker.url,
            "JOBCAST_MEDIA_DIR": str(tmp / "media"),
            "PYTHONUNBUFFERED": "1",
            # (the limiter counts in the cluster too; these tests post faster than people)
            "JOBCAST_POST_RATE_LIMIT": "100000/minute",
            "JOBCAST_OPS_TOKEN": TOKEN,
        }
        env.pop("JOBCAST_VISIBILITY_TIMEOUT", None)
        procs.append(celery_worker(env, tmp / "worker.log", "w1"))
        web, base = gunicorn_web(env, tmp / "web.log")
        procs.append(web)
        procs.append(jobcast_monitor(env, tmp / "monitor.log"))
        yield cluster, base, {"procs": procs}
    finally:
        for proc in reversed(procs):
            proc.stop()
        broker.stop()
        cluster.stop()
    for log in ("worker.log", "web.log", "monitor.log"):
        text = (tmp / log).read_text(errors="replace")
        assert "CROSSSLOT" not in text and "Traceback" not in text, f"{log}:\n{text[-3000:]}"


def test_jobs_spread_over_masters_and_stream_their_whole_log(
    stack: tuple[ClusterSet, str, dict],
) -> None:
    cluster, base, _ = stack
    jobs = [post_job(base, **SMALL)["jobId"] for _ in range(6)]
    client = cluster.client()
    for job_id in jobs:
        got = collect(base, job_id)
        phases = [e.event for e in got]
        assert phases[0] == "queued" and phases[-1] == "done", phases
        assert "started" in phases and "progress" in phases and "preview" in phases
        own = [e.id for e in got if e.id]
        assert own == [i for i, _ in logged(client, job_id, prefix=KEYS.prefix)]
    masters = {cluster.node_of(KEYS.job(j)).port for j in jobs}
    assert len(masters) >= 2, "six random ids on one master"
    status = httpx.get(f"{base}/jobs/{jobs[0]}", timeout=5).json()
    assert status["state"] == "succeeded"
    client.close()


def test_a_resumed_stream_gets_exactly_the_rest(stack: tuple[ClusterSet, str, dict]) -> None:
    _, base, _ = stack
    job_id = post_job(base, **SMALL)["jobId"]
    whole = collect(base, job_id)
    own = [e for e in whole if e.id]
    cut = own[2].id
    rest = [e for e in collect(base, job_id, last_id=cut) if e.id]
    assert [e.id for e in rest] == [e.id for e in own[3:]]


def test_a_job_waiting_in_line_sees_its_place_move(stack: tuple[ClusterSet, str, dict]) -> None:
    """One worker, one job at a time: the last of four posted waits behind three and its
    stream shows the places 4 (or fewer) down to 1 before it starts."""
    _, base, _ = stack
    ids = [post_job(base, width=256, height=256, steps=12)["jobId"] for _ in range(4)]
    places: list[int] = []
    done = threading.Event()

    def follow() -> None:
        for event in iter_events(base, ids[-1]):
            if event.event == "queued":
                places.append(int(event.data["position"]))
            if event.event == "started":
                done.set()
                return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_until(done.is_set, 120, "the last job to start")
    assert places and places[-1] == 1 and places == sorted(places, reverse=True), places
    assert len(set(places)) >= 2, f"the place never moved: {places}"
    for job_id in ids:
        assert [e.event for e in collect(base, job_id)][-1] == "done"


def test_ops_and_metrics_read_the_cluster(stack: tuple[ClusterSet, str, dict]) -> None:
    _, base, _ = stack
    metrics = httpx.get(f"{base}/metrics", headers=AUTH, timeout=10)
    assert metrics.status_code == 200
    published = [
        line for line in metrics.text.splitlines() if line.startswith("jobcast_events_published")
    ]
    assert published and float(published[0].split()[-1]) > 0, published
    health = httpx.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200


def test_the_hub_holds_a_connection_per_master_not_per_stream(
    stack: tuple[ClusterSet, str, dict],
) -> None:
    """Twelve streams open at once on jobs all over the cluster: the web holds one sharded
    pub/sub connection per master it needs and one classic one."""
    cluster, base, _ = stack
    jobs = [post_job(base, width=256, height=256, steps=10)["jobId"] for _ in range(12)]
    readers = [threading.Thread(target=collect, args=(base, j), daemon=True) for j in jobs]
    for reader in readers:
        reader.start()

    def pubsub_clients() -> int:
        total = 0
        for server in cluster.servers:
            with server.client() as client:
                total += len(client.client_list(_type="pubsub"))
        return total

    masters = {cluster.node_of(KEYS.job(j)).port for j in jobs}
    wait_until(lambda: pubsub_clients() >= len(masters), 30, "the hub's subscriptions")
    assert pubsub_clients() <= len(cluster.servers) + 1
    hub = httpx.get(f"{base}/healthz", timeout=5).json()["hub"]
    assert hub["links"] <= len(cluster.servers) + 1 and hub["healthy"], hub
    for reader in readers:
        reader.join(120)
    assert not any(reader.is_alive() for reader in readers)


def test_the_job_browser_lists_and_cancels_on_a_cluster(
    stack: tuple[ClusterSet, str, dict],
) -> None:
    """/ops/jobs reads the index (global slot) and the records (theirs); a cancel of a job
    waiting in line ends it there and is audited in the job's slot."""
    _, base, _ = stack
    busy = [post_job(base, width=384, height=384, steps=20)["jobId"] for _ in range(2)]
    waiting = post_job(base, **SMALL)["jobId"]
    listed = httpx.get(f"{base}/ops/jobs.json", params={"limit": 50}, headers=AUTH, timeout=10)
    assert listed.status_code == 200, listed.text
    assert {waiting, *busy} <= {j["jobId"] for j in listed.json()["jobs"]}
    cancel = httpx.post(
        f"{base}/ops/jobs/{waiting}/cancel",
        headers={**AUTH, "X-Jobcast-Operator": "alice"},
        timeout=10,
    )
    assert cancel.status_code in (200, 202), cancel.text
    assert collect(base, waiting)[-1].event == "cancelled"
    detail = httpx.get(f"{base}/ops/jobs/{waiting}.json", headers=AUTH, timeout=10).json()
    assert detail["state"] == "cancelled"
    assert [(a["action"], a["by"]) for a in detail["audit"]] == [("cancel", "alice")]
    for job_id in busy:
        assert collect(base, job_id)[-1].event == "done"
