"""Numbers per job kind: outcomes, run times and the line, kept in Redis.

    monitor publish (one Lua call per batch) ──▶ ops:kinds        set, the kinds kept (≤ MAX_KINDS
                                                                   + "other")
                                            ──▶ ops:kind:tasks   hash "<kind>|<outcome>" → count
                                            ──▶ ops:kind:runtime hash "<kind>|le:<b>", "|sum",
                                                                   "|count" (successes)
                                            ──▶ ops:kind:m:<min> hash, the same fields for one
                                                                   minute of worker time (expires)
    enqueue script +1, a job leaving its line −1 ──▶ ops:kind:waiting hash "<kind>" → jobs waiting

A job's kind is its record's ``kind`` (the name ``POST /jobs/<kind>`` or ``submit(kind=)``
gave it), else the Celery task name. It is untrusted text: the scripts cut it to
:data:`MAX_KIND_BYTES` bytes and turn every byte outside ``[A-Za-z0-9_.:-]`` into ``_``
(so ``|`` never occurs in a name and a label or a page shows it as it is). Past
:data:`MAX_KINDS` distinct kinds the rest count as ``other``. The web side and the monitor
read the same hashes, so every process shows the same numbers and a restarted monitor
goes on from them. Pure functions here; the scripts live with their callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tasks.keys import Keys

MAX_KINDS = 100
MAX_KIND_BYTES = 64
OTHER = "other"
MINUTE_TTL = 20 * 60  # a minute's hash outlives the longest window read from it
SPAN_MINUTES = 5  # the dashboard's and the ratio gauges' window
FINISHED = ("succeeded", "failed", "cancelled")

# Lua: the kind name a script keeps for raw text (see the module docstring).
KIND_NAME_LUA = f"""
local function kind_name(raw)
  if not raw or raw == '' then return '?' end
  return (string.gsub(string.sub(raw, 1, {MAX_KIND_BYTES}), '[^%w_.:-]', '_'))
end
"""


@dataclass(frozen=True)
class KindKeys:
    """The per-kind keys the monitor writes (``ops:kind:waiting`` is ``Keys.kind_waiting``)."""

    prefix: str = "jobcast:"
    cluster: bool = False  # global keys: one slot in a cluster (Keys.glob)

    def _glob(self, name: str) -> str:
        return Keys(self.prefix, cluster=self.cluster).glob(name)

    @property
    def kinds(self) -> str:
        return self._glob("ops:kinds")

    @property
    def tasks(self) -> str:
        return self._glob("ops:kind:tasks")

    @property
    def runtime(self) -> str:
        return self._glob("ops:kind:runtime")

    def minute(self, minute: int) -> str:
        return self._glob(f"ops:kind:m:{minute}")

    def recent(self, now: float, span: int = SPAN_MINUTES) -> list[str]:
        """The minute hashes of the last ``span`` minutes (the current one included)."""
        current = int(now // 60)
        return [self.minute(m) for m in range(current - span + 1, current + 1)]


def split(fields: dict[str, str]) -> dict[str, dict[str, float]]:
    """``{"<kind>|<name>": n}`` as ``{kind: {name: n}}`` (fields of another shape skipped)."""
    out: dict[str, dict[str, float]] = {}
    for field, value in fields.items():
        kind, sep, name = field.rpartition("|")
        try:
            number = float(value)
        except ValueError:
            continue  # not a count the scripts write
        if sep and kind and math.isfinite(number):
            per = out.setdefault(kind, {})
            per[name] = per.get(name, 0.0) + number
    return out


def merged(hashes: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Several minutes' hashes added up, per kind."""
    out: dict[str, dict[str, float]] = {}
    for fields in hashes:
        for kind, numbers in split(fields).items():
            per = out.setdefault(kind, {})
            for name, n in numbers.items():
                per[name] = per.get(name, 0.0) + n
    return out


def quantile(buckets: dict[str, float], bounds: tuple[float, ...], q: float) -> float | None:
    """The ``q`` quantile of a (non-cumulative) ``le:<bound>`` histogram, interpolated
    linearly inside its bucket as Prometheus's ``histogram_quantile`` does; a quantile in
    the ``+Inf`` bucket answers the highest finite bound."""
    counts = [buckets.get(f"le:{b}", 0.0) for b in bounds] + [buckets.get("le:+Inf", 0.0)]
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen, low = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=False):
        if count and seen + count >= rank:
            return round(low + (bound - low) * (rank - seen) / count, 3)
        seen += count
        low = bound
    return float(bounds[-1])


def table(
    recent: dict[str, dict[str, float]],
    totals: dict[str, dict[str, float]],
    waiting: dict[str, str],
    bounds: tuple[float, ...],
    span: int = SPAN_MINUTES,
) -> list[dict[str, Any]]:
    """One row per kind: waiting, finished per minute, failure rate, p50/p95 over the last
    ``span`` minutes, and finished in all; busiest first, then by name."""
    lines = {kind: int(n) for kind, n in waiting.items() if n.lstrip("-").isdigit()}
    rows: list[tuple[float, str, dict[str, Any]]] = []
    for kind in sorted(set(recent) | set(totals) | {k for k, n in lines.items() if n > 0}):
        now = recent.get(kind, {})
        ok, bad = now.get("succeeded", 0.0), now.get("failed", 0.0)
        finished = sum(now.get(o, 0.0) for o in FINISHED)
        busy = max(0, lines.get(kind, 0)) + finished / span
        rows.append(
            (-busy, kind, {
                "kind": kind,
                "waiting": max(0, lines.get(kind, 0)),
                "rate": round(finished / span, 2),
                "failRate": round(bad / (ok + bad), 4) if ok + bad else None,
                "p50": quantile(now, bounds, 0.5),
                "p95": quantile(now, bounds, 0.95),
                "done": int(sum(totals.get(kind, {}).get(o, 0.0) for o in FINISHED)),
            })
        )  # fmt: skip
    return [row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1]))]
