"""The durable event log of a job, and its live notification.

Every event is appended to the job's Redis stream and announced on the job's pub/sub
channel by one Lua call (one round trip, atomic)::

    XADD job:{id}:events * phase P data D     -> the event id, also the SSE ``id:``
    HSET job:{id} state/last:<phase>/...       -> the snapshot GET /imagine/<id> shows
    EXPIRE both                                -> retention (see PUBLISH_LUA)
    PUBLISH job:{id} "id: …\\nevent: P\\ndata: D\\n\\n"

The published payload is the finished SSE frame, so a web process hands the very same
bytes to every watcher without parsing JSON. Once a job is terminal (``done``,
``failed``, ``cancelled``) the script refuses further events, so a log never continues
past its end.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import redis

from tasks.canvas_lua import END_CHILDREN_LUA, PARENT_LUA
from tasks.config import Settings
from tasks.keys import DEFAULT_QUEUE, Keys, parent_of
from tasks.kindstats import KIND_NAME_LUA, MAX_KINDS

TERMINAL = frozenset({"done", "failed", "cancelled"})
PHASES = frozenset({"queued", "started", "progress", "preview", *TERMINAL})
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# Names a task may not emit as a custom kind: the phases, and what streams send themselves.
RESERVED = frozenset({*PHASES, "reset", "error", "message", "heartbeat"})
KIND = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
MAX_EVENT_BYTES = 64 * 1024

EventId = tuple[int, int]
_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")

NEW_JOB_LUA = """
-- The ops feed's "a job was created" frame (tasks/jobindex.py), published on `channel`;
-- the id, kind and queue go into JSON unescaped, so only plain names (an id that is not
-- one publishes nothing; a kind or queue that is not one is left out).
local function publish_new_job(channel, jobid, now, pos, named)
  if #jobid > 80 or not string.find(jobid, '^[%w_.-]+$') then return end
  local data = '{"jobId":"' .. jobid .. '","created":' .. now .. ',"position":' .. pos
  for i, name in ipairs({'kind', 'queue'}) do
    local value = named[i]
    if value and #value <= 64 and string.find(value, '^[%w_.-]+$') then
      data = data .. ',"' .. name .. '":"' .. value .. '"'
    end
  end
  redis.call('PUBLISH', channel, 'event: job\\ndata: ' .. data .. '}\\n\\n')
end
"""

_COMMON_LUA = """
local function frame(id, phase, data)
  return 'id: ' .. id .. '\\nevent: ' .. phase .. '\\ndata: ' .. data .. '\\n\\n'
end
"""

# KEYS: job hash, events stream, queue zset, running zset, stats hash, queue version
# ARGV: channel, phase, data, maxlen, ttl, queue channel, job id, now (ms), expected state,
#       token (unique per publish, the same across its retries),
#       [lines] line key head (``Keys.line_head``), default queue name,
#       "1" for a built-in phase (custom kinds are not kept as last:<kind>),
#       [canvas] the parent's id, the child's index (KEYS 7-8: parent hash, events)
# KEYS 3-6 and ARGV 6 are the default line's; a job whose record names another queue
# moves that queue's line instead (see "the job's line" below). A caller without the two
# [lines] ARGV (older code) always moves the default line.
PUBLISH_LUA = (
    _COMMON_LUA
    + END_CHILDREN_LUA
    + """
local job, events, queue, running, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local qversion = KEYS[6]
local channel, phase, data, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local qchannel, jobid, now, expect, token = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local builtin = ARGV[13]
-- A retried call whose first try did run (its reply was lost): answer with that event.
local rec = redis.call('HMGET', job, 'lastToken', 'state', 'queue', 'lastEventId', 'keptAt')
if rec[1] == token then return rec[4] end
local state = rec[2]
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return false end
if expect ~= '' and not string.find(',' .. expect .. ',', ',' .. (state or '') .. ',', 1, true) then
  return false
