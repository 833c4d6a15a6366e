"""Jobcast's web side: the API, the SSE streams and the pages.

``gunicorn -k gevent 'web:create_app()'`` serves it; the hub needs gevent.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from tasks.config import Settings
from tasks.kinds import Registry


def create_app(
    config: dict[str, Any] | Settings | None = None, kinds: Registry | None = None
) -> Flask:
    """Build the app: settings from the environment, then ``config`` on top; ``kinds`` are
    the job kinds ``POST /jobs/<kind>`` offers (the demo kinds when not given)."""
    settings = config if isinstance(config, Settings) else Settings.from_env(**(config or {}))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JOBCAST"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from web import api, errors, extension, jobs, limits, metrics, openapi, ops, pages
    from web.fastroute import StreamRoute
    from web.proxies import client_view

    ext = extension.init_app(app, settings, kinds)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    jobs.init_app(app, ext.kinds)
    app.register_blueprint(pages.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(ops.bp)
    metrics.init_app(app)
    limits.init_app(app, settings)
    app.wsgi_app = StreamRoute(app.wsgi_app, ext)  # type: ignore[method-assign]
    # Outermost, so every route (the fast stream route too) sees the same client.
    app.wsgi_app = client_view(app.wsgi_app, settings.trusted_proxies)  # type: ignore[method-assign,assignment]
    return app
