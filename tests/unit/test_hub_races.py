"""Races of the hub's log cache and the line's positions, under gevent, on a real Redis.

Each scenario runs in its own gevent-patched Python (patched first, as gunicorn's gevent
worker does), against the session's Redis. A race is made certain by holding one read until
the other side has acted, never by faking Redis or the hub.
"""

from __future__ import annotations

import secrets
import sys
from typing import Any

from support import RedisServer, gevent_scenario, wait_until


def run_scenario(name: str, server: RedisServer) -> None:
    gevent_scenario("test_hub_races", name, server)


def test_a_fill_begun_before_a_reconnect_cannot_complete_after_it(
    redis_server: RedisServer,
) -> None:
    """A log read begun before the hub's connection dropped must not become the job's cache
    after the reconnect (it may miss what was published meanwhile); the fill begun after
    the reconnect completes, with what arrived while it read."""
    run_scenario("stale_fill", redis_server)


def test_the_log_cache_is_bounded_in_bytes(redis_server: RedisServer) -> None:
    """A log bigger than the process's cache budget is not cached; a cached log that grows
    past it is dropped (its streams read Redis), and the bytes held go back to 0."""
    run_scenario("cache_budget", redis_server)


def test_a_place_read_while_a_reread_is_asked_for_is_read_again(
    redis_server: RedisServer,
) -> None:
    """A job starts being tracked while a departure and then a reread request arrive during
    its read: its place is not stored stale (it is #2, not #3)."""
    run_scenario("track_during_reread", redis_server)


def test_a_reread_that_finds_the_pool_exhausted_is_retried(redis_server: RedisServer) -> None:
    """A reread request that meets an exhausted connection pool is not dropped: once a
    connection frees up the positions are read again and corrected."""
    run_scenario("reread_retry", redis_server)


# -- the scenarios (run in the child) ----------------------------------------------------


def _frame(n: int, pad: int = 0) -> bytes:
    return f'id: {n}-0\nevent: progress\ndata: {{"pad":"{"x" * pad}"}}\n\n'.encode()


def stale_fill(url: str) -> None:
    import redis

    from web.hub import Hub, item_from_frame

    hub = Hub(url, confirm_timeout=10)
    client = redis.Redis.from_url(url)
    channel = f"hardening:fill:{secrets.token_hex(4)}".encode()
    hub.watch(channel)
    first = hub.begin_fill(channel)
    assert first
    read_before = [item_from_frame(_frame(n)) for n in range(1, 5)]  # e1–e4
    client.client_kill_filter(_type="pubsub")
    wait_until(lambda: hub.reconnects >= 1 and hub.subs[channel].ready.is_set(), what="a reconnect")
    wait_until(lambda: not hub.subs[channel].resync, what="the resubscription")
    second = hub.begin_fill(channel)
    assert second and second != first
    messages = hub.messages
    client.publish(channel, _frame(7))
    wait_until(lambda: hub.messages > messages, what="e7 to arrive")
    hub.finish_fill(channel, first, read_before)
    assert hub.cached_log(channel) is None, "a fill from before the reconnect was kept"
    hub.finish_fill(channel, second, [item_from_frame(_frame(n)) for n in range(1, 7)])
    cached = hub.cached_log(channel)
    assert cached is not None and [item.key for item in cached] == [(n, 0) for n in range(1, 8)]
    assert hub.cache_bytes == sum(len(item.frame) for item in cached)


def cache_budget(url: str) -> None:
    import redis

    from web.hub import Hub, item_from_frame

    hub = Hub(url, confirm_timeout=10, cache_bytes=2000)
    client = redis.Redis.from_url(url)
    big, small = (f"hardening:budget:{secrets.token_hex(4)}".encode() for _ in range(2))
    hub.watch(big)
    hub.watch(small)
    size = len(_frame(1, 270))
    assert 250 < size < 400
    token = hub.begin_fill(big)
    hub.finish_fill(big, token, [item_from_frame(_frame(n, 270)) for n in range(1, 11)])
    assert hub.cached_log(big) is None and hub.cache_bytes == 0
    token = hub.begin_fill(small)
    hub.finish_fill(small, token, [item_from_frame(_frame(n, 270)) for n in range(1, 4)])
    assert hub.cache_bytes == 3 * size
    messages = hub.messages
    for n in range(4, 8):
        client.publish(small, _frame(n, 270))
    wait_until(lambda: hub.messages == messages + 4, what="the messages")
    assert hub.cached_log(small) is None and hub.cache_bytes == 0


def _line_fixture(url: str, client: Any) -> tuple[Any, Any, Any, list[str]]:
    """Three waiting jobs under a fresh prefix, a hub, and a watcher of the third."""
    from tasks.events import JobEvents
    from tasks.keys import Keys
    from web.hub import Hub

    prefix = f"hardening{secrets.token_hex(4)}:"
    events = JobEvents(client, prefix=prefix)
    jobs = [secrets.token_urlsafe(16) for _ in range(3)]
    for job in jobs:
        events.enqueue(job, {"prompt": "p"})
    hub = Hub(url, confirm_timeout=10)
    keys = Keys(prefix)
    hub.watch(keys.channel(jobs[2]))  # as its stream would: the line keeps it tracked
    return events, keys, hub, jobs


def track_during_reread(url: str) -> None:
    import gevent
    import gevent.event
    import redis

    from web.line import Line

    client = redis.Redis.from_url(url)
    events, keys, hub, jobs = _line_fixture(url, client)
    read_done, release = gevent.event.Event(), gevent.event.Event()

    class HeldLine(Line):
        hold = True

        def _read(self, job_ids: list[str]) -> Any:
            result = super()._read(job_ids)
            if self.hold:  # the first read only: it has run in Redis, its reply waits
                self.hold = False
                read_done.set()
                release.wait(20)
            return result

    line = HeldLine(hub, client, keys)
    tracking = gevent.spawn(line.track, jobs[2])
    assert read_done.wait(20)
    events.publish(jobs[0], "started")  # the first job leaves: the third is #2 now
    wait_until(lambda: line.departures == 1, what="the departure")
    client.publish(keys.queue, "0 *")  # a sweep: every place must be read again
    wait_until(lambda: line.rereads >= 1, what="the reread")
    release.set()
    place = tracking.get(timeout=20)
    assert place is not None and place.position == 2, place
    wait_until(lambda: line.position(jobs[2]) == 2, what="the stored place")


def reread_retry(url: str) -> None:
    import redis

    from web.line import Line

    pool = redis.BlockingConnectionPool.from_url(url, max_connections=1, timeout=0.2)
    client = redis.Redis(connection_pool=pool)
    _, keys, hub, jobs = _line_fixture(url, redis.Redis.from_url(url))
    line = Line(hub, client, keys)
    place = line.track(jobs[2])
    assert place is not None and place.position == 3
    other = redis.Redis.from_url(url)
    other.zrem(keys.queue, jobs[0])  # a departure this process never hears of
    held = pool.get_connection("PING")  # the pool is exhausted for now
    rereads = line.rereads
    other.publish(keys.queue, "0 *")
    wait_until(lambda: line.rereads > rereads, what="a reread to meet the exhausted pool")
    pool.release(held)
    wait_until(lambda: line.position(jobs[2]) == 2, what="the retried reread")


SCENARIOS = {
    "stale_fill": stale_fill,
    "cache_budget": cache_budget,
    "track_during_reread": track_during_reread,
    "reread_retry": reread_retry,
}


def main() -> None:
    """In the child: run the scenario named by argv[1] against the Redis at argv[2]."""
    SCENARIOS[sys.argv[1]](sys.argv[2])
    print("ok")
