"""``GET /openapi.json``: the whole HTTP API as an OpenAPI 3.1 document.

The job part is generated from the registry of job kinds (:mod:`tasks.kinds`): one
``POST /jobs/<kind>`` path per kind offered over HTTP, its request body the JSON Schema
of the kind's pydantic model (``model_json_schema``; its ``$defs`` become component
schemas), so the document shows the limits this deployment is configured with. The rest
(the shared ``/jobs/{job_id}`` routes, the ``/imagine`` aliases, ops, metrics, pages) is
written here. ``tests/integration/test_openapi.py`` checks it against the app's URL map
(every route documented with exactly its methods, nothing extra) and
``tests/fuzz/test_schemathesis.py`` fuzzes the live server from it, so it stays true.

components:  schemas (Error, <Kind>Params, JobSubmitted, JobAccepted, JobStatus,
             JobDetails, JobResult, Cancel, Health) · parameters (job_id, token,
             fileName, lastEventId, Last-Event-ID, Idempotency-Key) · responses (one
             per error the routes share) · headers (Retry-After, Location)
paths:       /jobs/<kind> · /jobs/{job_id}… · /imagine… · /healthz · / · /ops… ·
             /metrics · /openapi.json
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from tasks.config import Settings
from tasks.kinds import Kind, Registry, default_registry
from tasks.media import FILE_NAME
from web.extension import base_path, jobcast

bp = Blueprint("openapi", __name__)

JSON = "application/json"
HTML = "text/html"
SSE = "text/event-stream"
Doc = dict[str, Any]


@bp.get("/openapi.json")
def openapi() -> Response:
    doc = document(jobcast().kinds)
    if base_path():
        doc["servers"] = [{"url": base_path()}]  # the paths below are relative to it
    return jsonify(doc)


def document(kinds: Registry | None = None) -> Doc:
    """The OpenAPI 3.1 document for ``kinds`` (the demo kinds at default settings when
    not given); built per call: it is small and nothing mutates it."""
    registry = default_registry(Settings()) if kinds is None else kinds
    offered = [kind for kind in registry.all() if kind.over_http]
    imagine = registry.get("imagine")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Jobcast",
            "version": "0.1.0",
            "description": (
                "Background jobs with live progress over Server-Sent Events. Submit a job "
                "of a kind with `POST /jobs/<kind>`, then follow it at `/jobs/{job_id}`. "
                'Every error is JSON `{"error": {"code", "message", "fields"?}}`; a method '
                "a path does not take is a 405 error with `Allow`; an unknown path is a 404 "
                "error.\n\nCancelling (`DELETE`) does not delete: a cancelled job stays "
                "readable (status, stream, its log) until its retention runs out, like any "
                "finished job."
            ),
        },
        "paths": {
            **{f"/jobs/{kind.name}": _submit_path(kind) for kind in offered},
            **_job_paths(),
            **(_imagine_paths(imagine) if imagine is not None and imagine.over_http else {}),
            **_other_paths(),
            **_ops_paths(),
        },
        "components": _components(offered),
    }


def _ref(kind: str, name: str) -> Doc:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: Doc, description: str, **extra: Any) -> Doc:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _html(description: str, **extra: Any) -> Doc:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}, **extra}


def _errors(*statuses: int) -> Doc:
    return {str(status): _ref("responses", ERRORS[status]) for status in statuses}


def _redirect(description: str, **headers: Doc) -> Doc:
    return {
        "description": description,
        "headers": {"Location": _ref("headers", "Location"), **headers},
    }


ERRORS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "BadToken",
    404: "NotFound",
    409: "AlreadyFinished",
    413: "TooLarge",
    415: "UnsupportedMediaType",
    422: "InvalidFields",
    429: "TooManyRequests",
    503: "Unavailable",
}
JOB_PARAMS = [_ref("parameters", "job_id"), _ref("parameters", "token")]
ACCESS = {
    "public": "Anyone may submit it.",
    "ops": "Only with the ops token (Bearer header or the `/ops/login` cookie); else 403.",
}


def params_schema(kind: Kind) -> str:
    """The component name of a kind's parameters: ``analyze-text`` → ``AnalyzeTextParams``."""
    return "".join(part.capitalize() for part in kind.name.split("-")) + "Params"


