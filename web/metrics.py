"""``GET /metrics``: Prometheus text format, the same answer from every web process.

Gunicorn runs several processes and any one answers a scrape, so nothing is counted in
a per-process registry. Every number is read from Redis at scrape time:

* queue depth, jobs queued/running and finished, events published: Jobcast's own keys,
  added up over every line, and per line (``jobcast_line_*{queue="<Celery queue>"}``);
* workers, task outcomes and the task run time histogram: what the monitor keeps
  (its snapshot, and the counters it writes while it holds the lease);
* per job kind (``jobcast_kind_*{kind}``): outcomes, run time histogram, jobs waiting,
  and the last five minutes' failure ratio and throughput (:mod:`tasks.kindstats`);
* open SSE streams and delivered frames live in each process's hub, so each process
  reports them to Redis every ``FLUSH_SECONDS`` (and on scrape): streams as a field of
  ``web:streams`` with a timestamp, delivered frames as increments of one counter, which
  stays monotonic when a process dies. Every report also drops the fields not refreshed
  for ``STALE_MS`` and gives the hash that TTL, so a stopped process's field is gone
  within ``STALE_MS`` (+ one flush) whether or not anyone scrapes.

This also holds across nodes, which prometheus-client's multiprocess mode (files in a
directory shared by the processes of one host) would not.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import gevent
import redis
from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from tasks import kindstats
from tasks.keys import DEFAULT_QUEUE
from tasks.kindstats import KindKeys
from tasks.monitor import RUNTIME_BUCKETS, OpsKeys
from web.extension import Jobcast
from web.ops import require_token

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0
STALE_MS = 10_000  # a process that has not reported for this long is gone
TASK_OUTCOMES = ("succeeded", "failed", "retried", "revoked", "rejected")

# KEYS: streams hash, counters hash; ARGV: process name, streams, now (ms), stale (ms),
# delivered increment. One process's report, and the end of every process that stopped.
REPORT_LUA = """
local now, stale = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local at = tonumber(string.match(all[i + 1], ' (%d+)$') or '0')
  if now - at >= stale then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('PEXPIRE', KEYS[1], stale)
