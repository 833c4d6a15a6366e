"""The task side of the platform: any Celery task becomes a Jobcast job with one decorator.

    @job_task(name="myapp.render")
    def render(job: JobContext, prompt: str, steps: int = 20) -> dict:
        for i in range(steps):
            job.progress(i + 1, steps)   # coalesced; also where a cancel stops the task
            job.log(f"step {i + 1}")     # a custom event, durable and resumable
        return {"answer": 42}            # the `done` event's data

:class:`JobTask` (the base class ``@job_task`` uses; ``@app.task(base=JobTask,
bind=True)`` is the same) owns what every job needs around the body, so no task copies it:

- the job's lease (one attempt at a time; a second copy of the message waits it out),
- ``started`` with the attempt number, and ``failed`` past the attempt limit,
- ``cancelled`` when DELETE asked for it (raised at the body's next check),
- ``failed`` on an exception: a :class:`~tasks.errors.JobError`'s message, or the task's
  ``failure_message`` for anything else (the traceback goes to the logs, and its tail
  to the record's ``traceback``, which only the ops job browser shows), then the
  exception is raised again so Celery records it,
- ``done`` with the return value: a dict is the event's data as it is, anything else
  is ``{"result": value}``; files saved with :meth:`JobContext.save_file` are listed.

The body's first parameter is the :class:`JobContext` (``job.task`` is the Celery task).
Called directly, outside a worker, the body runs with a context that reports nothing.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject, Retry, TimeLimitExceeded
from PIL import Image

from tasks.app import Context, context
from tasks.canvas import prepended
from tasks.config import Settings
from tasks.errors import JobCancelled, JobError
from tasks.events import EventTooLarge, check_kind
from tasks.jobindex import keep_traceback
from tasks.keys import parent_of
from tasks.lease import JobLease, LeaseLost, held
from tasks.media import FILE_NAME, job_dir, write_file
from tasks.reporter import Reporter

log = logging.getLogger(__name__)

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})


class JobContext:
    """What a job's body reports through; one per attempt.

    ``progress``, ``step`` and :meth:`check` are where a cancelled job stops (the cancel
    flag is read at most every ``check_interval`` seconds, so a tight loop stays cheap).
    ``delta`` text is batched: one ``delta`` event per ``delta_interval`` seconds or
    ``delta_bytes`` of text, and always before any other event, so the order holds.
    """

    def __init__(
        self,
        ctx: Context | None,
        job_id: str | None,
        *,
        task: Task | None = None,
        lease: JobLease | None = None,
        attempt: int = 0,
        meta: dict[str, Any] | None = None,
        check_interval: float = 0.25,
        delta_interval: float = 0.2,
        delta_bytes: int = 4096,
    ) -> None:
        self.id = job_id
        self.task = task
        self.attempt = attempt
        self.meta = meta or {}
        self.files: list[str] = []
        self._ctx = ctx
        self._lease = lease
        self._reporter = Reporter(ctx.events, job_id) if ctx and job_id else None
        self._check_interval = check_interval
        self._checked_at = float("-inf")
        self._delta: list[str] = []
        self._delta_size = 0
        self._delta_since = 0.0
        self._delta_interval = delta_interval
        self._delta_bytes = delta_bytes

    @property
    def settings(self) -> Settings:
        """Jobcast's settings in this worker (the environment's, outside a job)."""
        return self._ctx.settings if self._ctx is not None else Settings.from_env()

    @property
    def reporting(self) -> bool:
        """False when the body runs outside a job (called directly): nothing is sent."""
        return self._reporter is not None

    def check(self) -> None:
        """Stop here if the job was cancelled (:class:`JobCancelled`) or another attempt
        took it over (:class:`LeaseLost`); both end the body quietly."""
        self._check_lease()
        if self._reporter is None:
            return
        now = time.monotonic()
        if now - self._checked_at >= self._check_interval:
            self._checked_at = now
            self._reporter.check_cancelled()

    def _check_lease(self) -> None:
        """Every report checks it (a flag, no round trip): an attempt another one took
        over publishes and writes nothing more."""
        if self._lease is not None:
            self._lease.check()

    def progress(self, step: int, steps: int, **data: Any) -> str | None:
        """Step ``step`` of ``steps`` done; coalesced (5 % marks, 250 ms apart)."""
        self.check()
        if self._reporter is None:
            return None
        self.flush()
        return self._reporter.progress(step, steps, **data)

    def preview(
        self,
        image: Image.Image,
        *,
        percent: int | None = None,
        width: int | None = None,
        height: int | None = None,
        **data: Any,
    ) -> str | None:
        """Send a blurhash of ``image`` (the half-made result); ``width``/``height`` are
        the final size, the image's own by default."""
        if self._reporter is None:
            return None
        self._check_lease()
        self.flush()
        if percent is None:
            percent = max(0, self._reporter._last_percent)
        return self._reporter.preview(
            image,
            percent=percent,
            width=width or image.width,
            height=height or image.height,
            **data,
        )

    def emit(self, kind: str, data: dict[str, Any] | None = None) -> str | None:
        """Log a custom event ``kind`` (``[a-z][a-z0-9_.-]{0,31}``, not a built-in phase).

        Raises ``ValueError`` for a bad name and :class:`~tasks.events.EventTooLarge`
        past the size limit; returns the event id (``None`` once the job has ended).
        """
        check_kind(kind)
        if self._reporter is None:
            return None
        self._check_lease()
        self.flush()
        return self._reporter.publish(kind, data or {})

    def log(self, message: str, level: str = "info", **data: Any) -> str | None:
        """A line for the job's activity list: ``log`` ``{"message", "level", ...}``."""
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {sorted(LOG_LEVELS)}, got {level!r}")
        return self.emit("log", {"message": str(message), "level": level, **data})

    def step(
        self, name: str, *, index: int | None = None, total: int | None = None, **data: Any
    ) -> str | None:
        """A pipeline stage begins: ``step`` ``{"name", "index"?, "total"?, ...}``."""
        self.check()
        body: dict[str, Any] = {"name": str(name), **data}
        if index is not None:
            body["index"] = index
        if total is not None:
            body["total"] = total
        return self.emit("step", body)

    def delta(self, text: str) -> None:
        """Append streamed text (an LLM's tokens); clients concatenate ``delta`` events."""
        if not text or self._reporter is None:
            return
        self._check_lease()
        # Text with no UTF-8 (a lone surrogate) raises here, before it is held: held, it
        # would fail every later event, the job's ending too.
        size = len(text.encode())
        now = time.monotonic()
        if not self._delta:
            self._delta_since = now
        self._delta.append(text)
        self._delta_size += size
        if self._delta_size >= self._delta_bytes or now - self._delta_since >= self._delta_interval:
            self.flush()

    def flush(self) -> str | None:
        """Send the text that ``delta`` is holding back, if any."""
        if not self._delta or self._reporter is None:
            return None
        text = "".join(self._delta)
        self._delta.clear()
        self._delta_size = 0
        # Text longer than one event takes goes out in pieces: 6 bytes a character at most
        # as JSON (a control character is escaped as \u0001; UTF-8 takes at most 4).
        size = max(1, (self._reporter.events.max_event_bytes - 64) // 6)
        sent = None
        for start in range(0, len(text), size):
            sent = self._reporter.publish("delta", {"text": text[start : start + size]})
        return sent

    def save_file(self, name: str, content: bytes | str | Image.Image) -> Path | None:
        """Keep a file the job made (``GET /jobs/<id>/result/<name>`` serves it).

        ``content`` is bytes, text (UTF-8) or a Pillow image (saved in the format the
        name's extension says). The write is atomic; returns the path, ``None`` outside
        a job.
        """
        if not FILE_NAME.fullmatch(name):
            raise ValueError(f"file name {name!r} must match {FILE_NAME.pattern}")
        if name.endswith(".tmp"):  # the retention sweep takes *.tmp for half-written files
            raise ValueError(f"file name {name!r} must not end in .tmp")
        if self._ctx is None or self.id is None:
            return None
        self._check_lease()
        path = job_dir(self._ctx.settings.media_dir, self.id) / name
        write_file(path, _file_bytes(name, content))
        if name not in self.files:
            self.files.append(name)
        return path

    # What JobTask calls around the body.

    def _finish(self, value: Any) -> Any:
        assert self._reporter is not None
        self.flush()
        data = dict(value) if isinstance(value, dict) else {"result": value}
        if self.files:
            data.setdefault("files", list(self.files))
        self._reporter.done(**data)
        return value


class JobTask(Task):
    """The base class of job tasks; see the module docstring for what it handles."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    # What `failed` says for an exception that is not a JobError (safe to show anyone).
    failure_message = "The job failed."
    # Attempts of one job before it fails; None takes JOBCAST_MAX_ATTEMPTS.
    max_attempts: int | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        body: Callable[..., Any] = type(self).run  # the function, unbound: job comes first
        job_id = self.request.id
        if not job_id or self.request.called_directly:
            return body(JobContext(None, None, task=self), *args, **kwargs)
        ctx = context(self.app)
        if parent_of(job_id) is not None:
            args = self._linked(ctx, job_id, args)
        self._check_arguments(ctx, job_id, body, args, kwargs)
        with held(ctx.events, job_id, ctx.settings.job_lease_seconds, need_record=True) as lease:
            if lease is None:
                # A second copy of the message (a live attempt runs it), or no job.
                if not ctx.events.retrying(lambda: ctx.redis.exists(ctx.events.keys.job(job_id))):
                    log.warning(
                        "job %s (%s) has no job record (sent without jobcast.submit, or "
                        "expired): nothing ran",
                        job_id,
                        self.name,
                    )
                return None
            return self._attempt(ctx, job_id, lease, body, args, kwargs)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery's hook, here for what the body never sees: past a hard ``time_limit``
        Celery kills the pool process and acks the message, so no attempt follows."""
        if isinstance(exc, TimeLimitExceeded) and task_id and self.acks_on_failure_or_timeout:
            context(self.app).events.publish(
                task_id,
                "failed",
                {"error": "The job ran past its time limit.", "retryable": False},
                expect="running",
            )

    def _linked(self, ctx: Context, job_id: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """A canvas link's arguments: the result(s) it follows first, as Celery's chain
        and chord pass them (an immutable signature's child has no ``takes``)."""
        events = ctx.events
        takes = events.retrying(lambda: ctx.redis.hget(events.keys.job(job_id), "takes"))
        if not takes:
            return args
        return (events.retrying(lambda: prepended(events, job_id, takes.decode())), *args)

    def _check_arguments(
        self,
        ctx: Context,
        job_id: str,
        body: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Arguments the body cannot take fail the job at once (``TypeError`` for Celery)."""
        try:
            inspect.signature(body).bind(None, *args, **kwargs)
        except TypeError as exc:
            log.error("job %s: %s cannot take these arguments: %s", job_id, self.name, exc)
            ctx.events.publish(
                job_id,
                "failed",
                {"error": "The job could not start: its parameters do not fit the task."},
                expect="queued,running",
            )
            raise

    def _attempt(
        self,
        ctx: Context,
        job_id: str,
        lease: JobLease,
        body: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        reporter = Reporter(ctx.events, job_id)
        attempt = reporter.started(
            worker=self.request.hostname or "worker", expect="queued,running"
        )
        if attempt is None:
            return None  # cancelled while it waited, expired, or ended by an earlier attempt
        limit = self.max_attempts or ctx.settings.max_attempts
        if attempt > limit:
            reporter.failed(f"Gave up after {attempt - 1} attempts: the worker kept stopping.")
            return None
        job = JobContext(
            ctx, job_id, task=self, lease=lease, attempt=attempt, meta=_meta(ctx, job_id)
        )
        try:
            job.check()  # cancelled between attempts (a retry's countdown, a dead worker)
            value = body(job, *args, **kwargs)
            lease.check()
        except LeaseLost:
            return None  # another attempt owns the job now and reports it
        except JobCancelled:
            job.flush()
            reporter.cancelled(reason="cancelled while running")
            return None
        except Reject as exc:
            job.flush()
            if not exc.requeue:  # the message is dropped: no attempt follows to report
                log.error("job %s (%s) rejected its message: %s", job_id, self.name, exc)
                reporter.failed(self.failure_message, retryable=False)
            raise
        except Retry:
            job.flush()
            raise  # Celery runs the job again: the next attempt reports
        except JobError as exc:
            job.flush()
            self._keep_traceback(ctx, job_id)
            try:
                reporter.failed(exc.message, retryable=exc.retryable)
            except ValueError:  # too large for an event, or no UTF-8: say what is safe
                log.exception("job %s (%s): its JobError cannot be sent", job_id, self.name)
                reporter.failed(self.failure_message, retryable=exc.retryable)
            raise
        except (SystemExit, KeyboardInterrupt):
            raise  # the pool process ends: Celery hands the message out again
        except BaseException:  # an Exception, or the likes of asyncio.CancelledError
            log.exception("job %s (%s) failed", job_id, self.name)
            job.flush()
            self._keep_traceback(ctx, job_id)
            reporter.failed(self.failure_message, retryable=False)
            raise
        try:
            return job._finish(value)
        except EventTooLarge:
            log.exception("job %s (%s): its result does not fit an event", job_id, self.name)
            reporter.failed("The job's result is too large to send; save it as a file.")
            raise
        except (TypeError, ValueError):
            log.exception("job %s (%s): its result is not JSON", job_id, self.name)
            reporter.failed("The job's result could not be encoded as JSON.")
            raise

    def _keep_traceback(self, ctx: Context, job_id: str) -> None:
        """Keep the traceback of the exception being handled in the job's record, before
        ``failed`` is sent: operators see it in the job browser, nobody else does."""
        text = traceback.format_exc()
        try:
            ctx.events.retrying(lambda: keep_traceback(ctx.redis, ctx.events.keys, job_id, text))
        except Exception:
            log.warning("job %s: its traceback could not be kept", job_id, exc_info=True)


def job_task(*args: Any, **options: Any) -> Any:
    """``@job_task`` or ``@job_task(name=..., queue=..., **celery_options)``: a shared
    Celery task on :class:`JobTask` whose body takes the :class:`JobContext` first."""
    options.setdefault("base", JobTask)
    options["bind"] = True  # Celery drops the first parameter when checking arguments
    return shared_task(*args, **options)


def _meta(ctx: Context, job_id: str) -> dict[str, Any]:
    raw = ctx.events.retrying(lambda: ctx.redis.hget(ctx.events.keys.job(job_id), "meta"))
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _file_bytes(name: str, content: bytes | str | Image.Image) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, Image.Image):
        out = io.BytesIO()
        fmt = Image.registered_extensions().get(os.path.splitext(name)[1].lower())
        if fmt is None:
            raise ValueError(f"cannot tell an image format from the name {name!r}")
        content.save(out, format=fmt)
        return out.getvalue()
    raise TypeError(f"save_file takes bytes, str or a PIL image, not {type(content).__name__}")
