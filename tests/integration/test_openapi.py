"""The OpenAPI document at /openapi.json: valid 3.1, true to the routes, true to live answers."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import redis
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from support import Proc, collect, post_job

from web import create_app
from web.openapi import document

JSON = "application/json"
OPERATIONS = {"get", "put", "post", "delete", "patch"}
TINY = {"width": 64, "height": 64, "steps": 1}
UNKNOWN = "AAAAAAAAAAAAAAAAAAAAAA"


def deref(doc: dict[str, Any], node: Any) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points at (the doc has no cycles)."""
    if isinstance(node, list):
        return [deref(doc, item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return deref(doc, target)
    return {key: deref(doc, value) for key, value in node.items()}


def served_routes() -> dict[str, set[str]]:
    """Flask's rules as OpenAPI paths (``<job_id>`` → ``{job_id}``) and their methods; the
    one rule ``/jobs/<kind>`` is a path per kind offered over HTTP (``/jobs/imagine``)."""
    app = create_app({"redis_url": "redis://127.0.0.1:1/0"})  # building it connects nowhere
    kinds = [kind.name for kind in app.extensions["jobcast"].kinds.all() if kind.over_http]
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.rpartition(".")[2] == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods = (rule.methods or set()) - {"HEAD", "OPTIONS"}
        for each in [f"/jobs/{name}" for name in kinds] if path == "/jobs/{kind}" else [path]:
            routes.setdefault(each, set()).update(methods)
    return routes


def conforms(path: str, method: str, response: httpx.Response) -> None:
    """Assert the response is one the document lists: status, media type, headers, JSON body."""
    doc = document()
    responses = deref(doc, doc["paths"][path][method.lower()]["responses"])
    status = str(response.status_code)
    assert status in responses, f"{method} {path}: {status} is not documented"
    spec = responses[status]
    for name, header in spec.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{method} {path} {status}: no {name} header"
        if name in response.headers:
            Draft202012Validator(header["schema"]).validate(response.headers[name])
    content = spec.get("content")
    if content is None:
        assert response.content == b"", f"{method} {path} {status}: a body where none is documented"
        return
    media = response.headers["Content-Type"].split(";")[0].strip()
    assert media in content or "*/*" in content, (
        f"{method} {path} {status}: {media} is not documented"
    )
    if media == JSON:
        Draft202012Validator(content[media]["schema"]).validate(response.json())


def test_document_is_valid_openapi_3_1() -> None:
    """The document validates as OpenAPI 3.1: structure, references, parameters and schemas."""
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)


def test_every_route_is_documented_with_exactly_its_methods() -> None:
    """Each rule of the app (but /static) is a documented path with the same methods, and
    every documented path and method is one the app serves (HEAD and OPTIONS aside)."""
    documented = {
        path: {method.upper() for method in item if method in OPERATIONS}
        for path, item in document()["paths"].items()
    }
    assert documented == served_routes()


def test_path_parameters_match_the_templates() -> None:
    """Every ``{name}`` of a path is a documented, required path parameter, and no other is."""
    doc = document()
    for path, item in doc["paths"].items():
        in_template = set(re.findall(r"{([^}]+)}", path))
        for method in OPERATIONS & set(item):
            params = deref(doc, item.get("parameters", []) + item[method].get("parameters", []))
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == in_template, (method, path)
            assert all(p["required"] for p in params if p["in"] == "path"), (method, path)


def test_live_document_is_the_one_in_code(web: str) -> None:
    """GET /openapi.json on the real server serves the document, as JSON."""
    response = httpx.get(web + "/openapi.json")
    conforms("/openapi.json", "GET", response)
    assert response.json() == document()


LIFECYCLES = {
    "imagine": ("/imagine", "/imagine", (("GET", "", 200), ("GET", "/image", 200), ("DELETE", "", 409))),
    "jobs": ("/jobs/imagine", "/jobs", (
        ("GET", "", 200), ("GET", "/result", 200), ("GET", "/result/image.png", 200),
        ("GET", "/result/nothing.txt", 404), ("DELETE", "", 409),
    )),
}  # fmt: skip


@pytest.mark.parametrize("routes", LIFECYCLES, ids=str)
def test_a_job_lifecycle_matches_the_document(
    routes: str, web: str, worker: Proc, rds: redis.Redis
) -> None:
    """Submit, stream, resume-after-the-end, status, result (the image, a file) and a late
    cancel, through the /jobs routes and their /imagine aliases: each answers with a
    status, type, headers and body the document lists."""
    create, prefix, checks = LIFECYCLES[routes]
    created = httpx.post(web + create, json={"prompt": "a red kite", **TINY})
    conforms(create, "POST", created)
    assert created.status_code == 202
    job_id = created.json()["jobId"]
    stream = f"{prefix}/{{job_id}}/stream"
    with httpx.stream("GET", f"{web}{prefix}/{job_id}/stream", timeout=60) as streamed:
        streamed.read()  # the job ends, so does its stream
    conforms(stream, "GET", streamed)
    assert streamed.status_code == 200
    last = collect(web, job_id)[-1].id
    assert last is not None
    ended = httpx.get(f"{web}{prefix}/{job_id}/stream", headers={"Last-Event-ID": last})
    conforms(stream, "GET", ended)
    assert ended.status_code == 204
    for method, suffix, expected in checks:
        response = httpx.request(method, f"{web}{prefix}/{job_id}{suffix}")
        named = suffix.count("/") == 2  # a file of the result
        path = f"{prefix}/{{job_id}}/result/{{name}}" if named else f"{prefix}/{{job_id}}{suffix}"
        conforms(path, method, response)
        assert response.status_code == expected, response.text


def test_a_fresh_job_and_its_cancel_match_the_document(web: str, rds: redis.Redis) -> None:
    """A just-posted job: its status, and cancelling it (queued, running or already done,
    depending on the session's worker), answer as documented."""
    job_id = post_job(web, **TINY)["jobId"]
    fresh = httpx.get(f"{web}/imagine/{job_id}")
    conforms("/imagine/{job_id}", "GET", fresh)
    assert fresh.status_code == 200
    cancelled = httpx.delete(f"{web}/imagine/{job_id}")
    conforms("/imagine/{job_id}", "DELETE", cancelled)
    assert cancelled.status_code in {200, 202, 409}


def test_event_id_beyond_64_bits_is_400(web: str, rds: redis.Redis) -> None:
    """A Last-Event-ID whose parts do not fit Redis's 64-bit stream ids is a 400
    ``bad_last_event_id``; it used to reach XRANGE and fail there (a 500 or a broken stream)."""
    job_id = post_job(web, **TINY)["jobId"]
    for last in ("4716-43533736088773330061", "18446744073709551616-0"):
        response = httpx.get(f"{web}/imagine/{job_id}/stream", params={"lastEventId": last})
        conforms("/imagine/{job_id}/stream", "GET", response)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_last_event_id"


@pytest.mark.parametrize(
    ("method", "path", "url", "kwargs", "status"),
    [
        ("POST", "/imagine", "/imagine", {"content": b"{", "headers": {"Content-Type": JSON}}, 400),
        ("POST", "/imagine", "/imagine", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
        ("POST", "/imagine", "/imagine", {"json": {"prompt": "", "width": 5, "colour": 1}}, 422),
        ("POST", "/imagine", "/imagine", {"json": {"prompt": "x" * 20_000}}, 413),
        ("GET", "/imagine/{job_id}", f"/imagine/{UNKNOWN}", {}, 404),
        ("DELETE", "/imagine/{job_id}", f"/imagine/{UNKNOWN}", {}, 404),
        ("GET", "/imagine/{job_id}/image", f"/imagine/{UNKNOWN}/image", {}, 404),
        ("GET", "/imagine/{job_id}/stream", f"/imagine/{UNKNOWN}/stream", {}, 404),
        ("GET", "/imagine/{job_id}/stream", f"/imagine/{UNKNOWN}/stream?lastEventId=x", {}, 400),
        ("POST", "/jobs/imagine", "/jobs/imagine", {"json": {"prompt": "", "colour": 1}}, 422),
        ("POST", "/jobs/imagine", "/jobs/imagine", {"json": {}, "headers": {"Idempotency-Key": "a b"}}, 400),
        ("GET", "/jobs/{job_id}", f"/jobs/{UNKNOWN}", {}, 404),
        ("GET", "/jobs/{job_id}/result", f"/jobs/{UNKNOWN}/result", {}, 404),
        ("GET", "/jobs/{job_id}/result/{name}", f"/jobs/{UNKNOWN}/result/a.png", {}, 404),
        # The sign-in is a form: no body (or another type) is refused, token or not.
        ("POST", "/ops/login", "/ops/login", {}, 415),
        ("POST", "/ops/login", "/ops/login", {"json": {"token": "x"}}, 415),
    ],
)  # fmt: skip
def test_errors_match_the_document(
    web: str, method: str, path: str, url: str, kwargs: dict[str, Any], status: int
) -> None:
    """Each error answers with its documented status and the JSON Error schema."""
    response = httpx.request(method, web + url, **kwargs)
    conforms(path, method, response)
    assert response.status_code == status, response.text


@pytest.mark.parametrize("path", ["/", "/healthz", "/metrics", "/ops"])
def test_pages_and_probes_match_the_document(web: str, path: str) -> None:
    """The page, the health probe, the metrics and the dashboard answer as documented."""
    response = httpx.get(web + path)
    conforms(path, "GET", response)
    assert response.status_code == 200


@pytest.mark.parametrize("nested", [b"[" * 8000, b"[" * 8000 + b"]" * 8000, b'{"a":' * 3000])
def test_deeply_nested_json_is_400_not_500(web: str, nested: bytes) -> None:
    """JSON nested deeper than the parser goes (but inside the body limit) is a 400
    ``bad_json``; it used to escape as RecursionError and answer 500."""
    response = httpx.post(web + "/imagine", content=nested, headers={"Content-Type": JSON})
    conforms("/imagine", "POST", response)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_json"