if tonumber(ARGV[5]) > 0 then redis.call('HINCRBY', KEYS[2], 'delivered', ARGV[5]) end
"""


class WebStats:
    """This process's hub numbers, reported to Redis for every process's /metrics."""

    def __init__(self, ext: Jobcast) -> None:
        self.ext = ext
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.reported = 0  # delivered frames already added to the shared counter
        self.greenlet: gevent.Greenlet | None = None
        self._report = ext.redis.register_script(REPORT_LUA)

    @property
    def streams_key(self) -> str:
        return self.ext.settings.keys.glob("web:streams")

    @property
    def counters_key(self) -> str:
        return self.ext.settings.keys.glob("web:stats")

    def start(self) -> None:
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._flush_forever)

    def flush(self) -> None:
        hub = self.ext.hub
        delta = hub.delivered - self.reported
        self._report(
            keys=[self.streams_key, self.counters_key],
            args=[self.name, hub.streams, int(time.time() * 1000), STALE_MS, delta],
        )
        self.reported += delta

    def _flush_forever(self) -> None:
        while True:
            gevent.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except redis.RedisError as exc:  # also OOM or READONLY: never stop reporting
                log.info("metrics: could not report this process's numbers (%s)", exc)


class JobcastCollector:
    """Reads everything from Redis in one pipeline per scrape."""

    def __init__(self, ext: Jobcast, stats: WebStats) -> None:
        self.ext = ext
        self.stats = stats
        self.keys = ext.settings.keys
        self.ops_keys = OpsKeys(ext.settings.prefix, self.keys.cluster)

    def collect(self) -> Iterator[Metric]:
        k, o, stats = self.keys, self.ops_keys, self.stats
        lines = k.all_lines(self.ext.redis.smembers(k.lines))
        pipe = self.ext.redis.pipeline(transaction=False)
        for line in lines:
            pipe.zcard(line.queue).zcard(line.running).llen(self._broker_list(line.name))
            pipe.hgetall(line.stats)
        pipe.get(k.ops_snapshot)
        pipe.hgetall(o.tasks)
        pipe.hgetall(o.runtime)
        pipe.hgetall(stats.counters_key)
        pipe.hgetall(stats.streams_key)
        pipe.hget(k.counters, "published")  # the default line's stats on one Redis
        kk = KindKeys(self.ext.settings.prefix, self.keys.cluster)
        recent = kk.recent(time.time())
        pipe.hgetall(kk.tasks).hgetall(kk.runtime).hgetall(k.kind_waiting)
        for key in recent:
            pipe.hgetall(key)
        replies = pipe.execute()
        minutes = [_text(m) for m in replies[len(replies) - len(recent) :]]
        (
            *per_line,
            snap,
            tasks,
            runtime,
            web,
            streams,
            published,
            kind_tasks,
            kind_runtime,
            waiting,
        ) = replies[: len(replies) - len(recent)]
        numbers = [
            LineNumbers(line.name, int(queued), int(busy), int(broker), _text(line_stats))
            for line, queued, busy, broker, line_stats in zip(
                lines, per_line[::4], per_line[1::4], per_line[2::4], per_line[3::4], strict=True
            )
        ]
        yield from self._jobs(numbers, float(published or 0))
        yield from self._workers(json.loads(snap) if snap else None)
        yield from self._tasks(_text(tasks), _text(runtime))
        yield from self._web(_text(web), _text(streams))
        yield from self._kinds(_text(kind_tasks), _text(kind_runtime), _text(waiting), minutes)

    def _broker_list(self, line: str) -> str:
        """The broker list of a line's Celery queue."""
        return str(self.ext.celery.conf.task_default_queue) if line == DEFAULT_QUEUE else line

    def _jobs(self, lines: list[LineNumbers], published: float) -> Iterator[Metric]:
        queued = sum(line.queued for line in lines)
        running = sum(line.running for line in lines)
        jobs = GaugeMetricFamily(
            "jobcast_jobs", "Jobs waiting in line or running, every line.", labels=["state"]
        )
        jobs.add_metric(["queued"], queued)
        jobs.add_metric(["running"], running)
        yield jobs
        finished = CounterMetricFamily(
            "jobcast_jobs_finished", "Jobs that reached a final state.", labels=["state"]
        )
        finished.add_metric(["succeeded"], sum(float(x.stats.get("done", 0)) for x in lines))
        for state in ("failed", "cancelled"):
            counted = [float(x.stats[state]) for x in lines if state in x.stats]
            if counted:  # counted only where the event log counts them
                finished.add_metric([state], sum(counted))
        yield finished
        depth = GaugeMetricFamily("jobcast_queue_depth", "Waiting work.", labels=["queue"])
        # Celery messages not yet taken by a worker, and jobs in line (the sorted sets).
        depth.add_metric(["broker"], sum(line.broker for line in lines))
        depth.add_metric(["waiting"], queued)
        yield depth
        per_line = GaugeMetricFamily(
            "jobcast_line_jobs", "Jobs waiting or running, per line (Celery queue).",
            labels=["queue", "state"],
        )  # fmt: skip
        broker = GaugeMetricFamily(
            "jobcast_line_broker_messages", "Celery messages waiting in a line's queue.",
            labels=["queue"],
        )  # fmt: skip
        for line in lines:
            per_line.add_metric([line.name, "queued"], line.queued)
            per_line.add_metric([line.name, "running"], line.running)
            broker.add_metric([line.name], line.broker)
        yield per_line
        yield broker
        yield CounterMetricFamily(
            "jobcast_events_published", "Job events appended and published.",
            value=float(published),
        )  # fmt: skip

    def _workers(self, snap: dict[str, Any] | None) -> Iterator[Metric]:
        workers = (snap or {}).get("workers", [])
        online = sum(1 for w in workers if w.get("up"))
        yield GaugeMetricFamily("jobcast_workers_online", "Celery workers online.", value=online)
        yield GaugeMetricFamily(
            "jobcast_workers_offline", "Workers recently seen, now offline.",
            value=len(workers) - online,
        )  # fmt: skip
        age = time.time() - snap["at"] / 1000 if snap else float("nan")
        yield GaugeMetricFamily(
            "jobcast_monitor_snapshot_age_seconds", "Age of the monitor's latest snapshot.",
            value=age,
        )  # fmt: skip

    def _tasks(self, tasks: dict[str, str], runtime: dict[str, str]) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "jobcast_tasks", "Celery task outcomes seen by the monitor.", labels=["outcome"]
        )
        for outcome in TASK_OUTCOMES:
            outcomes.add_metric([outcome], float(tasks.get(outcome, 0)))
        yield outcomes
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound in RUNTIME_BUCKETS:
            total += int(runtime.get(f"le:{bound}", 0))
            buckets.append((floatToGoString(bound), total))
        buckets.append(("+Inf", int(runtime.get("count", 0))))
        yield HistogramMetricFamily(
            "jobcast_task_runtime_seconds", "Run time of succeeded tasks.",
            buckets=buckets, sum_value=float(runtime.get("sum", 0)),
        )  # fmt: skip

    def _kinds(
        self,
        tasks: dict[str, str],
        runtime: dict[str, str],
        waiting: dict[str, str],
        minutes: list[dict[str, str]],
    ) -> Iterator[Metric]:
        """Per job kind (tasks/kindstats.py): outcomes, run times, the line, and the last
        five minutes' failure ratio and throughput."""
        outcomes = CounterMetricFamily(
            "jobcast_kind_jobs", "Finished tasks per job kind, by how they ended.",
            labels=["kind", "outcome"],
        )  # fmt: skip
        for kind, counts in sorted(kindstats.split(tasks).items()):
            for outcome, n in sorted(counts.items()):
                outcomes.add_metric([kind, outcome], n)
        yield outcomes
        histogram = HistogramMetricFamily(
            "jobcast_kind_runtime_seconds", "Run time of succeeded jobs, per kind.",
            labels=["kind"],
        )  # fmt: skip
        for kind, fields in sorted(kindstats.split(runtime).items()):
            histogram.add_metric([kind], _cumulative(fields), sum_value=fields.get("sum", 0.0))
        yield histogram
        line = GaugeMetricFamily("jobcast_kind_waiting", "Jobs waiting, per kind.", labels=["kind"])
        rows = kindstats.table(kindstats.merged(minutes), {}, waiting, RUNTIME_BUCKETS)
        ratio = GaugeMetricFamily(
            "jobcast_kind_failure_ratio",
            "Failed of the jobs that succeeded or failed in the last 5 minutes, per kind.",
            labels=["kind"],
        )
        rate = GaugeMetricFamily(
            "jobcast_kind_finished_per_minute",
            "Jobs finished per minute over the last 5 minutes, per kind.",
            labels=["kind"],
        )
        for row in rows:
            line.add_metric([row["kind"]], row["waiting"])
            rate.add_metric([row["kind"]], row["rate"])
            if row["failRate"] is not None:
                ratio.add_metric([row["kind"]], row["failRate"])
        yield line
        yield ratio
        yield rate

    def _web(self, web: dict[str, str], streams: dict[str, str]) -> Iterator[Metric]:
        now = int(time.time() * 1000)
        live = {name: value.split() for name, value in streams.items()}
        live = {name: v for name, v in live.items() if now - int(v[1]) < STALE_MS}
        if len(live) < len(streams):
            self.ext.redis.hdel(self.stats.streams_key, *(set(streams) - set(live)))
        yield GaugeMetricFamily(
            "jobcast_sse_streams", "Open SSE streams, all web processes.",
            value=sum(int(v[0]) for v in live.values()),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "jobcast_web_processes", "Web processes reporting.", value=len(live)
        )
        yield CounterMetricFamily(
            "jobcast_events_delivered", "SSE frames handed to streams, all web processes.",
            value=float(web.get("delivered", 0)),
        )  # fmt: skip


