"""The operators' view of jobs: the time-ordered index read back, one job in full, retry.

Layout: ``<prefix>jobs:index`` is a sorted set, member the job id, score its creation
time in ms (the record's ``created``). The enqueue script adds each job in the same
call that records it (ZADD, O(log n)) and, past ``JOBCAST_JOB_INDEX_MAX`` members,
drops the oldest (ZREMRANGEBYRANK, one member per job once full); the retention sweep
drops those older than the retention (ZREMRANGEBYSCORE). Later events of a job do not
touch the index: its state is read from the record, one pipelined HGETALL per page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from tasks.events import TERMINAL_STATES
from tasks.keys import Keys
from tasks.records import decode, json_object, last_events, progress

BATCH = 200  # index members read per round trip while filling a filtered page
MAX_SCAN = 5000  # members one page request looks at, at most (then it answers `next`)

# KEYS: old job hash. ARGV: new job id, who. Marks an ended (failed/cancelled) job as
# retried, once: answers "ok", the state of a job that cannot be retried, the id of the
# job it was already retried as (prefixed "as:"), or nil for no record (never creates one).
CLAIM_RETRY_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state ~= 'failed' and state ~= 'cancelled' then return state end
local done = redis.call('HGET', KEYS[1], 'retriedAs')
if done then return 'as:' .. done end
redis.call('HSET', KEYS[1], 'retriedAs', ARGV[1], 'retriedBy', ARGV[2])
return 'ok'
"""


@dataclass(frozen=True)
class Page:
    jobs: list[dict[str, Any]]
    next: int | None  # the `before` of the next page; None when the index is read through


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def row(job_id: str, record: dict[str, str], now_ms: int) -> dict[str, Any]:
    """One line of the list: what an operator scans for."""
    state = record.get("state")
    try:
        last = last_events(record)
    except ValueError:
        last = {}
    started, finished = _int(record.get("startedAt")), _int(record.get("finishedAt"))
    duration = None
    if started is not None:
        duration = (finished if finished is not None else now_ms) - started
    how = progress(state, last, record)
    return {
        "jobId": job_id,
        "kind": record.get("kind"),
        "state": state,
        "queue": record.get("queue"),
        "percent": how["percent"],
        "attempt": how["attempt"],
        "worker": (last.get("started") or {}).get("worker"),
        "created": _int(record.get("created")),
        "startedAt": started,
        "finishedAt": finished,
        "durationMs": duration,
        "retryOf": record.get("retryOf"),
    }


def list_jobs(
    client: redis.Redis,
    keys: Keys,
    *,
    now_ms: int,
    before: int | None = None,
    limit: int = 50,
    state: str | None = None,
    kind: str | None = None,
    id_prefix: str | None = None,
) -> Page:
    """Newest first, created before ``before`` (ms, exclusive), matching the filters.

    A page that filled up takes in every further match created in the same ms as its
    last row, so the next page (``before`` = that ms) misses none of them. At most
    :data:`MAX_SCAN` members are looked at per request (a rare filter may answer fewer
    rows than ``limit`` with a ``next`` to go on from).
    """
    high = f"({before}" if before is not None else "+inf"
    jobs: list[dict[str, Any]] = []
    cut: int | None = None  # the ms of the row that filled the page
    scanned = 0
    # Offsets within one fixed bound: jobs added meanwhile are newer (at most a row seen
    # twice when `before` is not given); the bound trims the oldest, past the scan.
    while scanned < MAX_SCAN:
        batch: list[tuple[bytes, float]] = client.zrevrangebyscore(
            keys.job_index, high, "-inf", start=scanned, num=BATCH, withscores=True
        )
        if not batch:
            return Page(jobs, cut)
        pipe = client.pipeline(transaction=False)
        for member, _ in batch:
            pipe.hgetall(keys.job(member.decode()))
        for (member, score), raw in zip(batch, pipe.execute(), strict=True):
            ms = int(score)
            if cut is not None and ms != cut:
                return Page(jobs, cut)
            job_id = member.decode()
            if not raw or (id_prefix and not job_id.startswith(id_prefix)):
                continue  # expired (the sweep drops it from the index), or no match
            record = decode(raw)
            if (state and record.get("state") != state) or (kind and record.get("kind") != kind):
                continue
            jobs.append(row(job_id, record, now_ms))
            if len(jobs) >= limit and cut is None:
                cut = ms
        scanned += len(batch)
        if len(batch) < BATCH:
            return Page(jobs, cut)
    # Looked at enough for one request: go on from the last member looked at.
    last = client.zrevrangebyscore(
        keys.job_index, high, "-inf", start=scanned - 1, num=1, withscores=True
    )
    return Page(jobs, cut if cut is not None else (int(last[0][1]) if last else None))


def detail(client: redis.Redis, keys: Keys, job_id: str, now_ms: int) -> dict[str, Any] | None:
    """Everything kept about one job: record, whole log, result or error; None if gone."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.job(job_id))
    pipe.xrange(keys.events(job_id), "-", "+")
    raw, entries = pipe.execute()
    if not raw:
        return None
    record = decode(raw)
    log: list[dict[str, Any]] = []
    for event_id, fields in entries:
        data_raw = fields.get(b"data", b"{}").decode()
        try:
            data: Any = json.loads(data_raw)
        except ValueError:
            data = data_raw
        log.append(
            {"id": event_id.decode(), "kind": fields.get(b"phase", b"").decode(), "data": data}
        )
    try:
        last = last_events(record)
    except ValueError:
        last = {}
    params: Any
    try:
        params = json.loads(record["kwargs"]) if "kwargs" in record else None
    except ValueError:
        params = None
    attempts = [
        {"attempt": e["data"].get("attempt"), "worker": e["data"].get("worker"), "at": e["id"]}
        for e in log
        if e["kind"] == "started" and isinstance(e["data"], dict)
    ]
    return {
        **row(job_id, record, now_ms),
        "task": record.get("task"),
        "params": params,
        "meta": json_object(record.get("meta")),
        "attempts": attempts,
        "result": last.get("done") if record.get("state") == "succeeded" else None,
        "error": last.get("failed") if record.get("state") == "failed" else None,
        "retriedAs": record.get("retriedAs"),
        "retriedBy": record.get("retriedBy"),
        "record": record,
        "events": log,
    }


def claim_retry(client: redis.Redis, keys: Keys, job_id: str, new_id: str, by: str) -> str | None:
    """Mark ``job_id`` as retried as ``new_id``: see :data:`CLAIM_RETRY_LUA`."""
    answer = client.eval(CLAIM_RETRY_LUA, 1, keys.job(job_id), new_id, by)
    return answer.decode() if isinstance(answer, bytes) else answer


def release_retry(client: redis.Redis, keys: Keys, job_id: str) -> None:
    """Undo :func:`claim_retry` when the new job could not be submitted."""
    client.hdel(keys.job(job_id), "retriedAs", "retriedBy")


RETRYABLE = TERMINAL_STATES - {"succeeded"}
