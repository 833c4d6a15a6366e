"""``GET /openapi.json``: the whole HTTP API as an OpenAPI 3.1 document.

Hand-written and small. ``tests/integration/test_openapi.py`` checks it against the
app's URL map (every route documented with exactly its methods, nothing extra) and
``tests/fuzz/test_schemathesis.py`` fuzzes the live server from it, so it stays true.

components:  schemas (Error, JobRequest, JobAccepted, JobStatus, Cancel, Health)
             parameters (job_id, token, lastEventId, Last-Event-ID)
             responses (one per error the routes share) · headers (Retry-After, Location)
paths:       /imagine… (the job API) · /healthz · / · /ops… · /metrics · /openapi.json
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from web.extension import base_path

bp = Blueprint("openapi", __name__)

JSON = "application/json"
HTML = "text/html"
SSE = "text/event-stream"
Doc = dict[str, Any]


@bp.get("/openapi.json")
def openapi() -> Response:
    doc = document()
    if base_path():
        doc["servers"] = [{"url": base_path()}]  # the paths below are relative to it
    return jsonify(doc)


def document() -> Doc:
    """The OpenAPI 3.1 document (built per call: it is small and nothing mutates it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Jobcast",
            "version": "0.1.0",
            "description": (
                "Background jobs with live progress over Server-Sent Events. Every error is "
                'JSON `{"error": {"code", "message", "fields"?}}`; a method a path does not '
                "take is a 405 error with `Allow`; an unknown path is a 404 error."
            ),
        },
        "paths": {**_job_paths(), **_other_paths(), **_ops_paths()},
        "components": _components(),
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


def _job_paths() -> Doc:
    return {
        "/imagine": {
            "post": {
                "operationId": "createJob",
                "summary": "Queue an image job",
                "description": "Rate limited per client (`JOBCAST_POST_RATE_LIMIT`).",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("schemas", "JobRequest")}},
                },
                "responses": {
                    "202": _json(
                        _ref("schemas", "JobAccepted"),
                        "Queued; follow `stream` for live events.",
                        headers={"Location": _ref("headers", "Location")},
                    ),
                    **_errors(400, 413, 415, 422, 429, 503),
                },
            }
        },
        "/imagine/{job_id}": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "getJob",
                "summary": "The job's current state (the polling fallback)",
                "responses": {
                    "200": _json(_ref("schemas", "JobStatus"), "The job's snapshot."),
                    **_errors(403, 404, 503),
                },
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel: a queued job leaves the line now, a running one at its next step",
                "responses": {
                    "200": _json(_ref("schemas", "Cancel"), "Cancelled while queued."),
                    "202": _json(_ref("schemas", "Cancel"), "Running: it stops at its next step."),
                    **_errors(403, 404, 409, 503),
                },
            },
        },
        "/imagine/{job_id}/stream": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "streamJob",
                "summary": "The job's events as Server-Sent Events, resumable",
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
            },
        },
        "/imagine/{job_id}/image": {
            "parameters": JOB_PARAMS,
            "get": {
                "operationId": "getImage",
                "summary": "The finished image",
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
        "content": {SSE: {"schema": {"type": "string"}}},
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
        "properties": {"token": {"type": "string"}, "next": {"type": "string"}},
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
                    "401": _html("Wrong token: the form again."),
                    "413": _ref("responses", "TooLarge"),
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
                "responses": {
                    "200": _stream("`retry:`, the latest snapshot, then each new one."),
                    **_errors(401, 503),
                },
            }
        },
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


def _components() -> Doc:
    return {
        "schemas": _schemas(),
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
        "BadRequest": _json(error, "Malformed: not JSON (`bad_json`), or a `Last-Event-ID` this stream never sent (`bad_last_event_id`)."),
        "Unauthorized": _json(error, "The ops token is needed (`unauthorized`).", headers={"WWW-Authenticate": {"schema": {"type": "string"}}}),
        "BadToken": _json(error, "Signing is on and the job's token is missing or wrong (`bad_token`)."),
        "NotFound": _json(error, "No such job, or not an id (`not_found`); for an image: not finished yet."),
        "AlreadyFinished": _json(error, "The job has already ended (`already_finished`)."),
        "TooLarge": _json(error, "The body is larger than the limit (`too_large`)."),
        "UnsupportedMediaType": _json(error, "The body is not `application/json` (`unsupported_media_type`)."),
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
            "description": "The job's id, as `POST /imagine` returned it; anything else is a 404.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
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
            "schema": {"type": "string", "pattern": EVENT_ID},
        },
        "lastEventIdHeader": {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "Resume after this event id (EventSource sends it on reconnect).",
            "schema": {"type": "string", "pattern": EVENT_ID},
        },
    }


EVENT_ID = "^[0-9]{1,20}-[0-9]{1,20}$"
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
        "JobRequest": _job_request(),
        "JobAccepted": _job_accepted(),
        "JobStatus": _job_status(),
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


OPTIONAL_INT = ["integer", "null"]


def _job_request() -> Doc:
    return {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 1,
                "maxLength": 500,
                "description": (
                    "Runs of whitespace count as one space; it must not be blank or "
                    "contain control or other non-printable characters."
                ),
            },
            # null, like leaving the field out, means the default.
            "width": {"type": OPTIONAL_INT, "minimum": 64, "maximum": 1024, "default": 512},
            "height": {"type": OPTIONAL_INT, "minimum": 64, "maximum": 1024, "default": 512},
            "steps": {"type": OPTIONAL_INT, "minimum": 1, "maximum": 100, "default": 20},
            "seed": {
                "type": OPTIONAL_INT,
                "minimum": 0,
                "maximum": 4294967295,
                "description": "Random when left out or null.",
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
            "position": {"type": "integer", "minimum": 1},
            "queueLength": {"type": "integer", "minimum": 1},
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
        },
    }
