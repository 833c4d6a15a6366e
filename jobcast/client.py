"""A client for Jobcast's HTTP API: submit jobs, follow their events, wait, cancel, download.

    from jobcast.client import Client

    with Client("http://127.0.0.1:8000") as jobcast:
        job = jobcast.submit("imagine", {"prompt": "a lighthouse at dusk"})
        for event in jobcast.watch(job):
            print(event.kind, event.percent)
        jobcast.download(job, "image.png", "lighthouse.png")

:class:`AsyncClient` has the same methods as coroutines (``watch`` and ``watch_many`` as
async iterators). A job is a :class:`Job` handle or its id; a handle carries the job's
token, which the API wants on every job route when it signs them.

A watch survives any connection error: it reconnects with ``Last-Event-ID`` after a delay
that starts at the server's ``retry:``, doubles up to ``max_backoff`` and is jittered; a
``Retry-After`` is honoured. It gives up with :class:`ConnectionGaveUp` after
``max_retries`` reconnects in a row that brought no event. ``watch_many`` does the same
for many jobs on one connection (the multiplexed ``GET /jobs/stream``), resuming each job
from its own place with the composite cursor (:mod:`jobcast.cursor`). Errors::

    JobcastError
    ├── ApiError           the API's JSON error: status, code, message, fields, retry_after
    ├── ConnectionGaveUp   the stream could not be reopened
    ├── WaitTimeout        wait() ran out of time (also a TimeoutError)
    └── JobEnded           wait() on a job that did not succeed; .event is its last event
        ├── JobFailed      .error: the job's message
        └── JobCancelled
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from jobcast import cursor as cursors
from jobcast import problem
from jobcast.problem import Problem

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ConnectionGaveUp",
    "DeltaText",
    "Event",
    "Job",
    "JobCancelled",
    "JobEnded",
    "JobFailed",
    "JobcastError",
    "WaitTimeout",
]

TERMINAL = frozenset({"done", "failed", "cancelled"})


class JobcastError(Exception):
    """Anything this client raises."""


class ApiError(JobcastError, Problem):
    """The API refused a request; its JSON error (the shape: :mod:`jobcast.problem`), its
    HTTP status and its Retry-After."""

    fields: dict[str, str]

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        Problem.__init__(self, status, code, message, fields or {})
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """From an error response (read already); a body that is not ours still makes one."""
        try:
            code, message, fields = problem.parse(response.json())
        except ValueError:  # not JSON, or not ours: a proxy's page
            code, message, fields = f"http_{response.status_code}", response.reason_phrase, None
        return cls(response.status_code, code, message, fields, _seconds(response))

    @property
    def transient(self) -> bool:
        """Whether the same request may work later (server trouble or a full line)."""
        return self.status >= 500 or self.status == 429


class ConnectionGaveUp(JobcastError):
    """The server could not be reached: a request failed to get an answer (``job_id``
    None), or a job's stream (or the multiplexed stream of ``jobs`` jobs) failed
    ``attempts`` times in a row; ``cause``: the last."""

    def __init__(
        self, job_id: str | None, attempts: int, cause: BaseException | None, *, jobs: int = 0
    ) -> None:
        why = cause or "the server kept ending the stream"
        what = f"job {job_id}" if job_id else f"the stream of {jobs} jobs" if jobs else ""
        what = f"{what} after {attempts} failed connections" if what else "the server"
        super().__init__(f"gave up on {what}: {why}")
        self.job_id = job_id
        self.jobs = jobs
        self.attempts = attempts
        self.cause = cause


class WaitTimeout(JobcastError, TimeoutError):
    """wait() did not see the job end in time (the job goes on)."""


class JobEnded(JobcastError):
    """The job ended without success; ``event`` is its terminal event."""

    def __init__(self, event: Event) -> None:
        super().__init__(f"job {event.job_id} {event.kind}: {event.error or event.data}")
        self.event = event
        self.job_id = event.job_id


class JobFailed(JobEnded):
    @property
    def error(self) -> str:
        return self.event.error or "The job failed."


class JobCancelled(JobEnded):
    pass


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a job's stream. ``id`` is None for derived events (a new place in
    line), which are never replayed; ``kind`` is the SSE event name."""

    kind: str
    data: dict[str, Any]
    id: str | None = None
    job_id: str = ""
    cursor: str | None = None  # watch_many: the composite cursor to resume all jobs from

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL

    @property
    def percent(self) -> int | None:
        return 100 if self.kind == "done" else _int(self.data.get("percent"))

    @property
    def position(self) -> int | None:
        return _int(self.data.get("position"))

    @property
    def queue_length(self) -> int | None:
        return _int(self.data.get("queueLength"))

    @property
    def eta_seconds(self) -> int | None:
        return _int(self.data.get("etaSeconds"))

    @property
    def text(self) -> str:
        """A ``delta`` event's text ("" for any other)."""
        value = self.data.get("text") if self.kind == "delta" else None
        return value if isinstance(value, str) else ""

    @property
    def message(self) -> str | None:
        """A ``log`` event's message."""
        value = self.data.get("message") if self.kind == "log" else None
        return value if isinstance(value, str) else None

    @property
    def error(self) -> str | None:
        """A ``failed`` event's message."""
        value = self.data.get("error") if self.kind == "failed" else None
        return value if isinstance(value, str) else None


