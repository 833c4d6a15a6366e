"""Submitting a job from any Python process, and the handle that watches it.

    handle = submit(render.s(prompt="a cat"), kind="render", queue="gpu",
                    metadata={"user": "7"}, key="request-123")
    handle.id, handle.position, handle.eta_seconds, handle.stream_url
    handle.wait(timeout=60)        # the `done` data; JobError if it failed

Only the Celery app and Redis are needed (a Django view, a FastAPI handler, a script,
another task): the record, the place in line and the Celery message are written
together (:func:`tasks.submit.submit`), so no job waits for a message that never comes.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from celery import Celery, Signature
from celery import current_app as celery_current_app

from tasks import records
from tasks.app import Context, context
from tasks.canvas import canvas_position, children_status, is_canvas, submit_canvas
from tasks.errors import JobCancelled, JobError, QueueFull
from tasks.events import TERMINAL, dumps
from tasks.keys import LINE_NAME, Keys, LineKeys, new_job_id
from tasks.submit import cancel
from tasks.submit import submit as submit_message
from tasks.tokens import job_token

MAX_META_BYTES = 4096
KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
MAX_KEY = 128
# What a job id may be (token_urlsafe's alphabet): it names Redis keys and a folder.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def eta_seconds(position: int, avg_ms: float | None, busy: int) -> int | None:
    """Seconds until a job at ``position`` starts, from the average run time; ``None``
    without an average or while nothing runs (``busy`` is running jobs, not workers)."""
    if avg_ms is None or busy <= 0:
        return None
    return math.ceil(position * avg_ms / 1000 / busy)


@dataclass
class JobHandle:
    """A submitted job: where it stands at submit time, and how to follow it."""

    id: str
    kind: str | None
    queue: str | None
    position: int  # 1 = next; 0 when the key returned a job that has left the line
    queue_length: int
    eta_seconds: int | None
    created: bool  # False: the idempotency key named this job already
    token: str = ""
    base_url: str = ""
    _ctx: Context | None = field(default=None, repr=False, compare=False)

    def url(self, route: str = "") -> str:
        """A route of the job's HTTP API (``/jobs/<id>...``), with its token if signed."""
        url = f"{self.base_url}/jobs/{self.id}{route}"
        return f"{url}?token={self.token}" if self.token else url

    @property
    def stream_url(self) -> str:
        return self.url("/stream")

    @property
    def status_url(self) -> str:
        return self.url()

    @property
    def result_url(self) -> str:
        return self.url("/result")

    def as_dict(self) -> dict[str, Any]:
        """The handle as the HTTP API answers a submit."""
        body: dict[str, Any] = {
            "jobId": self.id,
            "kind": self.kind,
            "queue": self.queue,
            "position": self.position,
            "queueLength": self.queue_length,
            "etaSeconds": self.eta_seconds,
            "stream": self.stream_url,
            "status": self.status_url,
            "result": self.result_url,
        }
        if self.token:
            body["token"] = self.token
        return body

    def status(self) -> dict[str, Any]:
        """The job's state now: ``state``, ``position`` while queued, ``percent``,
        ``result`` once done, ``error`` if failed, ``meta``; ``{"state": None}`` if gone."""
        return read_status(self._context(), self.id)

    def cancel(self) -> str | None:
        """Cancel it: ``"cancelled"`` (it left the line), ``"cancelling"`` (its worker
        stops at its next step), its final state if it had ended, ``None`` if unknown."""
        return cancel(self._context().events, self.id)

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> dict[str, Any]:
        """Block until the job ends; the ``done`` data, or :class:`JobError` /
        :class:`JobCancelled` / ``TimeoutError``. Reads the job's log (no polling of
        the record): one blocking ``XREAD`` per ``poll`` seconds."""
        ctx = self._context()
        deadline = None if timeout is None else time.monotonic() + timeout
        stream, last = ctx.events.keys.events(self.id), "0-0"
        retrying = ctx.events.retrying  # a Redis restart is ridden out, as publishes do
        while True:
            block = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            ms = max(1, int(block * 1000))
            reply = retrying(partial(ctx.redis.xread, {stream: last}, count=100, block=ms))
            for _, entries in reply or []:
                for event_id, fields in entries:
                    last = event_id
                    phase = fields[b"phase"].decode()
                    if phase in TERMINAL:
                        return _ending(self.id, phase, json.loads(fields[b"data"]))
            # redis-py answers a timed-out XREAD with [] (RESP2) or {} (RESP3), never None.
            if not reply and retrying(lambda: ctx.redis.exists(ctx.events.keys.job(self.id))) == 0:
                raise JobError("The job is unknown or has expired.")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} did not end within {timeout} s")

    def _context(self) -> Context:
        if self._ctx is None:
            self._ctx = context(celery_current_app)
        return self._ctx


