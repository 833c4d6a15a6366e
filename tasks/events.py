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
from tasks.keys import DEFAULT_QUEUE, Keys, LineKeys, parent_of
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

# A job's leaving its line, or moving between running and not: every key it touches is
# the line's (one Cluster slot), so the one-Redis publish calls it inline and a cluster's
# publisher calls it as a script of its own after the job's (LINE_LUA). With `gate` ("1",
# the cluster's separate step) a job's end counts in the stats only if it was running or
# waiting: a second run of the step (a retry) then changes nothing. Answers 1 if the job
# left the waiting line, else 0.
LINE_STEP_LUA = """
local function line_step(queue, running, stats, qversion, qchannel, jobid, phase, now, started, gate)
  local ran = 0
  if phase == 'started' then
    redis.call('ZADD', running, now, jobid)
  elseif phase == 'done' or phase == 'failed' or phase == 'cancelled' then
    ran = redis.call('ZREM', running, jobid)
  end
  local ticket = false
  if phase == 'started' or phase == 'done' or phase == 'failed' or phase == 'cancelled'
      or phase == 'withdrawn' then  -- (withdrawn: a cluster's enqueue giving a place back)
    ticket = redis.call('ZSCORE', queue, jobid)
  end
  if (phase == 'done' or phase == 'failed' or phase == 'cancelled')
      and (gate ~= '1' or ran == 1 or ticket) then
    if phase ~= 'done' then redis.call('HINCRBY', stats, phase == 'failed' and 'failed' or 'cancelled', 1) end
    if phase == 'done' and started then
      local took = tonumber(now) - tonumber(started)
      local avg = tonumber(redis.call('HGET', stats, 'avgMs') or '')
      if avg then avg = avg * 0.8 + took * 0.2 else avg = took end
      redis.call('HSET', stats, 'avgMs', tostring(avg))
      redis.call('HINCRBY', stats, 'done', 1)
    end
  end
  if not ticket then return 0 end
  -- The job leaves the line: one message tells every web process how it moved.
  redis.call('ZREM', queue, jobid)
  local version = redis.call('INCR', qversion)
  local busy = redis.call('ZCARD', running)
  local avg = redis.call('HGET', stats, 'avgMs') or '-'
  redis.call('PUBLISH', qchannel,
    version .. ' ' .. ticket .. ' ' .. redis.call('ZCARD', queue) .. ' ' .. busy .. ' ' .. avg)
  return 1
end
"""

# The job's own part of a publish: only the job's keys (its slot). Locals it leaves for
# what follows: job, events, channel, phase, data, maxlen, ttl, jobid, now, token, builtin,
# rec (lastToken, state, queue, lastEventId, keptAt, startedAt, waitKind, idem), fields.
# `answer(rec)` (defined by each script) is the reply to a retry whose first try ran.
JOB_HEAD_LUA = """
local job, events = KEYS[1], KEYS[2]
local channel, phase, data, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jobid, now, expect, token = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local builtin = ARGV[13]
-- A retried call whose first try did run (its reply was lost): answer with that event.
local rec = redis.call('HMGET', job, 'lastToken', 'state', 'queue', 'lastEventId', 'keptAt',
  'startedAt', 'waitKind', 'idem')
if rec[1] == token then return answer(rec) end
local state = rec[2]
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return false end
if expect ~= '' and not string.find(',' .. expect .. ',', ',' .. (state or '') .. ',', 1, true) then
  return false
end
if not state and phase ~= 'queued' and phase ~= 'started' then return false end
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
elseif phase == 'queued' then
  table.insert(fields, 'state'); table.insert(fields, 'queued')
elseif phase == 'done' or phase == 'failed' or phase == 'cancelled' then
  local final = phase
  if phase == 'done' then final = 'succeeded' end
  table.insert(fields, 'state'); table.insert(fields, final)
  table.insert(fields, 'finishedAt'); table.insert(fields, now)
end
"""

