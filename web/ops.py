"""The operator dashboard: ``/ops`` (page), ``/ops/stream`` (SSE), ``/ops/login``.

stream:  watch the ops channel (one hub subscription per process for every viewer)
         ─ retry ─ the latest snapshot ─ live snapshots as the monitor publishes them,
         forwarded byte for byte ─ keep-alive comments ─ unwatch in ``finally``

With ``JOBCAST_OPS_TOKEN`` set, the dashboard, its stream and ``/metrics`` need the token:
``Authorization: Bearer <token>`` (Prometheus, curl) or the HttpOnly cookie the login
form sets (browsers). Without it they are open.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from tasks.monitor import snapshot_frame
from web.api import admit_stream
from web.errors import ApiError
from web.extension import Jobcast, jobcast
from web.hub import RESYNC, Watcher
from web.sse import KEEP_ALIVE, Event

bp = Blueprint("ops", __name__)

COOKIE = "jobcast_ops"
COOKIE_MAX_AGE = 7 * 24 * 3600


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the cookie never is the token."""
    return hmac.new(token.encode(), b"jobcast ops cookie", hashlib.sha256).hexdigest()


def authorized(token: str) -> bool:
    """True when no token is configured, or the request carries it (header or cookie)."""
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), cookie_value(token).encode())


def require_token() -> None:
    """401 (JSON) unless :func:`authorized`."""
    if not authorized(jobcast().settings.ops_token):
        raise ApiError(
            401, "unauthorized", "This needs the ops token (Bearer header or /ops/login).",
            headers={"WWW-Authenticate": 'Bearer realm="jobcast ops"'},
        )  # fmt: skip


@bp.get("/ops")
def page() -> str | BaseResponse:
    if not authorized(jobcast().settings.ops_token):
        return redirect(url_for("ops.login", next=request.full_path.rstrip("?")), 303)
    return render_template("ops.html")


@bp.route("/ops/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int]:
    token = jobcast().settings.ops_token
    target = _safe_next(request.values.get("next", ""))
    if not token:
        return redirect(target, 303)
    if request.method == "GET":
        return render_template("ops.html", login=True, next=target, failed=False), 200
    given = request.form.get("token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return render_template("ops.html", login=True, next=target, failed=True), 401
    response = redirect(target, 303)
    response.set_cookie(
        COOKIE, cookie_value(token), max_age=COOKIE_MAX_AGE, httponly=True,
        samesite="Strict", secure=request.is_secure,
    )  # fmt: skip
    return response


@bp.post("/ops/logout")
def logout() -> BaseResponse:
    response = redirect(url_for("ops.login"), 303)
    response.delete_cookie(COOKIE)
    return response


@bp.get("/ops/stream")
def stream() -> Response:
    """The ops feed; HEAD answers its headers and opens nothing."""
    require_token()
    ext = jobcast()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method != "GET":
        return Response(iter(()), content_type="text/event-stream", headers=headers)
    admit_stream(ext, request.environ)
    body = _Snapshots(ext, ext.hub.watch(ext.keys.ops))
    return Response(
        body,
        status=200,
        content_type="text/event-stream",
        headers=headers,
        direct_passthrough=True,
    )


class _Snapshots:
    """The feed's WSGI body: retry + the latest snapshot, then live ones, a keep-alive
    after each silence; :meth:`close` unwatches, iterated or not."""

    def __init__(self, ext: Jobcast, watcher: Watcher) -> None:
        self.ext = ext
        self.watcher: Watcher | None = watcher

    def __iter__(self) -> Iterator[bytes]:
        watcher, ext = self.watcher, self.ext
        if watcher is None:
            return
        try:
            yield Event(retry=ext.settings.retry_ms).encode() + _latest(ext)
            heartbeat = ext.settings.heartbeat_seconds
            while True:
                batch = watcher.drain(heartbeat)
                if not batch:
                    yield KEEP_ALIVE
                elif RESYNC in batch:
                    yield _latest(ext)  # messages were lost (reconnect, slow reader)
                else:
                    # Snapshots replace each other: only the newest of a batch matters.
                    yield batch[-1].frame
        finally:
            self.close()

    def close(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            self.ext.hub.unwatch(watcher)


def _latest(ext: Jobcast) -> bytes:
    raw = ext.redis.get(ext.keys.ops_snapshot)
    return snapshot_frame(raw) if raw else b""


def _safe_next(target: str) -> str:
    """Only a path on this site (no scheme, no host, no ``/\\``): never an open redirect."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or "\\" in target:
        return "/ops"
    return target
