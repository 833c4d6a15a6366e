"""The hub's gathering reads (``JOBCAST_HUB_GATHER_MS``), under gevent, on a real Redis.

Once the parser, the TLS layer and the kernel hold nothing more, the reader sleeps before
the next read, so messages that come at a moderate pace are taken several per read. What
a user relies on: every message still arrives, in order, none later than about one pause;
what has already arrived is read without pausing, over TCP and over TLS (where every read
returns one record); a parser that cannot say what it holds never pauses.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    RedisServer,
    free_port,
    gevent_scenario,
    self_signed_certificate,
    wait_until,
)


def run_scenario(name: str, server: RedisServer) -> None:
    gevent_scenario("test_hub_gather", name, server)


def test_messages_at_a_moderate_pace_are_gathered_and_none_waits_past_a_pause(
    redis_server: RedisServer,
) -> None:
    """40 messages 10 ms apart with a 100 ms pause: all arrive in order, in a handful of
    reads (a pause per read, not per message), none more than a pause (and slack) late."""
    run_scenario("paced", redis_server)


def test_a_burst_in_hand_is_handled_without_a_pause_per_message(
    redis_server: RedisServer,
) -> None:
    """500 messages published in one pipeline with a 300 ms pause: they arrive in order in a
    few reads, far sooner than one pause each would allow."""
    run_scenario("burst", redis_server)


def test_a_parser_that_cannot_say_what_it_holds_never_pauses(
    redis_server: RedisServer,
) -> None:
    """With redis-py's pure-Python parser (no hiredis reader to ask) a pause could sit on
    a reply already read: the reader never pauses, and a burst arrives whole."""
    run_scenario("python_parser", redis_server)


def test_no_pause_when_gathering_is_off(redis_server: RedisServer) -> None:
    run_scenario("off", redis_server)


def test_reads_that_end_on_a_message_boundary_with_more_in_the_kernel_do_not_pause(
    redis_server: RedisServer,
) -> None:
    """1,000 messages of exactly 1 KiB on the wire, published while the reader sleeps: each
    full read ends on a message's end (the parser runs dry) with more in the kernel; the
    reader reads on instead of sleeping once per read (which, at a 300 ms pause, would take
    seconds and let Redis's output buffer for the connection grow)."""
    run_scenario("boundary", redis_server)


@dataclass
class _TlsRedis:
    url: str


@pytest.fixture
def tls_redis(tmp_path: Path) -> _TlsRedis:
    """A Redis with a TLS port (and its plain one for the start-up check), or a skip where
    the redis-server binary was built without TLS."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing (scripts/install installs it)")
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    server = RedisServer(tmp_path / "redis", appendonly=False, options=[
        "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    ])  # fmt: skip
    try:
        server.start()
    except Exception:
        log = (tmp_path / "redis" / "redis.log").read_text(errors="replace")
        if "tls" in log.lower():
            pytest.skip(f"this redis-server has no TLS: {log[-300:]}")
        raise
    yield _TlsRedis(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")  # type: ignore[misc]
    server.stop()


def test_over_tls_messages_one_record_each_are_read_without_a_pause_each(
    tls_redis: _TlsRedis,
) -> None:
    """Over TLS every read returns one record and Redis ends one with each write, so the
    parser runs dry after every message: 100 messages published one by one while the reader
    sleeps (300 ms) must arrive together after that one pause, not one pause each (30 s;
    a new stream's subscription would time out behind them)."""
    gevent_scenario("test_hub_gather", "tls", tls_redis)  # type: ignore[arg-type]


# -- the scenarios (run in the child) ----------------------------------------------------


def _frame(n: int, sent: float = 0.0) -> bytes:
    return f'id: {n}-0\nevent: progress\ndata: {{"sent":{sent!r}}}\n\n'.encode()


def _receive(watcher, count: int, timeout: float = 20.0) -> list:  # type: ignore[no-untyped-def]
    """``count`` items off ``watcher`` with the time each was taken."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(got)} of {count} arrived"
        for item in watcher.drain(left):
            got.append((item, time.time()))
    return got


def _hub_and_channel(url: str, gather: float, **options):  # type: ignore[no-untyped-def]
    from web.hub import Hub

    hub = Hub(url, confirm_timeout=10, gather=gather, queue_size=10_000, **options)
    channel = f"gather:{secrets.token_hex(4)}".encode()
    return hub, channel, hub.watch(channel)


def paced(url: str) -> None:
    import gevent
    import redis

    hub, channel, watcher = _hub_and_channel(url, 0.1)
    client = redis.Redis.from_url(url)

    def publish() -> None:
        for n in range(1, 41):
            client.publish(channel, _frame(n, time.time()))
            gevent.sleep(0.01)

    publisher = gevent.spawn(publish)
    got = _receive(watcher, 40)
    publisher.get()
    assert [item.key for item, _ in got] == [(n, 0) for n in range(1, 41)]
    assert 2 <= hub.pauses <= 15, hub.pauses  # ~0.4 s of messages, 0.1 s a pause
    late = max(at - json.loads(item.frame.split(b"data: ")[1])["sent"] for item, at in got)
    assert late < 0.1 + 0.4, f"a message waited {late:.3f} s with a 0.1 s pause"


def burst(url: str) -> None:
    import redis

    hub, channel, watcher = _hub_and_channel(url, 0.3)
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for n in range(1, 501):
        pipe.publish(channel, _frame(n))
    began = time.monotonic()
    pipe.execute()
    got = _receive(watcher, 500)
    took = time.monotonic() - began
    assert [item.key for item, _ in got] == [(n, 0) for n in range(1, 501)]
    assert hub.pauses <= 5, hub.pauses
    assert took < 0.3 * 20, f"500 messages took {took:.2f} s"


def python_parser(url: str) -> None:
    import redis
    from redis._parsers import _RESP2Parser

    from web.hub import Hub

    hub = Hub(url, confirm_timeout=10, gather=0.5, queue_size=10_000)
    hub.pool.connection_kwargs["parser_class"] = _RESP2Parser
    channel = f"gather:{secrets.token_hex(4)}".encode()
    watcher = hub.watch(channel)
    assert isinstance(hub._conn._parser, _RESP2Parser)  # type: ignore[union-attr]
    client = redis.Redis.from_url(url)
    for n in range(1, 31):
        client.publish(channel, _frame(n))
    got = _receive(watcher, 30)
    assert [item.key for item, _ in got] == [(n, 0) for n in range(1, 31)]
    assert hub.pauses == 0


def off(url: str) -> None:
    import redis

    hub, channel, watcher = _hub_and_channel(url, 0.0)
    client = redis.Redis.from_url(url)
    for n in range(1, 21):
        client.publish(channel, _frame(n))
        wait_until(lambda n=n: hub.messages >= n, what=f"message {n}")
    assert [item.key for item, _ in _receive(watcher, 20)] == [(n, 0) for n in range(1, 21)]
    assert hub.pauses == 0


def _exact_frame(n: int, wire: int, channel: bytes) -> bytes:
    """A frame whose pub/sub ``message`` reply on ``channel`` is ``wire`` bytes long."""

    def reply(payload: bytes) -> int:
        parts = [b"message", channel, payload]
        return len(b"*3\r\n") + sum(len(b"$%d\r\n\r\n" % len(x)) + len(x) for x in parts)

    frame = _frame(n)
    pad = wire - reply(frame)
    while True:  # the pad's length can change the length's own digits
        framed = f'id: {n}-0\nevent: progress\ndata: {{"pad":"{"x" * pad}"}}\n\n'.encode()
        if reply(framed) == wire:
            return framed
        pad += wire - reply(framed)


def boundary(url: str) -> None:
    import redis

    hub, channel, watcher = _hub_and_channel(url, 0.3)
    client = redis.Redis.from_url(url)
    client.publish(channel, _exact_frame(1, 1024, channel))
    _receive(watcher, 1)  # the reader now sleeps
    pipe = client.pipeline(transaction=False)
    for n in range(2, 1002):
        pipe.publish(channel, _exact_frame(n, 1024, channel))
    pipe.execute()
    began, pauses = time.monotonic(), hub.pauses
    got = _receive(watcher, 1000)
    assert [item.key for item, _ in got] == [(n, 0) for n in range(2, 1002)]
    assert hub.pauses - pauses <= 3, f"{hub.pauses - pauses} pauses for 1,000 messages"
    assert time.monotonic() - began < 3, "the reader slept between full reads"


def tls(url: str) -> None:
    import redis

    hub, channel, watcher = _hub_and_channel(url, 0.3)
    assert hub._conn is not None and hasattr(hub._conn._sock, "pending")  # TLS indeed
    client = redis.Redis.from_url(url)
    client.publish(channel, _frame(1))
    _receive(watcher, 1)  # the reader now sleeps
    for n in range(2, 102):
        client.publish(channel, _frame(n))  # a write (a record) each
    began, pauses = time.monotonic(), hub.pauses
    got = _receive(watcher, 100)
    assert [item.key for item, _ in got] == [(n, 0) for n in range(2, 102)]
    assert hub.pauses - pauses <= 3, f"{hub.pauses - pauses} pauses for 100 messages"
    assert time.monotonic() - began < 3, "the reader slept after every record"
    other = hub.watch(f"gather:{secrets.token_hex(4)}".encode())  # confirmed at once
    hub.unwatch(other)


SCENARIOS = {
    "paced": paced,
    "burst": burst,
    "python_parser": python_parser,
    "off": off,
    "boundary": boundary,
    "tls": tls,
}


def main() -> None:
    """In the child: run the scenario named by argv[1] against the Redis at argv[2]."""
    SCENARIOS[sys.argv[1]](sys.argv[2])
    print("ok")
