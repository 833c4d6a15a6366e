"""The operators' view of jobs: the time-ordered index read back, one job in full, retry.

Layout: ``<prefix>jobs:index`` is a sorted set, member the job id, score its creation
time in ms (the record's ``created``). The enqueue script adds each job in the same
call that records it (ZADD, O(log n)) and, past ``JOBCAST_JOB_INDEX_MAX`` members,
drops the oldest (ZREMRANGEBYRANK, one member per job once full); the retention sweep
drops those older than the retention (ZREMRANGEBYSCORE). Later events of a job do not
touch the index: its state is read from the record, one pipelined HGETALL per page.
The enqueue scripts also PUBLISH an id-less ``event: job`` frame on the channel of the
same name (``tasks.events.NEW_JOB_LUA``), for the live list of ``/ops/jobs``.

What operators see and the public routes never show:

* ``traceback`` in the job's hash: the tail (:data:`TRACEBACK_MAX` bytes) of the
  exception that failed it, written by the worker before its ``failed`` event.
* ``<prefix>job:{id}:audit``: a list (same hash slot as the job) of JSON entries
  ``{action, by, at, ...}``, the operators' actions on the job, at most
  :data:`AUDIT_MAX`, expiring with the record. An audit entry is not an event: the log
  refuses events after a terminal one, and a retry comes after one.
* ``cancelBy`` in the hash: who claimed the job's cancel from the browser (once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from tasks.events import TERMINAL_STATES
from tasks.keys import Keys
from tasks.records import decode, json_object, last_events, progress

TRACEBACK_MAX = 8 * 1024  # bytes of a failure's traceback kept in the record (its tail)
AUDIT_MAX = 100  # audit entries kept per job (the newest)
LOG_PAGE = 500  # events of a job's log one detail answers, at most
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

# KEYS: job hash. ARGV: the traceback. Never creates a record.
KEEP_TRACEBACK_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'traceback', ARGV[1])
return 1
"""

# KEYS: job hash, audit list. ARGV: entry (JSON), entries kept, ttl (s). Appends to an
# existing job's audit, which lives as long as the record (or the retention, if longer).
AUDIT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[2], math.max(redis.call('TTL', KEYS[1]), tonumber(ARGV[3])))
return 1
"""

# KEYS: job hash. ARGV: who. Claims the job's cancel, once, while it has not ended:
# "ok", the state of an ended job, "by:<who>" when claimed already, nil for no record.
CLAIM_CANCEL_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return state end
if redis.call('HSETNX', KEYS[1], 'cancelBy', ARGV[1]) == 0 then
  return 'by:' .. redis.call('HGET', KEYS[1], 'cancelBy')
end
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


def detail(
    client: redis.Redis,
    keys: Keys,
    job_id: str,
    now_ms: int,
    *,
    after: str | None = None,
    limit: int = LOG_PAGE,
) -> dict[str, Any] | None:
    """Everything kept about one job: record, log, audit, result or error (with the
    traceback); None if gone. The log is paged: at most ``limit`` events after the
    event id ``after`` (exclusive; None: from the start), and ``eventsNext``, the
    ``after`` of the next page, when more follow."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.job(job_id))
    pipe.xrange(keys.events(job_id), f"({after}" if after else "-", "+", count=limit + 1)
    pipe.xlen(keys.events(job_id))
    pipe.lrange(keys.audit(job_id), 0, -1)
    raw, entries, count, audited = pipe.execute()
    if not raw:
        return None
    more = len(entries) > limit
    entries = entries[:limit]
    record = decode(raw)
    traceback = record.pop("traceback", None)
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
        "traceback": traceback if record.get("state") == "failed" else None,
        "cancelBy": record.get("cancelBy"),
        "audit": [a for a in (json_object(r.decode("utf-8", "replace")) for r in audited) if a],
        "record": record,
        "events": log,
        "eventCount": count,
        "eventsNext": log[-1]["id"] if more and log else None,
    }


def claim_retry(client: redis.Redis, keys: Keys, job_id: str, new_id: str, by: str) -> str | None:
    """Mark ``job_id`` as retried as ``new_id``: see :data:`CLAIM_RETRY_LUA`."""
    answer = client.eval(CLAIM_RETRY_LUA, 1, keys.job(job_id), new_id, by)
    return answer.decode() if isinstance(answer, bytes) else answer


def release_retry(client: redis.Redis, keys: Keys, job_id: str) -> None:
    """Undo :func:`claim_retry` when the new job could not be submitted."""
    client.hdel(keys.job(job_id), "retriedAs", "retriedBy")


RETRYABLE = TERMINAL_STATES - {"succeeded"}


def bounded_traceback(text: str, limit: int = TRACEBACK_MAX) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes: its tail (where the error is), marked."""
    raw = text.encode("utf-8", "replace")  # a lone surrogate (bad bytes in a message) is '?'
    if len(raw) <= limit:
        return raw.decode("utf-8")
    mark = "…(start cut)\n"
    tail = raw[len(raw) - (limit - len(mark.encode())) :]
    return mark + tail.decode("utf-8", "ignore")


def keep_traceback(client: redis.Redis, keys: Keys, job_id: str, text: str) -> None:
    """Keep a failure's traceback in the job's record, for operators only."""
    client.eval(KEEP_TRACEBACK_LUA, 1, keys.job(job_id), bounded_traceback(text))


def audit(client: redis.Redis, keys: Keys, job_id: str, entry: dict[str, Any], ttl: int) -> bool:
    """Append an operator's action to the job's audit; False if the job is gone."""
    line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
    done = client.eval(AUDIT_LUA, 2, keys.job(job_id), keys.audit(job_id), line, AUDIT_MAX, ttl)
    return bool(done)


def claim_cancel(client: redis.Redis, keys: Keys, job_id: str, by: str) -> str | None:
    """Claim the cancel of ``job_id`` for ``by``: see :data:`CLAIM_CANCEL_LUA`."""
    answer = client.eval(CLAIM_CANCEL_LUA, 1, keys.job(job_id), by)
    return answer.decode() if isinstance(answer, bytes) else answer
