"""The monitor: follow Celery's event stream, publish a compact ops snapshot every second.

    workers ──worker-heartbeat / task-* events──▶ EventReceiver ──▶ Monitor (state in memory)
                                                                       │ tick, every ~0.25 s
    Redis ◀── one Lua call: lease check · SET ops:snapshot · PUBLISH ops · counters ──┘

* State: :class:`WorkerState` per hostname (online, active jobs, counts, load, last
  heartbeat), a :class:`Window` of finished tasks (throughput over 1/5/15 min, run time
  p50/p95, failure rate), the latest failures and a one-minute history for sparklines.
* A worker is offline at once on ``worker-offline``, or when no heartbeat came for
  ``worker_timeout`` (default 2.5 of its announced intervals): the tick checks that even
  while no events arrive, so a SIGKILLed worker goes offline too.
* The snapshot goes out every ``ops_interval`` seconds, and at once when a worker
  appears or disappears. The published payload is a finished SSE frame without ``id:``,
  so web processes forward it untouched.
* The leader also runs the retention sweep (:mod:`tasks.retention`) every
  ``sweep_seconds``: old images, and ghosts in the line.
* Two monitors by mistake: both follow the events, but only the holder of a lease
  (``ops:leader``, renewed by every publish, expiring after 5 s) writes. The lease check
  and all writes are one Lua call, so a monitor that lost the lease cannot write a stale
  snapshot or count a task twice; the standby takes over when the leader dies.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import os
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from tasks.app import create_celery
from tasks.config import Settings
from tasks.keys import Keys
from tasks.retention import Sweeper

log = logging.getLogger("jobcast.monitor")

LEASE_MS = 5000
TICK_SECONDS = 0.25  # how often the receiver returns to us when no events come
FORGET_OFFLINE_SECONDS = 600.0  # an offline worker stays listed this long
MAX_FAILURES = 10
HISTORY = 60  # seconds of sparkline history in the snapshot
WINDOWS = (60, 300, 900)
RUNTIME_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Upper bounds (seconds) of the task run time histogram that ``/metrics`` reports."""

# KEYS: leader, snapshot, task counters hash, runtime histogram hash
# ARGV: token, lease ms, snapshot json, channel, frame, then counter field/increment pairs
# for the counters hash (prefix "t:") or the histogram hash (prefix "h:"), "h:sum" a float.
PUBLISH_LUA = """
local leader = redis.call('GET', KEYS[1])
if leader and leader ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
for i = 6, #ARGV, 2 do
  local kind, name = string.sub(ARGV[i], 1, 2), string.sub(ARGV[i], 3)
  if kind == 't:' then redis.call('HINCRBY', KEYS[3], name, ARGV[i + 1])
  elseif name == 'sum' then redis.call('HINCRBYFLOAT', KEYS[4], name, ARGV[i + 1])
  else redis.call('HINCRBY', KEYS[4], name, ARGV[i + 1]) end
end
return 1
"""

RESIGN_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class OpsKeys:
    """The monitor's keys besides ``Keys.ops``/``Keys.ops_snapshot``."""

    prefix: str = "jobcast:"

    @property
    def leader(self) -> str:
        return f"{self.prefix}ops:leader"

    @property
    def tasks(self) -> str:
        """Hash: Celery task outcomes (succeeded, failed, retried, revoked, rejected)."""
        return f"{self.prefix}ops:tasks"

    @property
    def runtime(self) -> str:
        """Hash: run time histogram, ``le:<bound>`` counts (not cumulative), sum, count."""
        return f"{self.prefix}ops:runtime"


