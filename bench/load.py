"""Load tool: N live SSE streams over J jobs, E events per job at R events/s, per subject.

    python -m bench.load --subjects floor,jobcast,flasksse,polling \\
        --streams 1000 --jobs 1000 --rate 2 --events 20 --rounds 3

For every round and subject (subjects alternate, rotating the order each round):
a fresh gunicorn ``-k gevent -w 1`` on core 1, load clients (``bench.client``) on
core 0 with Redis and this process. Stream i watches job ``i % J``. Phases:

1. connect: all streams open and subscribed (SSE headers seen and/or ``PUBSUB NUMSUB``);
   server CPU and RSS are read before and after.
2. publish: E events per job, spread evenly at J·R events/s, each carrying
   ``sentAt = time.time()`` (``JobEvents.publish``, or flask-sse's own JSON message).
3. drain: until every stream has every event, or 3 s pass with nothing new (cap 30 s).

Then it prints one table per run (medians over rounds, ratios vs the floor).

``--create post`` makes the Jobcast subjects' jobs the way users do: ``POST /imagine``
(202, the job waits in the line with its Celery message; no worker runs), streams open
while every job waits (each stream follows its place in line), and the publisher plays
the workers: each job's ``started`` goes out just before its first ``progress``, so with
``--rate 1`` every job leaves the line, in order, within the first second of the publish
phase. The default (``--create started``) publishes ``started`` before any stream opens:
those jobs never enter the line. The floor subjects have no ``POST``: they always do that.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import math
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from bench import procs
from tasks.events import JobEvents

STREAMS_PER_CLIENT = 5000
DRAIN_SECONDS = 3.0
DRAIN_CAP_SECONDS = 30.0
LATE_SECONDS = 0.020  # events slower than this are counted and placed in time (JSON: late*)


@dataclass(frozen=True)
class Subject:
    name: str
    app: str
    path: str  # format string with {job}
    mode: str = "sse"  # or "poll"
    publisher: str = "jobevents"  # or "flasksse"
    per_stream_subscription: bool = False
    wait_headers: bool = True
    worker: str = "gevent"  # gunicorn's -k
    env: tuple[tuple[str, str], ...] = ()  # settings of its own, on top of the load's

    def channel(self, job: str) -> str:
        if self.publisher == "flasksse":
            return f"sse:{job}"
        return f"jobcast:job:{{{job}}}"


SUBJECTS = {
    s.name: s
    for s in [
        Subject("floor", "bench.floor_app:app", "/imagine/{job}/stream"),
        Subject("jobcast", "web:create_app()", "/imagine/{job}/stream"),
        # The same app with every frame written by its stream's greenlet and gunicorn
        # (JOBCAST_DIRECT_SEND=false): what the hub's direct sends save.
        Subject(
            "jobcast-stock",
            "web:create_app()",
            "/imagine/{job}/stream",
            env=(("JOBCAST_DIRECT_SEND", "false"),),
        ),
        # The same app under our worker class (one send() per frame, no getsockopt).
        Subject(
            "jobcast-fastsend",
            "web:create_app()",
            "/imagine/{job}/stream",
            worker="web.gworker.GeventWorker",
        ),
        Subject(
            "floor-fastsend",
            "bench.floor_app:app",
            "/imagine/{job}/stream",
            worker="web.gworker.GeventWorker",
        ),
        Subject(
            "flasksse",
            "bench.flasksse_app:app",
            "/stream?channel=sse:{job}",
            publisher="flasksse",
            per_stream_subscription=True,
            wait_headers=False,
        ),
        Subject("polling", "bench.floor_app:app", "/imagine/{job}", mode="poll"),
        Subject("polling-jobcast", "web:create_app()", "/imagine/{job}", mode="poll"),
    ]
}


@dataclass
class Load:
    streams: int
    jobs: int
    rate: float
    events: int
    interval: float = 0.5
    create: str = "started"  # or "post": jobs made by POST /imagine, waiting in line
    workers: int = 1  # gunicorn -w: one on the server core, more share both cores


@dataclass
class Published:
    """What the publisher sent: per job, event key -> (index, sentAt)."""

    sent: dict[str, dict[Any, tuple[int, float]]] = field(default_factory=dict)
    call_seconds: list[float] = field(default_factory=list)
    round_trips: int = 0


class CountingConnection(redis.Connection):
    """Counts replies read, i.e. Redis round trips made by the publisher."""

    replies = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.replies += 1
        return super().read_response(*args, **kwargs)


def publisher_client(url: str) -> redis.Redis:
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection, protocol=2)
    return redis.Redis(connection_pool=pool)


def new_jobs(count: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(count)]


def start_jobs(subject: Subject, client: redis.Redis, jobs: list[str]) -> None:
    """Make the jobs streamable (hash exists, state running) with a ``started`` event."""
    if subject.publisher != "jobevents":
        return
    api = JobEvents(client)
    for job in jobs:
        api.publish(job, "started", {"worker": "bench"})


POST_BODY = json.dumps({"prompt": "bench", "width": 64, "height": 64, "steps": 10})


def posts_jobs(subject: Subject, load: Load) -> bool:
    """Whether this subject's jobs are made by POST /imagine and wait in the line."""
    return load.create == "post" and subject.app == "web:create_app()"


