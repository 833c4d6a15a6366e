"""The operators' job browser: ``/ops/jobs.json`` (list), ``/ops/jobs/<id>.json`` (one
job in full, its log paged), ``POST /ops/jobs/<id>/retry`` and ``…/cancel``, and the
``/ops/jobs`` and ``/ops/jobs/<id>`` pages.

Live: the list page learns of new jobs from ``/ops/stream?jobs=1`` (``event: job``, from
the enqueue script on the index's channel, see :mod:`tasks.jobindex`), and of changes of
the jobs it shows from one multiplexed ``/jobs/stream`` of those jobs: their own
channels, which the worker publishes on anyway. The detail page tails its job's stream.

Actions are audited in ``job:{id}:audit`` with who did them: the name given at sign-in
(kept in the session), or ``X-Jobcast-Operator`` from a bearer caller; else "session" or
"bearer". Each action is claimed once in the record (``cancelBy``, ``retriedAs``), so of
two racing actions one wins and the other is a 409.

These show every job's parameters, results and errors, so they need the ops token
*configured and given*: without ``JOBCAST_OPS_TOKEN`` they answer 403 (the open
dashboard shows counts only), without the token in the request 401. The index they read
is described in :mod:`tasks.jobindex`.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from tasks.events import now_ms
from tasks.jobindex import (
    LOG_PAGE,
    RETRYABLE,
    audit,
    claim_cancel,
    claim_retry,
    detail,
    list_jobs,
    release_retry,
)
from tasks.keys import new_job_id, parent_of
from tasks.submit import submit
from tasks.tokens import job_token
from web.api import JOB_ID, MAX_ID_PART, MAX_LAST_ID, not_found, queue_full
from web.errors import ApiError
from web.extension import Jobcast, jobcast
from web.jobs import cancel_job
from web.ops import (
    authorized,
    bearer_given,
    operator_problem,
    same_site_only,
    session_operator,
)

bp = Blueprint("opsjobs", __name__)

STATES = frozenset({"queued", "running", "succeeded", "failed", "cancelled"})
KIND_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
ID_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_LIMIT = 200
EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
OPERATOR_HEADER = "X-Jobcast-Operator"


def require_ops() -> None:
    """403 when no ops token is configured, 401 without it in the request (JSON both)."""
    token = jobcast().settings.ops_token
    if not token:
        raise ApiError(
            403, "forbidden", "The job browser needs JOBCAST_OPS_TOKEN set on the server."
        )
    if not authorized(token):
        raise ApiError(
            401, "unauthorized", "This needs the ops token (Bearer header or /ops/login).",
            headers={"WWW-Authenticate": 'Bearer realm="jobcast ops"'},
        )  # fmt: skip


def _query() -> dict[str, Any]:
    """The list's filters from the query string; 400 naming each bad one."""
    args = request.args
    bad: dict[str, str] = {}
    state = args.get("state") or None
    if state is not None and state not in STATES:
        bad["state"] = "one of " + ", ".join(sorted(STATES))
    kind = args.get("kind") or None
    if kind is not None and not KIND_NAME.fullmatch(kind):
        bad["kind"] = "a kind name"
    prefix = args.get("id") or None
    if prefix is not None and not ID_PREFIX.fullmatch(prefix):
        bad["id"] = "1-64 characters of A-Z a-z 0-9 _ . -"
    before: int | None = None
    if args.get("before"):
        try:
            before = int(args["before"])
        except ValueError:
            bad["before"] = "a time in ms"
    limit = _limit(args, 50, MAX_LIMIT, bad)
    if bad:
        raise ApiError(400, "bad_query", "Some filters are not valid.", fields=bad)
    return {"state": state, "kind": kind, "id_prefix": prefix, "before": before, "limit": limit}