end
if not state and phase ~= 'queued' and phase ~= 'started' then return false end
-- [lines] The job's line: the record names its Celery queue; a queue other than the
-- default has keys of its own, derived here from the name (tasks/keys.py), so that no
-- publisher (worker, web, sweep) needs to know it. Standalone Redis lets a script build
-- key names; Redis Cluster does not, and a line's keys never share the job's slot
-- anyway: the Cluster issue redesigns this part.
local line = ARGV[11] and rec[3]
if line and line ~= ARGV[12] and #line <= 64 and string.find(line, '^[%w_.-]+$') then
  local head = ARGV[11] .. '{' .. line .. '}:'
  queue, running, stats = head .. 'queue', head .. 'running', head .. 'stats'
  qversion, qchannel = head .. 'queue:version', head .. 'queue'
end
local fields = {'updated', now}
if phase == 'started' then
  local attempt = redis.call('HINCRBY', job, 'attempt', 1)
  if data == '{}' then
    data = '{"attempt":' .. attempt .. '}'
  else
    data = string.sub(data, 1, -2) .. ',"attempt":' .. attempt .. '}'
  end
  table.insert(fields, 'state'); table.insert(fields, 'running')
  table.insert(fields, 'startedAt'); table.insert(fields, now)
  redis.call('ZADD', running, now, jobid)
elseif phase == 'queued' then
  table.insert(fields, 'state'); table.insert(fields, 'queued')
elseif phase == 'done' or phase == 'failed' or phase == 'cancelled' then
  local final = phase
  if phase == 'done' then final = 'succeeded' end
  table.insert(fields, 'state'); table.insert(fields, final)
  table.insert(fields, 'finishedAt'); table.insert(fields, now)
  redis.call('ZREM', running, jobid)
  -- An idempotency key names its job for as long as the job is kept (the record's TTL is
  -- refreshed by every event; the key's, set at submit, would run out first).
  local idem = redis.call('HGET', job, 'idem')
  if idem then redis.call('EXPIRE', idem, ttl) end
  if phase ~= 'done' then redis.call('HINCRBY', stats, final, 1) end
  local started = redis.call('HGET', job, 'startedAt')
  if phase == 'done' and started then
    local took = tonumber(now) - tonumber(started)
    local avg = tonumber(redis.call('HGET', stats, 'avgMs') or '')
    if avg then avg = avg * 0.8 + took * 0.2 else avg = took end
    redis.call('HSET', stats, 'avgMs', tostring(avg))
    redis.call('HINCRBY', stats, 'done', 1)
  end
end
if phase == 'started' or phase == 'done' or phase == 'failed' or phase == 'cancelled' then
  -- The job leaves the line: one message tells every web process how it moved.
  local ticket = redis.call('ZSCORE', queue, jobid)
  if ticket then
    redis.call('ZREM', queue, jobid)
    -- [kinds] Its kind's line is one shorter: the field the enqueue script counted it
    -- under; the hash's name is derived from the [lines] key head (<prefix>line:).
    local counted = ARGV[11] and redis.call('HGET', job, 'waitKind')
    if counted then
      local waiting = string.sub(ARGV[11], 1, -6) .. 'ops:kind:waiting'
      if redis.call('HINCRBY', waiting, counted, -1) <= 0 then redis.call('HDEL', waiting, counted) end
    end
    local version = redis.call('INCR', qversion)
    local busy = redis.call('ZCARD', running)
    local avg = redis.call('HGET', stats, 'avgMs') or '-'
    redis.call('PUBLISH', qchannel,
      version .. ' ' .. ticket .. ' ' .. redis.call('ZCARD', queue) .. ' ' .. busy .. ' ' .. avg)
  end
end
local id = redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'phase', phase, 'data', data)
table.insert(fields, 'lastEventId'); table.insert(fields, id)
table.insert(fields, 'lastToken'); table.insert(fields, token)
if builtin == '1' then
  -- The snapshot (GET /jobs/<id>) keeps the latest of each phase; custom kinds only log.
  table.insert(fields, 'last:' .. phase); table.insert(fields, data)
end
-- Retention counts from a job's last event. A progress, preview or custom event (most of
-- a job's events) refreshes the TTLs only once a quarter of it has passed since they
-- last were: the record then outlives every event by at least 3/4 of the TTL, and ends
-- and starts always refresh them.
local kept = tonumber(rec[5] or '')
if not kept or tonumber(now) - kept >= ttl * 250 or phase == 'started' or phase == 'queued'
    or phase == 'done' or phase == 'failed' or phase == 'cancelled' then
  table.insert(fields, 'keptAt'); table.insert(fields, now)
  redis.call('HSET', job, unpack(fields))
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', events, ttl)
else
  redis.call('HSET', job, unpack(fields))
