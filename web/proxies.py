"""Who the client is: the peer, or what ``JOBCAST_TRUSTED_PROXIES`` proxies forwarded.

One switch for the client's address (rate limits key on it) and scheme (the ops cookie is
``Secure`` over https). Gunicorn on its own believes ``X-Forwarded-Proto`` from any peer
in its ``forwarded_allow_ips`` (127.0.0.1 by default), so the scheme is first set back to
the connection's own; then, with trusted proxies, werkzeug's ProxyFix takes the address
and scheme the last ``count`` proxies appended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ConnectionScheme:
    """``wsgi.url_scheme`` from the socket gunicorn accepted: https only over TLS."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            environ["wsgi.url_scheme"] = "https" if is_tls(sock) else "http"
        return self.app(environ, start_response)


def is_tls(sock: object) -> bool:
    """Whether gunicorn's socket speaks TLS. ssl.SSLSocket and gevent's SSLSocket (not a
    subclass of it) both have ``cipher()``; asked of the class, because gevent's plain
    socket answers a missing attribute through a Python ``__getattr__`` that raises (9 %
    of a stream's connect at 10,000 streams)."""
    return hasattr(type(sock), "cipher")


def client_view(app: WSGIApp, trusted_proxies: int) -> WSGIApp:
    """``app`` seeing the client's address and scheme as the trusted proxies tell them."""
    if trusted_proxies:
        app = ProxyFix(app, x_for=trusted_proxies, x_proto=trusted_proxies)
    return ConnectionScheme(app)
