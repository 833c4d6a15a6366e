"""Redis key and channel names, in one place.

A job's keys share the hash tag ``{<id>}`` so they land in one Redis Cluster slot.

Lines: every Celery queue has its own line (waiting jobs, their positions, ETAs). The
default queue's line (:data:`DEFAULT_QUEUE`, Celery's ``task_default_queue``) keeps the
names it always had; a line for queue ``Q`` lives under ``line:{Q}:`` (a hash tag, so a
line's keys share a Cluster slot)::

    default line              line of queue Q
    queue                     line:{Q}:queue            zset of waiting ids; "moved" channel
    queue:ticket              line:{Q}:queue:ticket     INCR counter scoring the zset
    queue:version             line:{Q}:queue:version    departures, orders the messages
    running                   line:{Q}:running          zset of running ids (start ms)
    stats                     line:{Q}:stats            hash: avgMs, done, failed, cancelled

``lines`` is a set of every line name a job was enqueued to, for whoever must visit them
all (monitor, sweep, metrics). The ``published`` counter of all events stays in the
default line's ``stats``. The Lua scripts derive a line's names (and ``lines``) from the
job key's prefix (:mod:`tasks.events`): change the two together.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_QUEUE = "jobcast"
"""Celery's default queue (``task_default_queue``), whose line keeps the old key names."""

LINE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a queue name may be to get a line: Celery queue names as people write them."""


def check_queue(name: str) -> str:
    """``name`` if it can name a line; ValueError saying why otherwise."""
    if not isinstance(name, str) or not LINE_NAME.fullmatch(name):
        raise ValueError(
            f"queue name {name!r} is not 1-64 characters of letters, digits, '_', '.' or '-'"
        )
    return name


@dataclass(frozen=True)
class LineKeys:
    """The keys of one line; ``queue`` is also its "the line moved" channel."""

    name: str
    queue: str
    ticket: str
    version: str
    running: str
    stats: str


@dataclass(frozen=True)
class Keys:
    prefix: str = "jobcast:"

    def job(self, job_id: str) -> str:
        """The job's hash; also the name of its pub/sub channel."""
        return f"{self.prefix}job:{{{job_id}}}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}:events"

    def channel(self, job_id: str) -> str:
        return self.job(job_id)

    @property
    def queue(self) -> str:
        """Sorted set of waiting job ids; also the "line moved" channel."""
        return f"{self.prefix}queue"

    @property
    def ticket(self) -> str:
        return f"{self.prefix}queue:ticket"

    @property
    def queue_version(self) -> str:
        """Counts departures from the line; orders "the line moved" messages."""
        return f"{self.prefix}queue:version"

    @property
    def running(self) -> str:
        """Sorted set of running job ids scored by start time (ms)."""
        return f"{self.prefix}running"

    @property
    def stats(self) -> str:
        """Hash of run-time statistics that every web process reads for ETAs."""
        return f"{self.prefix}stats"

    @property
    def lines(self) -> str:
        """Set of every line (queue) name jobs were enqueued to."""
        return f"{self.prefix}lines"

    def line(self, name: str | None = None) -> LineKeys:
        """The keys of the line of Celery queue ``name`` (None: the default queue)."""
        if name is None or name == DEFAULT_QUEUE:
            return LineKeys(
                DEFAULT_QUEUE, self.queue, self.ticket, self.queue_version, self.running,
                self.stats,
            )  # fmt: skip
        # The enqueue and publish scripts build the same names (tasks/events.py).
        head = f"{self.prefix}line:{{{check_queue(name)}}}:"
        return LineKeys(
            name, f"{head}queue", f"{head}queue:ticket", f"{head}queue:version",
            f"{head}running", f"{head}stats",
        )  # fmt: skip

    def all_lines(self, names: Iterable[bytes | str]) -> list[LineKeys]:
        """The default line, then those named (the members of :attr:`lines`) in order,
        each once; a name that cannot be a line's is skipped."""
        text = {n.decode(errors="replace") if isinstance(n, bytes) else n for n in names}
        others = sorted(n for n in text - {DEFAULT_QUEUE} if LINE_NAME.fullmatch(n))
        return [self.line(None), *(self.line(name) for name in others)]

    @property
    def ops(self) -> str:
        return f"{self.prefix}ops"

    @property
    def ops_snapshot(self) -> str:
        return f"{self.prefix}ops:snapshot"

    def job_id_of_channel(self, channel: str) -> str | None:
        head = f"{self.prefix}job:{{"
        if channel.startswith(head) and channel.endswith("}"):
            return channel[len(head) : -1]
        return None
