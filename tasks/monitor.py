"""The monitor: follow Celery's event stream, publish a compact ops snapshot every second.

    workers ──worker-heartbeat / task-* events──▶ EventReceiver ──▶ Monitor (state in memory)
                                                                       │ tick, every ~0.25 s
    Redis ◀── one Lua call: counts (any monitor) · lease check · SET ops:snapshot · PUBLISH ─┘

* State: :class:`WorkerState` per hostname (online, running and received tasks, counts,
  load, last heartbeat), a :class:`Window` of finished tasks (throughput over 1/5/15 min,
  run time p50/p95, failure rate), the latest failures and a one-minute history. At start
  (and after a reconnect) it reads the running jobs from Redis (:meth:`Monitor.seed`), so
  a restarted monitor shows what runs. A task whose job record says it ended leaves its
  worker's list even if its end event was missed; lists are bounded in size and age.
* A worker is offline at once on ``worker-offline``, or when no heartbeat came for
  ``worker_timeout`` (default 2.5 of its announced intervals): the tick checks that even
  while no events arrive, so a SIGKILLed worker goes offline too. What it held becomes an
  orphan: once the job's lease (:mod:`tasks.lease`) has lapsed, the leader moves its
  unacked message back to the queue (:mod:`tasks.unacked`) instead of leaving it to the
  visibility timeout. The leader also keeps the messages of jobs with a live lease from
  reaching that timeout, so kombu does not hand out copies of healthy jobs.
* The snapshot goes out every ``ops_interval`` seconds, and at once when a worker
  appears or disappears. The published payload is a finished SSE frame without ``id:``,
  so web processes forward it untouched.
* The leader also runs the retention sweep (:mod:`tasks.retention`) every
  ``sweep_seconds``: old images, and ghosts in the line.
* Two monitors: both follow the events, but only the holder of a lease (``ops:leader``,
  renewed by every publish, expiring after 5 s) writes the snapshot; the standby takes
  over when the leader dies. Both write task outcomes, each event counted once
  (``HSETNX`` on its task id, outcome and the worker's timestamp), and keep them until a
  write succeeds: counts are exact across a takeover, a restart or a Redis blip.
* Per job kind (:mod:`tasks.kindstats`): the same script counts each end under the kind
  its job record names, in hashes every web process reads; each snapshot carries the
  per-kind table read back from them (one publish behind), so a restart loses nothing.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from tasks import kindstats
from tasks.app import create_celery
from tasks.config import Settings
from tasks.keys import DEFAULT_QUEUE, Keys
from tasks.kindstats import KIND_NAME_LUA, MAX_KINDS, MINUTE_TTL, KindKeys
from tasks.lease import lease_key
from tasks.retention import Sweeper, lines
from tasks.unacked import broker_channel, in_flight, keep_visible, restore

log = logging.getLogger("jobcast.monitor")

ENDED = (b"succeeded", b"failed", b"cancelled")  # a job record's terminal states

LEASE_MS = 5000
TICK_SECONDS = 0.25  # how often the receiver returns to us when no events come
FORGET_OFFLINE_SECONDS = 600.0  # an offline worker stays listed this long
MAX_FAILURES = 10
MAX_HELD = 1000  # tasks one worker may be shown running or holding
# A task held longer than this is forgotten (its end event was missed); a job whose record
# says it ended goes at the next publish.
MAX_HELD_SECONDS = 6 * 3600.0
HISTORY = 60  # seconds of sparkline history in the snapshot
WINDOWS = (60, 300, 900)
COUNTED_WINDOW = 600  # seconds of worker time per "counted" hash
COUNTED_TTL = 3600  # how long a counted event is remembered, so a retry never counts twice
MAX_BATCH = 1000  # outcomes written per publish
MAX_PENDING = 100_000  # outcomes kept while Redis is unreachable; the oldest go first
RUNTIME_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Upper bounds (seconds) of the task run time histogram that ``/metrics`` reports."""

