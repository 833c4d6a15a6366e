"""The job routes: any registered kind over HTTP, and ``/imagine`` as the demo's alias.

    POST   /jobs/<kind>              validate by the kind's model, submit → 202 + Location;
                                     with ``Accept: text/event-stream``: 200, the job's
                                     stream from its first event (X-Job-Id, Location)
    GET    /jobs/<id>                the snapshot, with kind, queue and meta
    GET    /jobs/<id>/stream         the SSE stream (web/fastroute.py serves it too)
    GET    /jobs/stream?job=A&job=B  many jobs' streams on one connection (web/multiplex.py)
    DELETE /jobs/<id>                cancel: queued → cancelled now, running → at its next step
    GET    /jobs/<id>/result         once succeeded: the done data and the saved files' URLs
    GET    /jobs/<id>/result/<name>  one saved file
    /imagine, /imagine/<id>[/stream|/image]   the same for the imagine kind, as before
                                     (blueprint ``alias``: only where the kind is offered)

Errors, in the order they are decided: 404 unknown kind · 403 not allowed to submit it ·
400 bad Idempotency-Key · 415/413/400 the body · 422 its fields · 429 the line is full.
With ``JOBCAST_SIGNING_KEY`` every ``<id>`` route wants the job's token (``?token=``).
URLs are built with ``url_for``, so they follow wherever the blueprint is mounted.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import weakref
from dataclasses import dataclass
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file, url_for
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter

from tasks.canvas import cancel_canvas, submit_canvas
from tasks.events import Enqueued
from tasks.handle import idempotency_scope
from tasks.keys import new_job_id
from tasks.kinds import Kind, Registry
from tasks.media import job_file, job_files
from tasks.submit import request_cancel, submit
from tasks.tokens import job_token
from web.api import (
    JOB_ID,
    STREAM_HEADERS,
    admit_stream,
    check_id,
    json_body,
    last_event_id,
    not_found,
    queue_full,
    start_stream,
    stream_has_more,
    with_token,
)
from web.cors import cross_origin
from web.errors import ApiError
from web.extension import Jobcast, jobcast
from web.hub import HubUnavailable
from web.line import eta_seconds
from web.multiplex import parse_cursor, parse_jobs, start_many
from web.ops import authorized
from web.stream import is_terminal, snapshot
from web.validate import validate_params

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)
# The imagine kind's routes from before /jobs; registered only when the kind is offered.
alias = Blueprint("imagine", __name__)


@bp.record_once
def _add_converters(state: BlueprintSetupState) -> None:
    """``<jobkind:…>`` matches the kinds offered over HTTP, ``<jobid:…>`` a job id that is not
    one of them, so ``/jobs/imagine`` and ``/jobs/<id>`` are separate resources (each
    answers OPTIONS and 405 with its own ``Allow``). Read from the registry when the
    blueprint is registered: kinds registered later are not routed."""
    kinds: Registry = state.app.extensions["jobcast"].kinds
    state.app.url_map.converters.update(converters(kinds))


def converters(kinds: Registry) -> dict[str, type[BaseConverter]]:
    names = [re.escape(kind.name) for kind in kinds.all() if kind.over_http]
    kind_regex = f"(?:{'|'.join(names)})" if names else "(?!)"
    # A kind name can look like an id (16+ letters, digits and dashes): not one here.
    exclude = f"(?!{kind_regex}(?![A-Za-z0-9_-]))" if names else ""

    class KindName(BaseConverter):
        regex = kind_regex
        part_isolating = True

    class JobId(BaseConverter):
        regex = exclude + JOB_ID.pattern
        part_isolating = True

    return {"jobkind": KindName, "jobid": JobId}


IMAGINE = "imagine"
JSON = "application/json"
SSE = "text/event-stream"
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclass(frozen=True)
class Submitted:
    job_id: str
    kind: Kind
    line: Enqueued
    token: str
    created: bool = True  # False: the Idempotency-Key named this job already

    def common(self) -> dict[str, Any]:
        line = self.line
        return {
            "jobId": self.job_id,
            "position": line.position,
            "queueLength": line.queue_length,
            "etaSeconds": eta_seconds(line.position, line.avg_ms, line.busy),
        }


def link(endpoint: str, job_id: str, token: str = "", **values: Any) -> str:
    """A job route's URL (relative to the site, under the blueprint's mount point),
    carrying the job's token when signing is on."""
    return with_token(url_for(f"jobcast.{endpoint}", job_id=job_id, **values), token)