# The event itself: logged, kept in the record, announced (PUBCMD: PUBLISH, or SPUBLISH
# on a cluster, where a job's channel is in its slot).
JOB_LOG_LUA = """
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
redis.call(PUBCMD, channel, frame(id, phase, data))
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
# One Redis: the whole publish in one call (job, line, counters), atomic.
PUBLISH_LUA = (
    _COMMON_LUA
    + END_CHILDREN_LUA
    + LINE_STEP_LUA
    + """
local PUBCMD = 'PUBLISH'
local function answer(rec) return rec[4] end
"""
    + JOB_HEAD_LUA
    + """
local queue, running, stats, qversion, qchannel = KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[6]
-- [lines] The job's line: the record names its Celery queue; a queue other than the
-- default has keys of its own, derived here from the name (tasks/keys.py), so that no
-- publisher (worker, web, sweep) needs to know it. One Redis lets a script build key
-- names; a cluster does not, and its publisher runs LINE_LUA itself (JobEvents.publish).
local line = ARGV[11] and rec[3]
if line and line ~= ARGV[12] and #line <= 64 and string.find(line, '^[%w_.-]+$') then
  local head = ARGV[11] .. '{' .. line .. '}:'
  queue, running, stats = head .. 'queue', head .. 'running', head .. 'stats'
  qversion, qchannel = head .. 'queue:version', head .. 'queue'
