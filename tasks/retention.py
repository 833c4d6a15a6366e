"""Retention: what stays bounded over time.

Job records and event logs carry a TTL (set by every publish), so Redis forgets them by
itself. What needs a sweep, which the monitor's leader runs every ``sweep_seconds``:

* image files older than the retention in ``media_dir``, and temporary files (``*.tmp``)
  older than ten minutes that a killed worker left half-written;
* waiting/running set members whose job record has expired (a job that waited longer
  than the retention), so positions never count ghosts;
* jobs in line with no Celery message (:class:`Sweeper`): the web process sent the task
  after the enqueue script and died in between (only possible when the broker is not the
  job records' Redis, see :mod:`tasks.submit`). A job waiting longer than
  ``ghost_grace_seconds`` whose id is in no broker list and not in kombu's ``unacked``
  hash, on two sweeps in a row (a worker's BRPOP and its HSET to ``unacked`` are two
  commands), is sent again from its record, at most ``MAX_RESENDS`` times; a record that
  cannot be sent again ends ``failed`` with a clear error;
* messages a consumer fetched more than ``ghost_grace_seconds`` ago but never started
  (a worker killed between its fetch and its first event, before the monitor heard of
  it), on two sweeps in a row and with no live lease: put back on their queue with
  kombu's own restore instead of waiting out the visibility timeout.

Every line (one per Celery queue, :mod:`tasks.keys`) is swept; a job's record names its
queue, which is where its message must be and where it is sent again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import redis
from celery import Celery

from tasks.config import Settings
from tasks.connection import RedisTarget
from tasks.events import JobEvents, now_ms
from tasks.keys import LINE_NAME, Keys, LineKeys
from tasks.lease import lease_key

log = logging.getLogger(__name__)

TEMP_MAX_AGE_SECONDS = 600  # a PNG takes well under a second to write
MAX_RESENDS = 3
PAGE = 500
PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: "<queue><sep><priority>" lists
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages

# KEYS: job hash, queue zset, broker list; ARGV: job id, payload ('' = caller sends), max
# On a cluster only the job hash (the line is another slot, the broker another server):
# the caller checks the job is in line first.
RESEND_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return 0 end
if KEYS[2] and not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'resent', 1)
if n > tonumber(ARGV[3]) then return -1 end
if ARGV[2] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[2]) end
return n
"""