class DeltaText:
    """The text of a job's ``delta`` events, joined: ``feed`` every event, read ``str()``."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def feed(self, event: Event) -> str:
        """Take one event; return the text it adds ("" unless a delta)."""
        if event.kind == "reset":
            self._parts.clear()  # the log is sent again from its start
        text = event.text
        if text:
            self._parts.append(text)
        return text

    def __str__(self) -> str:
        return "".join(self._parts)


@dataclass(frozen=True)
class Job:
    """A submitted job: its id, token (signed mode), place in line at submit and the URLs
    the API gave (site-relative)."""

    id: str
    kind: str | None = None
    token: str | None = None
    position: int | None = None
    queue_length: int | None = None
    eta_seconds: int | None = None
    urls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Job:
        urls = {k: body[k] for k in ("stream", "status", "result") if isinstance(body.get(k), str)}
        return cls(
            str(body["jobId"]), body.get("kind"), body.get("token"), _int(body.get("position")),
            _int(body.get("queueLength")), _int(body.get("etaSeconds")), urls,
        )  # fmt: skip


class _Watch:
    """One watch across its connections: the route it reads, the server's ``retry:``, the
    failures in a row, and turning frames into Events (a durable event seen before is
    dropped). :class:`_One` follows one job's stream, :class:`_Many` the multiplexed one."""

    path: str
    params: Any

    def __init__(self, last_event_id: str | None) -> None:
        self.last = last_event_id
        self.retry: float | None = None
        self.failures = 0
        self.fresh = False  # an event arrived on this connection
        self.over = False  # nothing more to come: stop, do not reconnect
        self._previous = ""

    def headers(self) -> dict[str, str]:
        """Start a connection: the headers it sends."""
        self.fresh = False
        self._previous = ""  # httpx-sse repeats the last id on events that carry none
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        return {**headers, "Last-Event-ID": self.last} if self.last else headers

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """The Event of one frame, or None (no data, or a durable event seen already)."""
        if sse.retry is not None:
            self.retry = sse.retry / 1000
        own_id = sse.id if sse.id and sse.id != self._previous else None
        self._previous = sse.id or self._previous
        if not sse.data and sse.event in ("", "message"):
            return None  # a frame with only `retry:`
        event = self._event(sse.event or "message", _data(sse.data), own_id)
        if event is not None:
            self.fresh = True
        return event

    def _event(self, kind: str, data: dict[str, Any], own_id: str | None) -> Event | None:
        raise NotImplementedError

    def gave_up(self, failure: BaseException | None) -> ConnectionGaveUp:
        raise NotImplementedError


class _One(_Watch):
    """A job's own stream, ``GET /jobs/<id>/stream``; ids are the job's event ids."""

    def __init__(self, job: Job, last_event_id: str | None) -> None:
        super().__init__(last_event_id)
        self.job_id = job.id
        self.path = f"jobs/{_quote(job.id)}/stream"
        self.params = {"token": job.token} if job.token else {}

    def _event(self, kind: str, data: dict[str, Any], own_id: str | None) -> Event | None:
        if own_id is not None and _seen(own_id, self.last):
            return None
        if own_id is not None:
            self.last = own_id
        if kind == "reset":
            self.last = None  # the server replays what the log still holds
        self.over = kind in TERMINAL
        return Event(kind, data, own_id, self.job_id)

    def gave_up(self, failure: BaseException | None) -> ConnectionGaveUp:
        return ConnectionGaveUp(self.job_id, self.failures, failure)


