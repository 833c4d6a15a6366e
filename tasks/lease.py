"""The job lease: at most one attempt of a job runs at a time.

A job's message can be handed out twice while its first attempt still runs: kombu
restores an unacked message after the visibility timeout, and the monitor restores the
messages of a worker it believes dead. Each attempt therefore holds ``job:{id}:lease``
(its token, a short TTL) and refreshes it from a thread while it runs::

    attempt 1 ──SET NX──▶ lease ◀──refresh every ttl/5── attempt 1 (alive)
    attempt 2 ──SET NX fails──▶ waits one TTL: still refreshed → a live attempt owns
                                the job: ack and do nothing
                              ▶ expired → the holder died: take it and run

An attempt that finds its lease taken by another (it could not refresh for a whole TTL)
stops at its next step without publishing anything.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tasks.errors import JobcastError
from tasks.events import JobEvents
from tasks.keys import Keys

# KEYS: lease, job hash; ARGV: token, ttl ms. Keep our lease, or take it back if it expired
# unclaimed (Redis was down) while the job still waits or runs; 0: another attempt has it,
# -1: the job ended or is gone, nothing to hold.
REFRESH_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if not holder then
  local state = redis.call('HGET', KEYS[2], 'state')
  if state ~= 'running' and state ~= 'queued' then return -1 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

POLL_SECONDS = 0.25


class LeaseLost(JobcastError):
    """Another attempt of the job took over; this one stops without a word."""


def lease_key(keys: Keys, job_id: str) -> str:
    """The lease sits beside the job's hash, in its Cluster slot."""
    return keys.job(job_id) + ":lease"


class JobLease:
    """One attempt's hold on a job; ``lost`` once another attempt took it."""

    def __init__(
        self, events: JobEvents, job_id: str, ttl: float, *, need_record: bool = False
    ) -> None:
        self.redis = client = events.redis
        self.retrying = events.retrying  # rides out a Redis restart as publishes do
        self.key = lease_key(events.keys, job_id)
        self.state_key = events.keys.job(job_id)
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self.need_record = need_record
        self.lost = False
        self._stop = threading.Event()
        self._refresh = client.register_script(REFRESH_LUA)

    def acquire(self) -> bool:
        """Take the lease, waiting out one TTL for a holder that may have died.

        ``False`` when a live attempt keeps refreshing it, or the job ended meanwhile.
        """
        deadline = time.monotonic() + self.ttl_ms / 1000 + 1.0
        if self.need_record and not self.retrying(lambda: self.redis.exists(self.state_key)):
            return False  # nothing to run (expired, or never made): hold nothing either
        while not self._ended():  # a late copy of a finished job takes no lease at all
            if self.retrying(lambda: self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms)):
                return True
            if time.monotonic() > deadline:
                return False
            self._stop.wait(POLL_SECONDS)  # the holder's TTL runs out in Redis, not here
        return False

    def _ended(self) -> bool:
        state = self.retrying(lambda: self.redis.hget(self.state_key, "state"))
        return state in (b"succeeded", b"failed", b"cancelled")

    def check(self) -> None:
        """Raise :class:`LeaseLost` once another attempt owns the job."""
        if self.lost:
            raise LeaseLost(self.key)

    def keep(self) -> None:
        """Refresh the lease every fifth of its TTL until :meth:`release`."""
        interval = self.ttl_ms / 5000
        while not self._stop.wait(interval):
            try:
                kept = self._refresh(
                    keys=[self.key, self.state_key], args=[self.token, self.ttl_ms]
                )
                if kept != 1:
                    self.lost = kept == 0
                    return
            except redis.RedisError:
                continue  # Redis is restarting or busy: the next refresh takes it back

    def release(self) -> None:
        self._stop.set()
        try:
            self.redis.eval(RELEASE_LUA, 1, self.key, self.token)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # it expires by itself within one TTL


@contextmanager
def held(
    events: JobEvents, job_id: str, ttl: float, *, need_record: bool = False
) -> Iterator[JobLease | None]:
    """The job's lease for the ``with`` block, or ``None`` if another attempt owns the job
    (or, with ``need_record``, the job has no record to run)."""
    lease = JobLease(events, job_id, ttl, need_record=need_record)
    if not lease.acquire():
        yield None
        return
    keeper = threading.Thread(target=lease.keep, name=f"lease-{job_id}", daemon=True)
    keeper.start()
    try:
        yield lease
    finally:
        lease.release()
        keeper.join(5)
