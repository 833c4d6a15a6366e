"""Per-client rate limit on ``POST /imagine`` (Flask-Limiter, counters in Redis).

Every web process shares the counters, so the limit holds across a cluster. Clients are
told off with the usual JSON 429 and ``Retry-After``. If Redis cannot be reached the
limiter steps aside; the enqueue itself then answers 503.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask_limiter import Limiter

from tasks.config import Settings

LIMITED_ENDPOINTS = ("api.create_job",)


def client_key() -> str:
    """The client's address (run behind a proxy? wrap the app in werkzeug's ProxyFix)."""
    return request.remote_addr or "unknown"


def init_app(app: Flask, settings: Settings) -> Limiter | None:
    if not settings.post_rate_limit:
        return None
    limiter = Limiter(
        client_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2},
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,
        key_prefix=f"{settings.prefix}limits",
    )
    # Everything else skips the limiter at once: streams are opened by the thousand and
    # its per-request work was a third of a stream's connect cost.
    limiter.request_filter(lambda: request.endpoint not in LIMITED_ENDPOINTS)
    for endpoint in LIMITED_ENDPOINTS:
        view = app.view_functions[endpoint]
        limited: Any = limiter.limit(settings.post_rate_limit)(view)
        app.view_functions[endpoint] = limited
    return limiter
