"""What a multiplexed stream (``GET /jobs/stream``) spends per logged event, per connection,
in ``web.multiplex.Part._logged``: the job's frame relabelled with the connection's composite
cursor and ``"jobId"`` spliced into its data. The hub hands the same :class:`Item` to every
watcher of a job, so W connections watching one job relabel one item W times.

in process (CPU time of this process), no server: the real ``Part._logged`` and ``MultiStream.cursor`` run on objects
holding only the attributes they read (no Redis, no hub). Prints µs per event per
connection for 1, 10 and 100 connections, each carrying ``--jobs`` jobs (the cursor's size).

    python -m bench.mux_frames [--jobs 10] [--events 2000]
"""

from __future__ import annotations

import argparse
import time

from jobcast import cursor as cursors
from tasks.events import encode_data
from web.hub import item_from_frame
from web.multiplex import MultiStream, Part
from web.sse import frame


def connection(jobs: list[str], base: int) -> Part:
    """One connection's part for ``jobs[0]``, the others each with a position already."""
    mux = MultiStream.__new__(MultiStream)
    mux.base = base
    mux.prefix = cursors.header(jobs, base)
    mux.entries = [cursors.entry(n, base, (base + n, n)) for n in range(len(jobs))]
    part = Part.__new__(Part)
    part.mux = mux
    part.index = 0
    part.tag = b'{"jobId":"' + jobs[0].encode() + b'"'
    return part


def run(watchers: int, jobs: int, events: int) -> float:
    """µs per event per connection: ``events`` items, each relabelled by every connection."""
    names = [f"bench-job-{n:03d}-abcdefghijkl" for n in range(jobs)]
    base = 1_763_900_000_000
    parts = [connection(names, base) for _ in range(watchers)]
    data = encode_data(
        {"percent": 42, "step": 12, "total": 24, "etaSeconds": 9}, 65536, "progress"
    ).encode()
    items = [
        item_from_frame(frame(f"{base + 5000 + n}-0".encode(), b"progress", data))
        for n in range(events)
    ]
    began = time.process_time()
    for item in items:
        for part in parts:
            part._logged(item)
    return (time.process_time() - began) / (events * watchers) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs on each connection")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="the best of this many runs")
    args = parser.parse_args()
    print(f"multiplexed relabel, {args.jobs} jobs per connection, {args.events} events")
    print("connections  µs/event/connection")
    for watchers in (1, 10, 100):
        best = min(run(watchers, args.jobs, args.events) for _ in range(args.rounds))
        print(f"{watchers:>11}  {best:>8.2f}")


if __name__ == "__main__":
    main()
