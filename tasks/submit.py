"""Submitting a job: its record, its place in line and its Celery message, together.

``POST /imagine`` once ran the enqueue script, then Celery's ``send_task``: a lost reply
or a web process dying between the two left a job in line that no worker would ever see
(a *ghost*: every later job shows one place too high, and it holds a place for the whole
retention). When Celery's broker is the Redis that holds the job records (the default),
the enqueue script also pushes the task message, built exactly as ``send_task`` and
kombu's Redis transport would (:func:`broker_message`): record, line, ``queued`` event
and message are one Lua call, so they exist together or not at all.

With a broker elsewhere, ``send_task`` follows the script as before, and the retention
sweep heals what a crash between the two leaves behind (:mod:`tasks.retention`): the job
record keeps the task name and its keyword arguments for that.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import uuid
from typing import Any

from celery import Celery
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps as serialize
from kombu.transport.virtual.base import Base64
from kombu.utils.json import dumps as kombu_json

from tasks.config import Settings
from tasks.events import TERMINAL_STATES, Enqueued, JobEvents
from tasks.keys import check_queue

REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel"})  # kombu's Redis transports

# KEYS: job hash. Flag a running job for cancellation, only if its record still exists
# (HSET on an expired id would create a record with no TTL); answer its state, or nil.
CANCEL_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return state
"""


def shares_broker(app: Celery, settings: Settings) -> bool:
    """Whether Celery's broker is the Redis (same URL, same db) the job records live in
    (a Sentinel set counts: kombu's sentinel transport keeps the Redis layout)."""
    url = str(app.conf.broker_write_url or app.conf.broker_url or "")
    return url == settings.redis_url and urllib.parse.urlsplit(url).scheme in REDIS_SCHEMES


def broker_message(
    app: Celery,
    name: str,
    task_id: str,
    kwargs: dict[str, Any],
    *,
    args: tuple[Any, ...] | list[Any] = (),
    queue: str | None = None,
) -> tuple[str, str]:
    """The list key and payload ``send_task(name, args, kwargs, task_id=..., queue=...)``
    would LPUSH.

    Celery builds the protocol 2 message (``as_task_v2``); kombu serializes the body,
    wraps it as its virtual transport does (``prepare_message`` and
    ``_inplace_augment_message``: base64 body, a fresh delivery tag) and the Redis
    transport pushes it to the queue's list (``_put``: priority 0 is the bare name).
    Raises ``ValueError`` for a configuration this does not reproduce.
    """
    conf = app.conf
    options = app.amqp.router.route({"queue": queue} if queue else {}, name, args, kwargs, None)
    route = options.pop("queue", None)
    transport = conf.broker_transport_options or {}
    if (
        route is None
        or options
        or route.exchange.type != "direct"
        or conf.task_compression
        or transport.get("global_keyprefix")
        or transport.get("body_encoding", "base64") != "base64"
    ):
        raise ValueError("only the default direct route without compression is reproduced")
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id, name, args=list(args), kwargs=kwargs, reply_to=app.thread_oid, ignore_result=None
    )
    content_type, content_encoding, data = serialize(body, serializer=conf.task_serializer)
    properties.update(
        delivery_mode=maybe_delivery_mode(
            route.exchange.delivery_mode or conf.task_default_delivery_mode
        ),
        delivery_info={"exchange": "", "routing_key": route.name},
        priority=0,
        body_encoding="base64",
        delivery_tag=str(uuid.uuid4()),
    )
    message = {
        "body": Base64().encode(data),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    }
    return route.name, kombu_json(message)


def queue_of(app: Celery, name: str) -> str:
    """The Celery queue ``send_task(name)`` would use: ``task_routes``, else the default."""
    target = app.amqp.router.route({}, name, (), {}, None).get("queue")
    return str(target.name if target is not None else app.conf.task_default_queue)


def task_fields(
    name: str, kwargs: dict[str, Any], args: tuple[Any, ...] | list[Any] = ()
) -> dict[str, str]:
    """What the job record keeps so the sweep can send the task again."""
    fields = {"task": name, "kwargs": json.dumps(kwargs, separators=(",", ":"))}
    if args:
        fields["args"] = json.dumps(list(args), separators=(",", ":"))
    return fields


