"""Per-client rate limits (Flask-Limiter, counters in Redis): job submits (``POST
/jobs/<kind>`` and ``POST /imagine`` share one budget) and the ops sign-in form.

Every web process shares the counters, so the limits hold across a cluster. Clients are
told off with the usual JSON 429 and ``Retry-After`` (the sign-in form shows a message
instead). If Redis cannot be reached the limiter steps aside; the enqueue itself then
answers 503.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, request
from flask_limiter import Limiter

from tasks.config import Settings


def client_key() -> str:
    """The client's address: the peer's, or the one the trusted proxies forwarded
    (``JOBCAST_TRUSTED_PROXIES``; ProxyFix has set ``remote_addr`` from it by now)."""
    return request.remote_addr or "unknown"


SUBMITS = ("jobcast.jobs.create", "jobcast.imagine.create")


def limited_endpoints(settings: Settings) -> dict[str, tuple[str, list[str] | None]]:
    """Endpoint -> (limit, the methods it counts); endpoints with no limit left out."""
    limits = {
        **dict.fromkeys(SUBMITS, (settings.post_rate_limit, None)),
        "jobcast.ops.login": (settings.ops_login_rate_limit, ["POST"]),  # the form is free
    }
    return {endpoint: limit for endpoint, limit in limits.items() if limit[0]}


def init_app(app: Flask, settings: Settings) -> Limiter | None:
    """A limiter of Jobcast's own, for Jobcast's endpoints only (call once they are
    registered). A host app's own Flask-Limiter keeps its limits and its ``RATELIMIT_*``
    config, which this one does not read; the host's default limits, if any, apply to
    Jobcast's routes too unless it exempts the ``jobcast`` blueprint."""
    endpoints = {
        name: limit
        for name, limit in limited_endpoints(settings).items()
        if name in app.view_functions
    }  # (the /imagine alias exists only where that kind is offered)
    if not endpoints:
        return None
    if settings.store.cluster:  # limits' own cluster storage takes our URL as it is
        storage: dict[str, Any] = {"storage_uri": settings.redis_url}
    else:  # a pool of ours (a Sentinel set's too); the URI only picks limits' Redis storage
        pool = settings.store.pool(socket_connect_timeout=2, socket_timeout=2)
        storage = {"storage_uri": "redis://", "storage_options": {"connection_pool": pool}}
    limiter = Limiter(
        client_key,
        **storage,
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,
        key_prefix=f"{settings.prefix}limits",
    )
    with _without_ratelimit_config(app):
        limiter.init_app(app)
    # Everything else skips the limiter at once: streams are opened by the thousand and
    # its per-request work was a third of a stream's connect cost.
    limiter.request_filter(lambda: request.endpoint not in endpoints)
    _hooks_only_for(app, limiter, set(endpoints))
    for endpoint, (limit, methods) in endpoints.items():
        view = app.view_functions[endpoint]
        # Every way to submit a job draws on the same budget per client.
        rule = limiter.shared_limit(limit, scope="submit") if endpoint in SUBMITS else None
        limited: Any = (rule or limiter.limit(limit, methods=methods))(view)
        app.view_functions[endpoint] = limited
    return limiter


def _hooks_only_for(app: Flask, limiter: Limiter, endpoints: set[str]) -> None:
    """Run the limiter's app-wide hooks (before, after and teardown) only for the limited
    endpoints. The request filter above makes it exempt everything else, but only after
    it has looked up the view, the limits and its per-request context, then again to add
    headers: a twentieth of every POST when the submit limit is off. The hooks keep
    their state on the request context, so skipping all three leaves nothing behind."""

    def limited() -> bool:
        return request.endpoint in endpoints

    def before(hook: Any) -> Any:
        return lambda: hook() if limited() else None

    def after(hook: Any) -> Any:
        return lambda response: hook(response) if limited() else response

    def teardown(hook: Any) -> Any:
        return lambda exc: hook(exc) if limited() else None

    check = limiter._check_request_limit
    release = getattr(limiter, "_Limiter__release_context", None)
    for table, wrap, own in (
        (app.before_request_funcs, before, lambda fn: fn == check),
        (app.after_request_funcs, after, lambda fn: _partial_of(fn, limiter)),
        (app.teardown_request_funcs, teardown, lambda fn: release is not None and fn == release),
    ):
        funcs: list[Any] = table.get(None, [])
        for i, fn in enumerate(funcs):
            if own(fn):
                funcs[i] = wrap(fn)


def _partial_of(fn: Any, limiter: Limiter) -> bool:
    return isinstance(fn, functools.partial) and fn.args[:1] == (limiter,)


@contextmanager
def _without_ratelimit_config(app: Flask) -> Iterator[None]:
    """Hide the host app's ``RATELIMIT_*`` keys while our limiter reads the config (only
    ``init_app`` reads it), and drop the defaults it writes there, so neither limiter's
    configuration leaks into the other."""
    saved = {k: v for k, v in app.config.items() if k.startswith("RATELIMIT_")}
    for key in saved:
        del app.config[key]
    try:
        yield
    finally:
        for key in [k for k in app.config if k.startswith("RATELIMIT_")]:
            del app.config[key]
        app.config.update(saved)
