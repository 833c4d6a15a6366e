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
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.app.routes import MapRoute
from celery.utils.saferepr import saferepr
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
    cache = _cache(app)
    url = cache.get("broker")
    if url is None:  # read once per app: Celery's configuration view was 3% of a POST
        url = cache["broker"] = str(app.conf.broker_write_url or app.conf.broker_url or "")
    return url == settings.redis_url and urllib.parse.urlsplit(url).scheme in REDIS_SCHEMES


def _cache(app: Celery) -> dict[Any, Any]:
    """This process's cache of what ``app``'s configuration decides, kept on the app
    (through Celery's proxies too, which cannot be weakly referenced): it goes with it."""
    cache: dict[Any, Any] | None = getattr(app, _CACHE, None)
    if cache is None:
        cache = {}
        setattr(app, _CACHE, cache)
    return cache


_CACHE = "_jobcast_submit_cache"


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
    Everything but the id, the arguments, their reprs, ``reply_to`` and the delivery tag
    is the same for every message of a task name and queue: built once per process
    (:func:`_template`), when the routes cannot depend on the arguments.
    Raises ``ValueError`` for a configuration this does not reproduce.
    """
    shape = _template(app, name, queue, args, kwargs)
    body_args = list(args) or ()  # as as_task_v2 has it: an empty list is the tuple ()
    headers = {
        **shape.headers,
        "id": task_id,
        "root_id": task_id,
        "argsrepr": _task_repr(app, body_args, app.amqp.argsrepr_maxsize),
        "kwargsrepr": _task_repr(app, kwargs, app.amqp.kwargsrepr_maxsize),
    }
    properties = {
        **shape.properties,
        "correlation_id": task_id,
        "reply_to": app.thread_oid,
        "delivery_tag": str(uuid.uuid4()),
    }
    _, _, data = serialize((list(args), kwargs, shape.embed), serializer=shape.serializer)
    message = {
        "body": Base64().encode(data),
        "content-encoding": shape.content_encoding,
        "content-type": shape.content_type,
        "headers": headers,
        "properties": properties,
    }
    return shape.queue, kombu_json(message)


@dataclass(frozen=True)
class _Shape:
    """What :func:`broker_message` writes the same in every message of a task and queue."""

    queue: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    embed: dict[str, Any]
    serializer: str
    content_type: str
    content_encoding: str


# In the app's cache: ("shape", task name, queue asked for) -> its messages' shape.
# Celery reads its configuration once too (the router and queues are cached on first use).


def _template(
    app: Celery,
    name: str,
    queue: str | None,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
) -> _Shape:
    shapes = _cache(app)
    shape: _Shape | None = shapes.get(("shape", name, queue))
    if shape is not None:
        return shape
    shape = _build_shape(app, name, queue, args, kwargs)
    if _routes_are_static(app):  # a router function may look at the arguments
        shapes[("shape", name, queue)] = shape
    return shape


def _routes_are_static(app: Celery) -> bool:
    return all(isinstance(route, MapRoute) for route in app.amqp.router.routes)


def _build_shape(
    app: Celery,
    name: str,
    queue: str | None,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
) -> _Shape:
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
    # The per-message fields are placeholders here, filled in by broker_message.
    headers, properties, body, _ = app.amqp.as_task_v2(
        "", name, args=[], kwargs={}, reply_to="-", ignore_result=None, argsrepr="", kwargsrepr=""
    )
    content_type, content_encoding, _ = serialize(body, serializer=conf.task_serializer)
    properties.update(
        delivery_mode=maybe_delivery_mode(
            route.exchange.delivery_mode or conf.task_default_delivery_mode
        ),
        delivery_info={"exchange": "", "routing_key": route.name},
        priority=0,
        body_encoding="base64",
        delivery_tag="",
    )
    return _Shape(
        route.name, headers, properties, body[2], conf.task_serializer,
        content_type, content_encoding,
    )  # fmt: skip


_PLAIN = (str, int, float, bool, type(None))


def _task_repr(app: Celery, value: Any, maxsize: int) -> str:
    """What Celery's ``saferepr`` gives for the message's ``argsrepr``/``kwargsrepr``,
    written directly for the usual case (a flat list or dict of plain values that fits
    in ``maxsize``): saferepr walks every token through a generator, and was a twelfth
    of a submit."""
    text = _flat_repr(value)
    if text is not None and len(text) <= maxsize:
        return text
    return saferepr(value, maxsize, maxlevels=app.conf.task_repr_maxlevels)


def _flat_repr(value: Any) -> str | None:
    """saferepr's text for a flat dict/list/tuple of plain values (None: not one)."""
    if type(value) is dict:
        parts = []
        for key, item in value.items():
            k, v = _plain_repr(key), _plain_repr(item)
            if k is None or v is None:
                return None
            parts.append(f"{k}: {v}")
        return "{" + ", ".join(parts) + "}"
    if type(value) in (list, tuple):
        items = [_plain_repr(item) for item in value]
        if None in items:
            return None
        if type(value) is list:
            return "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"  # type: ignore[arg-type]
    return None


def _plain_repr(value: Any) -> str | None:
    # saferepr quotes text with only ' escaped, and writes numbers with str().
    if type(value) not in _PLAIN:
        return None
    if type(value) is str:
        return "'" + value.replace("'", "\\'") + "'"
    return "None" if value is None else str(value)


def queue_of(app: Celery, name: str) -> str:
    """The Celery queue ``send_task(name)`` would use: ``task_routes``, else the default."""
    if _routes_are_static(app):
        return _queue_of(app, name)
    return _route_queue(app, name)


def _queue_of(app: Celery, name: str) -> str:
    cache = _cache(app)
    found: str | None = cache.get(("queue", name))
    if found is None:
        found = cache[("queue", name)] = _route_queue(app, name)
    return found


def _route_queue(app: Celery, name: str) -> str:
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
