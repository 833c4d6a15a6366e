"""CORS on the job routes, for pages of another app (Django, FastAPI…) served beside Jobcast.

``JOBCAST_CORS_ORIGINS`` lists the origins (exact, comma-separated, or ``*``) whose pages
may post jobs, read their streams, status, results and images, and cancel them;
``JOBCAST_CORS_CREDENTIALS`` lets them send cookies or HTTP auth (exact origins only:
the settings refuse ``*`` with it). Only views marked :func:`cross_origin` take part.

allowed Origin   Access-Control-Allow-Origin: <the origin> (``*`` for any, no credentials)
                 Access-Control-Allow-Credentials: true (with credentials)
                 Access-Control-Expose-Headers: Location, Retry-After, X-Job-Id
   + preflight   (OPTIONS with Access-Control-Request-Method) 204, Allow-Methods (what
                 the URL takes), Allow-Headers, Max-Age
other Origin     no Access-Control-* header; the answer is the usual one
always           Vary: Origin with a list of origins, so no cache hands one origin's
                 answer to another

Written here rather than with flask-cors: the fast stream route (:mod:`web.fastroute`)
answers before Flask and must send the same headers, which :meth:`Policy.headers` gives
it as a plain list; and the hooks live on Jobcast's blueprint, not app-wide in a host app.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, request

from tasks.config import Settings, cors_origins

ALLOW_HEADERS = "Content-Type, Last-Event-ID, Idempotency-Key, Authorization"
EXPOSE_HEADERS = "Location, Retry-After, X-Job-Id"
MAX_AGE = "600"  # seconds a browser may reuse a preflight answer (Chromium caps at 7200)
Headers = list[tuple[str, str]]
View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class Policy:
    origins: frozenset[str]  # empty: CORS off; {"*"}: any origin
    credentials: bool

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and ("*" in self.origins or origin in self.origins)

    def headers(self, origin: str | None) -> Headers:
        """The headers of an actual (not preflight) response to a request from ``origin``."""
        if not self.origins:
            return []
        vary: Headers = [] if "*" in self.origins else [("Vary", "Origin")]
        if not self.allows(origin):
            return vary
        return vary + self._allow(origin) + [("Access-Control-Expose-Headers", EXPOSE_HEADERS)]

    def preflight(self, origin: str | None, methods: list[str]) -> Headers | None:
        """The headers of a 204 preflight answer; None when ``origin`` may not call."""
        if not self.allows(origin):
            return None
        vary: Headers = [] if "*" in self.origins else [("Vary", "Origin")]
        return [
            *vary,
            *self._allow(origin),
            ("Access-Control-Allow-Methods", ", ".join(methods)),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", MAX_AGE),
        ]

    def _allow(self, origin: str | None) -> Headers:
        if "*" in self.origins:  # never with credentials: the settings refuse that
            return [("Access-Control-Allow-Origin", "*")]
        allow = [("Access-Control-Allow-Origin", str(origin))]
        if self.credentials:
            allow.append(("Access-Control-Allow-Credentials", "true"))
        return allow


def policy(settings: Settings) -> Policy:
    return _policy(settings.cors_origins, settings.cors_credentials)


@functools.lru_cache(maxsize=16)
def _policy(origins: str, credentials: bool) -> Policy:
    return Policy(cors_origins(origins), credentials)


def cross_origin(view: View) -> View:
    """Mark a view as a job route that pages on the allowed origins may call."""
    view.jobcast_cors = True  # type: ignore[attr-defined]
    return view


def init_blueprint(bp: Blueprint) -> None:
    """Answer preflights and add the headers, for the marked views under ``bp``."""
    bp.before_request(_preflight)
    bp.after_request(_add_headers)


def _marked() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "jobcast_cors", False)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["jobcast"].settings
    return settings


def _preflight() -> Response | None:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    if not _marked():
        return None
    adapter = current_app.create_url_adapter(request)
    methods = [] if adapter is None else adapter.allowed_methods()
    allowed = sorted(set(methods) - {"OPTIONS"})
    headers = policy(_settings()).preflight(request.headers.get("Origin"), allowed)
    if headers is None:
        return None  # Flask's own OPTIONS answer, without CORS headers
    return Response(status=204, headers=headers)


def _add_headers(response: Response) -> Response:
    if request.method == "OPTIONS" and response.status_code == 204:
        return response  # a preflight answered above
    if _marked():
        for name, value in policy(_settings()).headers(request.headers.get("Origin")):
            if name == "Vary":
                response.vary.add(value)
            else:
                response.headers[name] = value
    return response