def _operation(kind: Kind) -> str:
    return "submit" + params_schema(kind).removesuffix("Params")


def _links(prefix: str, *operations: str) -> Doc:
    """Where a 202's ``jobId`` leads (the stateful fuzzer follows these)."""
    job = {"job_id": "$response.body#/jobId"}
    return {op: {"operationId": f"{op}{prefix}", "parameters": job} for op in operations}


def _submit_operation(
    kind: Kind,
    *,
    operation_id: str,
    summary: str,
    description: str,
    tag: str,
    accepted: str,
    links: Doc,
    repeated: str,
    statuses: list[int],
) -> Doc:
    """A POST that submits ``kind``: its parameters in, ``accepted`` (a schema's name) out
    with 202, or with 200 for a repeated Idempotency-Key (``repeated`` says what then)."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": [tag],
        "parameters": [_ref("parameters", "idempotencyKey")],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": _ref("schemas", params_schema(kind))}},
        },
        "responses": {
            "202": _json(
                _ref("schemas", accepted),
                "Queued; follow `stream` for live events.",
                headers={"Location": _ref("headers", "Location")},
                links=links,
            ),
            "200": _submit_200(accepted, repeated),
            **_errors(*sorted(statuses)),
        },
    }


def _submit_path(kind: Kind) -> Doc:
    per_request = "Whether a request may submit it is decided per request; else 403."
    access = ACCESS.get(kind.access, per_request) if isinstance(kind.access, str) else per_request
    notes = [
        kind.description,
        access,
        "Rate limited per client (`JOBCAST_POST_RATE_LIMIT`, shared with `POST /imagine`).",
    ]
    if kind.result:
        notes.append(f"Its result (`GET /jobs/{{job_id}}/result`): {kind.result}")
    statuses = [400, 413, 415, 422, 429, 503] + ([] if kind.access == "public" else [403])
    operation = _submit_operation(
        kind,
        operation_id=_operation(kind),
        summary=kind.title or f"Submit a {kind.name} job",
        description=" ".join(note for note in notes if note),
        tag="jobs",
        accepted="JobSubmitted",
        links=_links("", "getJob", "streamJob", "cancelJob", "getResult"),
        repeated="The `Idempotency-Key` named a job already: that job, as it is now "
        "(`position` 0 once it left the line); nothing was written.",
        statuses=statuses,
    )
    if kind.access == "ops":
        operation["security"] = [{"opsBearer": []}, {"opsCookie": []}]
    return {"post": operation}


def _submit_200(schema: str, idempotent: str) -> Doc:
    """A submit's 200: the job an Idempotency-Key named (JSON), or, asked for with
    ``Accept: text/event-stream``, the new (or named) job's stream from its first event."""
    stream = _stream("")["content"]
    return {
        "description": (
            f"JSON: {idempotent} `text/event-stream` (the request's `Accept` asked for it): "
            "the job's stream from its first event, as `GET /jobs/{job_id}/stream` sends "
            "it (the `queued` event first, carrying `jobId`); the job's id is in "
            "`X-Job-Id`. Errors before the job exists are the JSON errors below. If the "
            "stream cannot be opened once the job exists, the usual JSON answer (202)."
        ),
        "headers": {
            "Location": _ref("headers", "Location"),
            "X-Job-Id": {
                "description": "The job's id (with `text/event-stream` only).",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
            },
        },
        "content": {JSON: {"schema": _ref("schemas", schema)}, **stream},
    }