def submit(
    target: Signature | Any,
    args: tuple[Any, ...] | list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    kind: str | None = None,
    queue: str | None = None,
    metadata: dict[str, Any] | None = None,
    key: str | None = None,
    app: Celery | None = None,
    job_id: str | None = None,
) -> JobHandle:
    """Submit ``target`` (a signature, a task or a task name) as a job; its handle.

    ``queue`` is the Celery queue (each has its own line); ``metadata`` a small JSON
    object shown on the status route; ``key`` an idempotency key: while the job it
    first named is kept, the same key (for the same kind) returns that job, unchanged.
    Raises :class:`QueueFull` when the line is at ``JOBCAST_MAX_QUEUE``, ``ValueError``
    for a bad key or metadata.
    """
    if is_canvas(target):
        return _submit_canvas(target, kind=kind, queue=queue, metadata=metadata, key=key,
                              app=app, job_id=job_id)  # fmt: skip
    name, args, kwargs, options, app = _resolve(target, args, kwargs, app)
    queue = queue or _routed_queue(app, name, args, kwargs, options)
    ctx = context(app)
    settings = ctx.settings
    job_id = _job_id(job_id)
    fields = {"kind": kind or name}
    if metadata:
        fields["meta"] = _meta_json(metadata)
    scoped = idempotency_scope(kind or name, _checked_key(key)) if key is not None else None
    line = submit_message(
        app, ctx.events, settings, job_id, name, kwargs, fields,
        args=args, queue=queue, key=scoped,
    )  # fmt: skip
    if line.position == -1:
        retry = eta_seconds(1, line.avg_ms, line.busy)
        raise QueueFull(line.queue_length, retry_after=retry)
    if line.position == -2:
        raise ValueError(f"job id {job_id!r} names a job already")
    created = line.position != -3
    if not created:
        job_id = line.event_id or job_id
        position = _position(ctx, job_id, queue)
    else:
        position = line.position
    return JobHandle(
        id=job_id,
        kind=kind or name,
        queue=queue,
        position=position,
        queue_length=line.queue_length,
        eta_seconds=eta_seconds(position, line.avg_ms, line.busy) if position > 0 else None,
        created=created,
        token=job_token(settings.signing_key, job_id),
        base_url=settings.public_url.rstrip("/"),
        _ctx=ctx,
    )


def _job_id(given: str | None) -> str:
    """The caller's job id, checked, or a new random one."""
    if given is None:
        return new_job_id()
    if not isinstance(given, str) or not JOB_ID.fullmatch(given):
        raise ValueError("a job id is 1 to 64 characters of A-Z a-z 0-9 _ -")
    return given


def _submit_canvas(
    target: Signature,
    *,
    kind: str | None,
    queue: str | None,
    metadata: dict[str, Any] | None,
    key: str | None,
    app: Celery | None,
    job_id: str | None,
) -> JobHandle:
    """A group, chain or chord as one parent job with a child job per task
    (:mod:`tasks.canvas`)."""
    app = app or target._app or celery_current_app
    ctx = context(app)
    settings = ctx.settings
    job_id = _job_id(job_id)
    name = kind or f"canvas.{target.get('subtask_type')}"
    meta = _meta_json(metadata) if metadata else None
    scoped = idempotency_scope(name, _checked_key(key)) if key is not None else None
    sent = submit_canvas(
        app, ctx.events, settings, job_id, target, kind=name, queue=queue, meta=meta, key=scoped
    )
    if not sent.created:
        job_id = sent.event_id
    line = _line_of(ctx.events.keys, sent.queue)
    avg, busy = ctx.redis.hget(line.stats, "avgMs"), ctx.redis.zcard(line.running)
    return JobHandle(
        id=job_id,
        kind=name,
        queue=queue,
        position=sent.position,
        queue_length=sent.queue_length,
        eta_seconds=eta_seconds(sent.position, float(avg) if avg else None, int(busy))
        if sent.position > 0
        else None,
        created=sent.created,
        token=job_token(settings.signing_key, job_id),
        base_url=settings.public_url.rstrip("/"),
        _ctx=ctx,
    )


