"""What the ops job index costs: enqueue time with and without it, its memory, a page read.

    python -m bench.job_index [--jobs 20000] [--bound 10000]

Enqueues ``--jobs`` jobs (record, line, queued event, index; no Celery message) into a
fresh Redis with the index bounded at ``--bound``, then runs the index's writes alone
(ZADD, ZCARD, trim) in a script of their own, whose figure includes a script call's own
overhead: an upper bound of what the index adds to each enqueue. Prints JSON: Redis CPU
µs per enqueue and per bare index write, bytes per index member, and the time of a
50-row page (no filter) and of a filtered page that matches nothing (a full scan).
"""

from __future__ import annotations

import argparse
import json
import secrets
import time

from bench import procs
from tasks.events import JobEvents, now_ms
from tasks.jobindex import list_jobs
from tasks.keys import Keys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--bound", type=int, default=10000)
    args = parser.parse_args(argv)
    rds = procs.RedisServer()
    try:
        client = rds.client
        events = JobEvents(client, index_max=args.bound)
        ids = [secrets.token_urlsafe(16) for _ in range(args.jobs)]
        cpu0 = rds.cpu_seconds()
        for job_id in ids:
            events.enqueue(job_id, {"kind": "imagine", "prompt": "bench"})
        enqueue_us = (rds.cpu_seconds() - cpu0) / args.jobs * 1e6
        keys = Keys()
        members = client.zcard(keys.job_index)
        index_bytes = client.memory_usage(keys.job_index) or 0
        # The index's own writes, alone: ZADD + ZCARD + trim, in a script as the enqueue does.
        script = client.register_script(
            "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])"
            " if redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[3]) then"
            " redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1) end"
        )
        cpu0 = rds.cpu_seconds()
        for job_id in ids:
            script(keys=["bench:index"], args=[now_ms(), job_id, args.bound])
        index_us = (rds.cpu_seconds() - cpu0) / args.jobs * 1e6
        began = time.perf_counter()
        page = list_jobs(client, keys, now_ms=now_ms(), limit=50)
        page_ms = (time.perf_counter() - began) * 1e3
        began = time.perf_counter()
        list_jobs(client, keys, now_ms=now_ms(), limit=50, state="failed")
        filtered_ms = (time.perf_counter() - began) * 1e3
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "bound": args.bound,
                    "indexMembers": members,
                    "indexBytesPerMember": round(index_bytes / max(members, 1), 1),
                    "redisCpuUsPerEnqueue": round(enqueue_us, 1),
                    "redisCpuUsPerIndexWriteAlone": round(index_us, 1),
                    "pageRows": len(page.jobs),
                    "pageMs": round(page_ms, 2),
                    "filteredPageMs (scans up to 5000, none match)": round(filtered_ms, 2),
                },
                indent=2,
            )
        )
    finally:
        procs.stop(rds.proc)


if __name__ == "__main__":
    main()