def _job_paths() -> Doc:
    return {
        "/jobs/{job_id}": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "getJob",
                "summary": "The job's current state (the polling fallback)",
                "tags": ["jobs"],
                "responses": {
                    "200": _json(_ref("schemas", "JobDetails"), "The job's snapshot."),
                    **_errors(403, 404, 503),
                },
            },
            "delete": _cancel("cancelJob"),
        },
        "/jobs/stream": {"get": _stream_many()},
        "/jobs/{job_id}/stream": {"parameters": JOB_PARAMS, "get": _stream_job("streamJob")},
        "/jobs/{job_id}/result": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "getResult",
                "summary": "A succeeded job's result: the `done` data and its files",
                "tags": ["jobs"],
                "responses": {
                    "200": _json(_ref("schemas", "JobResult"), "The result."),
                    **_errors(403, 404, 503),
                },
            },
        },
        "/jobs/{job_id}/result/{name}": {
            "parameters": [*JOB_PARAMS, _ref("parameters", "fileName")],
            "get": {
                "operationId": "getResultFile",
                "summary": "A file a succeeded job saved, typed by its name's extension",
                "tags": ["jobs"],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {"*/*": {"schema": {"type": "string"}}},
                    },
                    **_errors(403, 404, 503),
                },
            },
        },
    }


def _cancel(operation_id: str) -> Doc:
    return {
        "operationId": operation_id,
        "summary": "Cancel: a queued job leaves the line now, a running one at its next step",
        "description": "The job is not deleted: it stays readable, `cancelled`, until its retention runs out.",
        "tags": ["jobs"],
        "responses": {
            "200": _json(_ref("schemas", "Cancel"), "Cancelled while queued."),
            "202": _json(_ref("schemas", "Cancel"), "Running: it stops at its next step."),
            **_errors(403, 404, 409, 503),
        },
    }


def _stream_job(operation_id: str) -> Doc:
    return {
        "operationId": operation_id,
        "summary": "The job's events as Server-Sent Events, resumable",
        "tags": ["jobs"],
        "parameters": [
            _ref("parameters", "lastEventIdQuery"),
            _ref("parameters", "lastEventIdHeader"),
        ],
        "responses": {
            "200": _stream(
                "`retry:`, then the events after the last id, live ones as they "
                "happen, `: keep-alive` comments in silences; ends after a terminal event."
            ),
            "204": {"description": "The job has ended and nothing is left to send."},
            **_errors(400, 403, 404, 503),
        },
    }


MAX_STREAM_JOBS = Settings().max_stream_jobs
CURSOR = "^[A-Za-z0-9_-]{0,8192}$"  # empty: from the start


def _stream_many() -> Doc:
    cursor_schema = {"type": "string", "pattern": CURSOR}
    many = (
        "Resume after this composite cursor (the `id:` of the last event received). Text "
        "that is not base64url is a 400; a cursor this list did not send (forged, or of "
        "another list that is not this one's start) makes every job start over with `reset`."
    )
    return {
        "operationId": "streamJobs",
        "summary": "Many jobs' events on one Server-Sent Events connection, resumable per job",
        "description": (
            "Every event's data names its job (`jobId`); the `id:` of each logged event is "
            "a composite cursor of every job's last id (docs/protocol.md), so a reconnect "
            "with it as `Last-Event-ID` resumes each job after its own last event and "
            "replays no job that had ended. An unknown (or, with signing, unauthorised) job "
            "gets an `error` event `{jobId, code, message}`; the others stream on. Ends "
            "once every job has ended (`idle=1`: stays with keep-alives for "
            "`JOBCAST_STREAM_IDLE_SECONDS`). "
            f"At most `JOBCAST_MAX_STREAM_JOBS` ({MAX_STREAM_JOBS} by default) jobs."
        ),
        "tags": ["jobs"],
        "parameters": [
            {
                "name": "job",
                "in": "query",
                "required": True,
                "style": "form",
                "explode": True,
                "description": "The jobs, each once (repeat the parameter); new jobs go at the end.",
                "schema": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": MAX_STREAM_JOBS,
                    "uniqueItems": True,
                },
            },
            {
                "name": "token",
                "in": "query",
                "required": False,
                "style": "form",
                "explode": True,
                "description": "With signing on: each job's token, in the order of `job`.",
                "schema": {"type": "array", "items": {"type": "string"}},
            },
            {
                "name": "idle",
                "in": "query",
                "required": False,
                "description": "`1`: once every job has ended, stay open with keep-alives.",
                "schema": {"enum": ["0", "1"]},
            },
            {"name": "lastEventId", "in": "query", "required": False,
             "description": many, "schema": cursor_schema},
            {"name": "Last-Event-ID", "in": "header", "required": False,
             "description": many, "schema": cursor_schema},
        ],
        "responses": {
            "200": {
                **_stream(
                    "`retry:`, each job's events after its cursor id (with `jobId` in the "
                    "data, the composite cursor as `id:`), `error` events for jobs that "
                    "cannot be streamed, `: keep-alive` comments in silences."
                ),
                "content": {SSE: {"schema": MUX_EVENT}},
            },
            "204": {"description": "Every job had ended before the cursor: nothing to send."},
            **_errors(400, 503),
        },
    }  # fmt: skip


