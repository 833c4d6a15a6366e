"""Every Redis connection Jobcast opens comes from here: one Redis, or a Sentinel set.

A URL names the server the way kombu does, so Celery's broker takes the same value::

    redis://[[user]:password@]host:port/db, rediss://…, unix://…   one Redis
    sentinel://[[user]:password@]h1:26379;sentinel://h2:26379/db    a Sentinel set

For a Sentinel set, ``JOBCAST_SENTINEL_MASTER`` names the master the sentinels watch and
``JOBCAST_SENTINEL_PASSWORD`` is the sentinels' own password (if they have one); the
URL's credentials and database are the master's. kombu reads them from whichever
address it connects through, so all addresses must agree (``/0`` on the last alone, as
in kombu's examples, agrees with none on the others: database 0).

A Sentinel pool asks the sentinels where the master is whenever it opens a connection,
and again every :data:`MASTER_CHECK_SECONDS` as connections are taken, closing those to
any other server. While any sentinel reports a failover in progress there is no master
(:class:`FencedSentinel`): a failover of a live master (``SENTINEL FAILOVER``) promotes a
replica seconds before the sentinels announce it, and the old master, still named, takes
writes that are lost when it is demoted. A connection whose server answers READONLY
(demoted) or NOREPLICAS (a master cut off from its replicas under
``min-replicas-to-write``) is closed with a ``ConnectionError``. So every caller rides a
failover as it rides a Redis restart: the hub reconnects, publishes retry, requests
answer 503 until the new master is announced.
"""

from __future__ import annotations

import functools
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import redis
import redis.cluster
import redis.sentinel
from redis.driver_info import DriverInfo

SENTINEL = "sentinel"
CLUSTER = "redis+cluster"  # a Redis Cluster: redis+cluster://h1:7000,h2:7001 (as `limits` names it)
# Sentinels answer small commands; one that hangs must not hold up discovery for long.
SENTINEL_TIMEOUT = 1.0
# How stale a pool's idea of the master may get while its connections stay busy: writes
# that reach a master being replaced in that time are lost. Each check asks every
# sentinel once (a few small commands per busy process per second).
MASTER_CHECK_SECONDS = 0.25


class FencedSentinel(redis.sentinel.Sentinel):
    """Sentinels that name no master while any of them runs a failover of it.

    Only the sentinel leading a failover flags it (``failover_in_progress``); the others
    name the old master until the new one is announced, so every reachable sentinel is
    asked."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        found: tuple[str, int] | None = None
        for sentinel in self.sentinels:
            try:
                state = sentinel.sentinel_master(service_name)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                continue  # down, or not watching this master: the others decide
            if "failover_in_progress" in state.get("flags", ""):
                raise redis.sentinel.MasterNotFoundError(
                    f"a failover of {service_name!r} is in progress"
                )
            if found is None and self.check_master_state(state, service_name):
                found = (state["ip"], state["port"])
        if found is None:
            raise redis.sentinel.MasterNotFoundError(f"no sentinel names {service_name!r}")
        return found


class MasterConnection(redis.sentinel.SentinelManagedConnection):
    """A connection to the master the sentinels name; a server that refuses writes as a
    replica (READONLY) or for want of replicas (NOREPLICAS) is not one to keep."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOREPLICAS"):
                raise
            self.disconnect()
            raise redis.ConnectionError(f"the master cannot write: {exc}") from exc


class SentinelPool(redis.sentinel.SentinelConnectionPool):
    """A master's pool that follows the sentinels' answer while it stays busy."""

    _checked = 0.0

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        kwargs.setdefault("connection_class", MasterConnection)
        super().__init__(service_name, sentinel_manager, **kwargs)

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked >= MASTER_CHECK_SECONDS:
            self._checked = now
            try:
                # On a change this closes idle connections; busy ones close when released.
                self.get_master_address()
            except redis.ConnectionError:
                # No master now: close them all (busy ones as they come back), so nothing
                # more reaches the old one; new connections wait for the sentinels.
                self.proxy.master_address = None
                self.disconnect(inuse_connections=False)
                raise
        return super().get_connection(*args, **kwargs)


class BlockingSentinelPool(SentinelPool, redis.BlockingConnectionPool):
    """A master's pool that waits for a free connection (as BlockingConnectionPool does)
    instead of failing, and follows the master through the sentinels."""


@dataclass(frozen=True)
class SentinelSet:
    """The parts of a ``sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme == SENTINEL


def parse_sentinels(url: str) -> SentinelSet:
    """The sentinels, database and master credentials of a ``sentinel://`` URL (kombu's
    form: addresses separated by ``;``); ``ValueError`` saying what is wrong."""
    parts = [urllib.parse.urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    if not parts or any(part.scheme != SENTINEL for part in parts):
        raise ValueError("every address must start with sentinel://")
    sentinels: list[tuple[str, int]] = []
    named: set[tuple[int, str | None, str | None]] = set()  # (db, user, password) of each
    for part in parts:
        try:
            port = part.port or 26379
        except ValueError:
            raise ValueError(f"bad port in {without_password(part.geturl())!r}") from None
        if not part.hostname:
            raise ValueError(f"no host in {without_password(part.geturl())!r}")
        sentinels.append((part.hostname, port))
        path = part.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the database must be a number, got {path!r}")
        named.add((int(path or 0), _unquote(part.username), _unquote(part.password)))
    if len(named) > 1:
        # kombu reads them from whichever address it connects through: they must agree.
        raise ValueError(
            "every address must name the same database and credentials (none means "
            "database 0, no password)"
        )
    db, username, password = named.pop()
    return SentinelSet(sentinels, db, username, password)


def check_address(url: str) -> None:
    """``ValueError`` saying what is wrong with a ``redis://``/``rediss://`` URL's port or
    database (redis-py fails on the first deep inside, and takes database 0 for a second
    that is not a number); other schemes are left to their own parsers."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return
    try:
        parts.port  # noqa: B018 (the check is the reading)
    except ValueError:
        raise ValueError(f"bad port in {without_password(url)!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database must be a number, got {path!r}")


