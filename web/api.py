"""The job API: enqueue, stream, status, image, cancel."""

from __future__ import annotations

import hmac
import json
import re
import secrets
import socket
import urllib.parse
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.exceptions import RequestEntityTooLarge

from tasks.events import Enqueued, EventId, parse_id
from tasks.media import image_path
from tasks.submit import request_cancel, submit
from tasks.tokens import job_token
from web.errors import ApiError
from web.extension import Jobcast, jobcast
from web.line import eta_seconds
from web.stream import Stream, is_terminal, open_stream, read_opening, snapshot
from web.validate import validate_job

bp = Blueprint("api", __name__)

IMAGINE = "jobcast.imagine"
JOB_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_LAST_ID = 41  # two 20-digit numbers and a dash
MAX_ID_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit numbers


@bp.post("/imagine")
def create_job() -> tuple[Response, int, dict[str, str]]:
    ext = jobcast()
    params = validate_job(_json_body(ext), ext.settings)
    job_id = secrets.token_urlsafe(16)
    fields = {k: str(v) for k, v in params.items()}
    kwargs = dict(params)
    line = submit(ext.celery, ext.events, ext.settings, job_id, IMAGINE, kwargs, fields)
    if line.position == -1:
        raise _queue_full(line)
    token = job_token(ext.settings.signing_key, job_id)
    body: dict[str, Any] = {
        "jobId": job_id,
        "position": line.position,
        "queueLength": line.queue_length,
        "etaSeconds": eta_seconds(line.position, line.avg_ms, line.busy),
        "stream": job_url(job_id, "/stream", token),
        "status": job_url(job_id, "", token),
        "image": job_url(job_id, "/image", token),
    }
    if token:
        body["token"] = token
    return jsonify(body), 202, {"Location": body["status"]}


@bp.get("/imagine/<job_id>/stream")
def stream(job_id: str) -> Response:
    """The stream through Flask: used when job tokens are on (web/fastroute.py otherwise),
    and for HEAD, which opens nothing: the status and headers a GET would get, no body."""
    ext = jobcast()
    _check_id(job_id)
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


STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def start_stream(
    ext: Jobcast, job_id: str, last: EventId | None, environ: dict[str, Any]
) -> Stream | None:
    """Open a job's stream: the body to send, or None for 204 (finished, nothing after
    ``last``); ApiError for an unknown job or a full server."""
    admit_stream(ext, environ)
    watcher = ext.hub.watch(ext.keys.channel(job_id))
    try:
        opening = open_stream(ext, job_id, last)
        if opening.state is None:
            raise _not_found()
        if opening.nothing_after(last):
            ext.hub.unwatch(watcher)
            return None
        body = Stream(ext, job_id, last, watcher, opening)
        body.prepare()
        return body
    except BaseException:
        ext.hub.unwatch(watcher)
        raise


def stream_has_more(ext: Jobcast, job_id: str, last: EventId | None) -> bool:
    """What a GET would answer, without watching: True for 200, False for 204; 404."""
    opening = read_opening(ext, job_id, last)
    if opening.state is None:
        raise _not_found()
    return not opening.nothing_after(last)


@bp.get("/imagine/<job_id>")
def status(job_id: str) -> Response:
    _check_id(job_id)
    ext = jobcast()
    snap = snapshot(ext, job_id)
    if snap is None:
        raise _not_found()
    token = job_token(ext.settings.signing_key, job_id)
    if token and snap.get("url"):
        # The worker's done url has no token (workers hold none); hand out one that works.
        snap["url"] = with_token(snap["url"], token)
    return jsonify(snap)


@bp.get("/imagine/<job_id>/image")
def image(job_id: str) -> Response:
    ext = jobcast()
    _check_id(job_id)
    state = ext.redis.hget(ext.keys.job(job_id), "state")
    path = image_path(ext.settings.media_dir, job_id)
    if state != b"succeeded" or not path.is_file():
        raise ApiError(404, "not_found", "No image for this job (yet).")
    return send_file(path.resolve(), mimetype="image/png", max_age=3600)


