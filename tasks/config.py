"""Settings: the one place that reads the environment.

Both the web factory and the Celery factory call :func:`Settings.from_env` when they
build their app, never at import time, so tests can build apps with other settings; the
Flask extension embedded in another app may add that app's ``JOBCAST_*`` config keys
(:func:`Settings.from_config`).
Settings are validated when built from the environment and again by the Celery factory
(which the web app and the monitor also go through): a setting out of its bounds stops
the process with a :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tasks.connection import (
    RedisTarget,
    check_address,
    is_sentinel,
    parse_sentinels,
    without_password,
)
from tasks.keys import Keys


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # A sentinel:// REDIS_URL (or broker URL) names a Sentinel set: the master's name, and
    # the sentinels' own password if they have one (tasks.connection).
    sentinel_master: str = ""
    sentinel_password: str = ""
    # Celery's broker, when not the Redis of the job records ("" : REDIS_URL): a single
    # Redis, a Sentinel set (the same master name) or RabbitMQ; never a Redis Cluster.
    broker_url: str = ""
    prefix: str = "jobcast:"
    media_dir: str = "var/media"
    retention_seconds: int = 24 * 3600
    max_queue: int = 1000
    heartbeat_seconds: float = 15.0
    retry_ms: int = 3000
    max_prompt_chars: int = 500
    max_side: int = 1024
    min_side: int = 64
    max_steps: int = 100
    default_side: int = 512
    default_steps: int = 20
    max_body_bytes: int = 16 * 1024
    stream_maxlen: int = 1000
    # The largest event data (JSON bytes) a task may log; larger output belongs in a file.
    max_event_bytes: int = 64 * 1024
    # Connections a web process may hold besides the hub's pub/sub one; requests wait
    # for a free one (BlockingConnectionPool) instead of failing.
    redis_pool_size: int = 32
    redis_pool_timeout: float = 10.0
    watcher_queue_size: int = 256
    max_streams: int = 20000
    # Jobs one multiplexed stream (GET /jobs/stream?job=…) may carry.
    max_stream_jobs: int = 100
    # How long a multiplexed stream asked to idle (?idle=1) stays open once all its jobs
    # have ended, with keep-alives, before it ends (a reconnect then gets 204).
    stream_idle_seconds: float = 300.0
    send_timeout_seconds: float = 30.0
    # While messages flow, the hub reads its pub/sub connection at most every this many
    # milliseconds, taking all that arrived meanwhile in one read (a delivery costs about
    # half the CPU at 2,000 messages/s); the price is at most this much added latency for
    # a message that comes while it sleeps. 0: read each message as soon as it comes.
    hub_gather_ms: float = 1.0
    # The hub writes live frames to idle streams' sockets itself (one send() each, no
    # greenlet woken) under gunicorn's gevent workers; false: every frame goes through
    # the stream's greenlet and gunicorn's write, the stock path.
    direct_send: bool = True
    # Under gevent, the enqueue of a POST and the opening read of a stream go to Redis
    # through one greenlet that pipelines every call waiting (web/funnel.py); false:
    # each request runs its script on a pooled connection of its own.
    script_funnel: bool = True
    # The standalone app under gevent freezes what each full pass of Python's cyclic
    # collector finds alive, and thaws it every this many seconds (web/gcpolicy.py);
    # 0: the collector as Python has it.
    gc_refresh_seconds: float = 300.0
    max_attempts: int = 3
    publish_retry_seconds: float = 60.0
    visibility_timeout: int = 3600
    # Flask-Limiter syntax, per client address; empty turns the limit off.
    post_rate_limit: str = "60/minute;10/second"
    ops_token: str = ""
    # Sign-in attempts at /ops/login, per client address (Flask-Limiter syntax; empty: off).
    ops_login_rate_limit: str = "10/minute"
    # Reverse proxies in front of the web that set X-Forwarded-For/-Proto; 0 trusts none.
    trusted_proxies: int = 0
    # The monitor publishes the ops snapshot this often (seconds).
    ops_interval: float = 1.0
    # A worker is offline after this long without a heartbeat; 0 means 2.5 heartbeat
    # intervals as the worker announces them (Celery's default 2 s gives 5 s).
    worker_timeout: float = 0.0
    # The monitor's retention sweep (old images, ghosts in the line) runs this often.
    sweep_seconds: float = 60.0
    # A job in line this long with no Celery message is sent again by the sweep.
    ghost_grace_seconds: float = 30.0
    signing_key: str = ""
    # Where browsers reach the web service (e.g. https://jobs.example.com): the start of
    # the stream/status URLs a submit from Python hands out; empty gives paths.
    public_url: str = ""
    # Modules of your own (comma-separated) that Jobcast's worker and web processes import:
    # your tasks, for `jobcast worker`, and the job kinds they register, for the web.
    imports: str = ""
    # A running attempt holds its job's lease this long between refreshes; a second copy
    # of its message waits this long for a dead holder's lease to run out.
    job_lease_seconds: float = 6.0
    # The monitor exits (status 3) when none of its publishes reached Redis for this long,
    # so a supervisor (compose's restart policy) starts a fresh one; 0 turns this off.
    monitor_watchdog_seconds: float = 0.0
    # The path Jobcast's routes are mounted under ("" or like "/jobcast"): the web serves
    # them there and workers put it in the URLs they publish (a done event's image url).
    url_prefix: str = ""
    # Origins whose pages may call the job routes (comma-separated, exact, like
    # "https://app.example.com"), or "*" for any; empty: no CORS headers at all.
    cors_origins: str = ""
    # Let those pages send cookies/HTTP auth (needs exact origins, never "*").
    cors_credentials: bool = False
    # Jobs the ops job browser's index (``jobs:index``) keeps at most, newest first;
    # the retention sweep also drops those older than the retention.
    job_index_max: int = 100_000
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, then ``JOBCAST_*``/``REDIS_URL``, then overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "REDIS_URL" in env:
            values["redis_url"] = env["REDIS_URL"]
        for f in dataclasses.fields(cls):
            name = "JOBCAST_" + f.name.upper()
            if name in env and f.name != "extra":
                values[f.name] = _coerce(name, f.default, env[name])
        values.update(overrides)
        settings = cls(**values)
        # Lowering a cap lowers the default with it, unless the default was set too.
        settings = settings.replace(
            default_side=values.get("default_side", min(settings.default_side, settings.max_side)),
            default_steps=values.get(
                "default_steps", min(settings.default_steps, settings.max_steps)
            ),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the first variable out of its bounds."""
        for name, (low, high) in BOUNDS.items():
            _check_range(name, getattr(self, name), low, high)
        if self.worker_timeout:
            _check_range("worker_timeout", self.worker_timeout, 1, 3600)
        _check_range("max_side", self.max_side, self.min_side, BOUNDS["max_side"][1])
        _check_range("default_side", self.default_side, self.min_side, self.max_side)
        _check_range("default_steps", self.default_steps, 1, self.max_steps)
        _check_redis_url(self)
        if not self.prefix:
            raise SettingsError("JOBCAST_PREFIX must not be empty")
        for module in self.import_list:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", module):
                raise SettingsError(f"JOBCAST_IMPORTS names a module badly: {module!r}")
        if self.url_prefix and not URL_PREFIX.fullmatch(self.url_prefix):
            raise SettingsError(
                "JOBCAST_URL_PREFIX must be empty or a path like /jobcast (no trailing slash), "
                f"got {self.url_prefix!r}"
            )
        _check_origins(self.cors_origins, self.cors_credentials)

    @property
    def store(self) -> RedisTarget:
        """The Redis of job records, event logs and pub/sub."""
        return RedisTarget(self.redis_url, self.sentinel_master, self.sentinel_password)

    @property
    def keys(self) -> Keys:
        """Key names under :attr:`prefix`, in the Cluster layout for a cluster store."""
        return Keys(self.prefix, cluster=self.store.cluster)

    @property
    def broker(self) -> str:
        """Celery's broker URL."""
        return self.broker_url or self.redis_url

    @property
    def broker_target(self) -> RedisTarget | None:
        """The broker's Redis, to read its lists; None for RabbitMQ."""
        if urllib.parse.urlsplit(self.broker).scheme not in REDIS_BROKERS:
            return None
        return RedisTarget(self.broker, self.sentinel_master, self.sentinel_password)

    @property
    def import_list(self) -> list[str]:
        """``imports`` as module names."""
        return [name.strip() for name in self.imports.split(",") if name.strip()]

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Settings from the environment, then the ``JOBCAST_*`` keys of ``config`` (a Flask
        app's config: typed values or strings), then ``overrides``."""
        names = {_variable(f.name): f for f in dataclasses.fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if not key.startswith("JOBCAST_"):
                continue
            if key not in names:
                raise SettingsError(f"{key} is not a Jobcast setting")
            values[names[key].name] = _typed(key, names[key].default, value)
        return cls.from_env(environ, **(values | overrides))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


class SettingsError(ValueError):
    """A setting is out of its bounds; the message names the variable."""


# Inclusive bounds of every numeric setting: past them a setting breaks the service
# (a retention of 0 expires every job at once) or wastes it (a heartbeat of a minute).
BOUNDS: dict[str, tuple[float, float]] = {
    "retention_seconds": (60, 366 * 24 * 3600),
    "max_queue": (0, 10_000_000),  # 0: no limit
    "heartbeat_seconds": (0.1, 300),
    "gc_refresh_seconds": (0, 7 * 24 * 3600),  # 0: off
    "retry_ms": (100, 3_600_000),
    "max_prompt_chars": (1, 10_000),
    "min_side": (8, 4096),
    "max_side": (8, 4096),
    "max_steps": (1, 1000),
    "max_body_bytes": (1024, 16 * 1024 * 1024),
    "stream_maxlen": (10, 1_000_000),
    "max_event_bytes": (1024, 1024 * 1024),
    "redis_pool_size": (2, 10_000),
    "redis_pool_timeout": (0.1, 300),
    "watcher_queue_size": (8, 1_000_000),
    "max_streams": (1, 1_000_000),
    "max_stream_jobs": (1, 10_000),
    "stream_idle_seconds": (1, 24 * 3600),
    "send_timeout_seconds": (1, 3600),
    "hub_gather_ms": (0, 50),  # 0: off
    "max_attempts": (1, 100),
    "publish_retry_seconds": (0, 3600),
    "visibility_timeout": (1, 30 * 24 * 3600),
    "ops_interval": (0.1, 60),
    "sweep_seconds": (1, 24 * 3600),
    "ghost_grace_seconds": (1, 24 * 3600),
    "trusted_proxies": (0, 10),
    "job_lease_seconds": (1, 3600),
    "monitor_watchdog_seconds": (0, 24 * 3600),  # 0: no watchdog
    "job_index_max": (10, 10_000_000),
}


URL_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")
ORIGIN = re.compile(r"https?://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


def cors_origins(raw: str) -> frozenset[str]:
    """The origins of ``JOBCAST_CORS_ORIGINS``: ``{"*"}`` for any, empty for none."""
    return frozenset(part.strip().lower() for part in raw.split(",") if part.strip())


def _check_origins(raw: str, credentials: bool) -> None:
    origins = cors_origins(raw)
    if "*" in origins and len(origins) > 1:
        raise SettingsError("JOBCAST_CORS_ORIGINS is either * or a list of origins, not both")
    if "*" in origins and credentials:
        raise SettingsError(
            "JOBCAST_CORS_CREDENTIALS needs exact origins in JOBCAST_CORS_ORIGINS, not *"
        )
    for origin in origins - {"*"}:
        if not ORIGIN.fullmatch(origin):
            raise SettingsError(
                "JOBCAST_CORS_ORIGINS takes origins like https://app.example.com:8443 "
                f"(scheme, host, optional port; no path), got {origin!r}"
            )


STORE_SCHEMES = ("redis", "rediss", "unix", "sentinel", "redis+cluster")
REDIS_BROKERS = frozenset({"redis", "rediss", "sentinel"})
BROKER_SCHEMES = REDIS_BROKERS | {"amqp", "amqps", "pyamqp"}


def _check_redis_url(settings: Settings) -> None:
    """REDIS_URL and JOBCAST_BROKER_URL name servers Jobcast can use; a Sentinel set needs
    the master's name."""
    url = settings.redis_url
    if urllib.parse.urlsplit(url).scheme not in STORE_SCHEMES:
        raise SettingsError(
            "REDIS_URL must start with redis://, rediss://, unix://, sentinel:// or "
            f"redis+cluster://, got {without_password(url)!r}"
        )
    protocol = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("protocol")
    if protocol and protocol != ["2"]:
        # The URL's options win over the code's: the hub's protocol=2 would be overridden,
        # and under RESP3 redis-py's hiredis parser takes its pub/sub replies as pushes.
        raise SettingsError(
            f"REDIS_URL: protocol={protocol[-1]} is not supported: Jobcast's connections "
            "(its pub/sub reader among them) speak RESP2; drop the protocol option"
        )
    if settings.store.cluster:
        try:
            settings.store.nodes()
        except ValueError as exc:
            raise SettingsError(f"REDIS_URL: {exc}") from None
        if not settings.broker_url:
            raise SettingsError(
                "REDIS_URL names a Redis Cluster: set JOBCAST_BROKER_URL to a single Redis, a "
                "Sentinel set or RabbitMQ for Celery (kombu's Redis transport cannot use a "
                "cluster)"
            )
        if "{" in settings.prefix or "}" in settings.prefix:
            raise SettingsError(
                "JOBCAST_PREFIX may not hold '{' or '}' with a Redis Cluster: key names carry "
                "their own hash tags"
            )
    broker = settings.broker_url
    if broker and urllib.parse.urlsplit(broker).scheme not in BROKER_SCHEMES:
        raise SettingsError(
            "JOBCAST_BROKER_URL must be a single Redis (redis://, rediss://), a Sentinel set "
            f"(sentinel://) or RabbitMQ (amqp://); got {without_password(broker)!r} "
            "(kombu's Redis transport cannot use a Redis Cluster)"
        )
    for name, value in (("REDIS_URL", url), ("JOBCAST_BROKER_URL", broker)):
        try:
            check_address(value)
            if is_sentinel(value):
                parse_sentinels(value)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
        if not is_sentinel(value):
            continue
        if not settings.sentinel_master:
            raise SettingsError(
                f"{name} names a Sentinel set: JOBCAST_SENTINEL_MASTER must name its master"
            )


def _variable(name: str) -> str:
    return "JOBCAST_" + name.upper()


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SettingsError(f"{_variable(name)} must be from {low:g} to {high:g}, got {value!r}")


def _typed(variable: str, default: Any, value: Any) -> Any:
    """A config value for the field whose default is ``default``: strings are coerced as
    the environment's are; other values must already have the field's type."""
    if isinstance(value, str):
        return _coerce(variable, default, value)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and isinstance(default, int) and not isinstance(value, int):
            ok = float(value).is_integer()
            value = int(value)
    else:
        ok = False  # a text setting given as something else
    if not ok:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}
        wanted = kind.get(type(default), "text")
        raise SettingsError(f"{variable} must be {wanted}, got {value!r}")
    return value


def _coerce(variable: str, default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    kind = int if isinstance(default, int) else float if isinstance(default, float) else None
    if kind is None:
        return raw
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{variable} must be a number ({kind.__name__}), got {raw!r}") from None