def _limit(args: Any, default: int, most: int, bad: dict[str, str]) -> int:
    """The ``limit`` argument, 1 to ``most`` (``default`` when absent); a bad one is
    named in ``bad``."""
    if not args.get("limit"):
        return default
    try:
        limit = int(args["limit"])
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        bad["limit"] = f"a whole number from 1 to {most}"
    return limit


def operator() -> str:
    """Who is acting: the session's name, or a bearer caller's ``X-Jobcast-Operator``
    (UTF-8; 400 if it is not 1-64 printable characters); else "session" or "bearer"."""
    if bearer_given():
        raw = request.headers.get(OPERATOR_HEADER)
        if raw is None:
            return "bearer"
        try:
            # WSGI hands header bytes over as latin-1 text; clients send names as UTF-8.
            name = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            name = ""
        if problem := operator_problem(name):
            raise ApiError(
                400, "bad_operator", f"{OPERATOR_HEADER}: {problem}.",
                fields={OPERATOR_HEADER: problem},
            )  # fmt: skip
        return name
    return session_operator(jobcast()) or "session"


def _with_tokens(ext: Jobcast, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Signed mode: each job with its token, so the page can watch it."""
    key = ext.settings.signing_key
    if key:
        for job in jobs:
            job["token"] = job_token(key, job["jobId"])
    return jobs


@bp.get("/ops/jobs.json")
def jobs_json() -> Response:
    require_ops()
    ext = jobcast()
    page = list_jobs(ext.redis, ext.keys, now_ms=now_ms(), **_query())
    return jsonify({"jobs": _with_tokens(ext, page.jobs), "next": page.next})


def _job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise not_found()
    return job_id


def _event_id(text: str) -> bool:
    """A stream id Redis takes as an exclusive start: two 64-bit parts, not the very last."""
    if len(text) > MAX_LAST_ID or not EVENT_ID.fullmatch(text):
        return False
    ms, seq = (int(part) for part in text.split("-"))
    return ms <= MAX_ID_PART and seq <= MAX_ID_PART and (ms, seq) != (MAX_ID_PART, MAX_ID_PART)


def _log_page() -> tuple[str | None, int]:
    """``after`` (an event id) and ``limit`` (1-LOG_PAGE) of a detail; 400 naming each bad one."""
    bad: dict[str, str] = {}
    after = request.args.get("after") or None
    if after is not None and not _event_id(after):
        bad["after"] = "an event id (ms-seq)"
    limit = _limit(request.args, LOG_PAGE, LOG_PAGE, bad)
    if bad:
        raise ApiError(400, "bad_query", "Some parameters are not valid.", fields=bad)
    return after, limit


@bp.get("/ops/jobs/<job_id>.json")
def job_json(job_id: str) -> Response:
    require_ops()
    ext = jobcast()
    after, limit = _log_page()
    found = detail(ext.redis, ext.keys, _job_id(job_id), now_ms(), after=after, limit=limit)
    if found is None:
        raise not_found()
    _with_tokens(ext, [found])
    return jsonify(found)


@bp.post("/ops/jobs/<job_id>/cancel")
def cancel(job_id: str) -> tuple[Response, int]:
    """Cancel as ``DELETE /jobs/<id>`` does, once, audited: a second cancel is a 409."""
    require_ops()
    same_site_only()
    ext = jobcast()
    job_id = _job_id(job_id)
    by = operator()
    claim = claim_cancel(ext.redis, ext.keys, job_id, by)
    if claim is None:
        raise not_found()
    if claim.startswith("by:"):
        raise ApiError(409, "already_cancelling", f"{claim[3:]} cancelled this job already.")
    if claim != "ok":
        raise ApiError(409, "already_finished", f"The job has already ended ({claim}).")
    try:
        answer, status = cancel_job(ext, job_id)
    except BaseException:
        # Not cancelled (Redis failed, or it ended meanwhile): a later cancel may try.
        with contextlib.suppress(redis.RedisError):
            ext.redis.hdel(ext.keys.job(job_id), "cancelBy")
        raise
    outcome = "cancelled" if status == 200 else "cancelling"
    entry = {"action": "cancel", "by": by, "at": now_ms(), "outcome": outcome}
    audit(ext.redis, ext.keys, job_id, entry, ext.settings.retention_seconds)
    return answer, status


@bp.post("/ops/jobs/<job_id>/retry")
def retry(job_id: str) -> tuple[Response, int]:
    """Resubmit a failed or cancelled job as a new one (``retryOf`` links back)."""
    require_ops()
    same_site_only()
    ext = jobcast()
    old = _job_id(job_id)
    if parent_of(old) is not None:
        raise ApiError(409, "not_retryable", "A canvas's step is retried with its canvas.")
    record = ext.redis.hmget(ext.keys.job(old), "task", "kwargs", "args", "kind", "queue")
    task, kwargs_raw, args_raw, kind, queue = (v.decode() if v else None for v in record)
    if task is None or kwargs_raw is None:
        state = ext.redis.hget(ext.keys.job(old), "state")
        if state is None:
            raise not_found()
        raise ApiError(409, "not_retryable", "This job keeps no task to send again.")
    try:
        kwargs = json.loads(kwargs_raw)
        args = json.loads(args_raw) if args_raw else []
    except ValueError:
        raise ApiError(409, "not_retryable", "This job's parameters cannot be read.") from None
    new_id = new_job_id()
    by = operator()
    claim = claim_retry(ext.redis, ext.keys, old, new_id, by)
    if claim is None:
        raise not_found()
    if claim.startswith("as:"):
        raise ApiError(409, "already_retried", f"This job was retried as {claim[3:]}.")
    if claim != "ok":
        allowed = " or ".join(sorted(RETRYABLE))
        raise ApiError(409, "not_retryable", f"Only a {allowed} job can be retried; it is {claim}.")
    fields = {
        **({"kind": kind} if kind else {}),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in kwargs.items()},
        "retryOf": old,
    }
    try:
        line = submit(
            ext.celery, ext.events, ext.settings, new_id, task, kwargs, fields,
            args=args, queue=queue,
        )  # fmt: skip
    except Exception:
        release_retry(ext.redis, ext.keys, old)
        raise
    if line.position < 1:
        release_retry(ext.redis, ext.keys, old)
        if line.position == -1:
            raise queue_full(line)
        raise ApiError(409, "not_retryable", "The new job could not be queued.")
    at, ttl = now_ms(), ext.settings.retention_seconds
    audit(ext.redis, ext.keys, old, {"action": "retry", "by": by, "at": at, "newJob": new_id}, ttl)
    audit(ext.redis, ext.keys, new_id, {"action": "retryOf", "by": by, "at": at, "job": old}, ttl)
    return jsonify({"jobId": new_id, "retryOf": old, "position": line.position}), 202


@bp.get("/ops/jobs")
def jobs_page() -> str | BaseResponse:
    """The page; a browser without the cookie is sent to sign in, as on ``/ops``."""
    token = jobcast().settings.ops_token
    if token and not authorized(token):
        return redirect(url_for("jobcast.ops.login", next=request.full_path.rstrip("?")), 303)
    require_ops()
    return render_template("jobcast/ops_jobs.html")


@bp.get("/ops/jobs/<job_id>")
def job_page(job_id: str) -> str | BaseResponse:
    """One job's page: params, log, result or error with its traceback, audit, a live tail.
    An id that cannot name a job is a 404 before anything else; one that names no job
    (expired, never made) is a 404 once the operator is signed in."""
    job_id = _job_id(job_id)
    ext = jobcast()
    token = ext.settings.ops_token
    if token and not authorized(token):
        return redirect(url_for("jobcast.ops.login", next=request.full_path.rstrip("?")), 303)
    require_ops()
    if not ext.redis.exists(ext.keys.job(job_id)):
        raise not_found()
    return render_template("jobcast/ops_job.html", job_id=job_id)