# KEYS: job hash, lease; ARGV: max. A running job whose attempt is gone (no lease) may be
# sent again, at most ARGV[1] times.
RESEND_RUNNING_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'resent', 1)
if n > tonumber(ARGV[1]) then return -1 end
return n
"""


class Waiting(NamedTuple):
    """A job waiting in some line: its task name and its queue ("" if unknown)."""

    task: str
    queue: str


@dataclass(frozen=True)
class Swept:
    images: int
    ghosts: int
    temps: int = 0
    resent: int = 0
    failed: int = 0
    unindexed: int = 0  # members of the job index older than the retention


def sweep(
    client: redis.Redis,
    keys: Keys,
    media_dir: str,
    retention_seconds: int,
    now: float | None = None,
) -> Swept:
    """Delete expired images and forget ghost members of the waiting and running sets."""
    now = time.time() if now is None else now
    return Swept(
        # A job's files sit in its folder; loose *.png are from before folders.
        images=_sweep_files(Path(media_dir), "*.png", now - retention_seconds)
        + _sweep_job_files(Path(media_dir), now - retention_seconds),
        ghosts=_sweep_ghosts(client, keys),
        temps=_sweep_files(Path(media_dir), "*.tmp", now - TEMP_MAX_AGE_SECONDS)
        + _sweep_files(Path(media_dir), "*/*.tmp", now - TEMP_MAX_AGE_SECONDS),
        # The job index forgets jobs as their records expire: by creation time (ms).
        unindexed=int(
            client.zremrangebyscore(
                keys.job_index, "-inf", f"({int((now - retention_seconds) * 1000)}"
            )
        ),
    )


def _sweep_files(media: Path, pattern: str, cutoff: float) -> int:
    removed = 0
    if not media.is_dir():
        return 0
    for path in media.glob(pattern):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass  # a concurrent sweep (a second monitor) got there first
    return removed


def _sweep_job_files(media: Path, cutoff: float) -> int:
    """Remove job files older than ``cutoff``, then the folders they leave empty."""
    if not media.is_dir():
        return 0
    removed = 0
    for folder in media.iterdir():
        if not folder.is_dir():
            continue
        removed += _sweep_old(folder, cutoff)
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass  # files younger than the retention remain, or a job is writing there
    return removed


def _sweep_old(folder: Path, cutoff: float) -> int:
    removed = 0
    for path in folder.iterdir():
        if path.name.endswith(".tmp"):
            continue  # half-written: the temp-file sweep's, on its own schedule
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass  # a concurrent sweep got there first
    return removed


def lines(client: redis.Redis, keys: Keys) -> list[LineKeys]:
    """Every line jobs were enqueued to (the default one always)."""
    return keys.all_lines(client.smembers(keys.lines))


ENDED = frozenset({b"succeeded", b"failed", b"cancelled"})


def _sweep_ghosts(client: redis.Redis, keys: Keys) -> int:
    removed = 0
    for line in lines(client, keys):
        for zset in (line.queue, line.running):
            members = [m.decode() for m in client.zrange(zset, 0, -1)]
            if not members:
                continue
            pipe = client.pipeline(transaction=False)
            for job_id in members:
                pipe.hget(keys.job(job_id), "state")
            # Gone: no record, or (a cluster's publisher that died between its job's step
            # and its line's) a record that says the job is past this set.
            past = ENDED if zset == line.running else ENDED | {b"running"}
            states = pipe.execute()
            gone = [m for m, st in zip(members, states, strict=True) if st is None or st in past]
            if gone:
                removed += client.zrem(zset, *gone)
                if zset == line.queue:
                    # The line moved in no simple way: web processes recompute positions.
                    version = client.incr(line.version)
                    client.publish(line.queue, f"{version} *")
    return removed


class Sweeper:
    """The monitor leader's sweep: :func:`sweep`, then healing jobs in line with no message."""

    def __init__(self, settings: Settings, client: redis.Redis, app: Celery | None = None):
        self.settings = settings
        self.redis = client
        self.keys = settings.keys
        self.events = JobEvents.for_settings(client, settings)
        self._app = app
        self._broker_client: redis.Redis | None = None
        self._resend = client.register_script(RESEND_LUA)
        self._resend_running = client.register_script(RESEND_RUNNING_LUA)
        self.suspects: set[str] = set()  # ghosts seen on the previous sweep
        self.stalled: set[tuple[str, bytes]] = set()  # (job, tag) fetched, never started

    @property
    def app(self) -> Celery:
        if self._app is None:
            from tasks.app import create_celery  # the Celery client, only once a ghost needs it

            self._app = create_celery(self.settings)
        return self._app

    def sweep(self) -> Swept:
        s = self.settings
        swept = sweep(self.redis, self.keys, s.media_dir, s.retention_seconds)
        resent, failed = self.heal_line()
        return dataclasses.replace(swept, resent=resent, failed=failed)

    def heal_line(self) -> tuple[int, int]:
        """Send again (or fail) ghosts seen twice in a row; return (re-sent, failed)."""
        waiting = self._waiting_longer_than(self.settings.ghost_grace_seconds)
        ghosts = self.find_ghosts(waiting)
        confirmed, self.suspects = ghosts & self.suspects, ghosts - self.suspects
        outcomes = [self._heal(job_id) for job_id in sorted(confirmed)]
        restored = self.restore_stalled(waiting)
        return outcomes.count("resent") + restored, outcomes.count("failed")

    def restore_stalled(self, waiting: dict[str, Waiting]) -> int:
        """Hand out again messages delivered longer than the grace time ago to a consumer
        that never started them (a worker killed between its fetch and its first event,
        before the monitor heard of it): seen on two sweeps in a row, and with no live
        attempt holding the job. Return how many were put back on their queue."""
        grace = self.settings.ghost_grace_seconds
        broker = self._broker()
        if not waiting or broker is None or broker is not self.redis:
            self.stalled = set()  # only kombu's Redis transport, on the jobs' own Redis
            return 0
        from tasks.unacked import broker_channel, in_flight, restore

        with broker_channel(self.app) as channel:
            index = (getattr(channel, "global_keyprefix", "") or "") + channel.unacked_index_key
            flights = [
                (j, m.tag) for j, ms in in_flight(channel).items() if j in waiting for m in ms
            ]
            pipe = broker.pipeline(transaction=False)
            for job_id, tag in flights:
                pipe.zscore(index, tag).exists(lease_key(self.keys, job_id))
            replies = pipe.execute()
            cutoff = time.time() - grace
            stalled = {
                flight
                for flight, delivered, held in zip(
                    flights, replies[::2], replies[1::2], strict=True
                )
                if delivered is not None and delivered < cutoff and not held
            }
            confirmed, self.stalled = stalled & self.stalled, stalled - self.stalled
            for job_id, tag in sorted(confirmed):
                restore(channel, tag)
                log.warning("sweep: %s was fetched but never started; handed out again", job_id)
        return len(confirmed)

    def find_ghosts(self, waiting: dict[str, Waiting]) -> set[str]:
        """Of the jobs in line longer than the grace time, those in no broker message."""
        if not waiting:
            return set()  # the usual case: no broker scan at all
        broker = self._broker()
        if broker is None:
            return set()  # not a Redis broker: no way to tell a ghost from a waiting job
        queues = self._queues(waiting.values())
        return set(waiting) - set(self._message_ids(broker, queues))

    def _waiting_longer_than(self, seconds: float) -> dict[str, Waiting]:
        """The jobs queued longer than ``seconds``, in every line: id → task, queue."""
        pipe = self.redis.pipeline(transaction=False)
        for line in lines(self.redis, self.keys):
            pipe.zrange(line.queue, 0, -1)
        members = [m.decode() for ids in pipe.execute() for m in ids]
        for job_id in members:
            pipe.hmget(self.keys.job(job_id), "state", "created", "task", "queue")
        cutoff = now_ms() - seconds * 1000
        return {
            job_id: Waiting(_decode(task), _decode(queue))
            for job_id, (state, created, task, queue) in zip(members, pipe.execute(), strict=True)
            if state == b"queued" and created and int(created) < cutoff
        }

    def _queues(self, waiting: Iterable[Waiting]) -> set[str]:
        """The default queue, the jobs' own queues and every queue Celery routes their
        tasks to (a record written before jobs kept their queue)."""
        queues = {self.app.conf.task_default_queue}
        for task, queue in set(waiting):
            if queue:
                queues.add(queue)
            elif task:
                routed = self.app.amqp.router.route({}, task, (), {}, None).get("queue")
                if routed is not None:
                    queues.add(routed.name)
        return queues

    def _broker(self) -> redis.Redis | None:
        """A client of the broker's Redis; None for a broker whose messages we cannot read."""
        from tasks.submit import REDIS_SCHEMES, shares_broker

        if shares_broker(self.app, self.settings):
            return self.redis
        url = str(self.app.conf.broker_url or "")
        if urllib.parse.urlsplit(url).scheme not in REDIS_SCHEMES:
            return None
        if self._broker_client is None:
            target = self.settings.store
            self._broker_client = RedisTarget(url, target.master, target.sentinel_password).client()
        return self._broker_client

    def _message_ids(self, broker: redis.Redis, queues: set[str]) -> Iterator[str]:
        """Task ids of every message waiting in these queues' lists or delivered unacked."""
        options = self.app.conf.broker_transport_options or {}
        prefix = options.get("global_keyprefix", "")
        steps = [p for p in options.get("priority_steps", PRIORITY_STEPS) if p]
        for queue in sorted(prefix + name for name in queues):
            for key in [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in steps)]:
                for start in range(0, broker.llen(key), PAGE):
                    for raw in broker.lrange(key, start, start + PAGE - 1):
                        yield _task_id(raw)
        unacked = prefix + options.get("unacked_key", UNACKED)
        for _, raw in broker.hscan_iter(unacked, count=PAGE):
            yield _task_id(raw, unacked=True)

    def _heal(self, job_id: str) -> str:
        from tasks.submit import broker_message, shares_broker

        task, args, kwargs, named = self._task_of(job_id)
        if task is None:
            return self._fail(job_id, "The job's task message was lost and cannot be sent again.")
        queue, payload = named or self.app.conf.task_default_queue, ""
        if shares_broker(self.app, self.settings):
            try:
                queue, payload = broker_message(
                    self.app, task, job_id, kwargs, args=args, queue=named
                )
            except ValueError:
                pass  # a routing we do not rebuild: Celery sends it below
        k = self.keys
        keys = [k.job(job_id), k.line(named if _is_line(named) else None).queue, queue]
        if k.cluster:  # one slot per script: the place in line is checked apart
            if self.redis.zscore(keys[1], job_id) is None:
                return "gone"
            keys = keys[:1]
        count = int(self._resend(keys=keys, args=[job_id, payload, MAX_RESENDS]))
        if count == -1:
            return self._fail(job_id, f"The job's task message was lost {MAX_RESENDS} times.")
        if count == 0:
            return "gone"  # it started, ended or expired meanwhile
        if not payload:
            self.app.send_task(task, args=args, kwargs=kwargs, task_id=job_id, queue=named)
        log.warning("sweep: job %s was in line with no task message; sent it again", job_id)
        return "resent"

    def resend_stranded(self, job_id: str) -> bool:
        """Send again a running job whose attempt died with no message left to restore.

        A second copy that found the job's lease held acked its message; if the holder
        then dies, no broker holds the job any more. True if it was sent.
        """
        broker = self._broker()
        if broker is None:
            return False
        task, args, kwargs, named = self._task_of(job_id)
        if task is None:
            return False
        queues = self._queues([Waiting(task, named or "")])
        if job_id in set(self._message_ids(broker, queues)):
            return False  # a copy waits in a queue: a worker will take it
        keys = [self.keys.job(job_id), lease_key(self.keys, job_id)]
        count = int(self._resend_running(keys=keys, args=[MAX_RESENDS]))
        if count <= 0:
            return False  # ended, taken over, or sent too often (max_attempts ends it)
        self.app.send_task(task, args=args, kwargs=kwargs, task_id=job_id, queue=named)
        log.warning(
            "monitor: job %s ran on a dead worker with no message left; sent it again", job_id
        )
        return True

    def _task_of(self, job_id: str) -> tuple[str | None, list[Any], dict[str, Any], str | None]:
        """The job's task name, arguments and queue (None: not recorded)."""
        task, kwargs, args, queue = self.redis.hmget(
            self.keys.job(job_id), "task", "kwargs", "args", "queue"
        )
        name, positional, arguments = _task_of([task, kwargs, args])
        return name, positional, arguments, _decode(queue) or None

    def _fail(self, job_id: str, message: str) -> str:
        failed = self.events.publish(
            job_id, "failed", {"error": message, "retryable": True}, expect="queued"
        )
        log.warning("sweep: job %s was in line with no task message; failed it", job_id)
        return "failed" if failed else "gone"


def _task_of(fields: list[bytes | None]) -> tuple[str | None, list[Any], dict[str, Any]]:
    """The task name and arguments a job record keeps; (None, [], {}) if unusable."""
    task, kwargs_json, args_json = fields
    try:
        kwargs = json.loads(kwargs_json or b"")
        args = json.loads(args_json or b"[]")
    except ValueError:
        return None, [], {}  # a record written before tasks kept them, or damaged
    if not task or not isinstance(kwargs, dict) or not isinstance(args, list):
        return None, [], {}
    return task.decode(errors="replace"), args, kwargs


def _decode(raw: bytes | None) -> str:
    return (raw or b"").decode(errors="replace")


def _is_line(name: str | None) -> bool:
    return name is not None and LINE_NAME.fullmatch(name) is not None


def _task_id(raw: bytes, *, unacked: bool = False) -> str:
    """The task id in a kombu Redis message (``unacked`` holds ``[message, exchange, key]``)."""
    try:
        message: Any = json.loads(raw)
        if unacked:
            message = message[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""  # not a protocol 2 task message: it names no job
