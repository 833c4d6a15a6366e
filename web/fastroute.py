"""``GET <prefix>/jobs/<id>/stream`` (and ``<prefix>/imagine/<id>/stream``) without
Flask's request machinery.

Opening streams is the hot path of a busy web process (thousands of EventSources
reconnecting), and Flask's dispatch was a fifth of a connect's CPU. This WSGI middleware
answers that one route itself with the same code the Flask view uses (``start_stream``)
and the same JSON errors; every other request (HEAD and OPTIONS too: they open nothing),
and every stream when job tokens are on, goes to Flask unchanged. It answers with the CORS
headers the Flask route would add (:mod:`web.cors`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import redis

from web import cors
from web.api import JOB_ID, STREAM_HEADERS, last_event_id, start_stream
from web.errors import ApiError
from web.extension import Jobcast
from web.hub import HubUnavailable

log = logging.getLogger(__name__)


def stream_path(ext: Jobcast) -> re.Pattern[str]:
    """``<prefix>/jobs/<id>/stream``, and ``<prefix>/imagine/<id>/stream`` where that alias
    is routed."""
    imagine = ext.kinds.get("imagine")
    roots = "jobs|imagine" if imagine is not None and imagine.over_http else "jobs"
    prefix = re.escape(ext.settings.url_prefix)
    return re.compile(rf"{prefix}/(?:{roots})/({JOB_ID.pattern})/stream")


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class StreamRoute:
    def __init__(self, app: WSGIApp, ext: Jobcast) -> None:
        self.app = app
        self.ext = ext
        self.headers = list(STREAM_HEADERS.items())
        self.path = stream_path(ext)
        self.cors = cors.policy(ext.settings)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        match = self.path.fullmatch(environ.get("PATH_INFO", ""))
        if match is None or environ["REQUEST_METHOD"] != "GET" or self.ext.settings.signing_key:
            return self.app(environ, start_response)
        extra = self.cors.headers(environ.get("HTTP_ORIGIN"))
        try:
            body = start_stream(self.ext, match.group(1), last_event_id(environ), environ)
        except ApiError as exc:
            return _error(start_response, exc, extra)
        except (redis.ConnectionError, redis.TimeoutError, HubUnavailable) as exc:
            log.warning("redis unavailable: %s", exc)
            unavailable = ApiError(
                503, "unavailable", "The job store is unreachable; try again shortly.",
                headers={"Retry-After": "5"},
            )  # fmt: skip
            return _error(start_response, unavailable, extra)
        except Exception:
            log.exception("unhandled error opening a stream")  # start_stream let go of it
            failed = ApiError(500, "internal_error", "Something went wrong on our side.")
            return _error(start_response, failed, extra)
        if body is None:
            start_response("204 No Content", extra)
            return []
        start_response("200 OK", self.headers + extra)
        return body  # not iter(body): the server's close() must reach Stream.close


def _error(
    start_response: Callable[..., Any], exc: ApiError, extra: list[tuple[str, str]]
) -> list[bytes]:
    """The same JSON error body the Flask handlers write."""
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.fields:
        error["fields"] = exc.fields
    payload = json.dumps({"error": error}, separators=(",", ":")).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    start_response(
        f"{exc.status} {HTTPStatus(exc.status).phrase}",
        headers + list(exc.headers.items()) + extra,
    )
    return [payload]