def _imagine_paths(kind: Kind) -> Doc:
    """``/imagine…``: the imagine kind's routes as they were before ``/jobs``."""
    return {
        "/imagine": {
            "post": _submit_operation(
                kind,
                operation_id="createJob",
                summary="Queue an image job (the same as `POST /jobs/imagine`)",
                description="Rate limited per client (`JOBCAST_POST_RATE_LIMIT`).",
                tag="imagine",
                accepted="JobAccepted",
                links=_links("Imagine", "get", "stream", "cancel", "image"),
                repeated="The `Idempotency-Key` named a job already: that job, as it is now.",
                statuses=[400, 413, 415, 422, 429, 503],
            )
        },
        "/imagine/{job_id}": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "getImagine",
                "summary": "The job's current state (the polling fallback)",
                "tags": ["imagine"],
                "responses": {
                    "200": _json(_ref("schemas", "JobStatus"), "The job's snapshot."),
                    **_errors(403, 404, 503),
                },
            },
            "delete": {**_cancel("cancelImagine"), "tags": ["imagine"]},
        },
        "/imagine/{job_id}/stream": {
            "parameters": JOB_PARAMS,
            "get": {**_stream_job("streamImagine"), "tags": ["imagine"]},
        },
        "/imagine/{job_id}/image": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "imageImagine",
                "summary": "The finished image",
                "tags": ["imagine"],
                "responses": {
                    "200": {
                        "description": "The PNG.",
                        "content": {
                            "image/png": {
                                "schema": {"type": "string", "contentMediaType": "image/png"}
                            }
                        },
                    },
                    **_errors(403, 404, 503),
                },
            },
        },
    }


def _stream(description: str) -> Doc:
    return {
        "description": description,
        "headers": {
            "Cache-Control": {"schema": {"const": "no-cache"}},
            "X-Accel-Buffering": {"schema": {"const": "no"}},
        },
        "content": {SSE: {"schema": SSE_EVENT}},
    }


# One event of a stream (OpenAPI 3.1 reads a text/event-stream schema per event).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "pattern": "^[a-z][a-z0-9_.-]{0,31}$"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"type": "object"},
        },
        "id": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},  # (ours are smaller)
        "retry": {"type": "integer", "minimum": 0},
    },
}


MUX_EVENT = {
    **SSE_EVENT,
    "properties": {
        **SSE_EVENT["properties"],  # type: ignore[dict-item]
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"type": "object", "required": ["jobId"]},
        },
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    },
}


