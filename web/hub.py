"""The hub: one Redis pub/sub connection per web process, shared by every stream.

    stream greenlets ──watch(channel)──▶ Hub ──SUBSCRIBE a b c (batched)──▶ Redis
          ▲                               │
          └── Watcher.drain() ◀── bytes ──┘◀── reader greenlet ◀── messages

* Channels are refcounted: the first watcher of a channel subscribes and waits for
  Redis to confirm, so nothing published after ``watch()`` returns can be missed. A
  channel whose last watcher left is unsubscribed a little later by the reaper, so a
  client that reconnects at once finds it still subscribed.
* Every message is turned into an :class:`Item` once; all watchers get the same object.
  Job channels carry finished SSE frames; the item only adds the parsed id and whether the
  phase is terminal.
* A watcher's mailbox is bounded: when it overflows (a slow client) it is emptied and the
  stream is told to catch up from the event log instead.
* When the connection drops, the reader reconnects with backoff, resubscribes every
  channel, and tells each watcher to resync from the log after its last sent id.
* No message can stop delivery: an error while handling one is logged and only that
  channel resyncs; the hub's greenlets are supervised and restarted if one dies.
  :meth:`Hub.healthy` is False while the hub cannot deliver (down a few seconds).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import redis
import redis.connection

from tasks.connection import MASTER_CHECK_SECONDS, RedisTarget
from tasks.events import TERMINAL, EventId
from web.funnel import readable

log = logging.getLogger(__name__)

TERMINAL_PHASES = frozenset(phase.encode() for phase in TERMINAL)


@dataclass(frozen=True, slots=True)
class Item:
    """One message as streams see it: its event id (None if derived), and the frame."""

    key: EventId | None
    terminal: bool
    frame: bytes
    phase: bytes = b""
    position: int | None = None  # a derived queue position's value
    # A multiplexed stream's relabelling, made by the first one that sends the item and
    # reused by the others (one Item goes to every watcher): (tag, frame after the id line
    # with "jobId" spliced in). Filled in place: the Item itself stays immutable.
    muxed: list[tuple[bytes, bytes]] = field(default_factory=list, compare=False, repr=False)


RESYNC = Item(None, False, b"")
"""Marker: the stream lost messages (reconnect or overflow) and must read the log."""

KEEP_ALIVE = Item(None, False, b": keep-alive\n\n")


def item_from_frame(frame: bytes) -> Item:
    """Parse just enough of a published SSE frame: its ``id:`` and ``event:`` lines."""
    if not frame.startswith(b"id: "):
        return Item(None, False, frame)
    end = frame.index(b"\n", 4)
    ms, _, seq = frame[4:end].partition(b"-")
    phase_at = end + 8  # len("\nevent: ")
    phase = frame[phase_at : frame.index(b"\n", phase_at)]
    return Item((int(ms), int(seq)), phase in TERMINAL_PHASES, frame, phase)


def as_chunk(frame: bytes) -> bytes:
    """``frame`` as one HTTP/1.1 chunk (what a chunked response puts on the wire)."""
    return b"%x\r\n%s\r\n" % (len(frame), frame)


def send_directly(watcher: Watcher, item: Item, chunk: bytes) -> bool:
    """One non-blocking ``send()`` of ``item`` to a lent watcher's socket, as its response
    frames it (``chunk``, the frame made once per message by :func:`as_chunk`, if the
    response is chunked; else the frame); False if the socket failed, and ``item`` went to
    the stream's greenlet instead. A send the kernel did not take whole leaves the rest
    in ``pending`` and hands the watcher back to its greenlet (``direct`` is then False:
    if the client stays this slow, the mailbox's bound applies as before)."""
    data = chunk if watcher.chunked else item.frame
    try:
        sent = watcher.sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        watcher.put(item)  # the stream's own write reports the broken connection
        return False
    if sent < len(data):
        watcher.pending = data[sent:]
        watcher.direct = False
        watcher._wake.set()
    return True


def tell_place(watchers: Iterable[Watcher], item: Item) -> int:
    """Hand a derived place-in-line frame to ``watchers``: written directly to the lent
    ones it moves forward (a lent one it would move back gets nothing, as its stream
    would drop it), put in the mailbox of the others. Returns how many were sent."""
    assert item.key is None and item.position is not None
    chunk = as_chunk(item.frame)
    direct = 0
    now = _now()
    for watcher in watchers:
        if not watcher.direct:
            watcher.put(item)
            continue
        if watcher.place is not None and item.position >= watcher.place:
            continue
        if send_directly(watcher, item, chunk):
            watcher.place = item.position
            watcher.active_at = now
            direct += 1
    return direct


class Watcher:
    """A stream's bounded mailbox. A stream blocks in :meth:`drain` with no timer of its
    own: the hub's heartbeat puts a keep-alive in any mailbox quiet for too long.

    Direct sends: while its stream is parked with nothing to send, a watcher may lend the
    hub its client socket (:meth:`lend`). The hub then writes each new logged frame to it
    itself, with one non-blocking ``send()``, and no greenlet wakes. Anything else (a
    terminal frame, a place in line, a keep-alive, a resync), an error, or a send the
    kernel does not take whole (the rest is kept in ``pending``) goes back to the
    stream's greenlet, which writes it the stock way."""

    __slots__ = (
        "_wake", "active_at", "channel", "chunked", "direct", "items", "limit", "pending",
        "place", "sent", "sock",
    )  # fmt: skip

    def __init__(self, channel: bytes, limit: int, wake: gevent.event.Event | None = None) -> None:
        self.channel = channel
        self.limit = limit
        self.items: list[Item] = []
        self.active_at = _now()
        # Several watchers may share one wake event (a multiplexed stream waits on all).
        self._wake = gevent.event.Event() if wake is None else wake
        self.direct = False  # the hub may write to ``sock`` now
        self.sock: Any = None  # the client's OS socket (non-blocking), if it may be lent
        self.chunked = False  # the response is HTTP/1.1 chunked: frame each write
        self.sent: EventId | None = None  # the newest id on the wire while direct
        self.pending = b""  # bytes of a direct send the kernel did not take yet
        self.place: int | None = None  # the last place in line on the wire while direct

    def lend(self, sent: EventId | None, place: int | None = None) -> None:
        """Let the hub write frames newer than ``sent`` (and places in line lower than
        ``place``) to ``sock`` until the next :meth:`put` or :meth:`reclaim`. Only with
        an empty mailbox and nothing pending."""
        self.sent = sent
        self.place = place
        self.direct = True

    def reclaim(self) -> EventId | None:
        """Stop direct sends; the newest id the hub put on the wire (or the one lent)."""
        self.direct = False
        return self.sent

    def put(self, item: Item) -> None:
        self.direct = False  # from now on, and until lent again, the greenlet writes
        items = self.items
        if len(items) >= self.limit:
            # A slow reader: forget the backlog here, it will be re-read from Redis.
            items.clear()
            item = RESYNC
        items.append(item)
        self._wake.set()

    def drain(self, timeout: float | None = None) -> list[Item]:
        """Wait for items (up to ``timeout`` s, if given) and take them all."""
        if not self.items:
            self._wake.clear()
            self._wake.wait(timeout)
        return self.take()

    def take(self) -> list[Item]:
        """Take the items there are, without waiting."""
        batch, self.items = self.items, []
        self.active_at = _now()
        return batch


@dataclass
class _Sub:
    watchers: set[Watcher] = field(default_factory=set)
    ready: gevent.event.Event = field(default_factory=gevent.event.Event)
    outstanding: int = 0  # SUBSCRIBEs sent whose confirmation has not come back
    active: bool = False  # we want to be subscribed
    idle_since: float = 0.0
    resync: bool = False
    # The job's whole log as this process has seen it (see Hub.cached_log), and the
    # messages that arrive while a stream reads the log to start it.
    log: list[Item] | None = None
    log_bytes: int = 0
    filling: list[Item] | None = None
    fill: int = 0  # the token of the fill in progress (0: none)


class HubUnavailable(Exception):
    """Redis did not confirm a subscription in time."""


class Hub:
    def __init__(
        self,
        redis_url: str | RedisTarget,
        *,
        queue_size: int = 256,
        confirm_timeout: float = 5.0,
        ping_every: float = 5.0,
        linger: float = 5.0,
        heartbeat: float = 15.0,
        cache_bytes: int = 0,
        down_grace: float = 5.0,
        sharded: bool = False,
        gather: float = 0.0,
    ) -> None:
        # Only its connection class and options are used: the hub makes its one connection
        # itself, and a Sentinel pool's connections ask the sentinels for the master.
        target = RedisTarget(redis_url) if isinstance(redis_url, str) else redis_url
        self.pool = target.pool(
            protocol=2,
            socket_keepalive=True,
            socket_connect_timeout=5,
            # We PING every ping_every seconds; three pings' worth of silence means dead.
            socket_timeout=ping_every * 3,
            health_check_interval=0,
        )
        # Sharded pub/sub (a cluster node's own channels): SSUBSCRIBE, smessage replies.
        self.sharded = sharded
        self._sub_cmd, self._unsub_cmd = ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else (
            "SUBSCRIBE", "UNSUBSCRIBE",
        )  # fmt: skip
        self.queue_size = queue_size
        self.confirm_timeout = confirm_timeout
        self.ping_every = ping_every
        self.linger = linger
        self.heartbeat = heartbeat
        self.cache_limit = cache_bytes or LOG_CACHE_BYTES
        self.cache_bytes = 0  # frames held by every channel's log cache
        self.down_grace = down_grace
        self.gather = gather
        self.subs: dict[bytes, _Sub] = {}
        self.handlers: dict[bytes, Callable[[bytes], None]] = {}
        self.streams = 0
        self.connected = gevent.event.Event()
        self._ops: list[tuple[str, bytes]] = []
        self._ops_ready = gevent.event.Event()
        self._conn: redis.connection.Connection | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._down_since: float | None = None  # no reply on the connection since then
        self._fills = 0
        self.reconnects = 0
        self.errors = 0  # messages whose handling failed (isolated, channel resynced)
        self.restarts = 0  # hub greenlets restarted after an unexpected exception
        self.messages = 0  # pub/sub messages received
        self.delivered = 0  # frames handed to watchers (messages × watchers)
        self.direct_sends = 0  # of those, written to the client's socket by the hub
        self.direct_blocked = 0  # direct sends the kernel did not take whole
        self.pauses = 0  # the reader's gathering sleeps (see _read_messages)

    # -- public API -------------------------------------------------------------------

    def watch(self, channel: str | bytes, wake: gevent.event.Event | None = None) -> Watcher:
        """Register a watcher of ``channel``; return once Redis confirms the subscription.
        ``wake``: an event the watcher sets on each item (shared by a multiplexed stream's
        watchers), else its own."""
        self.start()
        name = channel.encode() if isinstance(channel, str) else channel
        watcher = Watcher(name, self.queue_size, wake)
        sub = self.subs.get(name)
        if sub is None:
            sub = self.subs[name] = _Sub()
        sub.watchers.add(watcher)
        self.streams += 1
        try:
            if not sub.active:
                self._subscribe(name, sub)
            if not sub.ready.wait(self.confirm_timeout):
                raise HubUnavailable(f"no confirmation for {name!r}")
        except BaseException:  # also a greenlet killed while it waits: never leak
            self.unwatch(watcher)
            raise
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        sub = self.subs.get(watcher.channel)
        if sub is None or watcher not in sub.watchers:
            return
        sub.watchers.discard(watcher)
        self.streams -= 1
        if not sub.watchers:
            sub.idle_since = _now()

    def listen(self, channel: str | bytes, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(payload)`` in the hub's reader for each message on ``channel``
        (and ``handler(b"*")`` after a reconnect, as messages may have been missed);
        return once the subscription is confirmed."""
        self.start()
        name = channel.encode() if isinstance(channel, str) else channel
        self.handlers[name] = handler
        sub = self.subs.setdefault(name, _Sub())
        if not sub.active:
            self._subscribe(name, sub)
        if not sub.ready.wait(self.confirm_timeout):
            raise HubUnavailable(f"no confirmation for {name!r}")

    # -- the per-process log cache ----------------------------------------------------
    #
    # A stream must send the log after its Last-Event-ID. The first stream of a job in
    # this process reads the whole log from Redis (begin_fill … finish_fill); from then on
    # the hub keeps it complete by appending every message of the channel, in order, so
    # later streams of the same job start without a Redis round trip. The cache is
    # dropped whenever messages could have been missed: a reconnect, or an unsubscribe.

    def cached_log(self, channel: bytes) -> list[Item] | None:
        sub = self.subs.get(channel)
        return sub.log if sub is not None and sub.log else None

    def begin_fill(self, channel: bytes) -> int:
        """Start collecting the channel's messages; a token if the caller should fill the
        log (pass it to :meth:`finish_fill`), else 0."""
        sub = self.subs.get(channel)
        if sub is None or not self._settled(sub) or sub.log is not None or sub.fill:
            return 0
        self._fills += 1
        sub.fill, sub.filling = self._fills, []
        return sub.fill

    def finish_fill(self, channel: bytes, token: int, items: list[Item] | None) -> None:
        """Keep ``items`` (the log read after begin_fill) plus what arrived meanwhile, if
        the fill ``token`` began is still the one in progress on a settled subscription."""
        sub = self.subs.get(channel)
        if sub is None or not token or sub.fill != token:
            return  # a reconnect or unsubscribe in between: the reading may have a gap
        arrived, sub.filling, sub.fill = sub.filling or [], None, 0
        if not items or not self._settled(sub):
            return
        size = sum(len(item.frame) for item in items)
        if len(items) > LOG_CACHE_MAX or self.cache_bytes + size > self.cache_limit:
            return  # too big to keep: streams of this job read Redis
        sub.log, sub.log_bytes = list(items), size
        self.cache_bytes += size
        for item in arrived:
            self._extend(sub, item)

    def _settled(self, sub: _Sub) -> bool:
        """Subscribed, confirmed, and not waiting to resync: nothing is being missed."""
        return sub.active and sub.ready.is_set() and not sub.resync

    def _forget_log(self, sub: _Sub) -> None:
        self.cache_bytes -= sub.log_bytes
        sub.log, sub.log_bytes, sub.filling, sub.fill = None, 0, None, 0

    def _extend(self, sub: _Sub, item: Item) -> None:
        """Append a logged item to the cache, skipping ones already in it (ids only grow)."""
        log = sub.log
        assert log is not None
        if item.key is None or item.key <= log[-1].key:  # type: ignore[operator]
            return
        size = len(item.frame)
        if len(log) >= LOG_CACHE_MAX or self.cache_bytes + size > self.cache_limit:
            self._forget_log(sub)  # a very long (or large) log: read it from Redis instead
            return
        log.append(item)
        sub.log_bytes += size
        self.cache_bytes += size

    def watchers_of(self, channel: bytes) -> set[Watcher]:
        sub = self.subs.get(channel)
        return sub.watchers if sub else set()

    def start(self) -> None:
        if not self._greenlets:
            self._down_since = _now()
            loops = [
                self._read_forever,
                self._write_forever,
                self._reap_forever,
                self._heartbeat_forever,
            ]
            if hasattr(self.pool, "get_master_address"):
                loops.append(self._follow_master_forever)
            self._greenlets = [gevent.spawn(self._supervise, loop) for loop in loops]

    def _supervise(self, loop: Callable[[], None]) -> None:
        """Run ``loop`` forever: restart it if an unexpected exception ends it."""
        while True:
            try:
                loop()
            except Exception:
                self.restarts += 1
                log.exception("hub: %s died; restarting it", loop.__name__)
                gevent.sleep(0.1)

    def healthy(self) -> bool:
        """Whether the hub can deliver: started, its loops running, and its connection
        answering (or down for less than ``down_grace`` seconds)."""
        if not self._greenlets or any(g.dead for g in self._greenlets):
            return False
        down = self._down_since
        return down is None or _now() - down < self.down_grace

    def stop(self) -> None:
        gevent.killall(self._greenlets)
        self._greenlets = []
        if self._conn is not None:
            self._conn.disconnect()

    def stats(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "channels": len(self.subs),
            "connected": self.connected.is_set(),
            "healthy": self.healthy(),
            "reconnects": self.reconnects,
            "errors": self.errors,
            "restarts": self.restarts,
            "cacheBytes": self.cache_bytes,
            "messages": self.messages,
            "delivered": self.delivered,
            "directSends": self.direct_sends,
            "directBlocked": self.direct_blocked,
            "pauses": self.pauses,
        }

    # -- subscription bookkeeping -------------------------------------------------------

    def _subscribe(self, name: bytes, sub: _Sub) -> None:
        sub.active = True
        if sub.ready.is_set():
            sub.ready = gevent.event.Event()
        sub.outstanding += 1
        self._queue_op(self._sub_cmd, name)

    def _queue_op(self, command: str, name: bytes) -> None:
        self._ops.append((command, name))
        self._ops_ready.set()

    def _confirmed(self, name: bytes) -> None:
        sub = self.subs.get(name)
        if sub is None:
            return
        sub.outstanding -= 1
        if sub.outstanding > 0 or not sub.active:
            return
        sub.ready.set()
        if sub.resync:
            sub.resync = False
            for watcher in sub.watchers:
                watcher.put(RESYNC)
            handler = self.handlers.get(name)
            if handler is not None:
                self._call(name, handler, b"*")

    def _unsubscribed(self, name: bytes) -> None:
        sub = self.subs.get(name)
        if sub is not None and not sub.active and sub.outstanding == 0:
            del self.subs[name]

    def _reap_forever(self) -> None:
        """Unsubscribe channels nobody has watched for ``linger`` seconds."""
        while True:
            gevent.sleep(self.linger)
            cutoff = _now() - self.linger
            for name, sub in list(self.subs.items()):
                idle = not sub.watchers and name not in self.handlers
                if idle and sub.active and sub.idle_since <= cutoff:
                    sub.active = False
                    self._forget_log(sub)  # messages will be missed from now on
                    self._queue_op(self._unsub_cmd, name)

    def _heartbeat_forever(self) -> None:
        """Put a keep-alive comment in every mailbox quiet for ``heartbeat`` seconds.

        One sweep for all streams instead of a timer per stream; a write to a dead peer
        is how half-open connections are found."""
        while True:
            gevent.sleep(self.heartbeat / 5)
            quiet = _now() - self.heartbeat
            for sub in list(self.subs.values()):
                for watcher in list(sub.watchers):
                    if watcher.active_at <= quiet and not watcher.items:
                        watcher.put(KEEP_ALIVE)

    # -- the connection ---------------------------------------------------------------

    def _follow_master_forever(self) -> None:
        """With a Sentinel set: drop the connection once the sentinels name another master.

        A forced failover leaves the old master up for seconds, publishing nothing more
        (the workers write to the new one); the reader then reconnects to the new master
        and every stream resyncs from the log."""
        while True:
            gevent.sleep(MASTER_CHECK_SECONDS)
            conn = self._conn
            if conn is None:
                continue
            try:
                address = self.pool.get_master_address()
            except (redis.ConnectionError, redis.TimeoutError):
                continue  # no master known now; the connection tells us if it dies
            if self._conn != conn:  # (identity; `is` would un-narrow conn for mypy)
                continue  # the reader reconnected meanwhile
            if (conn.host, conn.port) != tuple(address):
                log.warning("hub: the master is now %s:%s; reconnecting", *address)
                conn.disconnect()  # the reader's read fails and it reconnects

    def _write_forever(self) -> None:
        """Send queued (UN)SUBSCRIBEs in batches, and a PING when idle."""
        while True:
            self._ops_ready.wait(self.ping_every)
            self._ops_ready.clear()
            if not self.connected.is_set():
                self.connected.wait()
                continue
            ops, self._ops = self._ops, []
            try:
                self._send_ops(ops)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                # The reader notices the broken connection and resubscribes everything.
                log.info("hub: send failed; the reader will reconnect")

    def _send_ops(self, ops: list[tuple[str, bytes]]) -> None:
        conn = self._conn
        if conn is None:
            return
        if not ops:
            conn.send_command("PING", check_health=False)
            return
        if self.sharded:  # channels of several slots in one SSUBSCRIBE are a CROSSSLOT
            for op, name in ops:
                conn.send_command(op, name, check_health=False)
            return
        run: list[bytes] = []
        command = ops[0][0]
        for op, name in ops:
            if op != command:
                conn.send_command(command, *run, check_health=False)
                run, command = [], op
            run.append(name)
        conn.send_command(command, *run, check_health=False)

    def _read_forever(self) -> None:
        backoff = 0.05
        while True:
            try:
                self._connect()
                backoff = 0.05
                self._read_messages()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("hub: redis connection lost (%s); reconnecting", exc)
            except Exception:
                # An error reply (e.g. NOPERM) or a bug: start over on a new connection,
                # every channel resyncs from its log.
                self.restarts += 1
                log.exception("hub: reader failed; reconnecting")
            self._disconnected()
            gevent.sleep(backoff * (1 + random.random()))
            backoff = min(backoff * 2, 2.0)

    def _connect(self) -> None:
        conn = self.pool.make_connection()
        conn.connect()
        self._conn = conn
        self._ops = []
        names = [name for name, sub in self.subs.items() if sub.active]
        for name in names:
            self.subs[name].outstanding = 1
        for run in [[n] for n in names] if self.sharded else [names] if names else []:
            conn.send_command(self._sub_cmd, *run, check_health=False)
        conn.send_command("PING", check_health=False)  # its reply says the link works
        self.connected.set()

    def _disconnected(self) -> None:
        self.connected.clear()
        if self._down_since is None:
            self._down_since = _now()
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
        self.reconnects += 1
        for name, sub in list(self.subs.items()):
            if not sub.active:
                del self.subs[name]
                continue
            sub.resync = True
            sub.outstanding = 0
            self._forget_log(sub)  # messages may have been missed
            if sub.ready.is_set():
                # New watchers must wait for the resubscription to be confirmed.
                sub.ready = gevent.event.Event()

    def _read_messages(self) -> None:
        conn = self._conn
        assert conn is not None
        # Reading a reply the moment the last one is handled costs, at a moderate rate
        # (one message per read), a failed recv and the start and stop of the socket's
        # watcher for every message: most of what a delivery costs here. So once the
        # parser, the TLS layer and the kernel hold nothing more the reader sleeps
        # ``gather`` seconds, and the next read finds what arrived meanwhile. Never after
        # a reply that is not a message (a watcher may wait for its confirmation), never
        # with a parser that cannot say what it holds.
        held = _held(conn) if self.gather > 0 else None
        while True:
            # The socket timeout (3 pings' worth of silence) raises TimeoutError: dead.
            reply = conn.read_response(disconnect_on_error=False)
            self._down_since = None
            kind = reply[0]
            if kind == b"message" or kind == b"smessage":
                self.messages += 1
                self._dispatch(reply[1], reply[2])
                if held is not None and not held():
                    self.pauses += 1
                    gevent.sleep(self.gather)
            elif kind == b"subscribe" or kind == b"ssubscribe":
                self._confirmed(reply[1])
            elif kind == b"unsubscribe" or kind == b"sunsubscribe":
                self._unsubscribed(reply[1])

    def _dispatch(self, name: bytes, payload: bytes) -> None:
        handler = self.handlers.get(name)
        if handler is not None:
            self._call(name, handler, payload)
            return
        sub = self.subs.get(name)
        if sub is None:
            return
        try:
            item = item_from_frame(payload)
        except ValueError:
            self.errors += 1
            log.exception("hub: unreadable message on %r; its streams resync", name)
            self._forget_log(sub)
            for watcher in sub.watchers:
                watcher.put(RESYNC)
            return
        if sub.log is not None:
            self._extend(sub, item)
        if sub.filling is not None:
            sub.filling.append(item)
        if not sub.watchers:
            return
        self.delivered += len(sub.watchers)
        key = item.key
        if key is None or item.terminal:
            for watcher in sub.watchers:
                watcher.put(item)
            return
        chunk = as_chunk(item.frame)
        now = 0.0
        direct = 0
        for watcher in sub.watchers:
            if not watcher.direct:
                watcher.put(item)
                continue
            if watcher.sent is not None and key <= watcher.sent:
                continue  # on the wire already (it came in the stream's backlog)
            if not send_directly(watcher, item, chunk):
                continue
            watcher.sent = key
            direct += 1
            if not now:
                now = _now()
            watcher.active_at = now
            if not watcher.direct:
                self.direct_blocked += 1
        self.direct_sends += direct

    def _call(self, name: bytes, handler: Callable[[bytes], None], payload: bytes) -> None:
        """Run a channel's handler; if it fails, log it and ask the handler to resync."""
        try:
            handler(payload)
            return
        except Exception:
            self.errors += 1
            log.exception("hub: handler of %r failed on %r; resyncing it", name, payload[:200])
        if payload == b"*":
            return
        try:
            handler(b"*")
        except Exception:
            log.exception("hub: handler of %r failed to resync", name)


class ClusterHub:
    """The hub of a web process whose store is a Redis Cluster: a :class:`Hub` per master
    that owns the slot of a watched job channel (sharded pub/sub: SSUBSCRIBE there, where
    the job's SPUBLISH goes), started on its first watcher, and one more for the classic
    channels (lines, the ops feed), which a cluster delivers on every node. So a process
    holds at most masters + 1 pub/sub connections, however many streams it serves.

    Each hub reconnects and resyncs its own watchers as a single hub does. The slot map
    is read when a job channel is first watched; a slot moved to another master later
    (resharding) reaches its watchers as the old master's ``sunsubscribe``, and the hub
    does not yet follow it to the new owner (a known limit, docs/ha.md)."""

    def __init__(
        self, target: RedisTarget, is_job_channel: Callable[[bytes], bool], **options: Any
    ):
        self.target = target
        self.options = options
        self.is_job_channel = is_job_channel
        host, port = target.nodes()[0]
        self.classic = Hub(target.node(host, port), **options)
        self.shards: dict[tuple[str, int], Hub] = {}
        self._router: redis.RedisCluster | None = None

    def _hub_of(self, channel: bytes) -> Hub:
        if not self.is_job_channel(channel):
            return self.classic
        if self._router is None:
            self._router = self.target.client(socket_connect_timeout=3, socket_timeout=5)
        assert self._router is not None
        node = self._router.get_node_from_key(channel)
        address = (node.host, int(node.port))
        hub = self.shards.get(address)
        if hub is None:
            hub = self.shards[address] = Hub(
                self.target.node(*address), sharded=True, **self.options
            )
        return hub

    @property
    def hubs(self) -> list[Hub]:
        return [self.classic, *self.shards.values()]

    @property
    def streams(self) -> int:
        return sum(hub.streams for hub in self.hubs)

    @property
    def delivered(self) -> int:
        return sum(hub.delivered for hub in self.hubs)

    def watch(self, channel: str | bytes, wake: gevent.event.Event | None = None) -> Watcher:
        name = channel.encode() if isinstance(channel, str) else channel
        return self._hub_of(name).watch(name, wake)

    def unwatch(self, watcher: Watcher) -> None:
        self._hub_of(watcher.channel).unwatch(watcher)

    def listen(self, channel: str | bytes, handler: Callable[[bytes], None]) -> None:
        name = channel.encode() if isinstance(channel, str) else channel
        self._hub_of(name).listen(name, handler)

    def cached_log(self, channel: bytes) -> list[Item] | None:
        return self._hub_of(channel).cached_log(channel)

    def begin_fill(self, channel: bytes) -> int:
        return self._hub_of(channel).begin_fill(channel)

    def finish_fill(self, channel: bytes, token: int, items: list[Item] | None) -> None:
        self._hub_of(channel).finish_fill(channel, token, items)

    def watchers_of(self, channel: bytes) -> set[Watcher]:
        return self._hub_of(channel).watchers_of(channel)

    def start(self) -> None:
        self.classic.start()

    def healthy(self) -> bool:
        return all(hub.healthy() for hub in self.hubs)

    def stop(self) -> None:
        for hub in self.hubs:
            hub.stop()

    def stats(self) -> dict[str, Any]:
        every = [hub.stats() for hub in self.hubs]
        total = {
            name: sum(one[name] for one in every)
            for name in ("streams", "channels", "reconnects", "errors", "restarts", "cacheBytes",
                         "messages", "delivered", "directSends", "directBlocked", "pauses")
        }  # fmt: skip
        connected = all(one["connected"] for one in every)
        return {**total, "connected": connected, "healthy": self.healthy(), "links": len(every)}


AnyHub = Hub | ClusterHub
"""What a web process streams through: one Redis's hub, or a cluster's."""

LOG_CACHE_MAX = 1000  # entries per job's cached log
LOG_CACHE_BYTES = 64 * 1024 * 1024  # frames in all cached logs of a process


def _now() -> float:
    return gevent.get_hub().loop.now()


def _held(conn: redis.connection.Connection) -> Callable[[], bool] | None:
    """A check of whether a read now would find something: bytes left in the parser
    (hiredis's reader), decrypted bytes in the TLS layer, or bytes (or the close) in the
    kernel (``readable``: the system's poll, not gevent's). Each TLS read returns at most one record, and Redis ends one
    with every write, so the parser running dry says nothing about the socket there; nor
    does it over TCP when a full read ends on a message's end. None when the parser
    cannot say what it holds (redis-py's pure-Python one): then the reader never pauses."""
    reader = getattr(getattr(conn, "_parser", None), "_reader", None)
    has_data = getattr(reader, "has_data", None)
    sock = conn._sock
    if not callable(has_data) or sock is None:
        return None
    pending = getattr(sock, "pending", None)  # an SSL socket's

    def held() -> bool:
        return bool(has_data() or (pending is not None and pending()) or readable(conn))

    return held