# KEYS: leader, snapshot, task counters hash, runtime histogram hash, the kinds set, the
#       per-kind outcome and run time hashes (tasks/kindstats.py), then the "counted" and
#       per-kind minute hashes and the job records the outcomes below name by index
# ARGV: token, lease ms, snapshot json, channel, frame, counted ttl, minute ttl, outcome
#       count, then per outcome: counted key index, event key, outcome, histogram bucket or
#       "", run time, job record index, task name, minute hash index
# Outcomes count once per event whoever sends them (leader or standby, retried or not):
# the event key (task id, outcome, the worker's timestamp) is the same in every monitor.
# Per kind, a task that ran a job counts as the state its record ended in (a cancelled
# job's task succeeds as far as Celery knows).
PUBLISH_LUA = (
    KIND_NAME_LUA
    + f"local MAX_KINDS = {MAX_KINDS}\n"
    + """
local expiring = {}  -- the minute hashes given their TTL in this call
local function read_record(ref)
  -- On a cluster the caller read the record (another slot): "r:" kind US state US task.
  if string.sub(ref, 1, 2) ~= 'r:' then
    return redis.call('HMGET', KEYS[tonumber(ref)], 'kind', 'state', 'task')
  end
  local record, n, from = {}, 0, 3
  while n < 3 do
    n = n + 1
    local stop = string.find(ref, '\\31', from, true) or (#ref + 1)
    local value = string.sub(ref, from, stop - 1)
    record[n] = value ~= '' and value or false
    from = stop + 1
  end
  return record
end
local function per_kind(i)
  local record = read_record(ARGV[i + 5])
  local kind = kind_name(record[1] or record[3] or ARGV[i + 6])
  if redis.call('SISMEMBER', KEYS[5], kind) == 0 then
    if redis.call('SCARD', KEYS[5]) >= MAX_KINDS then kind = 'other' end
    redis.call('SADD', KEYS[5], kind)
  end
  local outcome, state = ARGV[i + 2], record[2]
  if (outcome == 'succeeded' or outcome == 'failed')
      and (state == 'succeeded' or state == 'failed' or state == 'cancelled') then
    outcome = state
  end
  local minute = KEYS[tonumber(ARGV[i + 7])]
  redis.call('HINCRBY', KEYS[6], kind .. '|' .. outcome, 1)
  redis.call('HINCRBY', minute, kind .. '|' .. outcome, 1)
  if not expiring[minute] then
    redis.call('EXPIRE', minute, ARGV[7])
    expiring[minute] = true
  end
  if outcome == 'succeeded' and ARGV[i + 3] ~= '' then
    redis.call('HINCRBY', KEYS[7], kind .. '|' .. ARGV[i + 3], 1)
    redis.call('HINCRBY', KEYS[7], kind .. '|count', 1)
    redis.call('HINCRBYFLOAT', KEYS[7], kind .. '|sum', ARGV[i + 4])
    redis.call('HINCRBY', minute, kind .. '|' .. ARGV[i + 3], 1)
  end
end
local i = 9
for _ = 1, tonumber(ARGV[8]) do
  local counted = KEYS[tonumber(ARGV[i])]
  if redis.call('HSETNX', counted, ARGV[i + 1], 1) == 1 then
    redis.call('EXPIRE', counted, ARGV[6])
    redis.call('HINCRBY', KEYS[3], ARGV[i + 2], 1)
    if ARGV[i + 3] ~= '' then
      redis.call('HINCRBY', KEYS[4], ARGV[i + 3], 1)
      redis.call('HINCRBY', KEYS[4], 'count', 1)
      redis.call('HINCRBYFLOAT', KEYS[4], 'sum', ARGV[i + 4])
    end
    per_kind(i)
  end
  i = i + 8
end
local leader = redis.call('GET', KEYS[1])
if leader and leader ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""
)

RESIGN_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class OpsKeys:
    """The monitor's keys besides ``Keys.ops``/``Keys.ops_snapshot`` (global keys:
    one slot in a cluster, :meth:`Keys.glob`)."""

    prefix: str = "jobcast:"
    cluster: bool = False

    def _glob(self, name: str) -> str:
        return Keys(self.prefix, cluster=self.cluster).glob(name)

    @property
    def leader(self) -> str:
        return self._glob("ops:leader")

    @property
    def tasks(self) -> str:
        """Hash: Celery task outcomes (succeeded, failed, retried, revoked, rejected)."""
        return self._glob("ops:tasks")

    @property
    def runtime(self) -> str:
        """Hash: run time histogram, ``le:<bound>`` counts (not cumulative), sum, count."""
        return self._glob("ops:runtime")

    def counted(self, window: int) -> str:
        """Hash: the events counted in one ``COUNTED_WINDOW`` of worker time (expires)."""
        return self._glob(f"ops:counted:{window}")


def _no_read(keys: list[str]) -> list[Any]:
    raise AssertionError(f"a cluster's batch needs the records read ({keys[:3]})")


def _record_ref(values: list[Any]) -> str:
    """A record's kind, state and task as the publish script takes them on a cluster."""
    text = [(v.decode(errors="replace") if isinstance(v, bytes) else v or "") for v in values]
    return "r:" + "\x1f".join(t.replace("\x1f", "") for t in text)


