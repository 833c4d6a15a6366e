"""Per-client rate limits (Flask-Limiter, counters in Redis): job submits (``POST
/jobs/<kind>`` and ``POST /imagine`` share one budget) and the ops sign-in form.

Every web process shares the counters, so the limits hold across a cluster. Clients are
told off with the usual JSON 429 and ``Retry-After`` (the sign-in form shows a message
instead). If Redis cannot be reached the limiter steps aside; the enqueue itself then
answers 503.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask_limiter import Limiter

from tasks.config import Settings


def client_key() -> str:
    """The client's address: the peer's, or the one the trusted proxies forwarded
    (``JOBCAST_TRUSTED_PROXIES``; ProxyFix has set ``remote_addr`` from it by now)."""
    return request.remote_addr or "unknown"


SUBMITS = ("jobs.create", "imagine.create")


def limited_endpoints(settings: Settings) -> dict[str, tuple[str, list[str] | None]]:
    """Endpoint -> (limit, the methods it counts); endpoints with no limit left out."""
    limits = {
        **dict.fromkeys(SUBMITS, (settings.post_rate_limit, None)),
        "ops.login": (settings.ops_login_rate_limit, ["POST"]),  # the form itself is free
    }
    return {endpoint: limit for endpoint, limit in limits.items() if limit[0]}


def init_app(app: Flask, settings: Settings) -> Limiter | None:
    endpoints = {
        name: limit
        for name, limit in limited_endpoints(settings).items()
        if name in app.view_functions
    }  # (the /imagine alias exists only where that kind is offered)
    if not endpoints:
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
    limiter.request_filter(lambda: request.endpoint not in endpoints)
    for endpoint, (limit, methods) in endpoints.items():
        view = app.view_functions[endpoint]
        # Every way to submit a job draws on the same budget per client.
        rule = limiter.shared_limit(limit, scope="submit") if endpoint in SUBMITS else None
        limited: Any = (rule or limiter.limit(limit, methods=methods))(view)
        app.view_functions[endpoint] = limited
    return limiter
