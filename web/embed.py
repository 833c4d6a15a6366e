"""Jobcast as a Flask extension: its routes, hub, streams, page and ops in any Flask app.

    from web import Jobcast
    jobcast = Jobcast(url_prefix="/jobcast")       # nothing is built or read here
    jobcast.init_app(app)                          # or Jobcast(app, url_prefix=...)

``init_app`` builds the app's state (:class:`web.extension.Jobcast`: Redis pool, event log,
hub, Celery client) into ``app.extensions["jobcast"]`` and mounts one blueprint,
``jobcast``, holding every Jobcast blueprint (:func:`blueprints`) under the prefix.
``web.create_app()`` is this with the prefix "" plus app-wide JSON errors.

Settings: the ``settings`` given, else the environment (``JOBCAST_*``, ``REDIS_URL``) with
the app's ``JOBCAST_*`` config keys on top (``app.config["JOBCAST_REDIS_URL"]``...). The
prefix: ``url_prefix``, else ``JOBCAST_URL_PREFIX``. Workers publish result URLs (a done
event's image url) under ``JOBCAST_URL_PREFIX``: give them the same value.

What it does to the host app, and no more:

* routes under the prefix, endpoints ``jobcast.<blueprint>.<view>``, static files at
  ``<prefix>/static`` and templates under ``jobcast/``;
* JSON errors for its own routes (handlers on its blueprint), and for unknown paths or
  methods under a non-empty prefix (a ``before_request`` hook that looks at nothing else);
  the host's error handlers keep answering everything else;
* a request body limit of ``JOBCAST_MAX_BODY_BYTES`` on its routes only (the app's
  ``MAX_CONTENT_LENGTH`` stays);
* a WSGI middleware that, for paths under the prefix (all paths when it is ""), answers
  ``GET <prefix>/imagine/<id>/stream`` itself and sees the client as
  ``JOBCAST_TRUSTED_PROXIES`` says; any other path goes straight to the app;
* its own Flask-Limiter instance limiting only its endpoints, and its own Prometheus
  registry at ``<prefix>/metrics`` (see :mod:`web.limits`, :mod:`web.metrics`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, request

from tasks.config import Settings
from tasks.kinds import Registry
from web import cors, errors, extension, limits, metrics
from web.extension import base_path
from web.fastroute import StreamRoute
from web.proxies import client_view

NAME = "jobcast"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def blueprints(kinds: Registry) -> list[Blueprint]:
    """Every Jobcast blueprint, in registration order: add new ones here. The ``/imagine``
    routes are there only while that kind is offered over HTTP."""
    from web import api, jobs, openapi, ops, opsjobs, pages

    imagine = kinds.get(jobs.IMAGINE)
    alias = [jobs.alias] if imagine is not None and imagine.over_http else []
    return [api.bp, jobs.bp, *alias, pages.bp, openapi.bp, ops.bp, opsjobs.bp, metrics.bp]


class Jobcast:
    """The extension: ``Jobcast(app)`` or ``Jobcast(...).init_app(app)``, once per app."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: Settings | None = None,
        url_prefix: str | None = None,
        kinds: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.url_prefix = url_prefix
        self.kinds = kinds
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> extension.Jobcast:
        if NAME in app.extensions:
            raise RuntimeError("Jobcast is already set up on this app")
        settings = self._settings(app)
        state = extension.init_app(app, settings, self.kinds)
        app.register_blueprint(_blueprint(settings, state.kinds))
        if settings.url_prefix:
            app.before_request(errors.routing_errors(settings.url_prefix))
        metrics.init_app(app)
        limits.init_app(app, settings)
        fast = StreamRoute(app.wsgi_app, state)
        own = client_view(fast, settings.trusted_proxies)  # outer: fast streams see it too
        app.wsgi_app = OwnPaths(own, app.wsgi_app, settings.url_prefix)  # type: ignore[method-assign]
        return state

    def _settings(self, app: Flask) -> Settings:
        settings = self.settings or Settings.from_config(app.config)
        if self.url_prefix is None:
            return settings
        settings = settings.replace(url_prefix=normalize_prefix(self.url_prefix))
        settings.validate()
        return settings


def normalize_prefix(prefix: str) -> str:
    """ "jobcast", "/jobcast/" and "/jobcast" are all "/jobcast"; "/" and "" are ""."""
    prefix = prefix.strip().strip("/")
    return f"/{prefix}" if prefix else ""


def _blueprint(settings: Settings, kinds: Registry) -> Blueprint:
    """The ``jobcast`` blueprint of one app: Jobcast's blueprints, their static files and
    templates, and the hooks every Jobcast route shares."""
    bp = Blueprint(
        NAME,
        "web",
        url_prefix=settings.url_prefix or None,
        static_folder="static",
        template_folder="templates",
    )
    for child in blueprints(kinds):
        bp.register_blueprint(child)
    errors.init_blueprint(bp)
    cors.init_blueprint(bp)
    bp.before_request(_limit_body)
    bp.before_request(metrics.start_reporting)
    bp.context_processor(lambda: {"jobcast_base": base_path()})
    return bp


def _limit_body() -> None:
    request.max_content_length = extension.jobcast().settings.max_body_bytes


class OwnPaths:
    """Requests under ``prefix`` (every request when it is "") go to ``own``, Jobcast's
    middleware; every other request goes to ``other``, the app as it was."""

    def __init__(self, own: WSGIApp, other: WSGIApp, prefix: str) -> None:
        self.own = own
        self.other = other
        self.below = re.compile(rf"{re.escape(prefix)}(/|$)") if prefix else None

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if self.below is None or self.below.match(environ.get("PATH_INFO", "")):
            return self.own(environ, start_response)
        return self.other(environ, start_response)
