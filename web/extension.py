"""The Jobcast extension: the connections a web process owns, kept in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gevent.monkey
import redis
from celery import Celery
from flask import Flask, current_app, request

from tasks.app import create_celery
from tasks.config import Settings
from tasks.events import JobEvents
from tasks.keys import Keys
from tasks.kinds import Registry, default_registry
from web.funnel import Funnel
from web.gcpolicy import CollectorPolicy
from web.hub import AnyHub, ClusterHub, Hub
from web.line import Line, Lines


@dataclass
class Jobcast:
    """One app's Jobcast state, in ``app.extensions["jobcast"]``; the routes read it. (The
    extension object that builds it, ``Jobcast(app, url_prefix=...)``, is web.embed's.)"""

    settings: Settings
    redis: redis.Redis
    events: JobEvents
    keys: Keys
    hub: AnyHub
    lines: Lines  # one per Celery queue: a job's is ``lines.of(job_id, its queue)``
    celery: Celery
    kinds: Registry
    funnel: Funnel | None = None  # the enqueue's and opening read's scripts go through it
    collector: CollectorPolicy | None = None  # the standalone app's (web/gcpolicy.py)

    @property
    def line(self) -> Line:
        """The default queue's line (a job's own line: :attr:`lines`)."""
        return self.lines.default


def init_app(app: Flask, settings: Settings, kinds: Registry | None = None) -> Jobcast:
    """Build the Redis pool, event log, hub and Celery client for this app; ``kinds`` are
    the job kinds it offers (the demo kinds when not given)."""
    options: dict[str, Any] = {
        # A bounded pool that waits for a free connection: under gevent, a pool that
        # raises when exhausted would turn a burst of requests into HTTP 500s.
        "max_connections": settings.redis_pool_size,
        "timeout": settings.redis_pool_timeout,
        "protocol": 2,
        "socket_keepalive": True,
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
        "health_check_interval": 30,
    }
    client: redis.Redis
    if settings.store.cluster:  # a blocking pool per node, the cluster client routes
        # (redis-py builds its first node clients with these options too, and a Redis
        # takes no pool timeout: the nodes' blocking pools wait their default 20 s.)
        options.pop("timeout")
        client = settings.store.client(
            connection_pool_class=redis.BlockingConnectionPool, **options
        )
    else:
        client = redis.Redis(connection_pool=settings.store.pool(blocking=True, **options))
    keys = settings.keys
    hub_options: dict[str, Any] = {
        "queue_size": settings.watcher_queue_size,
        "heartbeat": settings.heartbeat_seconds,
        "gather": settings.hub_gather_ms / 1000,
    }
    hub: AnyHub
    if settings.store.cluster:
        hub = ClusterHub(
            settings.store, lambda name: keys.job_id_of_channel(name.decode()) is not None,
            **hub_options,
        )  # fmt: skip
    else:
        hub = Hub(settings.store, **hub_options)
    events = JobEvents.for_settings(client, settings)
    funnel = None
    if (
        settings.script_funnel
        and not settings.store.cluster
        and gevent.monkey.is_module_patched("socket")
    ):  # one greenlet's pipeline: only where every request is a greenlet of one hub
        funnel = Funnel(client)
        events.call_script = funnel
    ext = Jobcast(
        settings=settings,
        redis=client,
        events=events,
        keys=keys,
        hub=hub,
        lines=Lines(hub, client, keys, call_script=events.call_script),
        celery=create_celery(settings),
        kinds=default_registry(settings) if kinds is None else kinds,
        funnel=funnel,
    )
    app.extensions["jobcast"] = ext
    return ext


def jobcast() -> Jobcast:
    """The extension of the current app."""
    ext: Jobcast = current_app.extensions["jobcast"]
    return ext


def base_path() -> str:
    """Where the current app's Jobcast routes start, as its clients see them: the WSGI
    mount point and the prefix ("" for the standalone service)."""
    return request.script_root + jobcast().settings.url_prefix