def _other_paths() -> Doc:
    health = _ref("schemas", "Health")
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness, including whether Redis answers",
                "responses": {
                    "200": _json(health, "Up, Redis reachable."),
                    "503": _json(health, "Up, but Redis is unreachable."),
                },
            }
        },
        "/": {
            "get": {
                "operationId": "indexPage",
                "summary": "The progressive-reveal page",
                "responses": {"200": _html("The page.")},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
    }


def _ops_paths() -> Doc:
    # Open when JOBCAST_OPS_TOKEN is unset; otherwise the token as Bearer or the cookie.
    ops_auth: list[Doc] = [{}, {"opsBearer": []}, {"opsCookie": []}]
    next_param = {
        "name": "next",
        "in": "query",
        "description": "Where to go after logging in: a path on this site (else `/ops`).",
        "schema": {"type": "string"},
    }
    login_form = {
        "type": "object",
        "properties": {
            "token": {"type": "string"},
            "next": {"type": "string"},
            "operator": {
                "type": "string",
                "maxLength": 64,
                "description": "Your name, kept in the session: the job browser's audit shows it.",
            },
        },
    }
    set_cookie = {"Set-Cookie": {"schema": {"type": "string"}}}
    return {
        "/ops": {
            "get": {
                "operationId": "opsPage",
                "summary": "The operator dashboard",
                "security": ops_auth,
                "responses": {
                    "200": _html("The dashboard."),
                    "303": _redirect("Not logged in: to `/ops/login`."),
                },
            }
        },
        "/ops/login": {
            "get": {
                "operationId": "opsLoginPage",
                "summary": "The login form (a redirect to `next` when no token is configured)",
                "parameters": [next_param],
                "responses": {
                    "200": _html("The form."),
                    "303": _redirect("No token configured: straight to `next`."),
                },
            },
            "post": {
                "operationId": "opsLogin",
                "summary": "Log in with the ops token: sets an HttpOnly cookie",
                "parameters": [next_param],
                "requestBody": {
                    "required": True,
                    "content": {"application/x-www-form-urlencoded": {"schema": login_form}},
                },
                "responses": {
                    "303": _redirect(
                        "Logged in (or no token configured): to `next`.", **set_cookie
                    ),
                    "400": _html("An operator name that is not 1-64 printable characters."),
                    "401": _html("Wrong token: the form again."),
                    "413": _ref("responses", "TooLarge"),
                    "415": _ref("responses", "UnsupportedMediaType"),
                    "429": {
                        "description": "Too many attempts from this client "
                        "(`JOBCAST_OPS_LOGIN_RATE_LIMIT`): the form with a message for "
                        "browsers (`Accept: text/html`), else `too_many_requests`.",
                        "headers": {"Retry-After": _ref("headers", "Retry-After")},
                        "content": {
                            JSON: {"schema": _ref("schemas", "Error")},
                            HTML: {"schema": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "/ops/logout": {
            "post": {
                "operationId": "opsLogout",
                "summary": "Drop the ops cookie",
                "responses": {"303": _redirect("To `/ops/login`.", **set_cookie)},
            }
        },
        "/ops/stream": {
            "get": {
                "operationId": "opsStream",
                "summary": "Worker and queue snapshots as Server-Sent Events (never ends)",
                "security": ops_auth,
                "parameters": [
                    {
                        "name": "jobs",
                        "in": "query",
                        "description": "`1`: also `event: job` for each job created (the "
                        "job browser's live list), only with `JOBCAST_OPS_TOKEN` set.",
                        "schema": {"type": "string", "enum": ["0", "1"]},
                    }
                ],
                "responses": {
                    "200": _stream("`retry:`, the latest snapshot, then each new one."),
                    **_errors(401, 503),
                },
            }
        },
        **_ops_job_paths(),
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text format, the same from every web process",
                "security": ops_auth,
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 503),
                },
            }
        },
    }


def _ops_job_paths() -> Doc:
    # Never open: without JOBCAST_OPS_TOKEN configured these answer 403.
    auth: list[Doc] = [{"opsBearer": []}, {"opsCookie": []}]
    obj = {"type": "object"}
    query = [
        {"name": name, "in": "query", "description": text, "schema": {"type": kind}}
        for name, kind, text in [
            ("state", "string", "Only jobs in this state (queued, running, succeeded, ...)."),
            ("kind", "string", "Only jobs of this kind."),
            ("id", "string", "Only jobs whose id starts with this."),
            ("before", "integer", "Only jobs created before this time (ms): paging."),
            ("limit", "integer", "Rows per page, 1 to 200 (50)."),
        ]
    ]
    log_query = [
        {"name": name, "in": "query", "description": text, "schema": schema}
        for name, schema, text in [
            ("after", {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
             "Only events after this event id: the log's paging."),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 500},
             "Events per page, 1 to 500 (500)."),
        ]
    ]  # fmt: skip
    operator = {
        "name": "X-Jobcast-Operator",
        "in": "header",
        "description": "Who acts (1-64 printable characters, UTF-8), for the job's audit; "
        "bearer callers only (a session uses its sign-in name). A session's action sent "
        "from another site is a 403 `cross_site`.",
        "schema": {"type": "string", "maxLength": 64},
    }
    return {
        "/ops/jobs": {
            "get": {
                "operationId": "opsJobsPage",
                "summary": "The job browser page",
                "security": auth,
                "responses": {
                    "200": _html("The page."),
                    "303": _redirect("Not logged in: to `/ops/login`."),
                    **_errors(403),
                },
            }
        },
        "/ops/jobs.json": {
            "get": {
                "operationId": "opsJobs",
                "summary": "Jobs newest first from the job index, filtered; `next` pages on",
                "security": auth,
                "parameters": query,
                "responses": {
                    "200": _json(obj, "`jobs` (rows) and `next` (the next page's `before`)."),
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/ops/jobs/{job_id}": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "opsJobPage",
                "summary": "One job's page: params, log, result or error, audit, live tail",
                "security": auth,
                "responses": {
                    "200": _html("The page."),
                    "303": _redirect("Not logged in: to `/ops/login`."),
                    **_errors(403, 404),
                },
            },
        },
        "/ops/jobs/{job_id}.json": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "opsJob",
                "summary": "One job in full: record, params, attempts, log (paged), audit, "
                "result, or error with its `traceback`",
                "security": auth,
                "parameters": log_query,
                "responses": {
                    "200": _json(obj, "The job; `eventsNext` is the next page's `after`."),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/ops/jobs/{job_id}/cancel": {
            "parameters": [*JOB_PARAMS, operator],
            "post": {
                "operationId": "opsCancelJob",
                "summary": "Cancel as `DELETE /jobs/{job_id}` does, once, audited with who",
                "security": auth,
                "responses": {
                    "200": _json(obj, "Cancelled (it was waiting)."),
                    "202": _json(obj, "Cancelling: it stops at its next step."),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            },
        },
        "/ops/jobs/{job_id}/retry": {
            "parameters": [*JOB_PARAMS, operator],
            "post": {
                "operationId": "opsRetryJob",
                "summary": "Resubmit a failed or cancelled job as a new job (`retryOf`)",
                "security": auth,
                "responses": {
                    "202": _json(obj, "The new job's `jobId`."),
                    **_errors(400, 401, 403, 404, 409, 429, 503),
                },
            },
        },
    }


def _components(kinds: list[Kind]) -> Doc:
    return {
        "schemas": {**_schemas(), **kind_schemas(kinds)},
        "parameters": _parameters(),
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "Location": {
                "description": "Where to go next.",
                "required": True,
                "schema": {"type": "string"},
            },
        },
        "responses": _error_responses(),
        "securitySchemes": {
            "opsBearer": {"type": "http", "scheme": "bearer"},
            "opsCookie": {"type": "apiKey", "in": "cookie", "name": "jobcast_ops"},
        },
    }


def _error_responses() -> Doc:
    error = _ref("schemas", "Error")
    retry = {"headers": {"Retry-After": _ref("headers", "Retry-After")}}
    return {
        "BadRequest": _json(error, "Malformed: not JSON (`bad_json`), a `Last-Event-ID` this stream never sent (`bad_last_event_id`), a bad `Idempotency-Key` (`bad_idempotency_key`); for `/jobs/stream`: no jobs, too many, one twice, or a parameter given twice or out of its values (`no_jobs`, `too_many_jobs`, `duplicate_job`, `bad_parameter`)."),
        "Unauthorized": _json(error, "The ops token is needed (`unauthorized`).", headers={"WWW-Authenticate": {"schema": {"type": "string"}}}),
        "BadToken": _json(error, "Signing is on and the job's token is missing or wrong (`bad_token`); or this client may not submit this kind (`forbidden`); or an operator's action sent from another site (`cross_site`)."),
        "NotFound": _json(error, "No such job, or not an id (`not_found`); for a result or file: not succeeded yet, or no such file; no such kind (`unknown_kind`)."),
        "AlreadyFinished": _json(error, "The job has already ended (`already_finished`)."),
        "TooLarge": _json(error, "The body is larger than the limit (`too_large`)."),
        "UnsupportedMediaType": _json(error, "The body is not of the documented type (`unsupported_media_type`)."),
        "InvalidFields": _json(error, "Well-formed JSON, invalid job: `fields` names each bad field and why (`invalid_fields`)."),
        "TooManyRequests": _json(error, "The line is full (`queue_full`) or this client posts too fast (`too_many_requests`).", **retry),
        "Unavailable": _json(error, "Redis is unreachable (`unavailable`), or this process holds all the streams it can (`too_many_streams`).", **retry),
    }  # fmt: skip


def _parameters() -> Doc:
    return {
        "job_id": {
            "name": "job_id",
            "in": "path",
            "required": True,
            "description": "The job's id, as the submit returned it; anything else is a 404.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
        },
        "fileName": {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "A file's name, as `GET /jobs/{job_id}/result` lists it.",
            "schema": {"type": "string", "pattern": f"^{FILE_NAME.pattern}$"},
        },
        "idempotencyKey": {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "A key the client chooses for this submit (1-128 of `A-Za-z0-9_.:-`); anything else is a 400.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
        },
        "token": {
            "name": "token",
            "in": "query",
            "required": False,
            "description": "The job's token; required (else 403) when the server signs jobs.",
            "schema": {"type": "string"},
        },
        "lastEventIdQuery": {
            "name": "lastEventId",
            "in": "query",
            "required": False,
            "description": "Resume after this event id (for clients that cannot set headers).",
            "schema": {"type": "string", "pattern": RESUME_ID},
        },
        "lastEventIdHeader": {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "Resume after this event id (EventSource sends it on reconnect).",
            "schema": {"type": "string", "pattern": RESUME_ID},
        },
    }


def at_most(bound: int) -> str:
    """A regex for the decimal numbers from 0 to ``bound``, leading zeros allowed up to the
    bound's width (as ``tasks.events.parse_id`` reads the parts of an id)."""
    digits = str(bound)
    width = len(digits)
    options = [f"[0-9]{{1,{width - 1}}}"] if width > 1 else []
    for i, digit in enumerate(digits):
        if digit != "0":
            low = f"[0-{int(digit) - 1}]" if digit != "1" else "0"
            options.append(f"{digits[:i]}{low}[0-9]{{{width - i - 1}}}")
    options.append(digits)
    return f"(?:{'|'.join(options)})"


ID_PART = at_most(2**64 - 1)  # Redis stream ids are two unsigned 64-bit numbers
EVENT_ID = f"^{ID_PART}-{ID_PART}$"
# What a client may send to resume: an id, or nothing (empty: from the start).
RESUME_ID = f"^(?:{ID_PART}-{ID_PART})?$"
NULLABLE_INT = {"type": ["integer", "null"], "minimum": 0}


def _schemas() -> Doc:
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "pattern": "^[a-z_]+$"},
                        "message": {"type": "string"},
                        "fields": {
                            "type": "object",
                            "description": "Each invalid field and why.",
                            "additionalProperties": {"type": "string"},
                        },
                    },
                }
            },
        },
        "JobSubmitted": _job_submitted(),
        "JobAccepted": _job_accepted(),
        "JobStatus": _job_status(),
        "JobDetails": _job_details(),
        "JobResult": _job_result(),
        "Cancel": {
            "type": "object",
            "required": ["jobId", "state"],
            "additionalProperties": False,
            "properties": {
                "jobId": {"type": "string"},
                "state": {"enum": ["cancelled", "cancelling"]},
            },
        },
        "Health": {
            "type": "object",
            "required": ["ok", "redis", "hub"],
            "properties": {
                "ok": {"type": "boolean"},
                "redis": {"enum": ["ok", "unreachable"]},
                "hub": {"type": "object", "description": "This process's hub counters."},
            },
        },
    }


