"""The event log on a real Redis: ids, snapshots, terminal refusal, retention, coalescing."""

from __future__ import annotations

import itertools

import pytest
import redis
from support import logged

from tasks.events import EventTooLarge, JobEvents, parse_id
from tasks.reporter import Reporter


def test_publish_appends_in_order_with_increasing_ids(rds: redis.Redis) -> None:
    """Each publish returns the new stream id; ids increase as (ms, seq) pairs."""
    events = JobEvents(rds)
    ids = [events.publish("j1", "started", {})]
    ids += [events.publish("j1", "progress", {"percent": p}) for p in (5, 10, 15)]
    ids.append(events.publish("j1", "done", {"url": "/x"}))
    assert [i for i, _ in logged(rds, "j1")] == ids
    keys = [parse_id(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # type: ignore[type-var]


def test_nothing_is_appended_after_a_terminal_event(rds: redis.Redis) -> None:
    """Once done, failed or cancelled, a job's log is closed: publish returns None."""
    events = JobEvents(rds)
    events.publish("j2", "started", {})
    assert events.publish("j2", "cancelled", {})
    assert events.publish("j2", "progress", {"percent": 50}) is None
    assert events.publish("j2", "done", {}) is None
    assert [p for _, p in logged(rds, "j2")] == ["started", "cancelled"]
    assert rds.hget("jobcast:job:{j2}", "state") == b"cancelled"


def test_started_counts_attempts_and_updates_the_record(rds: redis.Redis) -> None:
    """Every started event carries the attempt number; the hash follows the phases."""
    events = JobEvents(rds)
    reporter = Reporter(events, "j3")
    assert reporter.started(worker="w1") == 1
    assert reporter.started(worker="w2") == 2
    reporter.progress(10, 20)
    record = rds.hgetall("jobcast:job:{j3}")
    assert record[b"state"] == b"running" and record[b"attempt"] == b"2"
    assert record[b"last:progress"] == b'{"percent":50,"step":10,"steps":20}'
    reporter.done(url="/u")
    assert rds.hget("jobcast:job:{j3}", "state") == b"succeeded"
    assert rds.zscore("jobcast:running", "j3") is None


def test_events_of_a_vanished_job_are_dropped(rds: redis.Redis) -> None:
    """Only queued/started may create a record; a late progress of an expired job is dropped."""
    events = JobEvents(rds)
    assert events.publish("gone", "progress", {"percent": 5}) is None
    assert not rds.exists("jobcast:job:{gone}", "jobcast:job:{gone}:events")
    assert Reporter(events, "gone").started(worker="w", expect="queued,running") is None


def test_log_and_record_expire_after_retention(rds: redis.Redis) -> None:
    """Both keys carry the retention TTL. A progress event refreshes it only once a
    quarter of it has passed since the last refresh (so the record outlives every event
    by 3/4 of the TTL at least); an end always refreshes it."""
    events = JobEvents(rds, retention_seconds=120)
    keys = ("jobcast:job:{j4}", "jobcast:job:{j4}:events")
    events.publish("j4", "started", {})
    for key in keys:
        assert 0 < rds.ttl(key) <= 120
        rds.expire(key, 100)  # as if 20 s had passed: less than a quarter of the TTL
    events.publish("j4", "progress", {"percent": 10})
    assert [rds.ttl(key) for key in keys] == [100, 100]
    kept = int(rds.hget(keys[0], "keptAt") or 0)
    rds.hset(keys[0], "keptAt", kept - 31_000)  # the last refresh was 31 s ago: past 30
    events.publish("j4", "progress", {"percent": 20})
    assert all(rds.ttl(key) > 110 for key in keys)
    for key in keys:
        rds.expire(key, 100)
    events.publish("j4", "done", {})
    assert all(rds.ttl(key) > 110 for key in keys)


def test_log_is_capped(rds: redis.Redis) -> None:
    """MAXLEN ~ keeps a long-running job's log bounded."""
    events = JobEvents(rds, maxlen=10)
    events.publish("j5", "started", {})
    for n in range(500):
        events.publish("j5", "progress", {"percent": n % 100})
    assert rds.xlen("jobcast:job:{j5}:events") < 200
    events.publish("j5", "done", {})


def test_enqueue_positions_and_full_queue(rds: redis.Redis) -> None:
    """Positions count the jobs ahead; a full line refuses and writes nothing."""
    events = JobEvents(rds)
    assert events.enqueue("q1", {"prompt": "a"}, max_queue=2)[:2] == (1, 1)
    assert events.enqueue("q2", {"prompt": "b"}, max_queue=2)[:2] == (2, 2)
    before = sorted(rds.keys("*"))
    assert events.enqueue("q3", {"prompt": "c"}, max_queue=2)[0] == -1
    assert sorted(rds.keys("*")) == before


def test_reporter_coalesces_progress(rds: redis.Redis) -> None:
    """Progress goes out only past the next 5 % and 250 ms after the last; 100 % always."""
    ticks = itertools.count()
    reporter = Reporter(JobEvents(rds), "j6", clock=lambda: next(ticks) * 0.1)
    reporter.started(worker="w")
    sent = [p for p in range(1, 101) if reporter.progress(p, 100)]
    # A call every 0.1 s: at most one per 0.25 s, i.e. every third call, and 100 at the end.
    assert sent[0] == 1 and sent[-1] == 100
    assert all(b - a >= 3 for a, b in itertools.pairwise(sent[:-1]))
    assert len([p for _, p in logged(rds, "j6") if p == "progress"]) == len(sent)
    reporter.done()


def test_reporter_every_five_percent_when_slow(rds: redis.Redis) -> None:
    """With slow steps, one event per 5 % mark crossed, never more."""
    ticks = itertools.count()
    reporter = Reporter(JobEvents(rds), "j7", clock=lambda: next(ticks) * 10.0)
    reporter.started(worker="w")
    sent = [p for p in range(1, 101) if reporter.progress(p, 100)]
    assert sent == [1, *range(5, 101, 5)]
    reporter.done()


def test_custom_kinds_are_logged_in_order_without_touching_the_snapshot(rds: redis.Redis) -> None:
    """A task's own kinds (log, tool_call, …) join the log like phases, but leave the
    job's state and its per-phase snapshot alone, and never move the line."""
    events = JobEvents(rds)
    events.publish("c1", "started", {})
    version = rds.get("jobcast:queue:version")
    events.publish("c1", "log", {"message": "Reading file 1 of 12"})
    events.publish("c1", "tool_call", {"name": "search"})
    events.publish("c1", "step.sub-1", {"name": "palette"})
    assert [p for _, p in logged(rds, "c1")] == ["started", "log", "tool_call", "step.sub-1"]
    record = rds.hgetall("jobcast:job:{c1}")
    assert record[b"state"] == b"running"
    assert not any(k.startswith(b"last:log") or k.startswith(b"last:tool") for k in record)
    assert rds.get("jobcast:queue:version") == version
    events.publish("c1", "done", {})  # no job is left running for the next test


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("Log", "must match"),
        ("9lives", "must match"),
        ("a" * 33, "must match"),
        ("with space", "must match"),
        ("", "must match"),
        ("reset", "reserved"),
        ("heartbeat", "reserved"),
        ("error", "reserved"),
    ],
)
def test_bad_or_reserved_kind_names_are_refused(rds: redis.Redis, kind: str, why: str) -> None:
    """A kind outside ``[a-z][a-z0-9_.-]{0,31}``, or one of Jobcast's own names, raises
    a ValueError saying which rule it broke, and writes nothing (the phases
    themselves are published as phases)."""
    events = JobEvents(rds)
    events.publish("c2", "started", {})
    with pytest.raises(ValueError, match=why):
        events.publish("c2", kind, {"x": 1})
    assert [p for _, p in logged(rds, "c2")] == ["started"]
    events.publish("c2", "done", {})


