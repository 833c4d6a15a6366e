"""Who may submit a kind (``access``), and the document of a registry of one's own.

The app is built with its own registry (``create_app(kinds=...)``) on the session's real
Redis and driven through Flask's test client: these checks happen before any stream, so
no gevent server is needed. Nothing here runs a job (the tasks are names no worker has).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from pydantic import BaseModel, ConfigDict, Field
from support import RedisServer

from tasks.kinds import Kind, Registry
from web import create_app
from web.openapi import document

TOKEN = "ops-secret"


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=20)
    tags: list[str] = Field(default_factory=list, max_length=3)


def vip_only(request: Any) -> bool:
    return bool(request.headers.get("X-VIP") == "yes")


KINDS = Registry(
    [
        Kind("note", Note, "test.note", title="Take a note", queue="notes"),
        Kind("secret-note", Note, "test.secret", access="ops"),
        Kind("vip-note", Note, "test.vip", access=vip_only),
        Kind("hidden-note", Note, "test.hidden", access="none"),
    ]
)


@pytest.fixture
def app(redis_server: RedisServer, rds: redis.Redis) -> Iterator[Flask]:
    yield create_app(
        {"redis_url": redis_server.url, "ops_token": TOKEN, "post_rate_limit": ""}, kinds=KINDS
    )


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def keys(client: redis.Redis) -> set[bytes]:
    return {k for k in client.scan_iter("jobcast:*") if not k.startswith(b"jobcast:web:")}


def test_access_decides_who_may_submit(client: FlaskClient, rds: redis.Redis) -> None:
    """public: anyone; ops: only with the ops token (else 403); a callable: what it says
    of the request (else 403); none: no such route (404). A refusal writes nothing."""
    body = {"text": "hello"}
    before = keys(rds)
    for path, headers in (
        ("/jobs/secret-note", {}),
        ("/jobs/secret-note", {"Authorization": "Bearer wrong"}),
        ("/jobs/vip-note", {"X-VIP": "no"}),
    ):
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 403, (path, headers)
        assert response.get_json()["error"]["code"] == "forbidden"
    assert client.post("/jobs/hidden-note", json=body).status_code == 404
    assert keys(rds) == before
    for path, headers in (
        ("/jobs/note", {}),
        ("/jobs/secret-note", {"Authorization": f"Bearer {TOKEN}"}),
        ("/jobs/vip-note", {"X-VIP": "yes"}),
    ):
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 202, (path, response.get_json())


def test_a_job_records_its_kind_and_params(client: FlaskClient, rds: redis.Redis) -> None:
    """The record holds the kind and each parameter (non-text ones as JSON); the snapshot
    shows the kind; the Celery message carries the validated params."""
    response = client.post("/jobs/note", json={"text": "buy milk", "tags": ["home"]})
    assert response.status_code == 202
    job_id = response.get_json()["jobId"]
    record = rds.hgetall(f"jobcast:job:{{{job_id}}}")
    assert record[b"kind"] == b"note" and record[b"text"] == b"buy milk"
    assert record[b"tags"] == b'["home"]' and record[b"task"] == b"test.note"
    assert record[b"kwargs"] == b'{"text":"buy milk","tags":["home"]}'
    status = client.get(f"/jobs/{job_id}").get_json()
    assert status["kind"] == "note" and status["state"] == "queued"


def test_model_errors_name_the_fields(client: FlaskClient, rds: redis.Redis) -> None:
    """A kind's own model: pydantic's reasons, by field, in the usual 422."""
    before = keys(rds)
    response = client.post("/jobs/note", json={"text": "", "tags": "x", "more": 1})
    assert response.status_code == 422
    fields = response.get_json()["error"]["fields"]
    assert set(fields) == {"text", "tags", "more"} and fields["more"] == "unknown field"
    assert all(reason[0].islower() for reason in fields.values()), fields
    assert keys(rds) == before


def test_the_document_follows_the_registry(app: Flask) -> None:
    """One submit path per kind offered over HTTP (not ``none``), its body the kind's
    model; ops kinds say they need the token; the document still validates."""
    with app.app_context():
        doc = document(app.extensions["jobcast"].kinds)
    validate(doc)
    submits = {
        path
        for path, item in doc["paths"].items()
        if path.startswith("/jobs/") and "{" not in path and "post" in item
    }  # (/jobs/stream, the multiplexed stream, is a GET)
    assert submits == {"/jobs/note", "/jobs/secret-note", "/jobs/vip-note"}
    body = doc["paths"]["/jobs/note"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/NoteParams"}
    assert doc["components"]["schemas"]["NoteParams"]["properties"]["text"]["maxLength"] == 20
    assert "security" in doc["paths"]["/jobs/secret-note"]["post"]
    assert "403" in doc["paths"]["/jobs/vip-note"]["post"]["responses"]
    assert "/imagine" not in doc["paths"]  # no imagine kind here: no alias either
    assert not [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/imagine")]
