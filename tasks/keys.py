"""Redis key and channel names, in one place.

A job's keys share the hash tag ``{<id>}`` so they land in one Redis Cluster slot. A
canvas's child ``<P>.<n>`` (:mod:`tasks.canvas`) keeps its parent's tag: its keys are
``job:{<P>}.<n>...``, so a child's publish script can update the parent in its slot.

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
default line's ``stats``.

Redis Cluster (``Keys(prefix, cluster=True)``, a ``redis+cluster://`` store): no script
may touch two slots, so the layout puts what one step touches in one slot:

* a job's keys and channel: ``job:{<id>}`` as above (the job's slot);
* every line, the default one too: ``line:{<queue>}:queue`` etc. (the line's slot);
* everything else that is global (the ``lines`` set, the job index, the ``published``
  counter, ops and per-kind hashes, the web's counters): ``{g}:<name>``, one slot
  (:meth:`Keys.glob`).
"""

from __future__ import annotations

import re
import secrets
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


def new_job_id() -> str:
    """A fresh random job id (22 URL-safe characters), never starting with ``-``: a
    leading dash would read as an option to a command line (``jobcast watch <id>``)."""
    while True:
        job_id = secrets.token_urlsafe(16)
        if job_id[0] != "-":
            return job_id


def parent_of(job_id: str) -> str | None:
    """The canvas a child id ``<P>.<n>`` belongs to (``P``); None for any other id."""
    head, dot, tail = job_id.partition(".")
    return head if dot and tail.isdigit() else None


def _tagged(job_id: str) -> str:
    """``{id}``, or ``{P}.n`` for a canvas's child: the parent's hash tag."""
    head, dot, tail = job_id.partition(".")
    return f"{{{head}}}.{tail}" if dot else f"{{{job_id}}}"


GLOBAL_TAG = "{g}"
"""The hash tag of every global key in a cluster's layout (:meth:`Keys.glob`)."""


@dataclass(frozen=True)
class Keys:
    prefix: str = "jobcast:"
    cluster: bool = False  # the Redis Cluster layout (module docstring)

    def glob(self, name: str) -> str:
        """A global key ``name`` (e.g. ``"ops:tasks"``): ``<prefix><name>`` on one Redis,
        ``<prefix>{g}:<name>`` in a cluster, where every global key shares one slot."""
        if self.cluster:
            return f"{self.prefix}{GLOBAL_TAG}:{name}"
        return f"{self.prefix}{name}"

    def job(self, job_id: str) -> str:
        """The job's hash; also the name of its pub/sub channel."""
        return f"{self.prefix}job:{_tagged(job_id)}"

    def events(self, job_id: str) -> str:
        return f"{self.job(job_id)}:events"

    def audit(self, job_id: str) -> str:
        """List of the operators' actions on the job (:mod:`tasks.jobindex`)."""
        return f"{self.job(job_id)}:audit"

    def channel(self, job_id: str) -> str:
        return self.job(job_id)

    @property
    def queue(self) -> str:
        """Sorted set of waiting job ids; also the "line moved" channel."""
        return self.line(None).queue if self.cluster else f"{self.prefix}queue"

    @property
    def ticket(self) -> str:
        return self.line(None).ticket if self.cluster else f"{self.prefix}queue:ticket"

    @property
    def queue_version(self) -> str:
        """Counts departures from the line; orders "the line moved" messages."""
        return self.line(None).version if self.cluster else f"{self.prefix}queue:version"

    @property
    def running(self) -> str:
        """Sorted set of running job ids scored by start time (ms)."""
        return self.line(None).running if self.cluster else f"{self.prefix}running"

    @property
    def stats(self) -> str:
        """Hash of run-time statistics that every web process reads for ETAs."""
        return self.line(None).stats if self.cluster else f"{self.prefix}stats"

    @property
    def counters(self) -> str:
        """The hash of the ``published`` count of every event: the default line's
        ``stats`` on one Redis, a global key in a cluster."""
        return self.glob("stats") if self.cluster else self.stats

    def idempotency(self, key: str) -> str:
        """The job a caller's idempotency key names (``key`` is scoped by the caller)."""
        return f"{self.prefix}idem:{key}"

    @property
    def lines(self) -> str:
        """Set of every line (queue) name jobs were enqueued to."""
        return self.glob("lines")

    @property
    def line_head(self) -> str:
        """What every non-default line's keys start with (the publish script builds them)."""
        return f"{self.prefix}line:"

    def line(self, name: str | None = None) -> LineKeys:
        """The keys of the line of Celery queue ``name`` (None: the default queue)."""
        if (name is None or name == DEFAULT_QUEUE) and not self.cluster:
            return LineKeys(
                DEFAULT_QUEUE, self.queue, self.ticket, self.queue_version, self.running,
                self.stats,
            )  # fmt: skip
        name = DEFAULT_QUEUE if name is None else name
        head = f"{self.line_head}{{{check_queue(name)}}}:"
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
    def job_index(self) -> str:
        """Sorted set of job ids scored by creation time (ms), newest last: the ops job
        browser's time-ordered index, bounded by ``JOBCAST_JOB_INDEX_MAX``."""
        return self.glob("jobs:index")

    @property
    def kind_waiting(self) -> str:
        """Hash: jobs waiting in any line, per kind (``tasks.kindstats``); the enqueue
        script adds one, the job's leaving its line takes it off."""
        return self.glob("ops:kind:waiting")

    @property
    def ops(self) -> str:
        return self.glob("ops")

    @property
    def ops_snapshot(self) -> str:
        return self.glob("ops:snapshot")

    def job_id_of_channel(self, channel: str) -> str | None:
        head = f"{self.prefix}job:{{"
        if channel.startswith(head) and channel.endswith("}"):
            return channel[len(head) : -1]
        if channel.startswith(head) and "}." in channel:  # a canvas's child: {P}.n
            parent, _, index = channel[len(head) :].partition("}.")
            return f"{parent}.{index}" if index.isdigit() else None
        return None
