"""The event store on a real 3-master Redis Cluster: every script runs in one slot.

``JobEvents(cluster=True)`` takes a job through its line in one step per slot (the job's,
its line's, the global one). redis-py's cluster client refuses a script whose keys span
slots before sending it, and the servers refuse a key outside the script's slot, so any
CROSSSLOT mistake fails these tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support import ClusterSet, wait_until

from tasks.events import JobEvents, dumps, now_ms
from tasks.keys import Keys, new_job_id
from tasks.retention import sweep


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    servers = ClusterSet(tmp_path_factory.mktemp("cluster"))
    try:
        yield servers.start()
    finally:
        servers.stop()


@pytest.fixture
def store(cluster: ClusterSet) -> Iterator[tuple[redis.RedisCluster, JobEvents, Keys]]:
    client = cluster.client()
    events = JobEvents(client, prefix=f"c{secrets.token_hex(3)}:", cluster=True)
    yield client, events, events.keys
    client.close()


def _log(events: JobEvents, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    entries = events.read(job_id, "-", 100)[3]
    return [(e[1][1].decode(), json.loads(e[1][3])) for e in entries]


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def test_jobs_spread_over_masters_and_run_through_their_lines(
    cluster: ClusterSet, store: tuple[redis.RedisCluster, JobEvents, Keys]
) -> None:
    client, events, keys = store
    jobs = {"jobcast": [new_job_id() for _ in range(6)], "a": [new_job_id() for _ in range(4)]}
    for line, ids in jobs.items():
        for n, job_id in enumerate(ids, 1):
            made = events.enqueue(job_id, {"kind": "draw", "task": "t"}, queue=line)
            assert (made.position, made.queue_length) == (n, n)
            assert made.event_id
    everyone = [j for ids in jobs.values() for j in ids]
    nodes = {cluster.node_of(keys.job(j)).port for j in everyone}
    assert len(nodes) >= 2, "ten random ids all hashed to one master"
    assert {cluster.node_of(keys.line(q).queue).port for q in jobs} <= {
        s.port for s in cluster.servers
    }
    assert client.smembers(keys.lines) == {b"jobcast", b"a"}
    assert _int(client.hget(keys.kind_waiting, "draw")) == 10
    assert client.zcard(keys.job_index) == 10
    assert _log(events, everyone[0]) == [
        ("queued", {"jobId": everyone[0], "position": 1, "queueLength": 1})
    ]

    # The line channel is classic pub/sub (cluster-wide); the job's channel is sharded.
    moved = cluster.servers[0].client().pubsub()
    moved.subscribe(keys.line(None).queue)
    first = jobs["jobcast"][0]
    shard = cluster.node_of(keys.channel(first)).client().pubsub()
    shard.ssubscribe(keys.channel(first))
    wait_until(lambda: moved.get_message(timeout=0.1), what="the subscribe reply")
    wait_until(lambda: shard.get_sharded_message(timeout=0.1), what="the ssubscribe reply")

    assert events.publish(first, "started", {})
    got = wait_until(lambda: moved.get_message(timeout=0.1), what="the line's moved message")
    version, ticket, length, busy, _avg = got["data"].decode().split()
    assert (version, ticket, length, busy) == ("1", "1", "5", "1")
    frame = wait_until(lambda: shard.get_sharded_message(timeout=0.1), what="the started frame")
    assert b"event: started" in frame["data"] and b'"attempt":1' in frame["data"]
    line = keys.line(None)
    assert client.zrank(line.queue, jobs["jobcast"][1]) == 0, "the next job is first now"
    assert client.zscore(line.running, first) is not None
    assert _int(client.hget(keys.kind_waiting, "draw")) == 9

    events.publish(first, "progress", {"percent": 50})
    events.publish(first, "done", {"url": "/x"})
    assert [p for p, _ in _log(events, first)] == ["queued", "started", "progress", "done"]
    assert client.hget(keys.job(first), "state") == b"succeeded"
    assert client.zcard(line.running) == 0
    assert _int(client.hget(line.stats, "done")) == 1 and client.hget(line.stats, "avgMs")
    assert _int(client.hget(keys.counters, "published")) == 3
    assert events.publish(first, "progress", {"percent": 60}) is None, "logged past its end"

    # A waiting job of line "a" cancelled: it leaves its own line, counted there.
    gone = jobs["a"][2]
    assert events.publish(gone, "cancelled", {"reason": "user"})
    a = keys.line("a")
    assert client.zrange(a.queue, 0, -1) == [j.encode() for j in jobs["a"] if j != gone]
    assert _int(client.get(a.version)) == 1 and _int(client.hget(a.stats, "cancelled")) == 1
    assert _int(client.hget(keys.kind_waiting, "draw")) == 8
    moved.close()
    shard.close()


def test_a_retried_step_changes_nothing_twice(
    store: tuple[redis.RedisCluster, JobEvents, Keys],
) -> None:
    """The reply of each step can be lost; calling the publish again with its token must
    give the same event and count nothing twice."""
    client, events, keys = store
    job_id = new_job_id()
    events.enqueue(job_id, {"task": "t"})
    events.publish(job_id, "started", {})
    k, now, token = keys, now_ms(), secrets.token_hex(8)
    args = [
        k.channel(job_id), "done", dumps({}), events.maxlen, events.retention_seconds,
        k.queue, job_id, now, "", token, k.line_head, "jobcast", "1",
    ]  # fmt: skip
    first = events._publish_in_steps(job_id, "done", [k.job(job_id), k.events(job_id)], args)
    again = events._publish_in_steps(job_id, "done", [k.job(job_id), k.events(job_id)], args)
    assert first and again == first
    assert [p for p, _ in _log(events, job_id)] == ["queued", "started", "done"]
    stats = keys.line(None).stats
    assert _int(client.hget(stats, "done")) == 1, "the line's step counted the end twice"
    assert client.zcard(keys.line(None).running) == 0


def test_a_full_line_a_taken_id_and_an_idempotency_key_write_nothing(
    store: tuple[redis.RedisCluster, JobEvents, Keys],
) -> None:
    client, events, keys = store
    ids = [new_job_id() for _ in range(3)]
    for job_id in ids[:2]:
        assert events.enqueue(job_id, {"task": "t"}, queue="small", max_queue=2).position > 0
    full = events.enqueue(ids[2], {"task": "t"}, queue="small", max_queue=2)
    assert (full.position, full.queue_length) == (-1, 2)
    assert not client.exists(keys.job(ids[2])) and not client.exists(keys.events(ids[2]))
    assert client.zcard(keys.line("small").queue) == 2

    assert events.enqueue(ids[0], {"task": "t"}, queue="small").position == -2
    assert client.zcard(keys.line("small").queue) == 2, "a taken id kept a place"

    keyed = new_job_id()
    made = events.enqueue(keyed, {"task": "t"}, key="user:1")
    repeat = events.enqueue(new_job_id(), {"task": "t"}, key="user:1")
    assert made.position == 1 and (repeat.position, repeat.event_id) == (-3, keyed)
    assert client.hget(keys.job(keyed), "idem") == keys.idempotency("user:1").encode()
    events.publish(keyed, "cancelled", {})
    assert client.ttl(keys.idempotency("user:1")) > 0


def test_the_sweep_and_the_reads_run_on_a_cluster(
    store: tuple[redis.RedisCluster, JobEvents, Keys], tmp_path: Path
) -> None:
    """A place in line with no record (an enqueue that died after its line's step) and a
    running member whose job ended (a publish that died before its line's step) are
    swept; a job in line is kept."""
    client, events, keys = store
    kept, ended = new_job_id(), new_job_id()
    events.enqueue(kept, {"task": "t"})
    events.enqueue(ended, {"task": "t"})
    line = keys.line(None)
    client.zadd(line.queue, {"ghost": 10**9})
    events.publish(ended, "started", {})
    client.hset(keys.job(ended), "state", "succeeded")  # its line's step never ran
    swept = sweep(client, keys, str(tmp_path), 3600)
    assert swept.ghosts == 2
    assert client.zrange(line.queue, 0, -1) == [kept.encode()]
    assert client.zcard(line.running) == 0
    state, last, oldest, entries, *_ = events.read(kept, "-", 10, oldest=True)
    assert state == b"queued" and last == oldest and len(entries) == 1


def test_the_monitor_counts_kinds_from_records_in_other_slots(
    cluster: ClusterSet, store: tuple[redis.RedisCluster, JobEvents, Keys]
) -> None:
    """The monitor's publish reads the job records (their own slots) before its script,
    which then only touches the global slot."""
    import time

    from tasks.config import Settings
    from tasks.kindstats import KindKeys
    from tasks.monitor import Monitor

    client, events, keys = store
    nodes = ",".join(f"127.0.0.1:{s.port}" for s in cluster.servers)
    settings = Settings(
        redis_url=f"redis+cluster://{nodes}", prefix=keys.prefix, broker_url="redis://127.0.0.1:1/0"
    )
    monitor = Monitor(settings, client)
    ids = [new_job_id() for _ in range(4)]
    for n, job_id in enumerate(ids):
        events.enqueue(job_id, {"kind": "draw" if n % 2 else "paint", "task": "t"})
        events.publish(job_id, "started", {})
        events.publish(job_id, "done" if n < 3 else "cancelled", {})
        event = {"uuid": job_id, "timestamp": time.time(), "runtime": 0.25}
        monitor._on_task_end("task-succeeded", job_id, None, event)
    assert monitor.publish(time.monotonic()) > 0
    assert monitor.leading
    totals = client.hgetall(KindKeys(keys.prefix, cluster=True).tasks)
    assert totals == {b"paint|succeeded": b"2", b"draw|succeeded": b"1", b"draw|cancelled": b"1"}
    assert client.get(keys.ops_snapshot)