def snapshot_frame(payload: str | bytes) -> bytes:
    """The SSE frame a snapshot travels in (no ``id:``: snapshots are never replayed)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return b"event: snapshot\ndata: " + data + b"\n\n"


def bucket_of(seconds: float) -> str:
    """The histogram field a run time falls in: ``le:<bound>`` or ``le:+Inf``."""
    at = bisect.bisect_left(RUNTIME_BUCKETS, seconds)
    return f"le:{RUNTIME_BUCKETS[at]}" if at < len(RUNTIME_BUCKETS) else "le:+Inf"


class Running(NamedTuple):
    name: str
    since: float  # local monotonic time it started (or the monitor learned of it)


def _bound(held: dict[str, Any]) -> None:
    """Keep the newest MAX_HELD entries: a worker never runs that many at once."""
    while len(held) > MAX_HELD:
        del held[next(iter(held))]


@dataclass
class WorkerState:
    hostname: str
    online: bool = True
    freq: float = 2.0
    last_heartbeat: float = 0.0  # local monotonic time of the last event from it
    pid: int = 0  # of its main process, from its worker-* events
    seen_at: float = 0.0  # wall time of that event, for display
    active: int = 0
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    loadavg: list[float] = field(default_factory=list)
    jobs: dict[str, Running] = field(default_factory=dict)  # task id -> what runs here
    reserved: dict[str, float] = field(default_factory=dict)  # task id -> when received

    def start(self, task_id: str, name: str, now: float) -> None:
        self.reserved.pop(task_id, None)
        self.jobs[task_id] = Running(name, now)
        _bound(self.jobs)

    def receive(self, task_id: str, now: float) -> None:
        self.reserved[task_id] = now
        _bound(self.reserved)

    def forget(self, task_id: str) -> str | None:
        """Drop the task from this worker; return its name if it was running here."""
        self.reserved.pop(task_id, None)
        running = self.jobs.pop(task_id, None)
        return running.name if running else None

    def prune(self, now: float) -> None:
        """Drop what we hold longer than MAX_HELD_SECONDS: its end event went missing."""
        for task_id, since in list(self.reserved.items()):
            if now - since > MAX_HELD_SECONDS:
                del self.reserved[task_id]
        for task_id, job in list(self.jobs.items()):
            if now - job.since > MAX_HELD_SECONDS:
                del self.jobs[task_id]

    def timeout(self, configured: float) -> float:
        return configured if configured > 0 else 2.5 * self.freq

    def as_json(self, percents: dict[str, int | None]) -> dict[str, Any]:
        return {
            "name": self.hostname,
            "up": self.online,
            "active": len(self.jobs) if self.online else 0,
            "processed": max(self.processed, self.succeeded + self.failed),
            "failed": self.failed,
            "load": self.loadavg,
            "seen": int(self.seen_at * 1000),
            "freq": self.freq,
            "jobs": [
                {"id": task_id, "task": job.name, "pct": percents.get(task_id)}
                for task_id, job in self.jobs.items()
            ],
        }


class Window:
    """Finished tasks of the last 15 minutes: (time, run time or None, ok)."""

    def __init__(self, span: float = WINDOWS[-1]) -> None:
        self.span = span
        self.done: deque[tuple[float, float | None, bool]] = deque()

    def add(self, at: float, runtime: float | None, ok: bool) -> None:
        self.done.append((at, runtime, ok))

    def prune(self, now: float) -> None:
        while self.done and self.done[0][0] < now - self.span:
            self.done.popleft()

    def rates(self, now: float) -> dict[str, float]:
        """Tasks per minute, averaged over the last 1, 5 and 15 minutes."""
        out = {}
        for seconds in WINDOWS:
            count = sum(1 for at, _, _ in self.done if at >= now - seconds)
            out[f"m{seconds // 60}"] = round(count * 60 / seconds, 2)
        return out

    def runtimes(self, now: float, seconds: float = 300) -> dict[str, float | None]:
        """Run time p50/p95 of the tasks that succeeded in the last five minutes."""
        values = sorted(
            r for at, r, ok in self.done if ok and r is not None and at >= now - seconds
        )
        return {"p50": _quantile(values, 0.5), "p95": _quantile(values, 0.95)}

    def failure_rate(self, now: float, seconds: float = 300) -> float | None:
        recent = [ok for at, _, ok in self.done if at >= now - seconds]
        return round(recent.count(False) / len(recent), 4) if recent else None


def _quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted ``values``."""
    if not values:
        return None
    rank = max(1, math.ceil(q * len(values)))
    return round(values[rank - 1], 3)


