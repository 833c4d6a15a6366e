"""The job API's machinery: request bodies, ids and tokens, opening streams; ``/healthz``.

The job routes themselves (``/jobs/...`` and the ``/imagine/...`` aliases) are in
:mod:`web.jobs`; ``web/fastroute.py`` opens streams with :func:`start_stream` too.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.parse
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from tasks.events import Enqueued, EventId, parse_id
from tasks.tokens import opens
from web.errors import ApiError
from web.extension import Jobcast, jobcast
from web.line import eta_seconds
from web.stream import Stream, open_stream, read_opening

bp = Blueprint("api", __name__)

JOB_ID = re.compile(r"[A-Za-z0-9_-]{16,64}(?:\.[0-9]{1,4})?")  # .n: a canvas's child
MAX_LAST_ID = 41  # two 20-digit numbers and a dash
MAX_ID_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit numbers


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
            raise not_found()
        if opening.nothing_after(last):
            ext.hub.unwatch(watcher)
            return None
        body = Stream(ext, job_id, last, watcher, opening)
        if ext.settings.direct_send:
            body.send_directly(environ)
        body.prepare()
        return body
    except BaseException:
        ext.hub.unwatch(watcher)
        raise


def stream_has_more(ext: Jobcast, job_id: str, last: EventId | None) -> bool:
    """What a GET would answer, without watching: True for 200, False for 204; 404."""
    opening = read_opening(ext, job_id, last)
    if opening.state is None:
        raise not_found()
    return not opening.nothing_after(last)


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
        "line": ext.lines.stats(),  # every line's added up
        "lines": ext.lines.per_line(),
    }
    if ext.funnel is not None:
        body["funnel"] = ext.funnel.stats()
    if ext.collector is not None:
        body["collector"] = ext.collector.stats()
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


def json_body(ext: Jobcast) -> Any:
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


def queue_full(line: Enqueued) -> ApiError:
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
    """The client's last id, from the header or else ``?lastEventId=``; 400 if either one
    is given and is not an id (a bad one is refused even when the other would do)."""
    header = _event_id(environ.get("HTTP_LAST_EVENT_ID"))
    query = _event_id(_query_value(environ, "lastEventId"))
    return header or query


def _event_id(raw: str | None) -> EventId | None:
    if not raw:
        return None
    parsed = parse_id(raw) if len(raw) <= MAX_LAST_ID else None
    if parsed is None or max(parsed) > MAX_ID_PART:
        raise ApiError(400, "bad_last_event_id", "Last-Event-ID must be an id this stream sent.")
    return parsed


def _query_value(environ: dict[str, Any], name: str) -> str | None:
    query = environ.get("QUERY_STRING", "")
    if name not in query:
        return None
    values = urllib.parse.parse_qs(query).get(name)
    return values[-1] if values else None


def check_id(job_id: str) -> None:
    """404 for what cannot be a job id; 403 without the job's token when signing is on."""
    if not JOB_ID.fullmatch(job_id):
        raise not_found()
    key = jobcast().settings.signing_key
    if not key:
        return
    given = request.args.get("token", "")
    if not opens(key, job_id, given):
        raise ApiError(403, "bad_token", "This job needs the token that came with it.")


def with_token(url: str, token: str) -> str:
    """``url`` with ``token=`` set in its query (unchanged when there is no token)."""
    if not token:
        return url
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "token"]
    query.append(("token", token))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def not_found() -> ApiError:
    return ApiError(404, "not_found", "No such job.")
