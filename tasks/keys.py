"""Redis key and channel names, in one place.

A job's keys share the hash tag ``{<id>}`` so they land in one Redis Cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def idempotency(self, key: str) -> str:
        """The job a caller's idempotency key names (``key`` is scoped by the caller)."""
        return f"{self.prefix}idem:{key}"

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
