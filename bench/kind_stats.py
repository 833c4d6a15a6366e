"""What the per-kind numbers cost Redis: per finished job, per waiting job, in memory.

    python -m bench.kind_stats [--jobs 20000] [--kinds 20]

* The monitor's publish script counts ``--jobs`` task ends (batches of MAX_BATCH, as the
  monitor sends them; every job record there with its kind and final state), once as it
  is and once with the per-kind part cut out: the difference is what a finished job adds.
* The enqueue script lines up ``--jobs`` jobs, as it is and without its [kinds] block,
  and the publish script moves each out of its line (``started``), with and without
  the waiting count's decrement (alternated, twice each, the lowest kept).
Prints JSON: Redis CPU µs per job for each, and the bytes the per-kind keys take.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from typing import Any

from bench import procs
from tasks import events as job_events
from tasks import monitor
from tasks.events import JobEvents
from tasks.keys import Keys
from tasks.kindstats import KindKeys


def _swap(script: str, part: str, instead: str) -> str:
    """``script`` with its one ``part`` replaced."""
    assert script.count(part) == 1, part
    return script.replace(part, instead)


def _ends(client: Any, ids: list[str], kinds: int) -> monitor.Pending:
    pending = monitor.Pending()
    pipe = client.pipeline(transaction=False)
    now = time.time()
    for n, job_id in enumerate(ids):
        state = "failed" if n % 10 == 0 else "succeeded"
        pipe.hset(Keys().job(job_id), mapping={"kind": f"kind-{n % kinds}", "state": state})
        outcome = "failed" if state == "failed" else "succeeded"
        event = {"uuid": job_id, "timestamp": now + n * 1e-4}
        pending.add(event, outcome, 0.4 if outcome == "succeeded" else None, 0.0, "bench.task")
    pipe.execute()
    return pending


def _publish_cpu(rds: procs.RedisServer, script: str, pending: monitor.Pending) -> float:
    client = rds.client
    call = client.register_script(script)
    o, k, kk = monitor.OpsKeys(), Keys(), KindKeys()
    count = len(pending.outcomes)
    cpu0 = rds.cpu_seconds()
    while pending.outcomes:
        extra, counts = pending.batch(k, o, 0.0)
        call(
            keys=[o.leader, k.ops_snapshot, o.tasks, o.runtime, kk.kinds, kk.tasks, kk.runtime,
                  *extra],
            args=["bench", 5000, "{}", k.ops, b"", 3600, 1200, *counts],
        )  # fmt: skip
        pending.written(int(counts[0]))
    return (rds.cpu_seconds() - cpu0) / count * 1e6


def _line_cpu(rds: procs.RedisServer, enqueue: str, publish: str, jobs: int) -> tuple[float, float]:
    """Redis CPU µs per enqueue and per leaving the line (``started``)."""
    client = rds.client
    client.flushall()
    events = JobEvents(client)
    events._enqueue = client.register_script(enqueue)
    events._publish = client.register_script(publish)
    ids = [secrets.token_urlsafe(16) for _ in range(jobs)]
    cpu0 = rds.cpu_seconds()
    for n, job_id in enumerate(ids):
        events.enqueue(job_id, {"kind": f"kind-{n % 20}", "prompt": "bench"})
    cpu1 = rds.cpu_seconds()
    for job_id in ids:
        events.publish(job_id, "started", {"worker": "bench"})
    cpu2 = rds.cpu_seconds()
    return (cpu1 - cpu0) / jobs * 1e6, (cpu2 - cpu1) / jobs * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--kinds", type=int, default=20)
    args = parser.parse_args(argv)
    rds = procs.RedisServer()
    try:
        client = rds.client
        plain = _swap(monitor.PUBLISH_LUA, "    per_kind(i)\n", "")
        ids = [secrets.token_urlsafe(16) for _ in range(args.jobs)]
        without = _publish_cpu(rds, plain, _ends(client, ids, args.kinds))
        client.flushall()
        with_kinds = _publish_cpu(rds, monitor.PUBLISH_LUA, _ends(client, ids, args.kinds))
        kk = KindKeys()
        memory = {
            key: client.memory_usage(key) or 0
            for key in (kk.kinds, kk.tasks, kk.runtime, *client.keys(kk.minute(0)[:-1] + "*"))
        }
        # Without the per-kind counts: no kind to count at the enqueue, none at leaving.
        enqueue_plain = _swap(
            job_events.ENQUEUE_LUA,
            "redis.call('HGET', job, 'kind') or redis.call('HGET', job, 'task'))",
            "nil)",
        )
        publish_plain = _swap(
            job_events.PUBLISH_LUA, "local counted = ARGV[11] and rec[7]", "local counted = false"
        )
        # Alternated, twice each, the least kept: the machine's noise only ever adds.
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for kinds in (False, True, False, True):
            scripts = (job_events.ENQUEUE_LUA, job_events.PUBLISH_LUA) if kinds else (
                enqueue_plain, publish_plain)  # fmt: skip
            runs[kinds].append(_line_cpu(rds, *scripts, args.jobs))
        enq_with, out_with = (min(x) for x in zip(*runs[True], strict=True))
        enq_without, out_without = (min(x) for x in zip(*runs[False], strict=True))
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "kinds": args.kinds,
                    "monitorPublishCpuUsPerTaskEnd": round(with_kinds, 2),
                    "monitorPublishCpuUsPerTaskEndWithoutKinds": round(without, 2),
                    "enqueueCpuUs": round(enq_with, 2),
                    "enqueueCpuUsWithoutKinds": round(enq_without, 2),
                    "leaveLineCpuUs": round(out_with, 2),
                    "leaveLineCpuUsWithoutKinds": round(out_without, 2),
                    "perKindKeysBytes": sum(memory.values()),
                },
                indent=2,
            )
        )
    finally:
        procs.stop(rds.proc)


if __name__ == "__main__":
    main()
