"""Canvas jobs: a Celery group, chain or chord (nested too) as one parent job.

``jobcast.submit(chord(group(render.s(i) for i in range(4)), compose.s()))`` compiles
the canvas, at submit time, into a graph of child jobs ``<P>.0``, ``<P>.1``, ... whose
keys carry the parent's hash tag (``job:{P}.n``, :mod:`tasks.keys`), so one script
reaches both::

    submit   one Lua call: the parent record (per child: weight, latest percent,
             remaining dependencies, dependents, its prebuilt Celery message and line),
             every child's record and ``queued`` event, and the messages of the children
             that wait for nothing (LPUSH, as :func:`tasks.submit.submit` does)
    a child  publishes as any job; its publish script (tasks/events.py, same round trip)
             also moves the parent: ``started`` on the first child start, ``child`` on
             each child's start and end, ``progress`` when the weighted whole percent
             rises, the child's ``preview`` with its id; a child's ``done`` releases the
             dependents left with no dependency (their message is pushed there, no
             worker round trip, no Celery result backend); ``failed``/``cancelled`` of a
             child ends the parent naming it and cancels every unfinished child
    a link   (chain step, chord callback) gets the result(s) it follows prepended to its
             arguments as Celery does, unless its signature is immutable; the worker
             reads them from the parent record when the link starts (:func:`prepended`)

Each child's contribution is counted by its highest percent, never by adding deltas,
so a redelivered child starting over never moves the parent back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Signature
from celery.canvas import _chain, chord, group, maybe_signature

from tasks.canvas_lua import END_CHILDREN_LUA
from tasks.config import Settings
from tasks.events import NEW_JOB_LUA, TERMINAL_STATES, JobEvents, dumps, now_ms
from tasks.keys import DEFAULT_QUEUE, Keys, check_queue, parent_of
from tasks.submit import broker_message, queue_of, shares_broker, task_fields

MAX_CHILDREN = 1000

# KEYS: parent hash, parent events. ARGV: now, maxlen, ttl, parent id.
# nil: no such job; 0: not a canvas; its state if over; 1 once cancelled now.
CANCEL_CANVAS_LUA = (
    """
local function frame(id, phase, data)
  return 'id: ' .. id .. '\\nevent: ' .. phase .. '\\ndata: ' .. data .. '\\n\\n'
end
"""
    + END_CHILDREN_LUA
    + """
local pjob, pevents = KEYS[1], KEYS[2]
local now, maxlen, ttl, pid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = redis.call('HGET', pjob, 'state')
if not state then return false end
if redis.call('HGET', pjob, 'canvas') ~= '1' then return 0 end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return state end
local data = '{"reason":"cancelled"}'
local id = redis.call('XADD', pevents, 'MAXLEN', '~', maxlen, '*', 'phase', 'cancelled', 'data', data)
redis.call('HSET', pjob, 'state', 'cancelled', 'finishedAt', now, 'updated', now,
  'lastEventId', id, 'last:cancelled', data)
redis.call('EXPIRE', pjob, ttl)
redis.call('EXPIRE', pevents, ttl)
redis.call('PUBLISH', pjob, frame(id, 'cancelled', data))
end_children(pjob, pid, 'the canvas was cancelled', now, maxlen, ttl)
return 1
"""
)

# KEYS: parent hash, parent events, then per child: its hash, its events.
# [the idempotency key, last, when the plan says so]. ARGV[1]: the plan as JSON (see
# submit_canvas). Returns {position of the first child in line, that line's length,
# parent's queued event id}; {-2} if the id exists already, {-3, 0, id} if the
# idempotency key named canvas `id` already.
SUBMIT_CANVAS_LUA = (
    NEW_JOB_LUA
    + """
local function frame(id, phase, data)
  return 'id: ' .. id .. '\\nevent: ' .. phase .. '\\ndata: ' .. data .. '\\n\\n'
end
local plan = cjson.decode(ARGV[1])
local pjob, pevents = KEYS[1], KEYS[2]
local idem = plan.idem and KEYS[#KEYS]
if idem then
  -- The same key names the same canvas while it is kept: answer it, write nothing.
  local known = redis.call('GET', idem)
  if known then return {-3, 0, known} end
end
if redis.call('EXISTS', pjob) == 1 then return {-2, 0, ''} end
local now, ttl, maxlen = plan.now, plan.ttl, plan.maxlen
-- A new job's record and log, with its `queued` event (not yet published); its id.
local function queued(job, events, data, extra)
  local id = redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'phase', 'queued', 'data', data)
  local fields = {'state', 'queued', 'created', now, 'updated', now, 'lastEventId', id,
                  'last:queued', data}
  for name, value in pairs(extra) do table.insert(fields, name); table.insert(fields, value) end
  redis.call('HSET', job, unpack(fields))
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', events, ttl)
  return id