def test_oversized_event_data_is_refused_with_the_limit_named(rds: redis.Redis) -> None:
    """Data past ``max_event_bytes`` of JSON raises EventTooLarge naming both sizes;
    exactly at the limit it is logged."""
    events = JobEvents(rds, max_event_bytes=2048)
    events.publish("c3", "started", {})
    overhead = len('{"text":""}')
    assert events.publish("c3", "delta", {"text": "x" * (2048 - overhead)})
    with pytest.raises(EventTooLarge, match=r"2049 bytes.*at most 2048"):
        events.publish("c3", "delta", {"text": "x" * (2049 - overhead)})
    with pytest.raises(ValueError, match="Out of range float"):
        events.publish("c3", "metric", {"value": float("nan")})
    assert [p for _, p in logged(rds, "c3")] == ["started", "delta"]
    events.publish("c3", "done", {})


def test_an_idempotency_key_lasts_as_long_as_its_job(rds: redis.Redis) -> None:
    """The key is set with the job's retention at submit; when the job ends (its record
    kept a retention from then on) the key's time is renewed with it, so the key never
    runs out while its job is still kept."""
    events = JobEvents(rds, retention_seconds=3600)
    assert events.enqueue("k1", {}, key="kind:order-1").position == 1
    assert events.enqueue("k2", {}, key="kind:order-1").position == -3
    rds.expire("jobcast:idem:kind:order-1", 5)  # as if most of its time had passed
    events.publish("k1", "started", {})
    events.publish("k1", "done", {})
    assert rds.ttl("jobcast:idem:kind:order-1") > 3500
    assert rds.ttl("jobcast:job:{k1}") > 3500
