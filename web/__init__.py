"""Jobcast's web side: the API, the SSE streams and the pages.

``gunicorn -k gevent 'web:create_app()'`` serves it; the hub needs gevent. To add it to an
app of your own instead, use the extension: ``web.Jobcast(app, url_prefix="/jobcast")``
(:mod:`web.embed`).
"""

from __future__ import annotations

import gc
import logging
from typing import TYPE_CHECKING, Any

from flask import Flask

from tasks.config import Settings
from tasks.kinds import Registry

if TYPE_CHECKING:
    from web.embed import Jobcast as Jobcast


def create_app(
    config: dict[str, Any] | Settings | None = None, kinds: Registry | None = None
) -> Flask:
    """Build the app: settings from the environment, then ``config`` on top; ``kinds`` are
    the job kinds ``POST /jobs/<kind>`` offers (the demo kinds when not given)."""
    settings = config if isinstance(config, Settings) else Settings.from_env(**(config or {}))
    app = Flask(__name__, static_folder=None)  # the extension's blueprint serves /static
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JOBCAST"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import gevent.monkey

    from web import errors
    from web.embed import Jobcast

    errors.init_app(app)  # the whole app is Jobcast's: every error of it is JSON
    state = Jobcast(settings=settings, kinds=kinds).init_app(app)
    if gevent.monkey.is_module_patched("socket"):  # a gevent worker's process: the service
        refuse_libuv_loop()
        # What the process has built by now (modules, the app, Celery's app) lives as long
        # as it does: keep it out of the cyclic collector's full passes, each of which
        # stalls every stream (with 5,000 open, 30-150 ms, most of it these objects).
        gc.collect()
        gc.freeze()
        from web import gcpolicy

        if settings.gc_refresh_seconds and gcpolicy.WANTED:  # and what later passes keep
            state.collector = gcpolicy.install(settings.gc_refresh_seconds)
    return app


def refuse_libuv_loop() -> None:
    """Stop here, clearly, under gevent's libuv loop (``GEVENT_LOOP=libuv``): its select
    and poll report a socket readable that is not (gevent issue #1779), so redis-py's
    readiness check on every pooled connection fails ("Connection not ready") and every
    request that reaches Redis would answer 503."""
    import gevent

    loop = type(gevent.get_hub().loop)
    if loop.__module__.startswith("gevent.libuv"):
        raise RuntimeError(
            "Jobcast does not run on gevent's libuv loop (GEVENT_LOOP=libuv): its poll "
            "reports sockets readable that are not, which fails every Redis connection "
            "check. Use the default loop (unset GEVENT_LOOP, or GEVENT_LOOP=libev-cext)."
        )


def __getattr__(name: str) -> Any:
    """``web.Jobcast``, imported on first use (importing ``web`` stays cheap)."""
    if name == "Jobcast":
        from web.embed import Jobcast

        return Jobcast
    raise AttributeError(f"module 'web' has no attribute {name!r}")
