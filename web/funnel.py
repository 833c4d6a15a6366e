"""Lua script calls from many greenlets, sent to Redis as one pipeline per batch.

A web process under load runs the same few scripts for many requests at once: the
enqueue of every ``POST``, the opening read of every stream, the place-in-line read of
a stream of a waiting job. Called one by one, each pays redis-py's whole path (a pool
checkout that polls the socket, the retry wrapper, packing, a send and a receive of its
own): a quarter of a ``POST``'s CPU. Here each caller frames its own ``EVALSHA`` in its
own greenlet (so a value Redis cannot take fails that call alone) and waits; the
funnel's greenlet takes every call waiting when it is free and writes them as one
pipeline on one connection (its own, with a single Redis): one ``send()``, one
``recv()`` for the batch, and each caller is woken with its own reply. A lone call
pays one greenlet switch more than before; under a burst a call costs a fraction of
what it did.

What a caller sees does not change: the script's reply, or the error its own call got
(a Lua error) or the batch's connection got (``ConnectionError`` and the like, as a
direct call on that connection would raise; the web's pool retries neither). A script
Redis does not know (a restart flushed it) is loaded and the calls that met
``NOSCRIPT`` are sent again. The greenlet is supervised: nothing that goes wrong in a
batch ends it, and a caller never waits on a dead one (a call starts it again).

Only for a process that gevent patched (gunicorn's gevent workers): a threaded server
calls scripts directly, as do Celery's workers.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.monkey
import hiredis
import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

log = logging.getLogger(__name__)

MAX_BATCH = 128  # calls per pipeline; the rest wait for the next one
PLAIN_POOLS = (redis.ConnectionPool, redis.BlockingConnectionPool)


_TEXT = (str, bytes, float)
_INT_LIMIT = 2**63  # hiredis formats bigger ints itself, without Python's digit limit


def _hiredis_can_pack(values: tuple[Any, ...]) -> bool:
    for value in values:
        kind = type(value)
        if kind is int:
            if not -_INT_LIMIT <= value < _INT_LIMIT:
                return False
        elif kind not in _TEXT:
            return False
    return True


def pack_values(
    values: tuple[Any, ...], encode: Callable[[Any], bytes], plain_hiredis: bool = True
) -> bytes:
    """``values`` in the protocol's framing, as redis-py's encoder (``encode``, UTF-8,
    strict) would give them; without the array header. Plain values (str, bytes, float,
    an int of 64 bits) go through hiredis's packer (C: a quarter of the time); anything
    else (a subclass, a wrong type, a huge int) through ``encode``, which frames or
    rejects it as a direct call would."""
    if plain_hiredis and _hiredis_can_pack(values):
        packed: bytes = hiredis.pack_command(values)
        return packed[packed.index(b"\n") + 1 :]  # after "*<count>\r\n"
    return b"".join([b"$%d\r\n%s\r\n" % (len(v), v) for v in map(encode, values)])


_poll = gevent.monkey.get_original("select", "poll")


def readable(conn: Any) -> bool:
    """Whether a connected connection's socket has something to read now: bytes, or the
    server's close (for the funnel, which has read every reply it asked for, only the
    latter). Asked with the system's poll: gevent's own builds a watcher and yields,
    which was a tenth of a batch's CPU (and is what the hub's gathering sleep avoids)."""
    sock = conn._sock
    if sock is None:
        return False
    poller = _poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def untraced(error: BaseException) -> BaseException:
    """``error`` and the errors it was raised from without their tracebacks, whose frames
    hold the batch that will hold the error (a reference cycle). Each caller's raise
    gives it a traceback of its own."""
    seen: set[int] = set()
    links: list[BaseException | None] = [error]
    while links:
        link = links.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        link.__traceback__ = None
        links += [link.__cause__, link.__context__]
    return error


class _Call:
    __slots__ = ("count", "nkeys", "packed", "result", "script")

    def __init__(self, script: Script, nkeys: int, count: int, packed: bytes) -> None:
        self.script = script
        self.nkeys = nkeys
        self.count = count
        # The keys and arguments in the protocol's framing; EVALSHA, the script's sha and
        # the key count go in front when it is sent (a reload may change the sha).
        self.packed = packed
        self.result = gevent.event.AsyncResult()

    def command(self) -> bytes:
        sha, nkeys = self.script.sha.encode(), b"%d" % self.nkeys
        return b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n%s" % (
            self.count + 3,
            len(sha),
            sha,
            len(nkeys),
            nkeys,
            self.packed,
        )


class Funnel:
    """Call Lua scripts through one greenlet that pipelines whatever is waiting."""

    def __init__(self, client: redis.Redis, max_batch: int = MAX_BATCH) -> None:
        self.client = client
        self.max_batch = max_batch
        self.waiting: list[_Call] = []
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet[Any, Any] | None = None
        self.calls = 0
        self.batches = 0
        self.reloads = 0  # NOSCRIPT replies answered by loading the script again
        self.errors = 0  # batches whose connection failed
        encoder = client.get_encoder()
        self._encode = encoder.encode
        # hiredis packs text as UTF-8, strictly: redis-py's default, and what ours use.
        self._hiredis = (encoder.encoding.lower(), encoder.encoding_errors) == ("utf-8", "strict")
        self._batch: list[_Call] = []  # the calls being sent
        self._conn: Any = None  # made on the first batch of the process that serves
        self._pid = 0
        # Only a plain pool's connections may be kept aside: a Sentinel pool moves its
        # connections to a new master when it checks one out (tasks/connection.py).
        self._own_connection = type(client.connection_pool) in PLAIN_POOLS

    def __call__(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        # Encoded here, in the caller's greenlet: a value Redis cannot take (a lone
        # surrogate in a string, say) fails this call alone, not the batch it would join.
        values = (*keys, *args)
        call = _Call(
            script, len(keys), len(values), pack_values(values, self._encode, self._hiredis)
        )
        self.waiting.append(call)
        self.calls += 1
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        self._wake.set()
        result = call.result
        del call
        result.wait()
        if result.successful():
            return result.value
        # Raised from here, not by result.get(): its frame (holding the result, which
        # holds the error) would be in the error's traceback, a reference cycle, which
        # web/gcpolicy.py may freeze until its next refresh. This frame lets go of both.
        error = result.exception
        del result
        try:
            raise error
        finally:
            del error

    def stats(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "batches": self.batches,
            "reloads": self.reloads,
            "errors": self.errors,
        }

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                while self.waiting:
                    batch = self._batch = self.waiting[: self.max_batch]
                    del self.waiting[: self.max_batch]
                    try:
                        self._send(batch)
                    except Exception as error:  # the batch's own failure, never the loop's
                        if not isinstance(error, redis.RedisError):
                            log.exception("funnel: a batch of %d calls failed", len(batch))
                        self._fail(batch, error)
                    self._batch = []
        except BaseException as error:  # killed, or a signal raised here: nobody may wait
            # on this greenlet any more (the next call starts another one).
            waiting, self.waiting = self._batch + self.waiting, []
            self._fail(waiting, error)
            raise

    def _fail(self, calls: list[_Call], error: BaseException) -> None:
        if not isinstance(error, Exception):  # a caller re-raises it: make it an error
            error = redis.ConnectionError(f"the script funnel stopped ({type(error).__name__})")
        else:
            self.errors += 1
            error = untraced(error)  # the calls will hold it; its frames hold them
        for call in calls:
            if not call.result.ready():
                call.result.set_exception(error)

    def _send(self, batch: list[_Call]) -> None:
        self.batches += 1
        replies = self._pipeline(batch)
        unknown = []
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):
                unknown.append(call)
            elif isinstance(reply, Exception):
                call.result.set_exception(reply)
            else:
                call.result.set(reply)
        if not unknown:
            return
        self.reloads += 1
        for script in {id(call.script): call.script for call in unknown}.values():
            script.sha = self.client.script_load(script.script)
        for call, reply in zip(unknown, self._pipeline(unknown), strict=True):
            if isinstance(reply, Exception):
                call.result.set_exception(reply)
            else:
                call.result.set(reply)

    def _pipeline(self, calls: list[_Call]) -> list[Any]:
        """Send the calls on one connection as one write; their replies, an error reply
        as its exception. A connection that fails is closed (replies may be left unread
        on it) before anything else uses it."""
        pool = self.client.connection_pool
        if not self._own_connection:
            conn = pool.get_connection()
            try:
                return self._exchange(conn, calls)
            finally:
                pool.release(conn)
        # A connection of the funnel's own, made by the client's pool but never checked
        # out of it: the funnel is its only user and reads every reply it asked for, so
        # of the checks a checkout makes only "did the server close it" is left, made
        # here with the system's poll (a checkout polls through gevent: a tenth of a
        # batch's CPU).
        conn = self._conn
        if conn is None or self._pid != os.getpid():  # none yet, or the parent's (a fork)
            conn = self._conn = pool.make_connection()
            self._pid = os.getpid()
        elif readable(conn):  # closed by the server (a restart, its timeout, CLIENT KILL)
            conn.disconnect()
        conn.connect()  # a no-op while connected
        return self._exchange(conn, calls)

    def _exchange(self, conn: Any, calls: list[_Call]) -> list[Any]:
        try:
            conn.send_packed_command([b"".join([call.command() for call in calls])])
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as error:  # this call's own: read the rest
                    replies.append(untraced(error))  # its frames hold the batch
        except BaseException:
            conn.disconnect()
            raise
        return replies