def submit(
    app: Celery,
    events: JobEvents,
    settings: Settings,
    job_id: str,
    name: str,
    kwargs: dict[str, Any],
    fields: dict[str, str],
    *,
    args: tuple[Any, ...] | list[Any] = (),
    queue: str | None = None,
    key: str | None = None,
) -> Enqueued:
    """Record, line up and send a job in one round trip when the broker allows it.

    ``queue`` is the Celery queue the task goes to, and so the line the job waits in
    (None: where Celery routes the task, :func:`queue_of`); the record keeps it. A name
    that cannot be a line raises ValueError before anything is written. Otherwise the
    task is sent after the script (and a failed send fails the job). ``key`` is an
    idempotency key (position -3: it named a job already, whose id is ``event_id``).
    """
    line_name = check_queue(queue if queue is not None else queue_of(app, name))
    record = {**fields, **task_fields(name, kwargs, args)}
    message = _atomic_message(app, settings, job_id, name, kwargs, args, line_name)
    line = events.enqueue(
        job_id, record, max_queue=settings.max_queue, message=message, queue=line_name, key=key
    )
    if line.position >= 1:
        _crash_for_tests()
        if message is None:
            _send_task(app, events, job_id, name, kwargs, args, line_name)
    return line


def _atomic_message(
    app: Celery,
    settings: Settings,
    job_id: str,
    name: str,
    kwargs: dict[str, Any],
    args: tuple[Any, ...] | list[Any],
    queue: str | None,
) -> tuple[str, str] | None:
    """The message for the enqueue script to push, or None to send it after."""
    if not shares_broker(app, settings):
        return None
    try:
        return broker_message(app, name, job_id, kwargs, args=args, queue=queue)
    except ValueError:
        return None  # a routing or encoding we do not rebuild: Celery sends it


def _crash_for_tests() -> None:
    """Die here if ``JOBCAST_TEST_CRASH_AFTER_ENQUEUE`` is set: how the tests kill a web
    process right after the enqueue script (never set it in production)."""
    if os.environ.get("JOBCAST_TEST_CRASH_AFTER_ENQUEUE"):
        os._exit(70)


def _send_task(
    app: Celery,
    events: JobEvents,
    job_id: str,
    name: str,
    kwargs: dict[str, Any],
    args: tuple[Any, ...] | list[Any] = (),
    queue: str | None = None,
) -> None:
    try:
        app.send_task(name, args=list(args), kwargs=kwargs, task_id=job_id, queue=queue)
    except Exception:
        # Never leave a queued job that no worker will ever see.
        events.publish(
            job_id, "failed", {"error": "The job could not be queued.", "retryable": True}
        )
        raise


def cancel(events: JobEvents, job_id: str) -> str | None:
    """Cancel a job: ``"cancelled"`` if it left the line, ``"cancelling"`` if its worker
    was asked to stop, its final state if it had ended, ``None`` if unknown. A canvas
    ends ``cancelled`` at once, with every child not yet over (:mod:`tasks.canvas`)."""
    from tasks.canvas import cancel_canvas  # the canvas module builds on this one

    ended = cancel_canvas(events, job_id)
    if ended == 1:
        return "cancelled"
    if ended != 0:
        return ended if isinstance(ended, str) else None
    if events.publish(job_id, "cancelled", {"reason": "cancelled while queued"}, expect="queued"):
        return "cancelled"
    state = request_cancel(events, job_id)
    if state is None or state in TERMINAL_STATES:
        return state
    return "cancelling"


def request_cancel(events: JobEvents, job_id: str) -> str | None:
    """Ask a running job to stop: its state before the request, ``None`` if unknown.

    The flag is written only if the job is not over; the worker checks it each step.
    """
    state = events.redis.eval(CANCEL_LUA, 1, events.keys.job(job_id))
    return state.decode() if isinstance(state, bytes) else state
