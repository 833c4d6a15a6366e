"""The operator dashboard: ``/ops`` (page), ``/ops/stream`` (SSE), ``/ops/login``.

stream:  watch the ops channel (one hub subscription per process for every viewer)
         ─ retry ─ the latest snapshot ─ live snapshots as the monitor publishes them,
         forwarded byte for byte ─ keep-alive comments ─ unwatch in ``finally``

With ``JOBCAST_OPS_TOKEN`` set, the dashboard, its stream and ``/metrics`` need the token:
``Authorization: Bearer <token>`` (Prometheus, curl) or the session cookie the login
form sets (browsers). Without it they are open, and the feed carries no job id: a job id
is the capability to watch, cancel and download that job, so each one is replaced by a
short label (:class:`PublicFeed`), and a failure's exception text by a notice.

The cookie is ``<session id>.<HMAC(token, session id)>``; the session lives in Redis
(``<prefix>ops:session:<sha256(id)>``, as long as the cookie). Logout deletes it, so a
copy of the cookie stops working; a new token invalidates every cookie's HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import posixpath
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import gevent.event
from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask_limiter.errors import RateLimitExceeded
from werkzeug.wrappers import Response as BaseResponse

from tasks.monitor import snapshot_frame
from tasks.tokens import job_token
from web.api import admit_stream
from web.errors import ApiError, error_response
from web.extension import Jobcast, jobcast
from web.hub import RESYNC, Watcher
from web.sse import KEEP_ALIVE, Event

bp = Blueprint("ops", __name__)

COOKIE = "jobcast_ops"
COOKIE_MAX_AGE = 7 * 24 * 3600
LABEL_HEX = 8  # 32 bits: tells jobs apart on one screen, opens none of them
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
ID_FIELDS = ("id", "jobId")  # where the monitor's snapshot puts job (task) ids
MAX_OPERATOR = 64  # characters of an operator's name (sign-in form, X-Jobcast-Operator)
HIDDEN_ERROR = "(the error's text is for operators: set JOBCAST_OPS_TOKEN and sign in)"
MAX_LABELS = 4096  # labels remembered per deployment (a snapshot holds a few dozen ids)


# -- sign-in sessions ------------------------------------------------------------------


def session_key(ext: Jobcast, session_id: str) -> str:
    """Redis key of a session; the id itself is never stored."""
    digest = hashlib.sha256(session_id.encode()).hexdigest()
    return f"{ext.settings.prefix}ops:session:{digest}"


def session_mac(token: str, session_id: str) -> str:
    """Binds a session to the token: a new token makes every old cookie worthless."""
    message = b"jobcast ops session " + session_id.encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def new_session(ext: Jobcast, token: str, operator: str = "") -> str:
    """Start a session in Redis (holding the operator's name, if given); return the
    cookie value for it."""
    session_id = secrets.token_urlsafe(32)
    value = b"op:" + operator.encode() if operator else b"1"
    ext.redis.set(session_key(ext, session_id), value, ex=COOKIE_MAX_AGE)
    return f"{session_id}.{session_mac(token, session_id)}"


def session_operator(ext: Jobcast) -> str | None:
    """The operator name the request's session was signed in with, if any."""
    session_id = request.cookies.get(COOKIE, "").partition(".")[0]
    if not session_id:
        return None
    value: bytes | None = ext.redis.get(session_key(ext, session_id))
    if not value or not value.startswith(b"op:"):
        return None
    return value[3:].decode("utf-8", "replace")


def operator_problem(name: str) -> str | None:
    """Why ``name`` cannot name an operator (None when it can): 1-64 printable characters."""
    if not name or len(name) > MAX_OPERATOR or not name.isprintable() or name != name.strip():
        return f"1 to {MAX_OPERATOR} printable characters, no leading or trailing space"
    return None


def valid_cookie(ext: Jobcast, token: str, cookie: str) -> bool:
    """True for the cookie of a live session signed with this token."""
    session_id, _, mac = cookie.partition(".")
    if not session_id or not hmac.compare_digest(
        mac.encode(), session_mac(token, session_id).encode()
    ):
        return False
    return bool(ext.redis.exists(session_key(ext, session_id)))


def authorized(token: str) -> bool:
    """True when no token is configured, or the request carries it (header or cookie)."""
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and valid_cookie(jobcast(), token, cookie)


def require_token() -> None:
    """401 (JSON) unless :func:`authorized`."""
    if not authorized(jobcast().settings.ops_token):
        raise ApiError(
            401, "unauthorized", "This needs the ops token (Bearer header or /ops/login).",
            headers={"WWW-Authenticate": 'Bearer realm="jobcast ops"'},
        )  # fmt: skip


def bearer_given() -> bool:
    """Whether the ops token itself came with the request (not just a Bearer header
    beside the session cookie, which would skip the cross-site check and let the header
    name someone other than the session's operator)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    token = jobcast().settings.ops_token
    return (
        scheme.lower() == "bearer"
        and bool(token)
        and hmac.compare_digest(given.strip().encode(), token.encode())
    )


def same_site_only() -> None:
    """403 for an action signed by the session cookie that the browser says came from
    another site (``Sec-Fetch-Site``; without it, ``Origin``): SameSite=Strict keeps the
    cookie from other sites' forms, not from a sibling subdomain's, nor from browsers
    that ignore SameSite. A bearer caller sends no ambient credential: never refused."""
    if bearer_given():
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        foreign = site not in ("same-origin", "none")
    else:
        origin = request.headers.get("Origin")
        foreign = origin is not None and (
            origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()
        )
    if foreign:
        raise ApiError(
            403, "cross_site", "Operator actions are only taken from this site's own pages."
        )


@bp.get("/ops")
def page() -> str | BaseResponse:
    if not authorized(jobcast().settings.ops_token):
        return redirect(url_for(".login", next=request.full_path.rstrip("?")), 303)
    return render_template("jobcast/ops.html")


@bp.route("/ops/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int]:
    ext = jobcast()
    token = ext.settings.ops_token
    if request.method == "POST" and request.mimetype not in FORM_TYPES:
        # What the document promises: a sign-in is a form, even with no token to check.
        raise ApiError(415, "unsupported_media_type", "Send the sign-in as a form.")
    target = safe_next(request.values.get("next", ""), url_for(".page"))
    if not token:
        return redirect(target, 303)
    if request.method == "GET":
        return _login_form(target), 200
    given = request.form.get("token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _login_form(target, "That is not the token."), 401
    operator = request.form.get("operator", "").strip()
    if operator and (problem := operator_problem(operator)):
        return _login_form(target, f"Your name: {problem}."), 400
    response = redirect(target, 303)
    # Secure whenever the client came over TLS; behind a TLS proxy, request.is_secure
    # reflects X-Forwarded-Proto only with JOBCAST_TRUSTED_PROXIES set (ProxyFix).
    response.set_cookie(
        COOKIE, new_session(ext, token, operator), max_age=COOKIE_MAX_AGE, httponly=True,
        samesite="Strict", secure=request.is_secure,
    )  # fmt: skip
    return response


@bp.errorhandler(RateLimitExceeded)
def too_many_logins(exc: RateLimitExceeded) -> tuple[str, int] | Response:
    """A browser's form gets the form with a message; everyone else the JSON 429."""
    message = "Too many sign-in attempts from this address; wait a minute and try again."
    if not any(value == "text/html" for value, _ in request.accept_mimetypes):
        return error_response(429, "too_many_requests", message)
    return _login_form(safe_next(request.values.get("next", ""), url_for(".page")), message), 429


def _login_form(target: str, error: str = "") -> str:
    return render_template("jobcast/ops.html", login=True, next=target, error=error)


@bp.post("/ops/logout")
def logout() -> BaseResponse:
    same_site_only()  # another site's form must not sign the operator out
    ext = jobcast()
    session_id = request.cookies.get(COOKIE, "").partition(".")[0]
    if session_id:
        ext.redis.delete(session_key(ext, session_id))
    response = redirect(url_for(".login"), 303)
    response.delete_cookie(COOKIE, httponly=True, samesite="Strict", secure=request.is_secure)
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
    wake = gevent.event.Event()
    body = _Snapshots(ext, ext.hub.watch(ext.keys.ops, wake), wake)
    if ext.settings.ops_token and request.args.get("jobs") == "1":
        # Asked for by the job browser only (the dashboard has no use for them); and job
        # ids are capabilities: only a feed behind the token carries new jobs.
        try:
            body.jobs = ext.hub.watch(ext.keys.job_index, wake)
        except BaseException:
            body.close()
            raise
    return Response(
        body,
        status=200,
        content_type="text/event-stream",
        headers=headers,
        direct_passthrough=True,
    )


class _Snapshots:
    """The feed's WSGI body: retry + the latest snapshot, then live ones, a keep-alive
    after each silence; with ``?jobs=1`` behind the token also ``event: job`` for each
    new job (all of them, in order; ``event: resync`` when some were lost). :meth:`close` unwatches,
    iterated or not."""

    def __init__(self, ext: Jobcast, watcher: Watcher, wake: gevent.event.Event) -> None:
        self.ext = ext
        self.watcher: Watcher | None = watcher
        self.jobs: Watcher | None = None
        self.wake = wake  # set by either watcher

    def __iter__(self) -> Iterator[bytes]:
        watcher, ext = self.watcher, self.ext
        if watcher is None:
            return
        try:
            yield Event(retry=ext.settings.retry_ms).encode() + _latest(ext)
            heartbeat = ext.settings.heartbeat_seconds
            while True:
                chunk = self._next(watcher, heartbeat)
                if chunk:
                    yield chunk
        finally:
            self.close()

    def _next(self, watcher: Watcher, heartbeat: float) -> bytes:
        jobs = self.jobs
        if not watcher.items and not (jobs and jobs.items):
            self.wake.clear()
            if not self.wake.wait(heartbeat):
                return KEEP_ALIVE
        out = []
        batch = watcher.take()
        if RESYNC in batch:
            out.append(_latest(self.ext))  # messages were lost (reconnect, slow reader)
        elif batch:
            # Snapshots replace each other: only the newest of a batch matters.
            out.append(public_frame(self.ext, batch[-1].frame))
        if jobs is not None:
            news = jobs.take()
            if RESYNC in news:
                out.append(RESYNC_FRAME)  # the page reads its first page again
            else:
                key = self.ext.settings.signing_key
                for item in news:
                    if item.frame.startswith(b"event: job"):
                        out.append(with_token(key, item.frame) if key else item.frame)
        return b"".join(out)

    def close(self) -> None:
        watcher, self.watcher = self.watcher, None
        jobs, self.jobs = self.jobs, None
        for gone in (watcher, jobs):
            if gone is not None:
                self.ext.hub.unwatch(gone)


RESYNC_FRAME = Event(event="resync", data="{}").encode()


def with_token(key: str, frame: bytes) -> bytes:
    """A new-job frame with the job's token added (signed mode: the page needs it to
    watch the job); the frame as it is if it cannot be read."""
    data = frame.partition(b"\ndata: ")[2].strip()
    try:
        job = json.loads(data)
        job["token"] = job_token(key, str(job["jobId"]))
    except (ValueError, TypeError, KeyError):
        return frame
    return Event(event="job", data=json.dumps(job, separators=(",", ":"))).encode()


def _latest(ext: Jobcast) -> bytes:
    raw = ext.redis.get(ext.keys.ops_snapshot)
    return public_frame(ext, snapshot_frame(raw)) if raw else b""


# -- the open feed: labels instead of job ids ------------------------------------------


class PublicFeed:
    """Rewrites snapshot frames for the open feed, once per frame (not per viewer).

    A label is the first 8 hex digits of HMAC-SHA256(key, id), the key a random secret
    kept in Redis (``<prefix>ops:label-key``, made once per deployment), so every web
    process gives a job the same label and nobody without the key can tell which job
    a label names, even for a guessable task id.
    """

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.last: tuple[bytes, bytes] | None = None  # (frame in, frame out)
        self.labels: dict[str, str] = {}  # the same jobs recur snapshot after snapshot

    def frame(self, ext: Jobcast, frame: bytes) -> bytes:
        last = self.last
        if last is not None and (last[0] is frame or last[0] == frame):
            return last[1]
        out = self._redact(ext, frame)
        self.last = (frame, out)
        return out

    def label(self, ext: Jobcast, job_id: str) -> str:
        if job_id in self.labels:
            return self.labels[job_id]
        if self.key is None:
            self.key = _label_key(ext)
        if len(self.labels) >= MAX_LABELS:
            self.labels.clear()
        label = hmac.new(self.key, job_id.encode(), hashlib.sha256).hexdigest()[:LABEL_HEX]
        self.labels[job_id] = label
        return label

    def _redact(self, ext: Jobcast, frame: bytes) -> bytes:
        data = b"".join(line[6:] for line in frame.split(b"\n") if line.startswith(b"data: "))
        try:
            snap = json.loads(data)
        except ValueError:
            return b""  # not a snapshot we can read: send nothing rather than ids
        if not isinstance(snap, dict):
            return b""
        labels = {job_id: self.label(ext, job_id) for job_id in _ids(snap)}
        # In texts only what could be a job id (16+ characters), longest first: a short
        # task id like "7" must not turn every 7 of an error message into a label.
        in_text = sorted((i for i in labels if len(i) >= 16), key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, in_text))) if in_text else None
        redacted = _replace(snap, labels, pattern)
        for failure in redacted.get("failures") or []:
            if isinstance(failure, dict) and "error" in failure:
                # A task's exception text may carry parameters, paths or another job's
                # id: operators read it (with the token, or in the job browser).
                failure["error"] = HIDDEN_ERROR
        redacted["redacted"] = True  # the page says what it shows
        return snapshot_frame(json.dumps(redacted, separators=(",", ":")))


