"""Every error of Jobcast's routes is JSON: ``{"error": {"code", "message", "fields"?}}``,
never an HTML page. Standalone (``create_app``) that is every error of the app; embedded,
the handlers sit on Jobcast's blueprint and the host app's routes keep their own."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, default_exceptions
from werkzeug.routing import RequestRedirect

from jobcast import problem
from jobcast.problem import Problem
from web.hub import HubUnavailable

log = logging.getLogger(__name__)


class ApiError(Problem):
    """An error with its HTTP status, machine code, message, optional field reasons and
    the headers its answer carries (the shape: :mod:`jobcast.problem`)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message, fields)
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, fields: Any = None, headers: Any = None
) -> Response:
    response = jsonify(problem.body(code, message, fields))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers)


def http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    # Keep Allow (405), Retry-After (429) and the like; the body is ours.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return error_response(exc.code or 500, code, exc.description or exc.name, None, headers)


def redis_down(exc: Exception) -> Response:
    log.warning("redis unavailable: %s", exc)
    return error_response(
        503,
        "unavailable",
        "The job store is unreachable; try again shortly.",
        None,
        {"Retry-After": "5"},
    )


def unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "Something went wrong on our side.")


HANDLERS: list[tuple[type[Exception], Callable[[Any], Response]]] = [
    (ApiError, api_error),
    (HTTPException, http_error),
    (redis.ConnectionError, redis_down),
    (redis.TimeoutError, redis_down),
    (HubUnavailable, redis_down),
    (Exception, unexpected),
]


def init_app(app: Flask) -> None:
    """Every error of the app is JSON: for an app that is all Jobcast (``create_app``)."""
    for exc_class, handler in HANDLERS:
        app.register_error_handler(exc_class, handler)


def init_blueprint(bp: Blueprint) -> None:
    """Errors of the routes under ``bp`` are JSON; the host app's own keep its handlers.

    By status code too: Flask tries handlers registered for a code (``@app.errorhandler
    (404)`` in a host app) before any registered for a class, so without these a host's
    404 page would answer Jobcast's 404s.
    """
    for exc_class, handler in HANDLERS:
        bp.register_error_handler(exc_class, handler)
    for code in default_exceptions:
        bp.register_error_handler(code, http_error)


def routing_errors(prefix: str) -> Callable[[], Response | None]:
    """A ``before_request`` hook answering 404/405 as JSON for unknown paths (or methods)
    under ``prefix``: routing errors belong to no blueprint, so its handlers never see them."""
    below = prefix + "/"

    def hook() -> Response | None:
        exc = request.routing_exception
        if exc is None or isinstance(exc, RequestRedirect):
            return None
        if request.path != prefix and not request.path.startswith(below):
            return None  # the host app's path: its own handlers answer
        if isinstance(exc, HTTPException):
            return http_error(exc)
        return None

    return hook