class _Many(_Watch):
    """The multiplexed stream, ``GET /jobs/stream?job=…``: each frame's data names its job
    and its id is the composite cursor (:mod:`jobcast.cursor`), read here for the job's own
    event id. Over once every job has ended or been reported (an ``error`` event)."""

    def __init__(self, jobs: list[Job], last_event_id: str | None) -> None:
        super().__init__(last_event_id)
        self.ids = [job.id for job in jobs]
        self.index = {job_id: n for n, job_id in enumerate(self.ids)}
        self.open = set(self.ids)
        self.seen: dict[str, tuple[int, int]] = {}  # each job's last event id
        self.path = "jobs/stream"
        self.params = [("job", job_id) for job_id in self.ids]
        if any(job.token for job in jobs):  # in the order of the jobs
            self.params += [("token", job.token or "") for job in jobs]

    def _event(self, kind: str, data: dict[str, Any], own_id: str | None) -> Event | None:
        job_id = data.get("jobId")
        if not isinstance(job_id, str) or job_id not in self.index:
            return None  # not one of this watch's jobs: nothing to show
        event_id = None
        if own_id is not None:
            self.last = own_id
            position = self._position(own_id, job_id)
            if position is not None:
                if position <= self.seen.get(job_id, (-1, -1)):
                    return None
                self.seen[job_id] = position
                event_id = f"{position[0]}-{position[1]}"
        if kind == "reset":
            self.seen.pop(job_id, None)  # the server replays what the log still holds
        if kind in TERMINAL or kind == "error":
            self.open.discard(job_id)
        self.over = not self.open
        return Event(kind, data, event_id, job_id, own_id)

    def _position(self, cursor: str, job_id: str) -> tuple[int, int] | None:
        try:
            return cursors.decode(cursor, self.ids).last.get(self.index[job_id])
        except ValueError:  # not a cursor of this list: keep the event, without its id
            return None

    def gave_up(self, failure: BaseException | None) -> ConnectionGaveUp:
        return ConnectionGaveUp(None, self.failures, failure, jobs=len(self.ids))


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class _Base(Generic[H]):
    """What both clients share: settings, the requests they send, reading the answers and
    the backoff. ``http`` is an httpx.Client or httpx.AsyncClient."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 10.0,
        stream_timeout: float = 60.0,
        max_retries: int = 8,
        max_backoff: float = 30.0,
        http: H | None = None,
    ) -> None:
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.backoff = 1.0  # the first delay, until the server has sent its `retry:`
        self._tokens: dict[str, str] = {}
        self.http: H = http or self._new_http(base_url, timeout)

    def _new_http(self, base_url: str, timeout: float) -> H:
        raise NotImplementedError

    def job(self, job_id: str, token: str | None = None) -> Job:
        """A handle for a job submitted elsewhere (``token``: its token in signed mode)."""
        if token:
            self._tokens[job_id] = token
        return Job(job_id, token=token or self._tokens.get(job_id))

    def _ref(self, job: Job | str) -> Job:
        return job if isinstance(job, Job) else self.job(job)

    def _many(self, jobs: Iterable[Job | str], last_event_id: str | None) -> _Many | None:
        """The multiplexed watch of ``jobs`` (each once, in order); None for no jobs."""
        refs = list({ref.id: ref for ref in map(self._ref, jobs)}.values())
        return _Many(refs, last_event_id) if refs else None

    def _submit(self, kind: str, params: dict[str, Any], key: str | None) -> httpx.Request:
        headers = {"Idempotency-Key": key} if key else {}
        return self.http.build_request("POST", f"jobs/{_quote(kind)}", json=params, headers=headers)

    def _on(self, method: str, job: Job, *parts: str, **options: Any) -> httpx.Request:
        """A request to a job route: ``jobs/<id>/<parts>``, with the job's token."""
        path = "/".join(["jobs", _quote(job.id), *map(_quote, parts)])
        params = {"token": job.token} if job.token else {}
        return self.http.build_request(method, path, params=params, **options)

    def _stream(self, watch: _Watch, deadline: float | None) -> httpx.Request:
        """The request of a watch's next connection (its read timeout within ``deadline``)."""
        read = self.stream_timeout
        if deadline is not None:
            read = max(0.001, min(read, deadline - time.monotonic()))
        timeout = httpx.Timeout(self.timeout, read=read)
        headers = watch.headers()
        return self.http.build_request(
            "GET", watch.path, params=watch.params, headers=headers, timeout=timeout
        )

    def _submitted(self, response: httpx.Response) -> Job:
        job = Job.from_body(_json(response))
        if job.token:
            self._tokens[job.id] = job.token
        return job

    def _retry(self, watch: _Watch, failure: Exception | None) -> float:
        """After a connection ended without the watch's end: the delay before the next one,
        or ConnectionGaveUp."""
        watch.failures = 1 if watch.fresh else watch.failures + 1
        if watch.failures > self.max_retries:
            raise watch.gave_up(failure)
        base = watch.retry if watch.retry is not None else self.backoff
        delay = min(self.max_backoff, base * 2 ** (watch.failures - 1))
        retry_after = failure.retry_after if isinstance(failure, ApiError) else None
        return max(random.uniform(delay / 2, delay), retry_after or 0.0)


