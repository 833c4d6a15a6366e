"""The Celery factory, and the per-process Jobcast context tasks reach through it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from tasks.config import Settings
from tasks.connection import is_sentinel
from tasks.events import JobEvents
from tasks.keys import DEFAULT_QUEUE


@dataclass
class Context:
    """What a task needs besides its arguments: settings, a Redis client, the event log."""

    settings: Settings
    redis: redis.Redis
    events: JobEvents


def create_celery(settings: Settings | None = None, **conf: Any) -> Celery:
    """Build Jobcast's own Celery app; ``conf`` overrides Celery settings (tests shorten
    timeouts)."""
    settings = settings or Settings.from_env()
    app = Celery("jobcast", broker=settings.broker, backend=None)
    configure_celery(app, settings)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=DEFAULT_QUEUE,  # its line keeps the old key names (tasks.keys)
        imports=[
            "tasks.demo.image",
            "tasks.demo.analyze",
            "tasks.demo.sheet",
            *settings.import_list,
        ],
    )
    app.conf.update(conf)
    return app


def configure_celery(app: Celery, settings: Settings | None = None) -> Celery:
    """Make a Celery app (yours or ours) run Jobcast jobs well, and attach its context.

    Sets what jobs rely on: late acks and redelivery of a dead worker's message, task
    events for the monitor, a visibility timeout from ``JOBCAST_VISIBILITY_TIMEOUT``.
    Settings come from the environment unless given.
    """
    settings = settings or Settings.from_env()
    settings.validate()
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=False,
        broker_transport_options={
            **(app.conf.broker_transport_options or {}),  # the app's own (key prefix...)
            **sentinel_options(settings),
            # A message whose worker died unacked is handed out again after this.
            "visibility_timeout": settings.visibility_timeout,
            # Look for such messages often enough to honour a short visibility timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
            "unacked_restore_throttle": 1 if settings.visibility_timeout < 120 else 10,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Redelivered jobs must not be deduplicated away by Celery's memory of them.
        worker_deduplicate_successful_tasks=False,
    )
    app.jobcast = build_context(settings)
    return app


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """What kombu's sentinel:// transport needs to find the master (none for a plain URL)."""
    if not is_sentinel(settings.broker):
        return {}
    options: dict[str, Any] = {"master_name": settings.sentinel_master}
    if settings.sentinel_password:
        options["sentinel_kwargs"] = {"password": settings.sentinel_password}
    return options


def build_context(settings: Settings) -> Context:
    client = settings.store.client(
        health_check_interval=30,
        socket_keepalive=True,
        retry_on_timeout=True,
    )
    # A worker keeps its job alive through a Redis restart instead of failing it.
    events = JobEvents.for_settings(client, settings, retry_seconds=settings.publish_retry_seconds)
    return Context(settings=settings, redis=client, events=events)


def context(app: Celery) -> Context:
    """The Jobcast context of ``app``: from :func:`configure_celery`, or else built once
    from the environment (any Celery app can run and submit jobs)."""
    ctx: Context | None = getattr(app, "jobcast", None)
    if ctx is None:
        with _building:
            ctx = getattr(app, "jobcast", None)
            if ctx is None:
                ctx = app.jobcast = build_context(Settings.from_env())
    return ctx


_building = threading.Lock()
