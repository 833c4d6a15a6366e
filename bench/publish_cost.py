"""What one published event costs Redis: Jobcast's publish script against the least a
durable, announced event can be (a script doing only XADD + PUBLISH).

    python -m bench.publish_cost [--jobs 500] [--events 20] [--rounds 3]

Enqueues ``--jobs`` jobs, starts them (``started``, as a worker does), then publishes
``--events`` ``progress`` events per job through ``JobEvents.publish`` (the worker's
path: one EVALSHA each, the same data a reporter sends). The floor publishes the same
number of events with the same data into other keys through a script of two commands.
Both run against one fresh Redis, alternately per round; Redis CPU (``INFO cpu``) per
event and the time inside the script per event, medians over rounds, are printed as
JSON with their ratios. The publisher's own
time per call (a round trip on loopback) is printed too.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from collections.abc import Callable

from bench import procs
from tasks.events import JobEvents

FLOOR_LUA = """
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'phase', ARGV[1], 'data', ARGV[2])
redis.call('PUBLISH', KEYS[1], 'id: ' .. id .. '\\nevent: ' .. ARGV[1] .. '\\ndata: ' .. ARGV[2] .. '\\n\\n')
return id
"""


def _measure(
    rds: procs.RedisServer, count: int, call: Callable[[int], object]
) -> tuple[float, float, float]:
    """Over ``count`` calls: Redis CPU µs per call (all of it: reading the request,
    the script, the reply), µs spent inside the script per call (Redis's own
    ``commandstats`` for EVALSHA, steadier on a busy machine), the caller's wall µs."""
    rds.client.config_resetstat()
    cpu0, wall0 = rds.cpu_seconds(), time.perf_counter()
    for i in range(count):
        call(i)
    wall = time.perf_counter() - wall0
    cpu = rds.cpu_seconds() - cpu0
    script = rds.client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
    return cpu / count * 1e6, float(script), wall / count * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rds = procs.RedisServer()
    try:
        client = rds.client
        events = JobEvents(client)
        floor = client.register_script(FLOOR_LUA)
        results: dict[str, list[tuple[float, float, float]]] = {"jobcast": [], "floor": []}
        total = args.jobs * args.events
        for round_no in range(args.rounds):
            ids = [secrets.token_urlsafe(16) for _ in range(args.jobs)]
            for job_id in ids:
                events.enqueue(job_id, {"kind": "imagine", "prompt": "bench"})
                events.publish(job_id, "started", {"worker": "bench@host"})

            def jobcast(i: int, ids: list[str] = ids) -> object:
                step = i // args.jobs + 1
                data = {"step": step, "steps": args.events, "percent": 100 * step // args.events}
                return events.publish(ids[i % args.jobs], "progress", data)

            def bare(i: int, ids: list[str] = ids) -> object:
                step = i // args.jobs + 1
                data = json.dumps(
                    {"step": step, "steps": args.events, "percent": 100 * step // args.events},
                    separators=(",", ":"),
                )
                job = f"floor:{ids[i % args.jobs]}"
                return floor(keys=[job, f"{job}:events"], args=["progress", data, 1000])

            order = [("jobcast", jobcast), ("floor", bare)]
            for name, call in order if round_no % 2 == 0 else order[::-1]:
                results[name].append(_measure(rds, total, call))
        row = {}
        for name, runs in results.items():
            row[name] = {
                "redis_us_per_event": round(statistics.median(r[0] for r in runs), 2),
                "script_us_per_event": round(statistics.median(r[1] for r in runs), 2),
                "publisher_us_per_call": round(statistics.median(r[2] for r in runs), 1),
            }
        for what in ("redis_us_per_event", "script_us_per_event"):
            row[f"ratio_{what}"] = round(row["jobcast"][what] / row["floor"][what], 2)
        row["events_per_round"] = total
        print(json.dumps(row, indent=2))
    finally:
        rds.close()


if __name__ == "__main__":
    main()