class LineNumbers(NamedTuple):
    name: str
    queued: int
    running: int
    broker: int
    stats: dict[str, str]


def _cumulative(fields: dict[str, float]) -> list[tuple[str, float]]:
    """Prometheus's cumulative buckets from our per-bucket counts."""
    buckets: list[tuple[str, float]] = []
    total = 0.0
    for bound in RUNTIME_BUCKETS:
        total += fields.get(f"le:{bound}", 0.0)
        buckets.append((floatToGoString(bound), total))
    buckets.append(("+Inf", fields.get("count", total)))
    return buckets


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


bp = Blueprint("metrics", __name__)

# Where an app keeps its collector and this process's reporter (``app.extensions``). The
# registry is our own, never prometheus-client's global one, so a host app that exports
# its own metrics keeps them, and nothing here is registered twice.
STATE = "jobcast.metrics"


@dataclass
class Metrics:
    stats: WebStats
    registry: CollectorRegistry


def init_app(app: Flask) -> None:
    """Build the app's collector; each process starts reporting on its first request to
    a Jobcast route (:func:`start_reporting`)."""
    ext: Jobcast = app.extensions["jobcast"]
    stats = WebStats(ext)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobcastCollector(ext, stats))
    app.extensions[STATE] = Metrics(stats, registry)


def start_reporting() -> None:
    state: Metrics = current_app.extensions[STATE]
    state.stats.start()


@bp.get("/metrics")
def metrics() -> Response:
    require_token()
    state: Metrics = current_app.extensions[STATE]
    state.stats.flush()
    return Response(generate_latest(state.registry), content_type=CONTENT_TYPE_LATEST)