@bp.delete("/imagine/<job_id>")
def cancel(job_id: str) -> tuple[Response, int]:
    ext = jobcast()
    _check_id(job_id)
    if ext.events.publish(
        job_id, "cancelled", {"reason": "cancelled while queued"}, expect="queued"
    ):
        return jsonify(jobId=job_id, state="cancelled"), 200
    state = request_cancel(ext.events, job_id)
    if state is None:
        raise _not_found()
    if is_terminal(state):
        raise ApiError(409, "already_finished", f"The job has already ended ({state}).")
    return jsonify(jobId=job_id, state="cancelling"), 202


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when this process can serve: Redis answers and its hub can deliver."""
    ext = jobcast()
    try:
        ext.redis.ping()
        redis_ok = True
    except Exception:
        redis_ok = False
    ext.hub.start()  # a process that streamed nothing yet still must be able to
    hub_ok = ext.hub.healthy()
    body = {
        "ok": redis_ok and hub_ok,
        "redis": "ok" if redis_ok else "unreachable",
        "hub": ext.hub.stats(),
        "line": ext.line.stats(),
    }
    return jsonify(body), 200 if redis_ok and hub_ok else 503


def admit_stream(ext: Jobcast, environ: dict[str, Any]) -> None:
    """503 past ``max_streams`` open streams in this process; else guard its socket."""
    if ext.hub.streams >= ext.settings.max_streams:
        raise ApiError(
            503, "too_many_streams", "This server holds all the streams it can; retry shortly.",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    guard_socket(environ, ext.settings.send_timeout_seconds)


def guard_socket(environ: dict[str, Any], seconds: float) -> None:
    """Drop clients that stop reading: a write blocked this long fails, and so does a
    connection whose data stays unacknowledged that long (half-open: the heartbeat's
    keep-alive comment is what finds it)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return
    sock.settimeout(seconds)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
    except (OSError, AttributeError):
        pass  # not TCP (a unix socket) or not Linux: the write timeout still applies


def _json_body(ext: Jobcast) -> Any:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the job as application/json.")
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise ApiError(413, "too_large", "The request body is too large.") from None
    try:
        return json.loads(raw)
    # RecursionError: arrays/objects nested deeper than the parser goes ("[" * 8000 fits
    # in the body limit); to the client that is just JSON we will not read.
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "bad_json", "The body is not valid JSON.") from None


def _queue_full(line: Enqueued) -> ApiError:
    """429 with a Retry-After of about one run time: when a place should free up."""
    eta = eta_seconds(1, line.avg_ms, line.busy)
    retry_after = 10 if eta is None else max(1, eta)
    return ApiError(
        429,
        "queue_full",
        f"The queue is full ({line.queue_length} jobs waiting); try again in about {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


def last_event_id(environ: dict[str, Any]) -> EventId | None:
    """The client's last id, from the header or ``?lastEventId=``; 400 if it is not one."""
    raw = environ.get("HTTP_LAST_EVENT_ID") or _query_value(environ, "lastEventId")
    if not raw:
        return None
    parsed = parse_id(raw.strip()) if len(raw) <= MAX_LAST_ID else None
    if parsed is None or max(parsed) > MAX_ID_PART:
        raise ApiError(400, "bad_last_event_id", "Last-Event-ID must be an id this stream sent.")
    return parsed


def _query_value(environ: dict[str, Any], name: str) -> str | None:
    query = environ.get("QUERY_STRING", "")
    if name not in query:
        return None
    values = urllib.parse.parse_qs(query).get(name)
    return values[-1] if values else None


def _check_id(job_id: str) -> None:
    """404 for what cannot be a job id; 403 without the job's token when signing is on."""
    if not JOB_ID.fullmatch(job_id):
        raise _not_found()
    key = jobcast().settings.signing_key
    if not key:
        return
    given = request.args.get("token", "")
    if not hmac.compare_digest(given.encode(), job_token(key, job_id).encode()):
        raise ApiError(403, "bad_token", "This job needs the token that came with it.")


def job_url(job_id: str, route: str, token: str) -> str:
    """A job route's URL, carrying the job's token when signing is on."""
    return with_token(f"/imagine/{job_id}{route}", token)


def with_token(url: str, token: str) -> str:
    """``url`` with ``token=`` set in its query (unchanged when there is no token)."""
    if not token:
        return url
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "token"]
    query.append(("token", token))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such job.")