def kind_schemas(kinds: list[Kind]) -> Doc:
    """Each kind's parameters as a component schema, with its model's ``$defs`` beside it."""
    schemas: Doc = {}
    for kind in kinds:
        schema = kind.params.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in {**schema.pop("$defs", {}), params_schema(kind): schema}.items():
            if schemas.setdefault(name, definition) != definition:
                raise ValueError(f"two kinds define different schemas named {name!r}")
    return schemas


def _job_submitted() -> Doc:
    return {
        "type": "object",
        "required": [
            "jobId", "kind", "position", "queueLength", "etaSeconds", "stream", "status", "result",
        ],
        "additionalProperties": False,
        "properties": {
            "jobId": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
            "kind": {"type": "string"},
            "position": {"type": "integer", "minimum": 0},
            "queueLength": {"type": "integer", "minimum": 0},
            "etaSeconds": NULLABLE_INT,
            "stream": {"type": "string", "description": "The job's SSE stream (with its token)."},
            "status": {"type": "string", "description": "The job's status URL (= Location)."},
            "result": {"type": "string", "description": "The result's URL, once succeeded."},
            "token": {"type": "string", "description": "Only when the server signs jobs."},
        },
    }  # fmt: skip


def _job_details() -> Doc:
    status = _job_status()
    nullable_text = {"type": ["string", "null"]}
    properties = {
        **status["properties"],
        "kind": {**nullable_text, "description": "The job's kind."},
        "queue": {**nullable_text, "description": "The Celery queue (the line) it went to."},
        "meta": {"type": "object", "description": "The metadata given at submit, if any."},
    }
    return {**status, "properties": properties}