def read_status(ctx: Context, job_id: str) -> dict[str, Any]:
    """A job's record as a status dict, in one round trip."""
    k = ctx.events.keys
    record = ctx.redis.hgetall(k.job(job_id))
    if not record:
        return {"jobId": job_id, "state": None}
    rec = records.decode(record)
    rank = ctx.redis.zrank(_line_of(k, rec.get("queue")).queue, job_id)
    last = records.last_events(rec)
    state = rec.get("state")
    status = {
        "jobId": job_id,
        "state": state,
        "kind": rec.get("kind"),
        "queue": rec.get("queue"),
        "position": rank + 1 if rank is not None and state == "queued" else None,
        **records.progress(state, last, rec),
        "result": last.get("done") if state == "succeeded" else None,
        "meta": records.json_object(rec.get("meta")),
    }
    if rec.get("canvas") == "1":
        status["children"] = children_status(ctx.events, job_id, int(rec.get("children", "0")))
        status["position"] = canvas_position(status["children"]) if state == "queued" else None
    if rec.get("parent"):
        status["parent"] = rec["parent"]
    return status


def _resolve(
    target: Any,
    args: tuple[Any, ...] | list[Any] | None,
    kwargs: dict[str, Any] | None,
    app: Celery | None,
) -> tuple[str, list[Any], dict[str, Any], dict[str, Any], Celery]:
    """Task name, arguments, options and app from a signature, a task or a name."""
    options: dict[str, Any] = {}
    if isinstance(target, Signature):
        name = target.task
        args = [*target.args, *(args or ())]
        kwargs = {**target.kwargs, **(kwargs or {})}
        options = dict(target.options)
        app = app or target._app
    elif isinstance(target, str):
        name = target
    elif hasattr(target, "name") and hasattr(target, "apply_async"):
        name = target.name
        app = app or target._get_app()
    else:
        raise TypeError(f"submit takes a signature, a task or a task name, not {target!r}")
    app = app or celery_current_app
    return name, list(args or ()), dict(kwargs or {}), options, app


def idempotency_scope(kind: str, key: str) -> str:
    """An idempotency key as its kind owns it: the kind's length first, so no colon in the
    kind or the key makes another kind's scope. ``submit()`` and ``POST /jobs/<kind>``
    scope alike: one key names one job, from Python or over HTTP."""
    return f"{len(kind)}:{kind}:{key}"


def _routed_queue(
    app: Celery, name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> str | None:
    """The Celery queue the message goes to (the signature's, the app's routes, or its
    default): the job waits in that queue's line."""
    wanted = options.get("queue")
    if isinstance(wanted, str):
        return wanted
    route = app.amqp.router.route(dict(options), name, args, kwargs, None).get("queue")
    return getattr(route, "name", None) or None


def _checked_key(key: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY or set(key) - KEY_CHARS:
        raise ValueError(f"an idempotency key is 1 to {MAX_KEY} characters of A-Z a-z 0-9 _ . : -")
    return key


def _meta_json(metadata: dict[str, Any]) -> str:
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be a dict (a JSON object)")
    try:
        encoded = dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON: {exc}") from None
    if len(encoded.encode()) > MAX_META_BYTES:
        raise ValueError(f"metadata takes at most {MAX_META_BYTES} bytes as JSON")
    return encoded


def _position(ctx: Context, job_id: str, queue: str | None) -> int:
    rank = ctx.redis.zrank(_line_of(ctx.events.keys, queue).queue, job_id)
    return 0 if rank is None else int(rank) + 1


def _line_of(keys: Keys, queue: str | None) -> LineKeys:
    """The line of a queue (the default one for no name, or one that cannot be a line)."""
    return keys.line(queue if queue and LINE_NAME.fullmatch(queue) else None)


def _ending(job_id: str, phase: str, data: dict[str, Any]) -> dict[str, Any]:
    if phase == "done":
        return data
    if phase == "cancelled":
        raise JobCancelled(job_id)
    raise JobError(
        str(data.get("error") or "The job failed."), retryable=bool(data.get("retryable"))
    )