def post_jobs(port: int, count: int) -> list[str]:
    """``count`` jobs made as users make them: ``POST /imagine`` on one keep-alive
    connection; their ids in the order of their tickets."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    jobs = []
    try:
        for _ in range(count):
            conn.request("POST", "/imagine", POST_BODY, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            body = reply.read()
            if reply.status != 202:
                raise RuntimeError(f"POST /imagine answered {reply.status}: {body[:300]!r}")
            jobs.append(json.loads(body)["jobId"])
    finally:
        conn.close()
    return jobs


def publish(subject: Subject, client: redis.Redis, jobs: list[str], load: Load) -> Published:
    """E events per job, evenly spread at J*R events/s; returns what was sent. Jobs made
    by POST get their ``started`` (as a worker takes them) just before their first event."""
    out = Published(sent={job: {} for job in jobs})
    api = JobEvents(client)
    gc.disable()  # a full collection between an event's sentAt and its publish adds to it
    try:
        return _publish(subject, api, client, jobs, load, out)
    finally:
        gc.enable()


def _publish(
    subject: Subject,
    api: JobEvents,
    client: redis.Redis,
    jobs: list[str],
    load: Load,
    out: Published,
) -> Published:
    gap = 1.0 / (len(jobs) * load.rate)
    start = time.perf_counter() + 0.05
    replies_before = CountingConnection.replies
    waiting = posts_jobs(subject, load)
    for n, (i, job) in enumerate((i, job) for i in range(load.events) for job in jobs):
        delay = start + n * gap - time.perf_counter()
        if delay > 0.0005:
            time.sleep(delay)
        if waiting and i == 0:
            api.publish(job, "started", {"worker": "bench"})  # it leaves the line
        percent = (i + 1) * 100 // load.events
        sent_at = time.time()
        data = {"percent": percent, "step": i + 1, "steps": load.events, "sentAt": sent_at}
        t0 = time.perf_counter()
        if subject.publisher == "jobevents":
            key: Any = api.publish(job, "progress", data)
        else:
            key = str(i + 1)
            message = {"data": data, "type": "progress", "id": key}
            client.publish(subject.channel(job), json.dumps(message))
        out.call_seconds.append(time.perf_counter() - t0)
        out.sent[job][percent if subject.mode == "poll" else key] = (i, sent_at)
    out.round_trips = CountingConnection.replies - replies_before
    return out


def wait_subscribed(subject: Subject, rds: procs.RedisServer, jobs: list[str], n: int) -> bool:
    """Until Redis shows the expected subscriptions: one per job, or one per stream."""
    if subject.mode == "poll":
        return True
    channels = [subject.channel(j) for j in jobs]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = [
            count
            for chunk in _chunks(channels, 1000)
            for _, count in rds.client.pubsub_numsub(*chunk)
        ]
        if subject.per_stream_subscription:
            if sum(counts) >= n:
                return True
        elif all(counts):
            return True
        time.sleep(0.1)
    return False


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def warm_up(subject: Subject, server: procs.Server, client: redis.Redis) -> None:
    """One request on each route, so lazy imports and the hub are not billed to streams."""
    job = new_jobs(1)[0]
    start_jobs(subject, client, [job])
    procs.http_status(server.port, subject.path.format(job=job), timeout=0.3)
    procs.http_status(server.port, f"/imagine/{job}", timeout=0.3)


def run_case(
    subject: Subject,
    load: Load,
    rds: procs.RedisServer,
    env: dict[str, str],
    profile: str | None = None,
    profile_connect: str | None = None,
) -> dict[str, Any]:
    """One subject, one round: connect, publish, drain, measure."""
    rds.client.flushall()
    client = publisher_client(rds.url)
    jobs = new_jobs(load.jobs)
    waiting = posts_jobs(subject, load)
    if not waiting:
        start_jobs(subject, client, jobs)
    server = clients = None
    redis_base = rds.connected_clients()
    try:
        env = {**env, **dict(subject.env)}
        server = procs.Server(
            subject.app, rds.url, "/imagine/none", env, subject.worker, load.workers
        )
        warm_up(subject, server, client)
        if waiting:
            jobs = post_jobs(server.port, load.jobs)
        paths = [subject.path.format(job=jobs[i % load.jobs]) for i in range(load.streams)]
        per = math.ceil(load.streams / math.ceil(load.streams / STREAMS_PER_CLIENT))
        split = [paths[i : i + per] for i in range(0, len(paths), per)]
        clients = procs.ClientPool(len(split))
        time.sleep(0.5)
        m: dict[str, Any] = {"redis_base": redis_base}
        connect_profiler = procs.start_profiler(server.worker, profile_connect, subject.name)
        m["cpu0"], m["rss0"] = server_cpu_ns(server), server_rss_kb(server)
        sockets0 = [procs.sockets(pid) for pid in server.workers]
        t_connect = time.monotonic()
        opened = clients.ask(
            [
                {
                    "cmd": "open",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "mode": subject.mode,
                    "paths": part,
                    "interval": load.interval,
                    "wait_headers": subject.wait_headers,
                }
                for part in split
            ],
            timeout=180,
        )
        m["subscribed"] = wait_subscribed(subject, rds, jobs, load.streams)
        m["connect_s"] = time.monotonic() - t_connect
        m["cpu1"] = server_cpu_ns(server)
        procs.stop_profiler(connect_profiler)
        time.sleep(1.0)
        m["rss1"] = server_rss_kb(server)
        m["per_worker"] = [
            procs.sockets(p) - n for p, n in zip(server.workers, sockets0, strict=True)
        ]
        m["pubsub"] = pubsub_connections(rds.client)
        m["redis_clients"] = rds.connected_clients() - m["redis_base"]
        m["opened"] = sum(o["opened"] for o in opened)
        m["failed"] = sum(o["failed"] for o in opened)
        clients.ask_all({"cmd": "mark"}, timeout=30)
        redis_cpu0 = rds.cpu_seconds()
        m["cpu2"] = server_cpu_ns(server)
        profiler = procs.start_profiler(server.worker, profile, subject.name)
        published = publish(subject, client, jobs, load)
        drain(subject, clients, load, extra=2 if waiting else 0)
        m["cpu3"] = server_cpu_ns(server)
        procs.stop_profiler(profiler)
        m["redis_cpu"] = rds.cpu_seconds() - redis_cpu0
        replies = clients.ask_all({"cmd": "collect"}, timeout=120)
    finally:
        if clients is not None:
            clients.close()
        if server is not None:
            server.close()
        client.close()
    streams = [s for r in replies for s in r["streams"]]
    wire = sum(r["rx"] + r["tx"] for r in replies)
    return summarize(subject, load, jobs, published, streams, wire, m)


def server_cpu_ns(server: procs.Server) -> int:
    return sum(procs.cpu_ns(pid) for pid in server.workers)


def server_rss_kb(server: procs.Server) -> int:
    return sum(procs.rss_kb(pid) for pid in server.workers)


def pubsub_connections(client: redis.Redis) -> int:
    """Redis connections subscribed to anything (channels, patterns, shard channels)."""
    return sum(
        1
        for c in client.client_list()
        if any(int(c.get(kind, 0) or 0) > 0 for kind in ("sub", "psub", "ssub"))
    )


def drain(subject: Subject, clients: procs.ClientPool, load: Load, extra: int = 0) -> None:
    """Wait until all events arrived (SSE) or a polling period or two passed; ``extra``:
    logged frames per stream that are not the publisher's (``queued``, ``started``).

    SSE: stop when every event is in, or nothing new arrived for ``DRAIN_SECONDS``
    (so a lagging client is not mistaken for loss), or after ``DRAIN_CAP_SECONDS``.
    """
    if subject.mode == "poll":
        time.sleep(2 * load.interval + 0.2)
        return
    expected = load.streams * (load.events + extra)
    cap = time.monotonic() + DRAIN_CAP_SECONDS
    frames, idle_since = -1, time.monotonic()
    while time.monotonic() < cap and time.monotonic() - idle_since < DRAIN_SECONDS:
        now_frames = sum(s["frames"] for s in clients.ask_all({"cmd": "status"}, timeout=30))
        if now_frames >= expected:
            return
        if now_frames != frames:
            frames, idle_since = now_frames, time.monotonic()
        time.sleep(0.05)


def summarize(
    subject: Subject,
    load: Load,
    jobs: list[str],
    published: Published,
    streams: list[list[list[Any]]],
    wire_bytes: int,
    m: dict[str, Any],
) -> dict[str, Any]:
    """Delivery checks per stream, latency percentiles and per-unit costs."""
    delivered = lost = dup = ooo = 0
    latencies: list[float] = []
    first: list[float] = []  # each job's first event: in the second its job left the line
    late: list[tuple[float, int]] = []  # (sentAt, stream) of events later than LATE_SECONDS
    for index, events in enumerate(streams):
        sent = published.sent[jobs[index % load.jobs]]
        seen: set[Any] = set()
        last = -1
        for key, received_at in events:
            entry = sent.get(key)
            if entry is None:  # e.g. the `started` backlog event
                continue
            if key in seen:
                dup += 1
                continue
            seen.add(key)
            if entry[0] < last:
                ooo += 1
            last = max(last, entry[0])
            latencies.append(received_at - entry[1])
            if received_at - entry[1] > LATE_SECONDS:
                late.append((entry[1], index))
            if entry[0] == 0:
                first.append(received_at - entry[1])
        delivered += len(seen)
        lost += len(sent) - len(seen)
    lost += (load.streams - len(streams)) * load.events
    latencies.sort()
    first.sort()
    calls = published.call_seconds
    began = min((t for sent in published.sent.values() for _, t in sent.values()), default=0.0)
    # When the late events were sent (per tenth of a second into the publish phase) and on
    # how many streams: a stall shows as a few tenths and many streams, a slow stream as one.
    late_tenths: dict[int, int] = {}
    for sent_at, _ in late:
        tenth = int((sent_at - began) * 10)
        late_tenths[tenth] = late_tenths.get(tenth, 0) + 1
    return {
        "subject": subject.name,
        "expected": load.streams * load.events,
        "delivered": delivered,
        "lost": lost,
        "dup": dup,
        "ooo": ooo,
        "p50_ms": _pct(latencies, 50) * 1e3,
        "p90_ms": _pct(latencies, 90) * 1e3,
        "p99_ms": _pct(latencies, 99) * 1e3,
        "p99_first_ms": _pct(first, 99) * 1e3,
        "max_ms": (latencies[-1] if latencies else math.nan) * 1e3,
        "late": len(late),
        "late_streams": len({stream for _, stream in late}),
        "late_tenths": dict(sorted(late_tenths.items(), key=lambda kv: -kv[1])[:10]),
        "rss_kb_per_stream": (m["rss1"] - m["rss0"]) / load.streams,
        "cpu_us_per_event": (m["cpu3"] - m["cpu2"]) / 1e3 / max(delivered, 1),
        "cpu_us_per_connect": (m["cpu1"] - m["cpu0"]) / 1e3 / load.streams,
        "redis_clients": m["redis_clients"],
        "bytes_per_event": wire_bytes / max(delivered, 1),
        "redis_us_per_event": m["redis_cpu"] * 1e6 / max(delivered, 1),
        "publish_us": statistics.median(calls) * 1e6 if calls else math.nan,
        "publish_round_trips": published.round_trips / max(len(calls), 1),
        "connect_s": m["connect_s"],
        "opened": m["opened"],
        "failed": m["failed"],
        "subscribed": m["subscribed"],
        "streams_per_worker": m["per_worker"],
        "pubsub_connections": m["pubsub"],
    }


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


COLUMNS = [
    ("subject", "subject", "{}"),
    ("delivered", "delivered", "{:.0f}"),
    ("lost", "lost", "{:.0f}"),
    ("dup", "dup", "{:.0f}"),
    ("ooo", "ooo", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p90_ms", "p90 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("max_ms", "max ms", "{:.1f}"),
    ("cpu_us_per_event", "CPU µs/ev", "{:.1f}"),
    ("rss_kb_per_stream", "RSS KB/stream", "{:.1f}"),
    ("cpu_us_per_connect", "CPU µs/conn", "{:.0f}"),
    ("redis_clients", "Redis clients", "{:.0f}"),
    ("bytes_per_event", "B/ev wire", "{:.0f}"),
    ("redis_us_per_event", "Redis µs/ev", "{:.1f}"),
    ("publish_us", "pub µs", "{:.0f}"),
    ("connect_s", "connect s", "{:.1f}"),
]
RATIOS = [
    ("cpu_us_per_event", "CPU/ev"),
    ("rss_kb_per_stream", "RSS"),
    ("cpu_us_per_connect", "conn"),
]


def median_rows(results: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in order:
        runs = [r for r in results if r["subject"] == name]
        if not runs:
            continue
        row: dict[str, Any] = {"subject": name, "rounds": len(runs)}
        for key, _, _ in COLUMNS[1:]:
            row[key] = statistics.median(r[key] for r in runs)
        rows.append(row)
    floor = next((r for r in rows if r["subject"] == "floor"), None)
    for row in rows:
        for key, label in RATIOS:
            base = floor[key] if floor else math.nan
            row[f"x_{label}"] = row[key] / base if base and base > 0 else math.nan
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the median rows, with ratios vs the floor."""
    head = [label for _, label, _ in COLUMNS] + [f"×floor {label}" for _, label in RATIOS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [fmt.format(row[key]) for key, _, fmt in COLUMNS]
        cells += [f"{row[f'x_{label}']:.2f}" for _, label in RATIOS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def jobcast_importable() -> bool:
    import subprocess
    import sys

    probe = "import web; web.create_app()"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=procs.ROOT, capture_output=True, timeout=60
    )
    return done.returncode == 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--subjects", default="floor,jobcast,flasksse,polling")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--rate", type=float, default=2.0, help="events/s per job")
    p.add_argument("--events", type=int, default=20, help="events per job (≤ 100)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--interval", type=float, default=0.5, help="polling period, s")
    p.add_argument(
        "--create",
        choices=["started", "post"],
        default="started",
        help="post: Jobcast jobs made by POST /imagine, waiting in line until started",
    )
    p.add_argument("--workers", type=int, default=1, help="gunicorn -w for every subject")
    p.add_argument("--max-seconds", type=float, default=900, help="stop starting rounds after")
    p.add_argument("--json", help="also write every run's numbers here")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the server worker during round 0's publish phase; print its hotspots",
    )
    p.add_argument(
        "--profile-connect",
        metavar="DIR",
        help="py-spy the server worker while round 0's streams open (first connect until "
        "all are subscribed); print the functions on the stack most often",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 1 <= args.events <= 100:
        raise SystemExit("--events must be 1..100 (percents identify events when polling)")
    procs.raise_fd_limit()
    import os

    os.sched_setaffinity(0, {procs.HARNESS_CORE})
    load = Load(
        args.streams, args.jobs, args.rate, args.events, args.interval, args.create, args.workers
    )
    names = [s.strip() for s in args.subjects.split(",") if s.strip()]
    if any("jobcast" in n for n in names) and not jobcast_importable():
        print("# web:create_app() does not import yet: skipping the jobcast subjects")
        names = [n for n in names if "jobcast" not in n]
    subjects = [SUBJECTS[n] for n in names]
    env = {
        "JOBCAST_MAX_STREAMS": str(2 * args.streams + 100),
        "JOBCAST_MAX_QUEUE": "1000000",
        "JOBCAST_POST_RATE_LIMIT": "",  # every POST comes from this one address
    }
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    rds = procs.RedisServer()
    try:
        for rnd in range(args.rounds):
            if time.monotonic() - began > args.max_seconds:
                print(f"# time budget spent after {rnd} rounds")
                break
            shift = rnd % len(subjects)
            for subject in subjects[shift:] + subjects[:shift]:
                profile = args.profile if rnd == 0 else None
                connect = args.profile_connect if rnd == 0 else None
                result = run_case(subject, load, rds, env, profile, connect)
                result["round"] = rnd
                results.append(result)
                print(_progress_line(result), flush=True)
    finally:
        rds.close()
    print()
    print(
        f"## {load.streams} streams × {load.jobs} jobs × {load.rate:g} ev/s, "
        f"{load.events} events/job, jobs made by {load.create}, -w {load.workers}, "
        f"median of {args.rounds} rounds"
    )
    print()
    print(table(median_rows(results, names)))
    if args.profile:
        for name in names:
            print(f"\n### py-spy self time, {name} (publish phase, round 0)\n")
            print(procs.hotspots(f"{args.profile}/{name}.txt"))
    if args.profile_connect:
        for name in names:
            print(f"\n### py-spy while the streams open, {name} (round 0)\n")
            print(procs.inclusive(f"{args.profile_connect}/{name}.txt"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load": vars(args), "runs": results}, f, indent=1)


def _progress_line(r: dict[str, Any]) -> str:
    return (
        f"# round {r['round']} {r['subject']:>16}: delivered {r['delivered']}/{r['expected']} "
        f"lost {r['lost']} dup {r['dup']} ooo {r['ooo']} p99 {r['p99_ms']:.1f} ms "
        f"(first events {r['p99_first_ms']:.1f} ms) "
        f"cpu {r['cpu_us_per_event']:.1f} µs/ev rss {r['rss_kb_per_stream']:.1f} KB/stream "
        f"conn {r['cpu_us_per_connect']:.0f} µs opened {r['opened']} failed {r['failed']} "
        f"subscribed {r['subscribed']} connect {r['connect_s']:.1f} s "
        f"streams per worker {r['streams_per_worker']} pub/sub conns {r['pubsub_connections']}; "
        f"{r['late']} events over {LATE_SECONDS * 1e3:.0f} ms on {r['late_streams']} streams, "
        f"sent in tenths (s×10: count) {r['late_tenths']}"
    )


if __name__ == "__main__":
    main()