def public_frame(ext: Jobcast, frame: bytes) -> bytes:
    """The frame as this viewer may see it: untouched with an ops token, else labelled."""
    settings = ext.settings
    if settings.ops_token:
        return frame
    # Per deployment (its Redis and prefix), as the label key is; streams run outside
    # the app context, so this cannot live on the app.
    feed = _FEEDS.setdefault((settings.redis_url, settings.prefix), PublicFeed())
    return feed.frame(ext, frame)


_FEEDS: dict[tuple[str, str], PublicFeed] = {}


def _label_key(ext: Jobcast) -> bytes:
    """The deployment's label key: made by the first process to ask, then shared."""
    name = f"{ext.settings.prefix}ops:label-key"
    mine = secrets.token_hex(32).encode()
    if ext.redis.set(name, mine, nx=True):
        return mine
    theirs: bytes | None = ext.redis.get(name)
    return theirs or mine  # deleted meanwhile (a flush): still a secret, if not shared


def _ids(value: Any) -> Iterator[str]:
    """Every job id in a snapshot: the value of each ``id``/``jobId`` field."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name in ID_FIELDS and isinstance(item, str) and item:
                yield item
            else:
                yield from _ids(item)
    elif isinstance(value, list):
        for item in value:
            yield from _ids(item)


def _replace(value: Any, labels: dict[str, str], in_text: re.Pattern[str] | None) -> Any:
    """``value`` with every id labelled, standing alone or (``in_text``) inside a text."""
    if isinstance(value, dict):
        return {name: _replace(item, labels, in_text) for name, item in value.items()}
    if isinstance(value, list):
        return [_replace(item, labels, in_text) for item in value]
    if isinstance(value, str):
        if value in labels:
            return labels[value]
        if in_text is not None:
            return in_text.sub(lambda match: labels[match.group()], value)
    return value


# -- where the login may lead ----------------------------------------------------------


def safe_next(target: str, default: str = "/ops") -> str:
    """``target`` if it is a path on this site, else ``default``: never an open redirect.

    Browsers read ``//host``, ``/\\host`` and ``/<tab>/host`` as another site, and
    ``////host`` becomes ``//host`` on the way; so only printable ASCII without a
    backslash, one leading slash, and the same after normalising and unquoting.
    """
    if not target or any(not "!" <= c <= "~" or c == "\\" for c in target):
        return default
    parts = urlsplit(target)
    path = posixpath.normpath(parts.path) if parts.path else ""
    if parts.scheme or parts.netloc or not _one_slash(path) or not _one_slash(unquote(path)):
        return default
    return path + (f"?{parts.query}" if parts.query else "")


def _one_slash(path: str) -> bool:
    return path.startswith("/") and not path.startswith("//") and "\\" not in path