end
local first, firstlen = 0, 0
for i, child in ipairs(plan.children) do
  local cjob, cevents = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local data
  if child.ready then
    local t = redis.call('INCR', child.line .. 'queue:ticket')
    redis.call('ZADD', child.line .. 'queue', t, child.id)
    local pos = redis.call('ZRANK', child.line .. 'queue', child.id) + 1
    local len = redis.call('ZCARD', child.line .. 'queue')
    if first == 0 or pos < first then first, firstlen = pos, len end
    data = '{"jobId":"' .. child.id .. '","position":' .. pos .. ',"queueLength":' .. len .. '}'
    redis.call('HSET', cjob, 'ticket', t)
  else
    data = '{"jobId":"' .. child.id .. '","waitingFor":' .. child.deps .. '}'
  end
  local id = queued(cjob, cevents, data, child.fields)
  if plan.lines then redis.call('SADD', plan.lines, child.queue) end
  if child.ready then redis.call('LPUSH', child.list, child.msg) end
  redis.call('PUBLISH', cjob, frame(id, 'queued', data))
end
local data = '{"jobId":"' .. plan.id .. '","children":' .. #plan.children .. ',"position":' ..
  first .. ',"queueLength":' .. firstlen .. '}'
local id = queued(pjob, pevents, data, plan.parent)
-- The ops job index (tasks/jobindex.py) lists the canvas; its children are in its record.
if plan.index then
  redis.call('ZADD', plan.index, now, plan.id)
  local bound = tonumber(plan.indexmax) or 0
  if bound > 0 and redis.call('ZCARD', plan.index) > bound then
    redis.call('ZREMRANGEBYRANK', plan.index, 0, -bound - 1)
  end
  publish_new_job(plan.index, plan.id, now, first, {plan.parent.kind, plan.parent.queue})
end
if idem then
  redis.call('SET', idem, plan.id, 'EX', ttl)
  redis.call('HSET', pjob, 'idem', idem)