# A job id url_for writes as it is (the id converters take it), to find where ids go.
_SLOT = "JOBCASTSLOTJOBCASTSLOT"
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
# Per app, (endpoint, script root) -> the route's URL split where the job id goes: url_for
# once per process and mount point, not three times per POST (a twentieth of one).
_LINK_PARTS: weakref.WeakKeyDictionary[Flask, dict[tuple[str, str], tuple[str, str]]] = (
    weakref.WeakKeyDictionary()
)


def job_link(endpoint: str, job_id: str, token: str = "") -> str:
    """:func:`link` for a route whose only value is the job id."""
    if not _PLAIN_ID.fullmatch(job_id):
        return link(endpoint, job_id, token)
    known = _LINK_PARTS.setdefault(current_app._get_current_object(), {})  # type: ignore[attr-defined]
    key = (endpoint, request.script_root)
    parts = known.get(key)
    if parts is None:
        before, slot, after = url_for(f"jobcast.{endpoint}", job_id=_SLOT).partition(_SLOT)
        if not slot or _SLOT in after:
            return link(endpoint, job_id, token)
        parts = known[key] = (before, after)
    return with_token(parts[0] + job_id + parts[1], token)


# -- submit ----------------------------------------------------------------------------


@bp.post("/jobs/<jobkind:kind>")
@cross_origin
def create(kind: str) -> Response | tuple[Response, int, dict[str, str]]:
    return submit_and_answer(kind, "jobs", "result", named=True)


@alias.post("/imagine", endpoint="create")
@cross_origin
def create_imagine() -> Response | tuple[Response, int, dict[str, str]]:
    """``POST /jobs/imagine`` with the answer ``POST /imagine`` has always given."""
    return submit_and_answer(IMAGINE, "imagine", "image", named=False)


def submit_and_answer(
    kind: str, routes: str, outcome: str, named: bool
) -> Response | tuple[Response, int, dict[str, str]]:
    """Submit a ``kind`` job from this request and answer with its links under the
    ``routes`` blueprint (``outcome``: the route of its result); ``named`` adds its kind."""
    streaming = wants_stream()
    job = accept(kind)
    body: dict[str, Any] = {
        **job.common(),
        **({"kind": job.kind.name} if named else {}),
        "stream": job_link(f"{routes}.stream", job.job_id, job.token),
        "status": job_link(f"{routes}.status", job.job_id, job.token),
        outcome: job_link(f"{routes}.{outcome}", job.job_id, job.token),
    }
    if job.token:
        body["token"] = job.token
    return answer(job, body, streaming)


def wants_stream() -> bool:
    """Whether the client asked for the new job's stream (``Accept: text/event-stream``,
    not ranked below JSON); if so, 503 now when this process holds all the streams it
    can, before any job exists."""
    if SSE not in request.headers.get("Accept", "").lower():
        return False  # most POSTs: no need to parse the header's ranking
    accept_header = request.accept_mimetypes
    sse = max((q for value, q in accept_header if value == SSE), default=0)
    json_q = max((q for value, q in accept_header if value == JSON), default=0)
    if not sse or json_q > sse:
        return False
    admit_stream(jobcast(), request.environ)
    return True


