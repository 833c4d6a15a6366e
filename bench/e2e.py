"""End-to-end figures for the Jobcast app (needs ``web:create_app()``).

    python -m bench.e2e --posters 50 --seconds 10

1. ``POST /imagine`` latency p50/p99 (and server CPU per request) under ``--posters``
   concurrent keep-alive clients, each posting as fast as it gets answers.
2. Enqueue → ``queued`` at the browser: POST, then open the returned stream and wait
   for its ``queued`` frame; the time from sending the POST to that frame.
3. Worker cost per published event: ``JobEvents.publish`` wall time and Redis round
   trips per call (progress events on a running job), and Redis CPU per call.

Same setup as ``bench.load``: fresh Redis, gunicorn ``-k gevent -w 1`` on core 1 (``--worker``
for another class), this process on core 0 with its collector off while it posts. No
Celery worker runs: jobs stay queued, which is what is measured. The spread line says how
fair the server was: p99 ÷ p50, the fewest and most POSTs one connection made, and the
lag-1 correlation of a connection's consecutive latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import itertools
import json
import os
import re
import statistics
import time
from typing import Any

from bench import procs
from bench.load import CountingConnection, _pct, publisher_client
from tasks.events import JobEvents

BODY = json.dumps({"prompt": "a lighthouse at dusk, oil on canvas", "steps": 20}).encode()
LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes]:
    """One ``POST /imagine`` on a keep-alive connection: (status, body)."""
    writer.write(
        b"POST /imagine HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
    )
    head = await reader.readuntil(b"\r\n\r\n")
    match = LENGTH.search(head)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return int(head.split(b" ", 2)[1]), body


async def poster(port: int, until: float, latencies: list[float], codes: dict[int, int]) -> None:
    """Post until ``until``; ``latencies``: this connection's, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            code, _ = await post(reader, writer)
            latencies.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1
    finally:
        writer.close()


async def post_load(port: int, posters: int, seconds: float) -> dict[str, Any]:
    per_conn: list[list[float]] = [[] for _ in range(posters)]
    codes: dict[int, int] = {}
    until = time.monotonic() + seconds
    gc.collect()
    gc.disable()  # a full pass in this client would stall all its posters at once
    try:
        await asyncio.gather(*(poster(port, until, mine, codes) for mine in per_conn))
    finally:
        gc.enable()
    latencies = sorted(x for mine in per_conn for x in mine)
    counts = sorted(len(mine) for mine in per_conn)
    return {
        "posts": len(latencies),
        "codes": codes,
        "p50_ms": _pct(latencies, 50) * 1e3,
        "p99_ms": _pct(latencies, 99) * 1e3,
        "per_s": len(latencies) / seconds,
        "per_conn": (counts[0], counts[-1]),
        "lag1": lag1(per_conn),
    }


def lag1(series: list[list[float]]) -> float:
    """Correlation of each connection's latency with its next one: negative when the
    order in which the server reaches the requests is shuffled round to round, positive
    when it is steady."""
    pairs = [pair for mine in series for pair in itertools.pairwise(mine)]
    if len(pairs) < 3:
        return float("nan")
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:
        return float("nan")