def without_password(url: str) -> str:
    """``url`` (each ``;``-separated address of it) with any password left out: for error
    messages and logs, which must show where a URL points but not its secret."""
    return ";".join(_address_without_password(part) for part in url.split(";"))


def _address_without_password(address: str) -> str:
    parts = urllib.parse.urlsplit(address)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return address
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def _unquote(value: str | None) -> str | None:
    return urllib.parse.unquote(value) if value else None


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis lives: a URL, and for a Sentinel set the master's name and the
    sentinels' password. Builds the pools and clients everything else uses."""

    url: str
    master: str = ""
    sentinel_password: str = ""

    @property
    def sentinel(self) -> bool:
        return is_sentinel(self.url)

    @property
    def cluster(self) -> bool:
        """A Redis Cluster (the event store may be one; Celery's broker never is)."""
        return urllib.parse.urlsplit(self.url).scheme == CLUSTER

    def pool(self, *, blocking: bool = False, **options: Any) -> redis.ConnectionPool:
        """A connection pool (``options`` as redis-py's pools take them; with
        ``blocking``, ``max_connections`` and ``timeout`` bound it and requests wait).
        A cluster has a pool per node: :meth:`client`, or :meth:`nodes` for addresses."""
        if self.cluster:
            raise ValueError("a Redis Cluster has no single pool: use client()")
        # One DriverInfo for every connection: built per connection, it asks
        # importlib.metadata for redis-py's version (≈0.4 ms, 8% of connect CPU while a
        # burst of streams grows the web's pool).
        options.setdefault("driver_info", _driver_info())
        if not self.sentinel:
            kind = redis.BlockingConnectionPool if blocking else redis.ConnectionPool
            return kind.from_url(self.url, **options)
        parsed = parse_sentinels(self.url)
        credentials = {"username": parsed.username, "password": parsed.password}
        manager = FencedSentinel(
            parsed.sentinels,
            sentinel_kwargs={
                "socket_connect_timeout": SENTINEL_TIMEOUT,
                "socket_timeout": SENTINEL_TIMEOUT,
                "password": self.sentinel_password or None,
            },
        )
        kind = BlockingSentinelPool if blocking else SentinelPool
        return kind(self.master, manager, db=parsed.db, **credentials, **options)

    def client(self, **options: Any) -> redis.Redis:
        """A client with a pool of its own; for a cluster, a ``redis.RedisCluster`` that
        learns the cluster from the URL's nodes (typed as a Redis: it takes the same
        commands, each key routed to its slot's master)."""
        if self.cluster:
            options.setdefault("driver_info", _driver_info())
            parts = urllib.parse.urlsplit(self.url)
            nodes = [redis.cluster.ClusterNode(h, p) for h, p in self.nodes()]
            cluster = redis.RedisCluster(
                startup_nodes=nodes,
                username=_unquote(parts.username),
                password=_unquote(parts.password),
                **options,
            )
            return cluster
        return redis.Redis(connection_pool=self.pool(**options))

    def nodes(self) -> list[tuple[str, int]]:
        """The addresses a ``redis+cluster://`` URL names (default port 6379)."""
        netloc = urllib.parse.urlsplit(self.url).netloc.rpartition("@")[2]
        found: list[tuple[str, int]] = []
        for address in netloc.split(","):
            host, colon, port = address.strip().rpartition(":")
            if not colon:
                host, port = port, "6379"
            if not host or not port.isdigit():
                raise ValueError(f"bad node address {address!r} in {without_password(self.url)!r}")
            found.append((host.strip("[]"), int(port)))
        return found

    def node(self, host: str, port: int) -> RedisTarget:
        """One node of a cluster as a plain Redis target (its credentials, no database)."""
        parts = urllib.parse.urlsplit(self.url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return RedisTarget(f"redis://{userinfo}{at}{host}:{port}")

    def describe(self) -> str:
        """The target for a log line, without any password."""
        if self.sentinel:
            hosts = ",".join(f"{h}:{p}" for h, p in parse_sentinels(self.url).sentinels)
            return f"sentinel master {self.master!r} via {hosts}"
        if self.cluster:
            return "cluster via " + ",".join(f"{h}:{p}" for h, p in self.nodes())
        return without_password(self.url)


@functools.cache
def _driver_info() -> DriverInfo:
    """What every connection tells Redis in CLIENT SETINFO, resolved once (lazily)."""
    return DriverInfo()