end
redis.call('PUBLISH', channel, frame(id, phase, data))
-- [lines] Events of every line are counted in one place: the default line's stats.
redis.call('HINCRBY', KEYS[5], 'published', 1)
"""
    + PARENT_LUA
    + """
return id
"""
)

# KEYS: job hash, events stream, queue zset, ticket counter, stats hash, running zset,
#       broker list (Celery's queue), [lines] the set of line names,
#       [index] the job index zset (`Keys.job_index`),
#       [kinds] the per-kind waiting hash (`Keys.kind_waiting`),
#       [idempotency key: the job it names, if given]
# KEYS 3-6 are those of the job's line (Keys.line); the record's `queue` field names it.
# ARGV: channel, max queue (0 = no limit), maxlen, ttl, job id, now (ms),
#       broker message ('' = the caller sends it), the index's bound, field/value pairs...
ENQUEUE_LUA = (
    _COMMON_LUA
    + KIND_NAME_LUA
    + f"local MAX_KINDS = {MAX_KINDS}\n"
    + NEW_JOB_LUA
    + """
local job, events, queue, ticket = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- What an ETA needs, read here so the caller needs no second round trip.
local avg = redis.call('HGET', KEYS[5], 'avgMs') or ''
local busy = redis.call('ZCARD', KEYS[6])
local channel, maxq, maxlen, ttl, jobid, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local idem = KEYS[11]
if idem then
  -- The same key names the same job while it is kept: answer it, write nothing.
  local known = redis.call('GET', idem)
  if known then return {-3, 0, known, avg, busy} end
end
if redis.call('EXISTS', job) == 1 then return {-2, 0, '', avg, busy} end
local waiting = redis.call('ZCARD', queue)
if maxq > 0 and waiting >= maxq then return {-1, waiting, '', avg, busy} end
local t = redis.call('INCR', ticket)
redis.call('ZADD', queue, t, jobid)
local pos = redis.call('ZRANK', queue, jobid) + 1
local data = '{"jobId":"' .. jobid .. '","position":' .. pos .. ',"queueLength":' .. (waiting + 1) .. '}'
local id = redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'phase', 'queued', 'data', data)
local fields = {'state', 'queued', 'ticket', t, 'created', now, 'updated', now,
                'lastEventId', id, 'last:queued', data}
for i = 9, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', job, unpack(fields))
redis.call('EXPIRE', job, ttl)
redis.call('EXPIRE', events, ttl)
-- [lines] Remember the line's name, for whoever must visit every line (monitor, sweep).
if KEYS[8] then
  local line = redis.call('HGET', job, 'queue')
  if line then redis.call('SADD', KEYS[8], line) end
end
-- [index] The ops browser's time-ordered index: O(log n) to add; past its bound the
-- oldest go (one per job in the steady state).
local bound = tonumber(ARGV[8])
redis.call('ZADD', KEYS[9], now, jobid)
if bound and bound > 0 and redis.call('ZCARD', KEYS[9]) > bound then
  redis.call('ZREMRANGEBYRANK', KEYS[9], 0, -bound - 1)
end
-- [kinds] One more waiting of its kind (tasks/kindstats.py): at most MAX_KINDS fields
-- (kinds with jobs waiting), the rest under 'other'; the record keeps the field, so its
-- leaving the line (the publish script) takes off what was added here.
local kind = redis.call('HGET', job, 'kind') or redis.call('HGET', job, 'task')
if kind then
  kind = kind_name(kind)
  if redis.call('HEXISTS', KEYS[10], kind) == 0 and redis.call('HLEN', KEYS[10]) >= MAX_KINDS then
    kind = 'other'
  end
  redis.call('HINCRBY', KEYS[10], kind, 1)
  redis.call('HSET', job, 'waitKind', kind)
