"""The hub's gathering reads (``JOBCAST_HUB_GATHER_MS``), under gevent, on a real Redis.

Once a read's bytes are used up the reader sleeps before the next read, so messages that
come at a moderate pace are taken several per read. What a user relies on: every message
still arrives, in order, none later than about one pause; a burst already in hand is
handled without pausing; a parser that cannot say what it holds never pauses.
"""

from __future__ import annotations

import json
import secrets
import sys
import time

from support import RedisServer, gevent_scenario, wait_until


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


SCENARIOS = {"paced": paced, "burst": burst, "python_parser": python_parser, "off": off}


def main() -> None:
    """In the child: run the scenario named by argv[1] against the Redis at argv[2]."""
    SCENARIOS[sys.argv[1]](sys.argv[2])
    print("ok")