end
if phase == 'done' or phase == 'failed' or phase == 'cancelled' then
  -- An idempotency key names its job for as long as the job is kept (the record's TTL is
  -- refreshed by every event; the key's, set at submit, would run out first).
  if rec[8] then redis.call('EXPIRE', rec[8], ttl) end
end
if line_step(queue, running, stats, qversion, qchannel, jobid, phase, now, rec[6], '0') == 1 then
    -- [kinds] Its kind's line is one shorter: the field the enqueue script counted it
    -- under; the hash's name is derived from the [lines] key head (<prefix>line:).
    local counted = ARGV[11] and rec[7]
    if counted then
      local waiting = string.sub(ARGV[11], 1, -6) .. 'ops:kind:waiting'
      if redis.call('HINCRBY', waiting, counted, -1) <= 0 then redis.call('HDEL', waiting, counted) end
    end
end
"""
    + JOB_LOG_LUA
    + """
-- [lines] Events of every line are counted in one place: the default line's stats.
redis.call('HINCRBY', KEYS[5], 'published', 1)
"""
    + PARENT_LUA
    + """
return id
"""
)

# A cluster's publish, step 1: the job's part alone (KEYS and ARGV 1-13 as PUBLISH_LUA's;
# KEYS 3-6 are not touched). Answers {event id, queue, startedAt, waitKind, idem}, false
# if the job had ended, the same table to a retry whose first try ran.
PUBLISH_JOB_LUA = (
    _COMMON_LUA
    + """
local PUBCMD = 'SPUBLISH'
local function answer(rec) return {rec[4], rec[3] or false, rec[6] or false, rec[7] or false, rec[8] or false} end
"""
    + JOB_HEAD_LUA
    + JOB_LOG_LUA
    + """
rec[4] = id
if phase == 'started' then rec[6] = now end
return answer(rec)
"""
)

# A cluster's publish, step 2, for the phases that move a line (started and the ends).
# KEYS: the line's queue zset, running zset, stats hash, queue version (its slot).
# ARGV: job id, phase, now (ms), startedAt ('' if none). Answers line_step's (1: left).
LINE_LUA = (
    LINE_STEP_LUA
    + """
local started = ARGV[4] ~= '' and ARGV[4] or false
return line_step(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[1], ARGV[1], ARGV[2], ARGV[3], started, '1')
"""
)

# A cluster's count of what a publish changed globally (KEYS: counters hash, per-kind
# waiting hash; ARGV: the kind that left the line, or '').
COUNT_LUA = """
redis.call('HINCRBY', KEYS[1], 'published', 1)
if ARGV[1] ~= '' and redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
"""

# KEYS: job hash, events stream, queue zset, ticket counter, stats hash, running zset,
#       broker list (Celery's queue), [lines] the set of line names,
#       [index] the job index zset (`Keys.job_index`),
#       [kinds] the per-kind waiting hash (`Keys.kind_waiting`),
#       [idempotency key: the job it names, if given]
# KEYS 3-6 are those of the job's line (Keys.line); the record's `queue` field names it.
# ARGV: channel, max queue (0 = no limit), maxlen, ttl, job id, now (ms),
#       broker message ('' = the caller sends it), the index's bound, field/value pairs...
# The global part of a new job (its slot in a cluster: Keys.glob): into the job index,
# and one more waiting of its kind. Answers the field the kind was counted under (the
# record keeps it as waitKind), or nil.
INDEX_KIND_LUA = (
    KIND_NAME_LUA
    + f"local MAX_KINDS = {MAX_KINDS}\n"
    + """
local function index_and_kind(index, waiting, jobid, now, bound, kind)
  -- [index] The ops browser's time-ordered index: O(log n) to add; past its bound the
  -- oldest go (one per job in the steady state).
  bound = tonumber(bound)
  redis.call('ZADD', index, now, jobid)
  if bound and bound > 0 and redis.call('ZCARD', index) > bound then
    redis.call('ZREMRANGEBYRANK', index, 0, -bound - 1)
  end
  -- [kinds] One more waiting of its kind (tasks/kindstats.py): at most MAX_KINDS fields
  -- (kinds with jobs waiting), the rest under 'other'; the record keeps the field, so its
  -- leaving the line (the publish script) takes off what was added here.
  if not kind then return nil end
  kind = kind_name(kind)
  if redis.call('HEXISTS', waiting, kind) == 0 and redis.call('HLEN', waiting) >= MAX_KINDS then
    kind = 'other'
  end
  redis.call('HINCRBY', waiting, kind, 1)
  return kind
end
"""
)

ENQUEUE_LUA = (
    _COMMON_LUA
    + INDEX_KIND_LUA
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
local kind = index_and_kind(KEYS[9], KEYS[10], jobid, now, ARGV[8],
  redis.call('HGET', job, 'kind') or redis.call('HGET', job, 'task'))
if kind then redis.call('HSET', job, 'waitKind', kind) end
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

# A cluster's enqueue: one step per slot, in this order (JobEvents.enqueue):
# 1. ENQ_LINE_LUA (the line's slot): full → -1, nothing written; else a ticket and a
#    place. KEYS: queue zset, ticket counter, stats hash, running zset; ARGV: job id, max
#    queue. Answers {position or -1, queue length, ticket, avgMs, busy}.
ENQ_LINE_LUA = """
local avg = redis.call('HGET', KEYS[3], 'avgMs') or ''
local busy = redis.call('ZCARD', KEYS[4])
local waiting = redis.call('ZCARD', KEYS[1])
local maxq = tonumber(ARGV[2])
if maxq > 0 and waiting >= maxq then return {-1, waiting, 0, avg, busy} end
local t = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], t, ARGV[1])
return {redis.call('ZRANK', KEYS[1], ARGV[1]) + 1, waiting + 1, t, avg, busy}
"""

# 2. ENQ_GLOBAL_LUA (the global slot): the lines set, the job index, the kind's waiting
#    count, and the ops feed's new-job frame. KEYS: lines set, job index, kind waiting;
#    ARGV: job id, now, index bound, position, line name, kind or task (counted) or '',
#    queue or '', the record's kind or '' (the feed's frame names it).
ENQ_GLOBAL_LUA = (
    INDEX_KIND_LUA
    + NEW_JOB_LUA
    + """
redis.call('SADD', KEYS[1], ARGV[5])
local raw = ARGV[6] ~= '' and ARGV[6] or nil
local kind = index_and_kind(KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], raw)
publish_new_job(KEYS[2], ARGV[1], ARGV[2], ARGV[4],
  {ARGV[8] ~= '' and ARGV[8] or nil, ARGV[7] ~= '' and ARGV[7] or nil})
