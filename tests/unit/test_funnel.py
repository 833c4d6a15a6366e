"""The script funnel (web/funnel.py): many greenlets' Lua calls, one pipeline per batch.

Each scenario runs in a child process patched by gevent, as a web worker is, against a
real Redis: every caller gets its own reply or its own error, a script Redis forgot is
loaded again, and a Redis outage fails the calls made during it but not the funnel.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support import RedisServer, gevent_scenario

ECHO = "return {KEYS[1], ARGV[1]}"
PICKY = (
    "if tonumber(ARGV[1]) % 7 == 0 then return redis.error_reply('ERR seven') end return ARGV[1]"
)


def run_scenario(name: str, server: RedisServer) -> None:
    gevent_scenario("test_funnel", name, server)


def test_every_caller_gets_its_own_reply_or_error(redis_server: RedisServer) -> None:
    """300 greenlets call two scripts at once: each gets its own reply, a script's error
    reaches only the call that caused it, and far fewer pipelines than calls went out."""
    run_scenario("replies", redis_server)


def test_a_script_redis_forgot_is_loaded_again(redis_server: RedisServer) -> None:
    """After SCRIPT FLUSH (what a Redis restart without persistence of scripts does) a
    burst of calls still gets its replies: the funnel loads the script and resends."""
    run_scenario("noscript", redis_server)


def test_an_outage_fails_its_calls_not_the_funnel(redis_server: RedisServer) -> None:
    """Calls made while Redis is down raise a Redis error (as a direct call does) and the
    funnel's greenlet lives on: once Redis is back, calls are answered again."""
    run_scenario("outage", redis_server)


def test_a_value_redis_cannot_take_fails_only_its_own_call(redis_server: RedisServer) -> None:
    """One of 30 concurrent calls carries a lone surrogate (valid JSON, not UTF-8): that
    call fails as a direct call would, the 29 sharing its batch get their replies."""
    run_scenario("poison", redis_server)


def test_a_funnel_stopped_with_calls_waiting_fails_them_and_starts_again(
    redis_server: RedisServer,
) -> None:
    """The funnel's greenlet is killed while calls wait for it: they raise instead of
    waiting forever, and the next call is answered by a new greenlet."""
    run_scenario("killed", redis_server)


def test_a_connection_the_server_closed_is_replaced_before_a_batch(
    redis_server: RedisServer,
) -> None:
    """The funnel's own connection is closed by the server while idle (CLIENT KILL, as its
    idle timeout would; then a Redis restart): the next calls are answered, none fails."""
    run_scenario("closed", redis_server)


def test_errors_leave_no_reference_cycles(redis_server: RedisServer) -> None:
    """Error replies and a failed batch reach their callers as exceptions without a
    reference cycle (web/gcpolicy.py would keep one frozen until its next refresh)."""
    run_scenario("nocycles", redis_server)


@pytest.mark.parametrize("script", [ECHO, PICKY])
def test_the_scripts_compile(redis_server: RedisServer, script: str) -> None:
    """The scenarios' scripts are valid Lua (else the scenarios could pass on errors)."""
    client = redis_server.client()
    assert client.eval(script, 1, "k", "8") in ([b"k", b"8"], b"8")


# -- the scenarios (run in the child) ----------------------------------------------------


def _replies(url: str) -> None:
    import gevent
    import redis

    from web.funnel import Funnel

    client = redis.Redis.from_url(url, protocol=2)
    funnel = Funnel(client)
    echo, picky = client.register_script(ECHO), client.register_script(PICKY)

    def call(n: int) -> Any:
        if n % 2:
            return funnel(picky, ["k"], [n])
        return funnel(echo, [f"key{n}"], [n])

    greenlets = [gevent.spawn(call, n) for n in range(300)]
    gevent.joinall(greenlets, timeout=30)
    for n, greenlet in enumerate(greenlets):
        assert greenlet.ready(), n
        if n % 2 and n % 7 == 0:
            assert isinstance(greenlet.exception, redis.ResponseError), (n, greenlet.value)
            assert "seven" in str(greenlet.exception)
        elif n % 2:
            assert greenlet.successful() and greenlet.value == str(n).encode(), n
        else:
            assert greenlet.successful() and greenlet.value == [f"key{n}".encode(), b"%d" % n]
    stats = funnel.stats()
    assert stats["calls"] == 300 and 1 <= stats["batches"] < 30, stats
    assert stats["errors"] == 0, stats


def _noscript(url: str) -> None:
    import gevent
    import redis

    from web.funnel import Funnel

    client = redis.Redis.from_url(url, protocol=2)
    funnel = Funnel(client)
    echo = client.register_script(ECHO)
    assert funnel(echo, ["a"], ["1"]) == [b"a", b"1"]
    client.script_flush()
    greenlets = [gevent.spawn(funnel, echo, [f"k{n}"], [n]) for n in range(50)]
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    assert [g.value for g in greenlets] == [[f"k{n}".encode(), b"%d" % n] for n in range(50)]
    assert funnel.stats()["reloads"] >= 1, funnel.stats()