async def enqueue_to_queued(port: int) -> tuple[float, float]:
    """(POST sent → queued frame, POST answered → queued frame), in seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    code, body = await post(reader, writer)
    t1 = time.perf_counter()
    if code != 202:
        raise RuntimeError(f"POST /imagine answered {code}: {body[:200]!r}")
    stream = json.loads(body)["stream"]
    writer.write(f"GET {stream} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    buf = b""
    while b"event: queued" not in buf:
        chunk = await reader.read(4096)
        if not chunk:
            raise RuntimeError("stream closed before the queued event")
        buf += chunk
    t2 = time.perf_counter()
    writer.close()
    return t2 - t0, t2 - t1


async def queued_latency(port: int, samples: int) -> dict[str, Any]:
    pairs = [await enqueue_to_queued(port) for _ in range(samples)]
    total = sorted(p[0] for p in pairs)
    stream = sorted(p[1] for p in pairs)
    return {
        "p50_ms": _pct(total, 50) * 1e3,
        "p99_ms": _pct(total, 99) * 1e3,
        "stream_p50_ms": _pct(stream, 50) * 1e3,
        "stream_p99_ms": _pct(stream, 99) * 1e3,
    }


def publish_cost(rds: procs.RedisServer, count: int) -> dict[str, Any]:
    client = publisher_client(rds.url)
    api = JobEvents(client)
    jobs = [f"bench-publish-{i}" for i in range(100)]
    for job in jobs:
        api.publish(job, "started", {"worker": "bench"})
    api.publish(jobs[0], "progress", {"percent": 0})  # loads the script
    cpu0, replies0 = rds.cpu_seconds(), CountingConnection.replies
    times = []
    for n in range(count):
        data = {"percent": n % 100, "step": n, "steps": count, "sentAt": time.time()}
        t0 = time.perf_counter()
        api.publish(jobs[n % len(jobs)], "progress", data)
        times.append(time.perf_counter() - t0)
    cpu = rds.cpu_seconds() - cpu0
    trips = CountingConnection.replies - replies0
    client.close()
    times.sort()
    return {
        "p50_us": _pct(times, 50) * 1e6,
        "p99_us": _pct(times, 99) * 1e6,
        "mean_us": statistics.fmean(times) * 1e6,
        "round_trips": trips / count,
        "redis_cpu_us": cpu * 1e6 / count,
    }


def _healthz(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        body: dict[str, Any] = json.loads(conn.getresponse().read())
        return body
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--posters", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--samples", type=int, default=200, help="enqueue → queued samples")
    p.add_argument("--publishes", type=int, default=5000)
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the server worker during the POSTs; print where their time goes "
        "(py-spy's sampling adds to the CPU per post)",
    )
    p.add_argument(
        "--worker", default="gevent",
        help="gunicorn -k for the server: gevent (the contract's) or web.gworker.GeventWorker "
        "(what `jobcast web` runs)",
    )  # fmt: skip
    p.add_argument(
        "--env", action="append", default=[], metavar="JOBCAST_X=V",
        help="a setting for the server (repeatable), e.g. JOBCAST_SCRIPT_FUNNEL=false",
    )  # fmt: skip
    args = p.parse_args(argv)
    procs.raise_fd_limit()
    os.sched_setaffinity(0, {procs.HARNESS_CORE})
    rds = procs.RedisServer()
    server = None
    try:
        worker = publish_cost(rds, args.publishes)
        # One client address posts everything here: lift the per-client POST rate limit.
        env = {"JOBCAST_MAX_QUEUE": "10000000", "JOBCAST_POST_RATE_LIMIT": ""}
        env.update(setting.split("=", 1) for setting in args.env)
        server = procs.Server("web:create_app()", rds.url, "/healthz", env, args.worker)
        profiler = procs.start_profiler(server.worker, args.profile, "post")
        cpu0 = procs.cpu_ns(server.worker)
        posts = asyncio.run(post_load(server.port, args.posters, args.seconds))
        cpu_per_post = (procs.cpu_ns(server.worker) - cpu0) / 1e3 / max(posts["posts"], 1)
        procs.stop_profiler(profiler)
        funnel = _healthz(server.port).get("funnel")
        queued = asyncio.run(queued_latency(server.port, args.samples))
    finally:
        if server is not None:
            server.close()
        rds.close()
    print(
        f"POST /imagine, {args.posters} concurrent posters, {args.seconds:g} s: "
        f"{posts['posts']} posts ({posts['per_s']:.0f}/s, codes {posts['codes']}), "
        f"p50 {posts['p50_ms']:.1f} ms, p99 {posts['p99_ms']:.1f} ms, "
        f"server CPU {cpu_per_post:.0f} µs/post"
    )
    print(
        f"spread: p99 ÷ p50 {posts['p99_ms'] / max(posts['p50_ms'], 1e-9):.2f}, POSTs per "
        f"connection {posts['per_conn'][0]}–{posts['per_conn'][1]}, lag-1 correlation of a "
        f"connection's latencies {posts['lag1']:+.2f}"
    )
    if funnel:
        print(
            f"script funnel: {funnel['calls']} calls in {funnel['batches']} pipelines "
            f"({funnel['calls'] / max(funnel['batches'], 1):.1f} per pipeline)"
        )
    print(
        f"enqueue → queued at the browser ({args.samples} sequential): "
        f"p50 {queued['p50_ms']:.1f} ms, p99 {queued['p99_ms']:.1f} ms "
        f"(of which stream open → queued frame: p50 {queued['stream_p50_ms']:.1f} ms, "
        f"p99 {queued['stream_p99_ms']:.1f} ms)"
    )
    print(
        f"worker cost per published event ({args.publishes} × JobEvents.publish): "
        f"p50 {worker['p50_us']:.0f} µs, p99 {worker['p99_us']:.0f} µs, "
        f"mean {worker['mean_us']:.0f} µs, {worker['round_trips']:.2f} Redis round trips, "
        f"Redis CPU {worker['redis_cpu_us']:.1f} µs"
    )

    if args.profile:
        print("\n### py-spy during the POSTs: self time by leaf frame\n")
        print(procs.hotspots(f"{args.profile}/post.txt", top=20))
        print("\n### inclusive: share of busy samples with the function on the stack\n")
        print(procs.inclusive(f"{args.profile}/post.txt"))


if __name__ == "__main__":
    main()