def _job_result() -> Doc:
    return {
        "type": "object",
        "required": ["jobId", "state", "result", "files"],
        "additionalProperties": False,
        "properties": {
            "jobId": {"type": "string"},
            "state": {"const": "succeeded"},
            "result": {"type": "object", "description": "The `done` event's data."},
            "files": {
                "type": "object",
                "description": "Each file the job saved, by name: its URL.",
                "additionalProperties": {"type": "string"},
            },
        },
    }


def _job_accepted() -> Doc:
    return {
        "type": "object",
        "required": ["jobId", "position", "queueLength", "etaSeconds", "stream", "status", "image"],
        "additionalProperties": False,
        "properties": {
            "jobId": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
            "position": {"type": "integer", "minimum": 0},
            "queueLength": {"type": "integer", "minimum": 0},
            "etaSeconds": NULLABLE_INT,
            "stream": {"type": "string", "description": "The job's SSE stream (with its token)."},
            "status": {"type": "string", "description": "The job's status URL (= Location)."},
            "image": {
                "type": "string",
                "description": "The picture's URL once done (with its token).",
            },
            "token": {"type": "string", "description": "Only when the server signs jobs."},
        },
    }


def _job_status() -> Doc:
    nullable_text = {"type": ["string", "null"]}
    return {
        "type": "object",
        "required": ["jobId", "state", "percent", "attempt"],
        "properties": {
            "jobId": {"type": "string"},
            "state": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
            "queue": {
                "type": "string",
                "description": "The Celery queue, whose line `position` counts in.",
            },
            "position": NULLABLE_INT,
            "queueLength": NULLABLE_INT,
            "etaSeconds": NULLABLE_INT,
            "percent": {"type": "integer", "minimum": 0, "maximum": 100},
            "preview": {
                "type": ["object", "null"],
                "description": "The last preview: percent, blurhash, width, height.",
            },
            "url": {**nullable_text, "description": "The image, once done."},
            "error": {**nullable_text, "description": "Why it failed, safe to show."},
            "attempt": {"type": "integer", "minimum": 0},
            "lastEventId": {"type": ["string", "null"], "pattern": EVENT_ID},
            "prompt": nullable_text,
            "width": NULLABLE_INT,
            "height": NULLABLE_INT,
            "parent": {"type": "string", "description": "A canvas child's parent job."},
            "children": {
                "type": "array",
                "description": "A canvas's child jobs: jobId, task, state, percent, position.",
                "items": {"type": "object", "required": ["jobId", "state", "percent"]},
            },
            "doneEtaSeconds": {
                **NULLABLE_INT,
                "description": "A canvas that has not ended: seconds until it is expected "
                "to end (its start, then its runs left at its line's average run time).",
            },
        },
    }