end
-- [index] Job browsers learn of the new job on the index's channel (the same name; web
-- processes subscribe only while an operator watches): a finished SSE frame, no id.
publish_new_job(KEYS[9], jobid, now, pos, redis.call('HMGET', job, 'kind', 'queue'))
-- The task message with the record: a job in line always has one (tasks/submit.py).
if ARGV[7] ~= '' then redis.call('LPUSH', KEYS[7], ARGV[7]) end
if idem then
  redis.call('SET', idem, jobid, 'EX', ttl)
  redis.call('HSET', job, 'idem', idem)  -- so the job's end keeps the key as long as the job
end
redis.call('PUBLISH', channel, frame(id, 'queued', data))
return {pos, waiting + 1, id, avg, busy}
"""
)


# KEYS: job hash, events stream; ARGV: range start, page size, "1" to also get the oldest id,
# [an id to look up: is it in the log?]
# Answers state, last id, oldest id, entries, the job's queue (its line), and 1/0 for
# whether the id looked up is logged (false if none was asked about).
READ_LUA = """
local head = redis.call('HMGET', KEYS[1], 'state', 'lastEventId', 'queue')
local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
local oldest = false
if ARGV[3] == '1' then
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if first[1] then oldest = first[1][1] end
end
local logged = false
if ARGV[4] then
  logged = #redis.call('XRANGE', KEYS[2], ARGV[4], ARGV[4], 'COUNT', 1)
end
return {head[1], head[2], oldest, entries, head[3], logged}
"""


def parse_id(raw: str | bytes | None) -> EventId | None:
    """Parse a stream id ``"<ms>-<seq>"`` into a comparable pair; ``None`` if malformed."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    match = _ID.fullmatch(raw)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def format_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def dumps(data: dict[str, Any]) -> str:
    """Compact one-line JSON, as every event carries it."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class EventTooLarge(ValueError):
    """An event's data is larger than the log takes; nothing was written."""


def check_kind(kind: str) -> str:
    """``kind`` if it can name a custom event; ``ValueError`` saying why otherwise."""
    if not isinstance(kind, str) or not KIND.fullmatch(kind):
        raise ValueError(
            f"event kind {kind!r} must match [a-z][a-z0-9_.-]{{0,31}} (e.g. 'log', 'tool_call')"
        )
    if kind in RESERVED:
        raise ValueError(f"event kind {kind!r} is reserved for Jobcast's own phases")
    return kind