return kind or false
"""
)

# 3. ENQ_JOB_LUA (the job's slot): the record and its `queued` event, SPUBLISHed; an id
#    that exists already → -2, nothing written (the caller gives the place back).
#    KEYS: job hash, events stream; ARGV: channel, maxlen, ttl, job id, now, position,
#    queue length, ticket, waitKind or '', idempotency key or '', field/value pairs...
ENQ_JOB_LUA = (
    _COMMON_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return -2 end
local data = '{"jobId":"' .. ARGV[4] .. '","position":' .. ARGV[6] .. ',"queueLength":' .. ARGV[7] .. '}'
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'phase', 'queued', 'data', data)
local fields = {'state', 'queued', 'ticket', ARGV[8], 'created', ARGV[5], 'updated', ARGV[5],
                'lastEventId', id, 'last:queued', data}
for i = 11, #ARGV do table.insert(fields, ARGV[i]) end
if ARGV[9] ~= '' then table.insert(fields, 'waitKind'); table.insert(fields, ARGV[9]) end
if ARGV[10] ~= '' then table.insert(fields, 'idem'); table.insert(fields, ARGV[10]) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SPUBLISH', ARGV[1], frame(id, 'queued', data))
return id
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


def call_script_directly(script: Any, keys: list[Any], args: list[Any]) -> Any:
    return script(keys=keys, args=args)


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
        cluster: bool = False,
    ) -> None:
        self.redis = redis_client
        self.cluster = cluster
        self.max_event_bytes = max_event_bytes
        self.retry_seconds = retry_seconds
        self.keys = Keys(prefix, cluster=cluster)
        self.maxlen = maxlen
        self.retention_seconds = retention_seconds
        self.index_max = index_max
        # How enqueue() and read() run their scripts: directly, or through a web process's
        # funnel (web/funnel.py), which pipelines many greenlets' calls.
        self.call_script: Callable[[Any, list[Any], list[Any]], Any] = call_script_directly
        self._publish = redis_client.register_script(PUBLISH_LUA)
        self._enqueue = redis_client.register_script(ENQUEUE_LUA)
        self._read = redis_client.register_script(READ_LUA)
        if cluster:  # one step per slot (the Keys layout's docstring)
            self._publish_job = redis_client.register_script(PUBLISH_JOB_LUA)
            self._line = redis_client.register_script(LINE_LUA)
            self._count = redis_client.register_script(COUNT_LUA)
            self._enq_line = redis_client.register_script(ENQ_LINE_LUA)
            self._enq_global = redis_client.register_script(ENQ_GLOBAL_LUA)
            self._enq_job = redis_client.register_script(ENQ_JOB_LUA)

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
            cluster=settings.store.cluster,
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
        if self.cluster:
            return self._publish_in_steps(job_id, phase, keys[:2], args)
        parent = parent_of(job_id)
        if parent is not None:  # a canvas's child moves its parent in the same call
            keys += [k.job(parent), k.events(parent)]
            args += [parent, job_id.rpartition(".")[2]]
        result = self.retrying(lambda: self._publish(keys=keys, args=args))
        return _text(result) if result else None

    def _publish_in_steps(
        self, job_id: str, phase: str, keys: list[str], args: list[Any]
    ) -> str | None:
        """A cluster's publish: the job's step, then (for a start or an end) its line's,
        then the global counts — each atomic in its slot, each retried on its own.

        A retry of a step whose first try ran is safe: the job's answers the event it
        logged (the token), the line's changes nothing twice (what it removes is gone).
        A publisher that dies between steps leaves the line behind the job until the
        sweep reconciles it (a job ended but still counted running or waiting), and the
        ``published`` count one short; the count itself may count a retried call twice.
        """
        result = self.retrying(lambda: self._publish_job(keys=keys, args=args))
        if not result:
            return None
        event_id, queue, started, wait_kind, idem = (_text(v) if v else "" for v in result)
        left = 0
        if phase == "started" or phase in TERMINAL:
            line = self.keys.line(queue or None)
            line_keys = [line.queue, line.running, line.stats, line.version]
            line_args = [job_id, phase, args[7], started]
            left = self.retrying(lambda: self._line(keys=line_keys, args=line_args))
            if phase in TERMINAL and idem:
                self.retrying(lambda: self.redis.expire(idem, self.retention_seconds))
        k = self.keys
        count_args = [wait_kind if left and wait_kind else ""]
        self.retrying(lambda: self._count(keys=[k.counters, k.kind_waiting], args=count_args))
        return event_id

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
        result: list[Any] = self.call_script(self._read, [k.job(job_id), k.events(job_id)], args)
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
        if self.cluster:
            if message is not None:
                raise ValueError("a cluster store cannot hold the broker's list: send the task")
            return self._enqueue_in_steps(job_id, fields, line, max_queue, key)
        broker, payload = message or (line.queue, "")
        keys = [
            k.job(job_id), k.events(job_id), line.queue, line.ticket, line.stats, line.running,
            broker, k.lines, k.job_index, k.kind_waiting,
        ]  # fmt: skip
        if key is not None:
            keys.append(k.idempotency(key))
        pos, length, event_id, avg, busy = self.call_script(
            self._enqueue,
            keys,
            [
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

    def _enqueue_in_steps(
        self, job_id: str, fields: dict[str, str], line: LineKeys, max_queue: int, key: str | None
    ) -> Enqueued:
        """A cluster's enqueue: the idempotency key claimed, a place in line, the global
        index and counts, then the record with its ``queued`` event (the scripts'
        comments say what each holds). Nothing is written for a full line or an id that
        exists; a process dying between steps leaves a place in line with no record (a
        ghost, which the retention sweep removes) or an index member with no record."""
        k, ttl = self.keys, self.retention_seconds
        idem = k.idempotency(key) if key is not None else ""
        if idem and not self.redis.set(idem, job_id, nx=True, ex=ttl):
            known = _text(self.redis.get(idem) or b"")
            if known and known != job_id:
                avg, busy = self.redis.hget(line.stats, "avgMs"), self.redis.zcard(line.running)
                return Enqueued(-3, 0, known, float(avg) if avg else None, int(busy))
        if self.redis.exists(k.job(job_id)):
            return self._gave_up(idem, job_id, Enqueued(-2, 0, None, None, 0))
        pos, length, ticket, avg_raw, busy = self._enq_line(
            keys=[line.queue, line.ticket, line.stats, line.running], args=[job_id, max_queue]
        )
        avg = float(avg_raw) if avg_raw else None
        if int(pos) < 0:
            return self._gave_up(idem, job_id, Enqueued(-1, int(length), None, avg, int(busy)))
        now = now_ms()
        counted = fields.get("kind") or fields.get("task") or ""
        wait_kind = self._enq_global(
            keys=[k.lines, k.job_index, k.kind_waiting],
            args=[
                job_id, now, self.index_max, pos, line.name, counted, fields.get("queue", ""),
                fields.get("kind", ""),
            ],
        )  # fmt: skip
        flat = [item for pair in fields.items() for item in pair]
        event_id = self._enq_job(
            keys=[k.job(job_id), k.events(job_id)],
            args=[
                k.channel(job_id), self.maxlen, ttl, job_id, now, pos, length, ticket,
                _text(wait_kind) if wait_kind else "", idem, *flat,
            ],
        )  # fmt: skip
        if event_id == -2:  # made meanwhile by another caller: the place goes back
            self._line(
                keys=[line.queue, line.running, line.stats, line.version],
                args=[job_id, "withdrawn", now, ""],
            )
            return self._gave_up(idem, job_id, Enqueued(-2, 0, None, None, 0))
        return Enqueued(int(pos), int(length), _text(event_id), avg, int(busy))

    def _gave_up(self, idem: str, job_id: str, answer: Enqueued) -> Enqueued:
        """Free an idempotency key this call claimed for a job it did not make."""
        if idem and _text(self.redis.get(idem) or b"") == job_id:
            self.redis.delete(idem)
        return answer


class Enqueued(NamedTuple):
    position: int
    queue_length: int
    event_id: str | None
    avg_ms: float | None  # moving average run time, None before the first job finished
    busy: int  # jobs running now


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