end
redis.call('PUBLISH', pjob, frame(id, 'queued', data))
return {first, firstlen, id}
"""
)

Takes = int | list[Any] | None  # what a link gets prepended: a child's result, or a list


@dataclass
class Node:
    """One task of the canvas: a child job."""

    sig: Signature
    takes: Takes = None
    deps: set[int] = field(default_factory=set)
    dependents: list[int] = field(default_factory=list)


@dataclass
class Part:
    """A compiled piece of canvas: the children it starts with and ends with, and what
    its result is as Celery passes it on (a child's index, or a list of such)."""

    entries: list[int]
    exits: list[int]
    value: Takes


def is_canvas(target: Any) -> bool:
    return isinstance(target, Signature) and bool(target.get("subtask_type"))


def compile_canvas(sig: Signature, app: Celery | None = None) -> list[Node]:
    """The children of ``sig`` in order, with their dependencies; ValueError if empty or
    past :data:`MAX_CHILDREN`."""
    nodes: list[Node] = []
    _build(sig, nodes, app)
    if not nodes:
        raise ValueError("the canvas has no tasks")
    return nodes


def _build(sig: Any, nodes: list[Node], app: Celery | None) -> Part:
    sig = maybe_signature(sig, app=app)
    if isinstance(sig, group):
        parts = [_build(s, nodes, app) for s in sig.tasks]
        if not parts:
            raise ValueError("a group in the canvas has no tasks")
        return Part(
            [e for p in parts for e in p.entries],
            [x for p in parts for x in p.exits],
            [p.value for p in parts],
        )
    if isinstance(sig, chord):
        header = _build(group(list(sig.tasks)), nodes, app)
        return _link(header, sig.body, nodes, app)
    if isinstance(sig, _chain):
        tasks = list(sig.tasks)
        if not tasks:
            raise ValueError("a chain in the canvas has no tasks")
        part = _build(tasks[0], nodes, app)
        for nxt in tasks[1:]:
            part = _link(part, nxt, nodes, app)
        return part
    if sig.get("subtask_type"):
        raise ValueError(f"canvas type {sig.get('subtask_type')!r} is not supported")
    if len(nodes) >= MAX_CHILDREN:
        raise ValueError(f"a canvas takes at most {MAX_CHILDREN} tasks")
    nodes.append(Node(sig))
    index = len(nodes) - 1
    return Part([index], [index], index)


def _link(prev: Part, nxt_sig: Any, nodes: list[Node], app: Celery | None) -> Part:
    nxt = _build(nxt_sig, nodes, app)
    for entry in nxt.entries:
        node = nodes[entry]
        node.deps |= set(prev.exits)
        if not node.sig.immutable:
            node.takes = prev.value
    for exit_ in prev.exits:
        nodes[exit_].dependents += [e for e in nxt.entries if e not in nodes[exit_].dependents]
    return Part(prev.entries, nxt.exits, nxt.value)


@dataclass(frozen=True)
class CanvasSubmitted:
    position: int  # of its first child in line (0: none waits in a line)
    queue_length: int
    event_id: str
    queue: str  # the line of its first child
    created: bool = True  # False: the idempotency key named a canvas already (event_id)


def submit_canvas(
    app: Celery,
    events: JobEvents,
    settings: Settings,
    parent_id: str,
    sig: Signature,
    *,
    kind: str,
    queue: str | None = None,
    meta: str | None = None,
    fields: dict[str, str] | None = None,
    key: str | None = None,
) -> CanvasSubmitted:
    """Record the canvas and its children and send the children that wait for nothing,
    in one round trip. ``queue`` sends every child there (else each where Celery routes
    it); ``fields`` go on the parent record (a kind's parameters, as a single job keeps
    them); ``key`` a scoped idempotency key (``created`` False: it named a canvas
    already, whose id is ``event_id``). ValueError for a canvas this cannot run, or an id
    in use."""
    if settings.store.cluster:
        # A child's publish moves its parent, its siblings and their lines in one script:
        # many slots. Kept for one Redis (or a Sentinel set) until it is split per slot.
        raise ValueError("canvas jobs need a single Redis or a Sentinel set, not a Redis Cluster")
    if not shares_broker(app, settings):
        raise ValueError("canvas jobs need Celery's broker to be the job records' Redis")
    nodes = compile_canvas(sig, app)
    k = events.keys
    children: list[dict[str, Any]] = []
    parent: dict[str, str] = {
        "canvas": "1", "kind": kind, "children": str(len(nodes)), "left": str(len(nodes)),
        "sum": "0", "pct": "0",
    }  # fmt: skip
    if meta:
        parent["meta"] = meta
    for name, value in (fields or {}).items():
        parent.setdefault(name, value)
    wsum = 0
    first_queue = ""
    for index, node in enumerate(nodes):
        child_id = f"{parent_id}.{index}"
        name = node.sig.task
        args, kwargs = list(node.sig.args), dict(node.sig.kwargs)
        line_name = check_queue(queue or node.sig.options.get("queue") or queue_of(app, name))
        first_queue = first_queue or line_name
        list_key, msg = broker_message(app, name, child_id, kwargs, args=args, queue=line_name)
        weight = _weight(node.sig)
        wsum += weight
        base = _line_base(k, line_name)
        c = f"c:{index}:"
        parent.update({
            f"{c}w": str(weight), f"{c}pct": "0", f"{c}deps": str(len(node.deps)),
            f"{c}next": ",".join(map(str, node.dependents)), f"{c}state": "queued",
            f"{c}line": base, f"{c}task": name,
        })  # fmt: skip
        if node.deps:
            parent[f"{c}msg"], parent[f"{c}list"] = msg, list_key
        fields = {
            "kind": name, "queue": line_name, "parent": parent_id, "index": str(index),
            **task_fields(name, kwargs, args),
        }  # fmt: skip
        if node.takes is not None:
            fields["takes"] = json.dumps(node.takes, separators=(",", ":"))
        children.append({
            "id": child_id, "fields": fields, "ready": not node.deps, "deps": len(node.deps),
            "line": base, "queue": line_name, "list": list_key, "msg": msg,
        })  # fmt: skip
    parent["wsum"] = str(wsum)
    plan = {
        "id": parent_id, "now": str(now_ms()), "ttl": events.retention_seconds,
        "maxlen": events.maxlen, "parent": parent, "children": children, "lines": k.lines,
        "index": k.job_index, "indexmax": events.index_max,
    }  # fmt: skip
    keys = [k.job(parent_id), k.events(parent_id)]
    for child in children:
        keys += [k.job(child["id"]), k.events(child["id"])]
    if key is not None:
        plan["idem"] = True
        keys.append(k.idempotency(key))
    pos, length, event_id = events.redis.eval(SUBMIT_CANVAS_LUA, len(keys), *keys, dumps(plan))
    if int(pos) == -2:
        raise ValueError(f"job id {parent_id!r} names a job already")
    raw = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
    if int(pos) == -3:
        return CanvasSubmitted(0, 0, raw, first_queue, created=False)
    return CanvasSubmitted(int(pos), int(length), raw, first_queue)


def _weight(sig: Signature) -> int:
    """A child's share of the parent's percent: the signature's ``weight`` option (a
    kind's declared cost), 1 by default."""
    raw = sig.options.get("weight", 1)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 1 <= raw <= 10_000:
        raise ValueError("a task's weight is a number from 1 to 10000")
    return max(1, math.floor(raw))


def _line_base(k: Keys, name: str) -> str:
    """What the line's keys start with: ``<prefix>`` for the default queue (``queue``,
    ``queue:ticket``...), ``<prefix>line:{Q}:`` for queue Q (tasks/keys.py)."""
    if name == DEFAULT_QUEUE:
        return k.prefix
    return k.line(name).queue[: -len("queue")]


def cancel_canvas(events: JobEvents, job_id: str) -> str | int | None:
    """Cancel a canvas and every child not yet over: None if unknown, 0 if ``job_id`` is
    not a canvas, its final state if it had ended, 1 if cancelled now."""
    k = events.keys
    result = events.redis.eval(
        CANCEL_CANVAS_LUA, 2, k.job(job_id), k.events(job_id),
        now_ms(), events.maxlen, events.retention_seconds, job_id,
    )  # fmt: skip
    if isinstance(result, bytes):
        return result.decode()
    return result


def prepended(events: JobEvents, job_id: str, takes: str) -> Any:
    """The value a link gets first: its predecessor's result, or a list of them, read
    from the parent record (one round trip). A child's result is its ``done`` data,
    unwrapped when the task returned a non-dict (``{"result": value}``)."""
    parent = parent_of(job_id)
    assert parent is not None
    shape = json.loads(takes)
    wanted: list[int] = []

    def walk(expr: Any) -> None:
        if isinstance(expr, list):
            for item in expr:
                walk(item)
        else:
            wanted.append(int(expr))

    walk(shape)
    raw = events.redis.hmget(events.keys.job(parent), [f"c:{i}:res" for i in wanted])
    values = {i: _unwrap(r) for i, r in zip(wanted, raw, strict=True)}

    def build(expr: Any) -> Any:
        return [build(e) for e in expr] if isinstance(expr, list) else values[int(expr)]

    return build(shape)


def _unwrap(raw: bytes | None) -> Any:
    if raw is None:
        return None
    data = json.loads(raw)
    if isinstance(data, dict) and set(data) - {"files"} == {"result"}:
        return data["result"]
    return data


def children_status(events: JobEvents, job_id: str, count: int) -> list[dict[str, Any]]:
    """Each child's id, state, percent and place in line: one pipelined round trip."""
    k = events.keys
    pipe = events.redis.pipeline(transaction=False)
    for i in range(count):
        pipe.hmget(k.job(f"{job_id}.{i}"), "state", "last:progress", "queue", "kind")
    rows = pipe.execute()
    pipe = events.redis.pipeline(transaction=False)
    for i, row in enumerate(rows):
        queue = row[2].decode() if row[2] else None
        pipe.zrank(k.line(queue if queue else None).queue, f"{job_id}.{i}")
    ranks = pipe.execute()
    out: list[dict[str, Any]] = []
    for i, (row, rank) in enumerate(zip(rows, ranks, strict=True)):
        state = row[0].decode() if row[0] else None
        progress = json.loads(row[1]) if row[1] else {}
        out.append({
            "jobId": f"{job_id}.{i}",
            "task": row[3].decode() if row[3] else None,
            "queue": row[2].decode() if row[2] else DEFAULT_QUEUE,
            "state": state,
            "percent": 100 if state == "succeeded" else int(progress.get("percent", 0)),
            "position": int(rank) + 1 if rank is not None and state == "queued" else None,
        })  # fmt: skip
    return out


def canvas_position(children: list[dict[str, Any]]) -> int | None:
    """A canvas's place in line: that of its first waiting child."""
    places = [c["position"] for c in children if c["position"] is not None]
    return min(places) if places else None


def done_eta(
    events: JobEvents, children: list[dict[str, Any]], start_eta: int | None
) -> int | None:
    """Seconds until the whole canvas is expected to end: until its first waiting child
    starts (``start_eta``; 0 once none waits), then the runs it has left (a running child
    by the part it has not done) at the average run time of the line its unfinished
    children wait in, shared among the jobs running there now (at least one). None
    before that line has an average, or while the start cannot be told."""
    unfinished = [c for c in children if c["state"] not in TERMINAL_STATES]
    if not unfinished:
        return 0
    line = events.keys.line(unfinished[0]["queue"])
    pipe = events.redis.pipeline(transaction=False)
    avg, busy = pipe.hget(line.stats, "avgMs").zcard(line.running).execute()
    waiting = any(c["position"] is not None for c in children)
    if not avg or (waiting and start_eta is None):
        return None
    left = sum(1 - c["percent"] / 100 for c in unfinished)
    return math.ceil((start_eta or 0) + left * float(avg) / 1000 / max(1, int(busy)))