def snapshot_frame(payload: str | bytes) -> bytes:
    """The SSE frame a snapshot travels in (no ``id:``: snapshots are never replayed)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return b"event: snapshot\ndata: " + data + b"\n\n"


def bucket_of(seconds: float) -> str:
    """The histogram field a run time falls in: ``le:<bound>`` or ``le:+Inf``."""
    at = bisect.bisect_left(RUNTIME_BUCKETS, seconds)
    return f"le:{RUNTIME_BUCKETS[at]}" if at < len(RUNTIME_BUCKETS) else "le:+Inf"


@dataclass
class WorkerState:
    hostname: str
    online: bool = True
    freq: float = 2.0
    last_heartbeat: float = 0.0  # local monotonic time of the last event from it
    seen_at: float = 0.0  # wall time of that event, for display
    active: int = 0
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    loadavg: list[float] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # task id -> task name, running here

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
                {"id": task_id, "task": name, "pct": percents.get(task_id)}
                for task_id, name in self.jobs.items()
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


@dataclass
class Pending:
    """Counter increments gathered between two publishes; written only by the leader."""

    values: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, amount: float = 1) -> None:
        self.values[name] = self.values.get(name, 0) + amount

    def args(self) -> list[str]:
        out: list[str] = []
        for name, amount in self.values.items():
            out += [name, repr(round(amount, 6)) if name == "h:sum" else str(int(amount))]
        return out


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
        self.keys = Keys(settings.prefix)
        self.ops_keys = OpsKeys(settings.prefix)
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
        self.leading = False
        self.urgent = True
        self.last_publish = float("-inf")
        self.last_sweep = float("-inf")
        self.last_sample = clock()
        self.percents: dict[str, int | None] = {}  # running task id -> its job's percent
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
        if kind == "worker-offline":
            self._set_offline(state)
            return
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
        for task_id in state.jobs:
            self.names.pop(task_id, None)
        state.jobs.clear()
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
        elif kind == "task-started" and hostname:
            state = self._worker(hostname)
            state.jobs[task_id] = self.names.get(task_id, "?")
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
        self.pending.add("t:" + outcome)
        state = self.workers.get(hostname) if hostname else None
        name = self.names.pop(task_id, None)
        for worker in [state] if state else self.workers.values():
            name = worker.jobs.pop(task_id, None) or name
        if outcome == "succeeded":
            runtime = float(event.get("runtime") or 0.0)
            self.window.add(self.clock(), runtime, True)
            self.pending.add("h:" + bucket_of(runtime))
            self.pending.add("h:count")
            self.pending.add("h:sum", runtime)
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
        counters = self.pending.args()
        self.pending = Pending()
        o, k = self.ops_keys, self.keys
        leading = self._publish(
            keys=[o.leader, k.ops_snapshot, o.tasks, o.runtime],
            args=[self.token, LEASE_MS, payload, k.ops, snapshot_frame(payload), *counters],
        )
        if bool(leading) != self.leading:
            self.leading = bool(leading)
            log.info("monitor %s: %s", self.token, "leading" if leading else "standing by")
        return len(payload)

    def _read_queue(self) -> dict[str, Any]:
        running = [t for w in self.workers.values() for t in w.jobs]
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.broker_queue)
        pipe.zcard(self.keys.queue)
        pipe.zcard(self.keys.running)
        for task_id in running:
            pipe.hget(self.keys.job(task_id), "last:progress")
        broker, waiting, busy, *progress = pipe.execute()
        self.percents = {t: _percent(raw) for t, raw in zip(running, progress, strict=True)}
        return {"broker": int(broker), "waiting": int(waiting), "running": int(busy)}

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
            "hist": {
                "q": [q for q, _ in self.history],
                "done": [d for _, d in self.history],
            },
        }

    # -- running -----------------------------------------------------------------------

    def run(self, app: Celery, stop: Callable[[], bool] = lambda: False) -> None:
        """Consume events until ``stop()``; reconnect with backoff when the broker drops."""
        backoff = 0.5
        while not stop():
            try:
                with app.connection_for_read() as conn:
                    receiver = app.events.Receiver(conn, handlers={"*": self.on_event})
                    receiver.on_iteration = self._iteration(receiver, stop)
                    for _ in receiver.consume(safety_interval=TICK_SECONDS, wakeup=True):
                        backoff = 0.5
            except (OperationalError, redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                # The broker/Redis went away: keep the state, reconnect, ask for heartbeats.
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
                # wake-up call: heartbeats answering that one may have been missed.
                receiver.wakeup_workers()
            receiver.should_stop = stop()
            self.tick()

        return on_iteration


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
    client = redis.Redis.from_url(
        settings.redis_url, socket_keepalive=True, socket_timeout=10, health_check_interval=30
    )
    monitor = Monitor(settings, client, broker_queue=app.conf.task_default_queue)
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    log.info("monitor %s: following %s", monitor.token, settings.redis_url)
    monitor.run(app, stop=lambda: bool(stopping))
    try:
        monitor.resign()
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # Redis is gone: the lease expires by itself
    log.info("monitor %s: stopped", monitor.token)
    return 0