def answer(
    job: Submitted, body: dict[str, Any], streaming: bool
) -> Response | tuple[Response, int, dict[str, str]]:
    """The submit's answer: 202 JSON (200 for a job the Idempotency-Key named), or, when
    asked for, 200 with the job's stream from its first event. If the stream cannot be
    opened once the job exists, the JSON answer: the client still learns its job."""
    location = {"Location": body["status"]}
    if streaming:
        try:
            stream = start_stream(jobcast(), job.job_id, None, request.environ)
        except (ApiError, HubUnavailable, redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("job %s queued but its stream did not open: %s", job.job_id, exc)
            stream = None
        if stream is not None:
            headers = {**STREAM_HEADERS, **location, "X-Job-Id": job.job_id}
            # The body itself, not iter(body): the server calls its close(), which unwatches.
            return Response(stream, status=200, headers=headers, direct_passthrough=True)
    return jsonify(body), 202 if job.created else 200, location


def accept(name: str) -> Submitted:
    """Check, validate and submit a job of kind ``name`` from the request; ApiError if not."""
    ext = jobcast()
    kind = ext.kinds.get(name)
    if kind is None or not kind.over_http:
        raise ApiError(404, "unknown_kind", f"There is no job kind {name[:40]!r}.")
    if not may_submit(ext, kind):
        raise ApiError(403, "forbidden", f"This client may not submit {kind.name} jobs.")
    key = idempotency_key()
    params = validate_params(kind.params, json_body(ext))
    job_id = new_job_id()
    if kind.canvas is not None:
        return _accept_canvas(ext, kind, params, job_id, key)
    fields = {"kind": kind.name, **{k: _field(v) for k, v in params.items()}}
    scoped = None if key is None else idempotency_scope(kind.name, key)  # as submit() scopes
    line = submit(
        ext.celery, ext.events, ext.settings, job_id, kind.task,
        params, fields, queue=kind.queue, key=scoped,
    )  # fmt: skip
    if line.position == -1:
        raise queue_full(line)
    if line.position == -3:  # the key named a job already: answer that one, as it is now
        job_id = line.event_id or job_id
        rank = ext.redis.zrank(ext.keys.line(kind.queue).queue, job_id)
        line = line._replace(position=0 if rank is None else int(rank) + 1)
        return Submitted(job_id, kind, line, job_token(ext.settings.signing_key, job_id), False)
    return Submitted(job_id, kind, line, job_token(ext.settings.signing_key, job_id))


def _accept_canvas(
    ext: Jobcast, kind: Kind, params: dict[str, Any], job_id: str, key: str | None
) -> Submitted:
    """A canvas kind: one parent job, a child per task of the canvas its parameters make."""
    assert kind.canvas is not None
    if ext.settings.store.cluster:
        raise ApiError(
            501, "canvas_needs_one_redis",
            f"{kind.name} jobs are canvases, which need a single Redis or a Sentinel set; "
            "this server's event store is a Redis Cluster.",
        )  # fmt: skip
    sent = submit_canvas(
        ext.celery, ext.events, ext.settings, job_id, kind.canvas(params),
        kind=kind.name, queue=kind.queue, fields={k: _field(v) for k, v in params.items()},
        key=idempotency_scope(kind.name, key) if key is not None else None,
    )  # fmt: skip
    line = Enqueued(sent.position, sent.queue_length, sent.event_id, None, 0)
    if not sent.created:  # the key named a canvas already: answer that one
        job_id = sent.event_id
    token = job_token(ext.settings.signing_key, job_id)
    return Submitted(job_id, kind, line, token, sent.created)


def may_submit(ext: Jobcast, kind: Kind) -> bool:
    if kind.access == "public":
        return True
    if kind.access == "ops":
        return authorized(ext.settings.ops_token)
    if callable(kind.access):
        return bool(kind.access(request))
    return False


def idempotency_key() -> str | None:
    """The ``Idempotency-Key`` header, if sent; 400 if it is not 1-128 of [A-Za-z0-9_.:-]."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(raw):
        raise ApiError(
            400, "bad_idempotency_key",
            "Idempotency-Key must be 1 to 128 characters of A-Z a-z 0-9 _ . : -",
        )  # fmt: skip
    return raw


def _field(value: Any) -> str:
    """A parameter as the job record keeps it: text as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


# -- watch -----------------------------------------------------------------------------


@bp.get("/jobs/<jobid:job_id>", endpoint="status")
@cross_origin
def status(job_id: str) -> Response:
    return jsonify(_snapshot(job_id, details=True))


@alias.get("/imagine/<job_id>", endpoint="status")
@cross_origin
def imagine_status(job_id: str) -> Response:
    return jsonify(_snapshot(job_id, details=False))


def _snapshot(job_id: str, *, details: bool) -> dict[str, Any]:
    check_id(job_id)
    ext = jobcast()
    snap = snapshot(ext, job_id, details=details)
    if snap is None:
        raise not_found()
    token = job_token(ext.settings.signing_key, job_id)
    if token and snap.get("url"):
        # The worker's done url has no token (workers hold none); hand out one that works.
        snap["url"] = with_token(snap["url"], token)
    return snap


@bp.get("/jobs/stream", endpoint="stream_many")
@cross_origin
def stream_many() -> Response:
    """Many jobs on one connection (:mod:`web.multiplex`). HEAD checks the request and
    opens nothing."""
    ext = jobcast()
    jobs = request.args.getlist("job")
    idle = _single("idle", {"0", "1"}) == "1"
    # Both checked (a bad one is refused even when the other would do); the header wins.
    query_cursor = _single("lastEventId")
    parse_cursor(query_cursor, parse_jobs(ext, jobs))
    raw_cursor = request.headers.get("Last-Event-ID") or query_cursor
    if request.method != "GET":
        parse_cursor(raw_cursor, jobs)
        return Response(iter(()), status=200, headers=STREAM_HEADERS)
    tokens = request.args.getlist("token")
    body = start_many(ext, jobs, tokens, raw_cursor, idle, request.environ)
    if body is None:
        return Response(status=204)
    # The body itself, not iter(body): the server calls its close(), which unwatches.
    return Response(body, status=200, headers=STREAM_HEADERS, direct_passthrough=True)


def _single(name: str, allowed: set[str] | None = None) -> str | None:
    """A query parameter given at most once (and one of ``allowed``); else a 400."""
    values = request.args.getlist(name)
    if len(values) > 1 or (values and allowed is not None and values[0] not in allowed):
        choices = f" ({' or '.join(sorted(allowed))})" if allowed else ""
        raise ApiError(400, "bad_parameter", f"Give {name} at most once{choices}.")
    return values[0] if values else None


@bp.get("/jobs/<jobid:job_id>/stream", endpoint="stream")
@alias.get("/imagine/<job_id>/stream", endpoint="stream")
@cross_origin
def stream(job_id: str) -> Response:
    """The stream through Flask: used when job tokens are on (web/fastroute.py otherwise),
    and for HEAD, which opens nothing: the status and headers a GET would get, no body."""
    ext = jobcast()
    check_id(job_id)
    last = last_event_id(request.environ)
    if request.method != "GET":
        if not stream_has_more(ext, job_id, last):
            return Response(status=204)
        return Response(iter(()), status=200, headers=STREAM_HEADERS)
    body = start_stream(ext, job_id, last, request.environ)
    if body is None:
        return Response(status=204)
    # The body itself, not iter(body): the server calls its close(), which unwatches.
    return Response(body, status=200, headers=STREAM_HEADERS, direct_passthrough=True)


@bp.delete("/jobs/<jobid:job_id>", endpoint="cancel")
@alias.delete("/imagine/<job_id>", endpoint="cancel")
@cross_origin
def cancel(job_id: str) -> tuple[Response, int]:
    check_id(job_id)
    return cancel_job(jobcast(), job_id)


def cancel_job(ext: Jobcast, job_id: str) -> tuple[Response, int]:
    """End a queued job (200), ask a running one to stop (202), 409 if it ended, 404."""
    ended = cancel_canvas(ext.events, job_id)  # a canvas: it and every unfinished child
    if ended == 1:
        return jsonify(jobId=job_id, state="cancelled"), 200
    if isinstance(ended, str):
        raise ApiError(409, "already_finished", f"The job has already ended ({ended}).")
    if ext.events.publish(
        job_id, "cancelled", {"reason": "cancelled while queued"}, expect="queued"
    ):
        return jsonify(jobId=job_id, state="cancelled"), 200
    state = request_cancel(ext.events, job_id)
    if state is None:
        raise not_found()
    if is_terminal(state):
        raise ApiError(409, "already_finished", f"The job has already ended ({state}).")
    return jsonify(jobId=job_id, state="cancelling"), 202


# -- results ---------------------------------------------------------------------------


@bp.get("/jobs/<jobid:job_id>/result", endpoint="result")
@cross_origin
def result(job_id: str) -> Response:
    ext = jobcast()
    check_id(job_id)
    state, done = ext.redis.hmget(ext.keys.job(job_id), "state", "last:done")
    if state is None:
        raise not_found()
    if state != b"succeeded":
        raise ApiError(404, "not_found", f"No result yet: the job is {state.decode()}.")
    token = job_token(ext.settings.signing_key, job_id)
    files = {
        name: link("jobs.result_file", job_id, token, name=name)
        for name in job_files(ext.settings.media_dir, job_id)
    }
    data = json.loads(done) if done else {}
    if token and isinstance(data.get("url"), str):
        data["url"] = with_token(data["url"], token)  # as the status does: workers hold none
    return jsonify(jobId=job_id, state="succeeded", result=data, files=files)


@bp.get("/jobs/<jobid:job_id>/result/<name>", endpoint="result_file")
@cross_origin
def result_file(job_id: str, name: str) -> Response:
    return _saved_file(job_id, name)


@alias.get("/imagine/<job_id>/image", endpoint="image")
@cross_origin
def imagine_image(job_id: str) -> Response:
    return _saved_file(job_id, "image.png", "No image for this job (yet).")


def _saved_file(
    job_id: str, name: str, missing: str = "No such file for this job (yet)."
) -> Response:
    ext = jobcast()
    check_id(job_id)
    state = ext.redis.hget(ext.keys.job(job_id), "state")
    path = job_file(ext.settings.media_dir, job_id, name) if state == b"succeeded" else None
    if path is None:
        raise ApiError(404, "not_found", missing)
    mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = send_file(path.resolve(), mimetype=mimetype, max_age=3600)
    # A job's file is the job's content, not this site's: never run it as a page here.
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox"
    return response