def _outage(url: str) -> None:
    import gevent
    import redis

    from web.funnel import Funnel

    own = RedisServer(Path(tempfile.mkdtemp()) / "redis").start()
    try:
        client = redis.Redis(port=own.port, protocol=2, socket_timeout=2)
        client.connection_pool.connection_kwargs["retry"] = None  # fail fast while down
        funnel = Funnel(client)
        echo = client.register_script(ECHO)
        assert funnel(echo, ["a"], ["1"]) == [b"a", b"1"]
        own.stop()
        greenlets = [gevent.spawn(funnel, echo, [f"k{n}"], [n]) for n in range(20)]
        gevent.joinall(greenlets, timeout=60)
        assert all(isinstance(g.exception, redis.RedisError) for g in greenlets), [
            g.exception for g in greenlets
        ]
        own.start()
        greenlets = [gevent.spawn(funnel, echo, [f"k{n}"], [n]) for n in range(20)]
        gevent.joinall(greenlets, timeout=60, raise_error=True)
        assert [g.value for g in greenlets] == [[f"k{n}".encode(), b"%d" % n] for n in range(20)]
        assert funnel.stats()["errors"] >= 1, funnel.stats()
    finally:
        own.stop()


def _poison(url: str) -> None:
    import gevent
    import redis

    from web.funnel import Funnel

    client = redis.Redis.from_url(url, protocol=2)
    funnel = Funnel(client)
    echo = client.register_script(ECHO)
    values = [f"ok {n}" if n != 15 else "bad \ud800" for n in range(30)]
    greenlets = [gevent.spawn(funnel, echo, ["k"], [value]) for value in values]
    gevent.joinall(greenlets, timeout=30)
    for n, greenlet in enumerate(greenlets):
        if n == 15:
            assert isinstance(greenlet.exception, UnicodeEncodeError), greenlet.exception
        else:
            assert greenlet.successful() and greenlet.value == [b"k", values[n].encode()], n


def _killed(url: str) -> None:
    import gevent
    import redis

    from web.funnel import Funnel

    client = redis.Redis.from_url(url, protocol=2)
    funnel = Funnel(client)
    echo = client.register_script(ECHO)
    assert funnel(echo, ["a"], ["1"]) == [b"a", b"1"]  # its greenlet runs, idle now
    runner = funnel._greenlet
    assert runner is not None and not runner.dead
    waiting = [gevent.spawn(funnel, echo, [f"k{n}"], [n]) for n in range(5)]
    # The callers run first and queue their calls; then the kill reaches the funnel
    # while it still waits to be woken.
    runner.kill(block=False)
    gevent.joinall(waiting, timeout=10)
    assert all(g.ready() for g in waiting), "a caller waits on a dead funnel"
    assert all(g.successful() or isinstance(g.exception, redis.RedisError) for g in waiting)
    assert funnel(echo, ["b"], ["2"]) == [b"b", b"2"]
    assert funnel._greenlet is not runner


def _closed(url: str) -> None:
    import gevent
    import redis

    from web.funnel import Funnel

    own = RedisServer(Path(tempfile.mkdtemp()) / "redis").start()
    try:
        client = redis.Redis(port=own.port, protocol=2, socket_timeout=2)
        client.connection_pool.connection_kwargs["retry"] = None  # no retry to hide a failure
        funnel = Funnel(client)
        echo = client.register_script(ECHO)
        assert funnel(echo, ["a"], ["1"]) == [b"a", b"1"]
        other = redis.Redis(port=own.port, protocol=2)
        assert other.client_kill_filter(_type="normal", skipme=True) >= 1
        other.close()
        for _ in range(2):
            greenlets = [gevent.spawn(funnel, echo, [f"k{n}"], [n]) for n in range(20)]
            gevent.joinall(greenlets, timeout=30)
            assert [g.value for g in greenlets] == [
                [f"k{n}".encode(), b"%d" % n] for n in range(20)
            ], [g.exception for g in greenlets]
            own.stop()  # then a restart while the funnel is idle
            own.start()
        assert funnel.stats()["errors"] == 0, funnel.stats()
    finally:
        own.stop()


def _nocycles(url: str) -> None:
    import gc

    import gevent
    import redis

    from web.funnel import Funnel

    own = RedisServer(Path(tempfile.mkdtemp()) / "redis").start()
    try:
        client = redis.Redis(port=own.port, protocol=2, socket_timeout=2)
        client.connection_pool.connection_kwargs["retry"] = None
        funnel = Funnel(client)
        picky = client.register_script(PICKY)

        def call(n: int) -> object:  # as a request does: the error is handled, not fatal
            try:
                return funnel(picky, ["k"], [n])
            except redis.RedisError as error:
                return type(error)

        assert call(1) == b"1"
        gc.collect()
        gc.disable()
        greenlets = [gevent.spawn(call, n) for n in range(1, 50)]
        gevent.joinall(greenlets, timeout=30)
        got = [g.value for g in greenlets]
        assert got.count(redis.ResponseError) == 7, got
        own.stop()  # the next batch fails as a whole
        greenlets = [gevent.spawn(call, n) for n in range(10)]
        gevent.joinall(greenlets, timeout=30)
        assert all(issubclass(g.value, redis.ConnectionError) for g in greenlets), greenlets
        del greenlets
        found = gc.collect()
        assert found == 0, f"{found} objects were in reference cycles"
    finally:
        gc.enable()
        own.stop()


SCENARIOS = {
    "closed": _closed,
    "nocycles": _nocycles,
    "replies": _replies,
    "noscript": _noscript,
    "outage": _outage,
    "poison": _poison,
    "killed": _killed,
}


def main() -> None:
    """In the child: run the scenario named by argv[1] against the Redis at argv[2]."""
    SCENARIOS[sys.argv[1]](sys.argv[2])
    print("ok")