def encode_data(data: dict[str, Any] | None, limit: int, kind: str = "event") -> str:
    """The event's data as compact JSON, checked: an object, at most ``limit`` bytes."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TypeError(f"{kind} data must be a dict (a JSON object), got {type(data).__name__}")
    encoded = dumps(data)
    size = len(encoded.encode())
    if size > limit:
        raise EventTooLarge(
            f"{kind} data is {size} bytes as JSON; events take at most {limit} bytes "
            "(save large output as a file with job.save_file)"
        )
    return encoded


def now_ms() -> int:
    return int(time.time() * 1000)


class JobEvents:
    """Append events to job logs: ``JobEvents(redis_client).publish(job_id, phase, data)``."""

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        prefix: str = "jobcast:",
        maxlen: int = 1000,
        retention_seconds: int = 24 * 3600,
        retry_seconds: float = 0.0,
        max_event_bytes: int = MAX_EVENT_BYTES,
        index_max: int = 100_000,
    ) -> None:
        self.redis = redis_client
        self.max_event_bytes = max_event_bytes
        self.retry_seconds = retry_seconds
        self.keys = Keys(prefix)
        self.maxlen = maxlen
        self.retention_seconds = retention_seconds
        self.index_max = index_max
        self._publish = redis_client.register_script(PUBLISH_LUA)
        self._enqueue = redis_client.register_script(ENQUEUE_LUA)
        self._read = redis_client.register_script(READ_LUA)

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings, **options: Any) -> JobEvents:
        """The event log as ``settings`` configure it (prefix, cap, retention)."""
        return cls(
            client,
            prefix=settings.prefix,
            maxlen=settings.stream_maxlen,
            retention_seconds=settings.retention_seconds,
            max_event_bytes=settings.max_event_bytes,
            index_max=settings.job_index_max,
            **options,
        )

    def publish(
        self, job_id: str, phase: str, data: dict[str, Any] | None = None, *, expect: str = ""
    ) -> str | None:
        """Append one event and announce it; return its id, or ``None`` if the job had ended.

        ``phase`` is a built-in phase or a custom kind (:func:`check_kind`). With ``expect``
        (states separated by commas), the event is only appended while the job is in one
        of them. Only ``queued`` and ``started`` may create a job's record; other phases
        of a job whose record is gone (expired) are dropped. Data past ``max_event_bytes``
        encoded raises :class:`EventTooLarge`; nothing is written then.
        """
        builtin = phase in PHASES
        if not builtin:
            check_kind(phase)
        encoded = encode_data(data, self.max_event_bytes, phase)
        k = self.keys
        keys = [k.job(job_id), k.events(job_id), k.queue, k.running, k.stats, k.queue_version]
        args = [
            k.channel(job_id), phase, encoded, self.maxlen, self.retention_seconds,
            k.queue, job_id, now_ms(), expect, secrets.token_hex(8), k.line_head, DEFAULT_QUEUE,
            "1" if builtin else "0",
        ]  # fmt: skip
        parent = parent_of(job_id)
        if parent is not None:  # a canvas's child moves its parent in the same call
            keys += [k.job(parent), k.events(parent)]
            args += [parent, job_id.rpartition(".")[2]]
        result = self.retrying(lambda: self._publish(keys=keys, args=args))
        return _text(result) if result else None

    def retrying(self, call: Callable[[], Any]) -> Any:
        """Ride out a Redis restart: retry for ``retry_seconds``; the token makes it safe."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)  # backing off from a Redis that is down
                delay = min(delay * 2, 1.0)

    def read(
        self, job_id: str, start: str, count: int, *, oldest: bool = False, lookup: str = ""
    ) -> list[Any]:
        """One round trip: ``[state, lastEventId, oldest id, entries, queue, logged]`` of a
        job.

        ``start`` is an XRANGE bound (``-`` or ``(<id>``); entries are raw
        ``[id, [b"phase", phase, b"data", data]]`` pairs, in log order. ``logged`` says
        whether the id ``lookup`` is in the log (1 or 0; None without one).
        """
        k = self.keys
        args: list[Any] = [start, count, "1" if oldest else "0"]
        if lookup:
            args.append(lookup)
        result: list[Any] = self._read(keys=[k.job(job_id), k.events(job_id)], args=args)
        return result

    def enqueue(
        self,
        job_id: str,
        fields: dict[str, str],
        *,
        max_queue: int = 0,
        message: tuple[str, str] | None = None,
        queue: str | None = None,
        key: str | None = None,
    ) -> Enqueued:
        """Record a new job, put it in line and log its ``queued`` event (one round trip).

        ``queue`` names the Celery queue, whose line the job joins (None: the default
        line, and no ``queue`` field unless ``fields`` has one); ``max_queue`` bounds that
        line. ``message`` (broker list key, payload) is pushed in the same call.
        ``position`` -1 means the line is full (nothing was written), -2 that the id
        exists already, -3 that idempotency ``key`` named a job already (``event_id`` is
        that job's id); ``avg_ms`` and ``busy`` come along for an ETA either way.
        """
        k = self.keys
        line = k.line(queue if queue is not None else fields.get("queue"))
        if queue is not None:
            fields = {**fields, "queue": queue}
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        broker, payload = message or (line.queue, "")
        keys = [
            k.job(job_id), k.events(job_id), line.queue, line.ticket, line.stats, line.running,
            broker, k.lines, k.job_index, k.kind_waiting,
        ]  # fmt: skip
        if key is not None:
            keys.append(k.idempotency(key))
        pos, length, event_id, avg, busy = self._enqueue(
            keys=keys,
            args=[
                k.channel(job_id),
                max_queue,
                self.maxlen,
                self.retention_seconds,
                job_id,
                now_ms(),
                payload,
                self.index_max,
                *flat,
            ],
        )
        return Enqueued(
            int(pos), int(length), _text(event_id) or None, float(avg) if avg else None, int(busy)
        )


class Enqueued(NamedTuple):
    position: int
    queue_length: int
    event_id: str | None
    avg_ms: float | None  # moving average run time, None before the first job finished
    busy: int  # jobs running now


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