class Client(_Base[httpx.Client]):
    """The synchronous client (thread-safe)."""

    def _new_http(self, base_url: str, timeout: float) -> httpx.Client:
        return httpx.Client(base_url=base_url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(
        self, kind: str, params: dict[str, Any], *, idempotency_key: str | None = None
    ) -> Job:
        return self._submitted(self._send(self._submit(kind, params, idempotency_key)))

    def status(self, job: Job | str) -> dict[str, Any]:
        return _json(self._send(self._on("GET", self._ref(job))))

    def result(self, job: Job | str) -> dict[str, Any]:
        """``{"result": the done data, "files": {name: url}}`` of a job that succeeded."""
        return _json(self._send(self._on("GET", self._ref(job), "result")))

    def cancel(self, job: Job | str) -> dict[str, Any]:
        """Cancel: ``state`` is ``cancelled`` (it was waiting) or ``cancelling`` (running)."""
        return _json(self._send(self._on("DELETE", self._ref(job))))

    def download(self, job: Job | str, name: str, path: str | Path) -> Path:
        """Save the job's result file ``name`` at ``path`` (whole or not at all)."""
        response = self._send(self._on("GET", self._ref(job), "result", name), stream=True)
        with _writing(Path(path)) as out:
            try:
                if not response.is_success:
                    response.read()
                    raise ApiError.from_response(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
            finally:
                response.close()
        return Path(path)

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            return self.http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise ConnectionGaveUp(None, 1, exc) from exc

    def watch(self, job: Job | str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events after ``last_event_id`` (all without one), to its end."""
        return self._follow(_One(self._ref(job), last_event_id), None)

    def wait(self, job: Job | str, timeout: float | None = None) -> dict[str, Any]:
        """The job's ``done`` data; JobFailed / JobCancelled / WaitTimeout otherwise.
        The timeout is checked at every event and bounds every silent stretch."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in self._follow(_One(self._ref(job), None), deadline):
            if event.terminal:
                return _outcome(event)
        raise JobcastError("the stream ended before the job did")

    def watch_many(
        self, jobs: Iterable[Job | str], *, last_event_id: str | None = None
    ) -> Iterator[Event]:
        """The events of several jobs (up to the server's ``JOBCAST_MAX_STREAM_JOBS``) on
        one connection, as they come, until all have ended: ``event.job_id`` names the job,
        ``event.id`` is the job's own event id and ``event.cursor`` the composite cursor
        to resume the whole watch from (``last_event_id=``). A job the server does not
        know or allow gets one ``error`` event (``data``: code, message); the rest go on."""
        watch = self._many(jobs, last_event_id)
        return self._follow(watch, None) if watch else iter(())

    def _follow(self, watch: _Watch, deadline: float | None) -> Iterator[Event]:
        while True:
            failure: Exception | None = None
            try:
                response = self.http.send(self._stream(watch, deadline), stream=True)
                try:
                    if response.status_code not in (200, 204):
                        response.read()
                    if not _opened(response):
                        return
                    for sse in EventSource(response).iter_sse():
                        event = watch.accept(sse)
                        if event is not None:
                            yield event
                            if watch.over:
                                return
                        _check(deadline)
                finally:
                    response.close()
            except ApiError as exc:
                failure = _transient(exc)
            except (httpx.TransportError, SSEError) as exc:  # refused, dropped, cut, silent
                _check(deadline)
                failure = exc
            delay = self._retry(watch, failure)
            time.sleep(delay if deadline is None else min(delay, _left(deadline)))
            _check(deadline)


class AsyncClient(_Base[httpx.AsyncClient]):
    """The asyncio client: the methods of :class:`Client`, to await."""

    def _new_http(self, base_url: str, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(
        self, kind: str, params: dict[str, Any], *, idempotency_key: str | None = None
    ) -> Job:
        request = self._submit(kind, params, idempotency_key)
        return self._submitted(await self._send(request))

    async def status(self, job: Job | str) -> dict[str, Any]:
        return _json(await self._send(self._on("GET", self._ref(job))))

    async def result(self, job: Job | str) -> dict[str, Any]:
        return _json(await self._send(self._on("GET", self._ref(job), "result")))

    async def cancel(self, job: Job | str) -> dict[str, Any]:
        return _json(await self._send(self._on("DELETE", self._ref(job))))

    async def download(self, job: Job | str, name: str, path: str | Path) -> Path:
        request = self._on("GET", self._ref(job), "result", name)
        response = await self._send(request, stream=True)
        with _writing(Path(path)) as out:  # local writes of one result file: brief
            try:
                if not response.is_success:
                    await response.aread()
                    raise ApiError.from_response(response)
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
            finally:
                await response.aclose()
        return Path(path)

    async def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            return await self.http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise ConnectionGaveUp(None, 1, exc) from exc

    def watch(self, job: Job | str, *, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return self._follow(_One(self._ref(job), last_event_id))

    async def wait(self, job: Job | str, timeout: float | None = None) -> dict[str, Any]:
        events = self._follow(_One(self._ref(job), None))
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    if event.terminal:
                        return _outcome(event)
        except TimeoutError:
            raise WaitTimeout(f"the job did not end within {timeout} s") from None
        finally:
            await events.aclose()
        raise JobcastError("the stream ended before the job did")

    def watch_many(
        self, jobs: Iterable[Job | str], *, last_event_id: str | None = None
    ) -> AsyncIterator[Event]:
        """As :meth:`Client.watch_many`: many jobs on one connection, to await."""
        watch = self._many(jobs, last_event_id)
        return self._follow(watch) if watch else _nothing()

    async def _follow(self, watch: _Watch) -> AsyncGenerator[Event, None]:
        while True:
            failure: Exception | None = None
            try:
                response = await self.http.send(self._stream(watch, None), stream=True)
                try:
                    if response.status_code not in (200, 204):
                        await response.aread()
                    if not _opened(response):
                        return
                    async for sse in EventSource(response).aiter_sse():
                        event = watch.accept(sse)
                        if event is not None:
                            yield event
                            if watch.over:
                                return
                finally:
                    await response.aclose()
            except ApiError as exc:
                failure = _transient(exc)
            except (httpx.TransportError, SSEError) as exc:  # refused, dropped, cut, silent
                failure = exc
            await asyncio.sleep(self._retry(watch, failure))


async def _nothing() -> AsyncGenerator[Event, None]:
    return
    yield  # an async generator that yields nothing


def _transient(exc: ApiError) -> ApiError:
    """A refused connection worth retrying (server trouble, a full server); else raised."""
    if not exc.transient:
        raise exc
    return exc


def _opened(response: httpx.Response) -> bool:
    """True for a stream (200), False for 204; ApiError for any other answer (read)."""
    if response.status_code == 204:
        return False
    if response.status_code != 200:
        raise ApiError.from_response(response)
    return True


def _outcome(event: Event) -> dict[str, Any]:
    """A terminal event's done data, or the error it stands for."""
    if event.kind == "failed":
        raise JobFailed(event)
    if event.kind == "cancelled":
        raise JobCancelled(event)
    return event.data


@contextmanager
def _writing(target: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``target`` only once written whole."""
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("wb") as out:
            yield out
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout("the job did not end in time")


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _json(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer; ApiError for an error."""
    if not response.is_success:
        raise ApiError.from_response(response)
    body = response.json()
    if not isinstance(body, dict):
        raise JobcastError(f"expected a JSON object from {response.url}, got {body!r:.80}")
    return body


def _data(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {"text": raw}  # not ours: keep it readable
    return value if isinstance(value, dict) else {"value": value}


def _seconds(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After", "")
    return float(raw) if raw.strip().isdigit() else None


def _seen(event_id: str, last: str | None) -> bool:
    """Whether ``event_id`` is not after ``last`` (both Redis stream ids ``ms-seq``)."""
    new, old = _key(event_id), _key(last)
    return new is not None and old is not None and new <= old


def _key(event_id: str | None) -> tuple[int, int] | None:
    ms, dash, seq = (event_id or "").partition("-")
    return (int(ms), int(seq)) if dash and ms.isdigit() and seq.isdigit() else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")