class Outcome(NamedTuple):
    """One task end, as every monitor that saw its event names it."""

    key: str  # task id, outcome and the worker's timestamp: the same in every monitor
    window: int
    outcome: str
    bucket: str  # histogram field for a success, else ""
    runtime: float
    at: float  # local monotonic time it was seen
    task_id: str = ""
    name: str = ""  # the Celery task name: the kind of a task that ran no job
    minute: int = 0  # of the worker's timestamp: the per-kind minute hash it counts in


@dataclass
class Pending:
    """Outcomes not yet written; they stay until a write succeeds (or grow too old)."""

    outcomes: deque[Outcome] = field(default_factory=lambda: deque(maxlen=MAX_PENDING))

    def add(
        self,
        event: dict[str, Any],
        outcome: str,
        runtime: float | None,
        at: float,
        name: str = "",
    ) -> None:
        stamp = float(event.get("timestamp") or 0.0)
        stamp = stamp if math.isfinite(stamp) else 0.0
        task_id = str(event.get("uuid", ""))
        key = f"{task_id}:{outcome}:{stamp!r}"
        bucket = bucket_of(runtime) if runtime is not None else ""
        window = int(stamp // COUNTED_WINDOW)
        self.outcomes.append(
            Outcome(
                key, window, outcome, bucket, runtime or 0.0, at, task_id, name, int(stamp // 60)
            )
        )

    def batch(
        self,
        keys: Keys,
        ops_keys: OpsKeys,
        now: float,
        read: Callable[[list[str]], list[Any]] | None = None,
    ) -> tuple[list[str], list[str]]:
        """KEYS after the first seven, and ARGV from the outcome count on; on a cluster
        ``read`` gives a record's kind, state and task (HMGET), for the script to take."""
        if read is None:
            read = _no_read
        while self.outcomes and now - self.outcomes[0].at > COUNTED_TTL - COUNTED_WINDOW:
            self.outcomes.popleft()  # its "counted" record may be gone: counting it risks twice
        batch = list(itertools.islice(self.outcomes, MAX_BATCH))  # one script stays short
        kind_keys = KindKeys(ops_keys.prefix, ops_keys.cluster)
        named = [ops_keys.counted(w) for w in sorted({o.window for o in batch})]
        named += [kind_keys.minute(m) for m in sorted({o.minute for o in batch})]
        if keys.cluster:  # the records are in other slots: read here, passed as values
            ids = sorted({o.task_id for o in batch})
            read_back = read([keys.job(task_id) for task_id in ids])
            records = {t: _record_ref(r) for t, r in zip(ids, read_back, strict=True)}
        else:  # the kind and end of a job's task, read by the script
            named += [keys.job(o.task_id) for o in batch]
        index: dict[str, int] = {}
        for key in named:
            index.setdefault(key, len(index) + 8)
        args = [str(len(batch))]
        for o in batch:
            ref = records[o.task_id] if keys.cluster else str(index[keys.job(o.task_id)])
            args += [
                str(index[ops_keys.counted(o.window)]), o.key, o.outcome, o.bucket,
                repr(round(o.runtime, 6)), ref, o.name[:200],
                str(index[kind_keys.minute(o.minute)]),
            ]  # fmt: skip
        return list(index), args

    def written(self, count: int) -> None:
        """Forget the first ``count`` outcomes: Redis has them."""
        for _ in range(min(count, len(self.outcomes))):
            self.outcomes.popleft()


class Monitor:
    """Keeps the state from Celery events and publishes snapshots while it leads."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        broker_queue: str = "jobcast",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.keys = settings.keys
        self.ops_keys = OpsKeys(settings.prefix, self.keys.cluster)
        self.kind_keys = KindKeys(settings.prefix, self.keys.cluster)
        self.kinds: list[dict[str, Any]] = []  # per-kind rows, read back from Redis
        self.broker_queue = broker_queue
        self.clock = clock
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.workers: dict[str, WorkerState] = {}
        self.names: dict[str, str] = {}  # task id -> name, from task-received
        self.window = Window()
        self.failures: deque[dict[str, Any]] = deque(maxlen=MAX_FAILURES)
        self.history: deque[tuple[int, int]] = deque(maxlen=HISTORY)  # (queued, done)/s
        self.finished_this_second = 0
        self.pending = Pending()
        self.leading: bool | None = None  # unknown until the first publish, which logs it
        self.urgent = True
        self.last_publish = float("-inf")
        self.last_sweep = float("-inf")
        self.last_redeliver = float("-inf")
        self.last_visible = float("-inf")
        self.last_write = clock()  # of the last publish that reached Redis
        self.last_sample = clock()
        self.percents: dict[str, int | None] = {}  # running task id -> its job's percent
        self.orphans: dict[str, float] = {}  # task id -> when its worker went offline
        self.app: Celery | None = None  # the broker, once run() follows it
        self._publish = client.register_script(PUBLISH_LUA)
        self.sweeper = Sweeper(settings, client)

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind.startswith("worker-"):
            self._on_worker(kind, event)
        elif kind.startswith("task-"):
            self._on_task(kind, event)

    def _worker(self, hostname: str) -> WorkerState:
        state = self.workers.get(hostname)
        if state is None:
            state = self.workers[hostname] = WorkerState(hostname, online=False)
        return state

    def _on_worker(self, kind: str, event: dict[str, Any]) -> None:
        state = self._worker(event["hostname"])
        pid = int(event.get("pid") or 0)
        if kind == "worker-offline":
            self._set_offline(state)
            return
        if kind == "worker-online" or (state.pid and pid and pid != state.pid):
            # A worker back under the same name (a container restart, faster than its
            # heartbeat timeout) holds none of what the old process held.
            self._set_offline(state)
        state.pid = pid or state.pid
        self._alive(state, event)
        state.freq = float(event.get("freq") or state.freq)
        state.active = int(event.get("active") or 0)
        state.processed = int(event.get("processed") or state.processed)
        state.loadavg = [round(float(x), 2) for x in event.get("loadavg") or []]

    def _alive(self, state: WorkerState, event: dict[str, Any]) -> None:
        """Any event from a worker is a sign of life, as good as a heartbeat."""
        if not state.online:
            state.online = True
            self.urgent = True
        state.last_heartbeat = self.clock()
        state.seen_at = float(event.get("timestamp") or time.time())

    def _set_offline(self, state: WorkerState) -> None:
        if state.online:
            state.online = False
            self.urgent = True
        # What it held is stranded in the broker until the visibility timeout: hand it out.
        for task_id in [*state.jobs, *state.reserved]:
            self.names.pop(task_id, None)
            self.orphans[task_id] = self.clock()
        state.jobs.clear()
        state.reserved.clear()
        state.active = 0

    def _on_task(self, kind: str, event: dict[str, Any]) -> None:
        task_id = event.get("uuid", "")
        hostname = event.get("hostname")
        if hostname and kind != "task-sent":  # task-sent comes from the client, not a worker
            self._alive(self._worker(hostname), event)
        if kind == "task-received":
            self.names[task_id] = event.get("name") or "?"
            while len(self.names) > 10000:  # events of tasks we never saw end
                self.names.pop(next(iter(self.names)))
            if hostname:
                self._worker(hostname).receive(task_id, self.clock())
        elif kind == "task-started" and hostname:
            name = self.names.get(task_id) or self._task_of(task_id)
            self._worker(hostname).start(task_id, name, self.clock())
        elif kind in (
            "task-succeeded",
            "task-failed",
            "task-retried",
            "task-revoked",
            "task-rejected",
        ):
            self._on_task_end(kind, task_id, hostname, event)

    def _on_task_end(
        self, kind: str, task_id: str, hostname: str | None, event: dict[str, Any]
    ) -> None:
        outcome = kind[5:]
        runtime = float(event.get("runtime") or 0.0) if outcome == "succeeded" else None
        state = self.workers.get(hostname) if hostname else None
        name = self.names.pop(task_id, None)
        self.orphans.pop(task_id, None)
        for worker in [state] if state else self.workers.values():
            name = worker.forget(task_id) or name
        self.pending.add(event, outcome, runtime, self.clock(), name or "")
        if runtime is not None:
            self.window.add(self.clock(), runtime, True)
            if state:
                state.succeeded += 1
        elif outcome == "failed":
            self.window.add(self.clock(), None, False)
            if state:
                state.failed += 1
            self.failures.appendleft(
                {
                    "id": task_id,
                    "task": name or "?",
                    "worker": hostname,
                    "error": str(event.get("exception") or "unknown error")[:300],
                    "at": int(float(event.get("timestamp") or time.time()) * 1000),
                }
            )
        if outcome in ("succeeded", "failed"):
            self.finished_this_second += 1

    # -- the timer ---------------------------------------------------------------------

    def tick(self) -> None:
        """Called between events (and at least every TICK_SECONDS): expire, sample, publish."""
        now = self.clock()
        for state in list(self.workers.values()):
            state.prune(now)
            silent = now - state.last_heartbeat
            if state.online and silent > state.timeout(self.settings.worker_timeout):
                log.info("monitor: %s missed its heartbeats; offline", state.hostname)
                self._set_offline(state)
            elif not state.online and silent > FORGET_OFFLINE_SECONDS:
                del self.workers[state.hostname]
        if self.urgent or now - self.last_publish >= self.settings.ops_interval:
            self.publish(now)
        if self.leading and now - self.last_sweep >= self.settings.sweep_seconds:
            self.last_sweep = now
            self.sweep()
        if self.leading and self.orphans and now - self.last_redeliver >= 1.0:
            self.last_redeliver = now
            self.redeliver(now)
        if self.leading and now - self.last_visible >= self._visible_every():
            self.last_visible = now
            self.keep_visible()

    def _visible_every(self) -> float:
        """Often enough that no live task's message reaches the visibility timeout."""
        return max(0.5, min(30.0, self.settings.visibility_timeout / 4))

    def redeliver(self, now: float) -> None:
        """Hand out again what offline workers held, once no live attempt holds the job."""
        for task_id, since in list(self.orphans.items()):
            if now - since > self.settings.visibility_timeout:
                del self.orphans[task_id]  # kombu has handed it out by now
        ready = self._unheld(list(self.orphans))
        if not ready or self.app is None:
            return
        with broker_channel(self.app) as channel:
            messages = in_flight(channel)
            for task_id in ready:
                del self.orphans[task_id]
                for message in messages.get(task_id, []):
                    restore(channel, message.tag)
                    log.warning("monitor: worker gone; %s %s runs again", message.task, task_id)
                if task_id not in messages:
                    self.sweeper.resend_stranded(task_id)

    def keep_visible(self) -> None:
        """Keep kombu from handing out a second copy of a job a live attempt runs.

        A live attempt proves itself by its lease, not by our view of the workers: a
        message kept visible on a stale view would be stranded.
        """
        if self.app is None:
            return
        with broker_channel(self.app) as channel:
            messages = [(t, m.tag) for t, ms in in_flight(channel).items() for m in ms]
            pipe = self.redis.pipeline(transaction=False)
            for task_id, _ in messages:
                pipe.exists(lease_key(self.keys, task_id))
            live = pipe.execute()
            keep_visible(
                channel, [tag for (_, tag), held in zip(messages, live, strict=True) if held]
            )

    def _unheld(self, task_ids: list[str]) -> list[str]:
        """The orphans no live attempt holds; forget those whose job ended meanwhile."""
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(lease_key(self.keys, task_id))
            pipe.hget(self.keys.job(task_id), "state")
        replies = pipe.execute()
        ready = []
        for task_id, held, state in zip(task_ids, replies[::2], replies[1::2], strict=True):
            if state in ENDED:
                del self.orphans[task_id]
            elif not held:  # a live attempt keeps its lease; a dead one's has run out
                ready.append(task_id)
        return ready

    def _task_of(self, task_id: str) -> str:
        """The task a job's record names: for a start whose ``task-received`` this monitor
        did not hear (it was starting up when the worker took the job)."""
        try:
            raw = self.redis.hget(self.keys.job(task_id), "task")
        except redis.RedisError:
            return "?"
        return raw.decode(errors="replace") if raw else "?"

    def seed(self, names: dict[str, str]) -> None:
        """Learn from Redis what runs where: a monitor that just started saw no start events."""
        pipe = self.redis.pipeline(transaction=False)
        for line in lines(self.redis, self.keys):
            pipe.zrange(line.running, 0, -1)
        ids = [m.decode() for running in pipe.execute() for m in running]
        for task_id in ids:
            pipe.hmget(self.keys.job(task_id), "state", "last:started", "task")
        now = self.clock()
        known = {t for w in self.workers.values() for t in w.jobs}
        for task_id, (state, started, task) in zip(ids, pipe.execute(), strict=True):
            hostname = _worker_of(started)
            if state != b"running" or not hostname or task_id in known:
                continue
            worker = self._worker(hostname)
            if worker.last_heartbeat == 0.0:
                # Never heard from yet: busy, so alive until it stays silent too long.
                worker.online, worker.last_heartbeat, self.urgent = True, now, True
            if worker.online:
                # The record names the task too: a job seen here before its events has one.
                name = names.get(task_id) or (task.decode(errors="replace") if task else "?")
                worker.start(task_id, name, now)
            else:
                self.orphans[task_id] = now

    def sweep(self) -> None:
        try:
            swept = self.sweeper.sweep()
        except OSError as exc:  # the media folder is unreadable: keep monitoring
            log.warning("monitor: retention sweep failed (%s)", exc)
            return
        if any(dataclasses.astuple(swept)):
            log.info("monitor: swept %s", swept)

    def publish(self, now: float) -> int:
        """Build the snapshot and publish it if we hold the lease; return its size."""
        self.urgent = False
        self.last_publish = now
        self.window.prune(now)
        queue = self._read_queue()
        while now - self.last_sample >= 1.0 or not self.history:
            # Depth: jobs in line, or broker messages when other tasks than jobs wait.
            depth = max(queue["broker"], queue["waiting"])
            self.history.append((depth, self.finished_this_second))
            self.finished_this_second = 0
            self.last_sample = max(now - 1.0, self.last_sample + 1.0)
        payload = json.dumps(self.snapshot(now, queue), separators=(",", ":")).encode()
        o, k, kk = self.ops_keys, self.keys, self.kind_keys
        counted_keys, counts = self.pending.batch(k, o, now, self._read_records)
        leading = self._publish(
            keys=[
                o.leader, k.ops_snapshot, o.tasks, o.runtime, kk.kinds, kk.tasks, kk.runtime,
                *counted_keys,
            ],
            args=[
                self.token, LEASE_MS, payload, k.ops, snapshot_frame(payload), COUNTED_TTL,
                MINUTE_TTL, *counts,
            ],
        )  # fmt: skip
        # Only now: a batch that did not reach Redis goes again with the next publish.
        self.pending.written(int(counts[0]))
        self.last_write = now
        if bool(leading) != self.leading:
            self.leading = bool(leading)
            log.info("monitor %s: %s", self.token, "leading" if leading else "standing by")
        return len(payload)

    def _read_records(self, names: list[str]) -> list[Any]:
        """Kind, state and task of each job record named (one pipeline)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(name, "kind", "state", "task")
        return list(pipe.execute())

    def _read_queue(self) -> dict[str, Any]:
        """Totals of every line, and per line (its broker list is its Celery queue's)."""
        running = [t for w in self.workers.values() for t in w.jobs]
        every = lines(self.redis, self.keys)
        pipe = self.redis.pipeline(transaction=False)
        for line in every:
            broker = self.broker_queue if line.name == DEFAULT_QUEUE else line.name
            pipe.llen(broker).zcard(line.queue).zcard(line.running)
        for task_id in running:
            pipe.hmget(self.keys.job(task_id), "state", "last:progress")
        # Per kind, from the hashes the last publishes wrote (so one second behind them).
        recent = self.kind_keys.recent(time.time())
        for key in recent:
            pipe.hgetall(key)
        pipe.hgetall(self.kind_keys.tasks).hgetall(self.keys.kind_waiting)
        *replies, kind_totals, waiting = pipe.execute()
        minutes, replies = replies[-len(recent) :], replies[: -len(recent)]
        self.kinds = kindstats.table(
            kindstats.merged([_text(m) for m in minutes]),
            kindstats.split(_text(kind_totals)),
            _text(waiting),
            RUNTIME_BUCKETS,
        )[: MAX_KINDS + 1]  # busiest first; the snapshot stays small however many kinds
        counts, records = replies[: 3 * len(every)], replies[3 * len(every) :]
        self.percents = {t: _percent(raw) for t, (_, raw) in zip(running, records, strict=True)}
        for task_id, (state, _) in zip(running, records, strict=True):
            if state in ENDED:  # we missed its end event
                for worker in self.workers.values():
                    worker.forget(task_id)
        per = {
            line.name: {"broker": int(b), "waiting": int(w), "running": int(r)}
            for line, b, w, r in zip(every, counts[::3], counts[1::3], counts[2::3], strict=True)
        }
        totals = {
            field: sum(numbers[field] for numbers in per.values())
            for field in ("broker", "waiting", "running")
        }
        return {**totals, "lines": per}

    def snapshot(self, now: float, queue: dict[str, Any]) -> dict[str, Any]:
        return {
            "v": 1,
            "at": int(time.time() * 1000),
            "by": self.token,
            "workers": [self.workers[name].as_json(self.percents) for name in sorted(self.workers)],
            "queue": queue,
            "rate": self.window.rates(now),
            "runtime": self.window.runtimes(now),
            "failRate": self.window.failure_rate(now),
            "failures": list(self.failures),
            "kinds": self.kinds,
            "hist": {
                "q": [q for q, _ in self.history],
                "done": [d for _, d in self.history],
            },
        }

    # -- running -----------------------------------------------------------------------

    def run(self, app: Celery, stop: Callable[[], bool] = lambda: False) -> None:
        """Consume events until ``stop()``; reconnect with backoff when the broker drops."""
        backoff = 0.5
        self.app = app
        while not stop():
            try:
                with app.connection_for_read() as conn:
                    with broker_channel(app) as channel:
                        self.seed({t: m[0].task for t, m in in_flight(channel).items()})
                    receiver = app.events.Receiver(conn, handlers={"*": self.on_event})
                    receiver.on_iteration = self._iteration(receiver, stop)
                    for _ in receiver.consume(safety_interval=TICK_SECONDS, wakeup=True):
                        backoff = 0.5
            except (OperationalError, redis.RedisError, OSError) as exc:
                # The broker/Redis went away or refused a write (maxmemory, READONLY): keep
                # the state, reconnect, ask for heartbeats.
                log.warning("monitor: connection lost (%s); reconnecting", exc)
                time.sleep(backoff)  # backing off from a broker that is down
                backoff = min(backoff * 2, 5.0)

    def resign(self) -> None:
        """Give up the lease (on a clean stop) so a standby takes over at once."""
        self.redis.eval(RESIGN_LUA, 1, self.ops_keys.leader, self.token)

    def _iteration(self, receiver: Any, stop: Callable[[], bool]) -> Callable[[], None]:
        calls = 0

        def on_iteration() -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                # The event subscription is made by the first drain, after Celery's own
                # wake-up call: heartbeats answering that one may have been missed, and so
                # may the start events of jobs that began before it. Ask again, and read
                # again from Redis what runs where.
                receiver.wakeup_workers()
                self.seed(dict(self.names))
                # Only from here is an event published by a worker seen (an end event
                # sent before it is lost to this monitor): what tests and operators wait on.
                log.info("monitor %s: following events", self.token)
            receiver.should_stop = stop()
            self.tick()

        return on_iteration


def _worker_of(started: bytes | None) -> str | None:
    """The worker named by a job's ``started`` event data."""
    try:
        worker = json.loads(started or b"").get("worker")
    except (ValueError, AttributeError):
        return None  # no start event, or not the JSON the reporter writes
    return worker if isinstance(worker, str) and worker else None


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}


def _percent(raw: bytes | None) -> int | None:
    if not raw:
        return None
    try:
        value = json.loads(raw).get("percent")
    except (ValueError, AttributeError):
        return None  # not the JSON the reporter writes: show no percent
    return int(value) if isinstance(value, int | float) else None


def main() -> int:
    """``jobcast monitor``: follow the events until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    app = create_celery(settings)
    client = settings.store.client(
        socket_keepalive=True, socket_timeout=10, health_check_interval=30
    )
    monitor = Monitor(settings, client, broker_queue=app.conf.task_default_queue)
    if settings.monitor_watchdog_seconds > 0:
        threading.Thread(
            target=watchdog, args=(monitor, settings.monitor_watchdog_seconds), daemon=True
        ).start()
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    log.info("monitor %s: following %s", monitor.token, settings.store.describe())
    monitor.run(app, stop=lambda: bool(stopping))
    try:
        monitor.resign()
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # Redis is gone: the lease expires by itself
    log.info("monitor %s: stopped", monitor.token)
    return 0


def watchdog(monitor: Monitor, seconds: float) -> None:
    """Exit the process once no publish reached Redis for ``seconds``: stuck or cut off."""
    seconds = max(seconds, 3 * monitor.settings.ops_interval)  # publishes come this often
    ticker = threading.Event()
    while not ticker.wait(min(5.0, seconds / 4)):
        silent = monitor.clock() - monitor.last_write
        if silent > seconds:
            log.error("monitor: nothing reached Redis for %.0f s; exiting to be restarted", silent)
            logging.shutdown()
            os._exit(3)


def healthcheck(max_age: float = 15.0) -> int:
    """Exit status for a container healthcheck: 0 while a snapshot younger than ``max_age``
    is in Redis (some monitor leads), under the configured ``JOBCAST_PREFIX``."""
    settings = Settings.from_env()
    client = settings.store.client(socket_timeout=3, socket_connect_timeout=3)
    try:
        raw = client.get(settings.keys.ops_snapshot)
    except (redis.ConnectionError, redis.TimeoutError):
        return 1
    finally:
        client.close()
    return 0 if raw and time.time() - json.loads(raw)["at"] / 1000 < max_age else 1
