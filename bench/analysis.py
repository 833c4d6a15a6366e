"""How long each stage of the analyze kind takes, at the sizes the demo offers.

    .venv/bin/python -m bench.analysis [--rounds 5]

Runs the pure pipeline (tasks.demo.analysis) in this process, no Redis and no worker,
on the demo generator's picture of one prompt per size; prints the median per stage.
"""

from __future__ import annotations

import argparse
import statistics
import time

from tasks.demo.analysis import STAGES, analyze
from tasks.demo.generator import generate

SIZES = (64, 256, 512)


def timings(side: int, rounds: int) -> dict[str, float]:
    """Median seconds of drawing the picture and of each stage, over ``rounds`` runs."""
    spent: dict[str, list[float]] = {name: [] for name in ("draw", *STAGES)}
    for _ in range(rounds):
        began = time.perf_counter()
        frame = next(generate("a harbour at dusk", width=side, height=side, steps=1, seed=3))
        picture = frame.to_image()
        spent["draw"].append(time.perf_counter() - began)
        began = time.perf_counter()
        for stage in analyze(picture, colours=5):
            now = time.perf_counter()
            spent[stage.name].append(now - began)
            began = now
    return {name: statistics.median(values) for name, values in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    names = ("draw", *STAGES)
    print(f"{'side':>5} " + " ".join(f"{n:>10}" for n in names) + f" {'total':>8}   (ms)")
    for side in SIZES:
        row = timings(side, rounds)
        cells = " ".join(f"{row[n] * 1000:10.1f}" for n in names)
        print(f"{side:>5} {cells} {sum(row.values()) * 1000:8.1f}")


if __name__ == "__main__":
    main()
