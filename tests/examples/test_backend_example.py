"""examples/backend_submit: a plain-Python backend beside the standalone service, in
signed-token mode with CORS for the app's origin, against real processes."""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from support import Proc, gunicorn_web

EXAMPLE = Path(__file__).parents[2] / "examples" / "backend_submit" / "backend.py"
APP_ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def service(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The standalone service as the example's README paragraph configures it."""
    env = {
        **stack_env,
        "JOBCAST_SIGNING_KEY": secrets.token_hex(16),
        "JOBCAST_CORS_ORIGINS": APP_ORIGIN,
    }
    proc, base = gunicorn_web(env, tmp_path_factory.mktemp("logs") / "service.log")
    yield base
    proc.stop()


@pytest.fixture
def backend(service: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("backend_example", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.JOBCAST_URL = service  # type: ignore[attr-defined]
    return module


def test_the_backend_submits_and_follows_a_job_to_done(
    backend: ModuleType, worker: Proc, rds: object
) -> None:
    """start_render answers the page's JSON; follow() reads the signed stream to done."""
    with httpx.Client(timeout=60) as client:
        job = backend.start_render("a lighthouse at dusk", user="u1", client=client)
        kinds = [kind for kind, _ in backend.follow(job["stream"], client)]
    assert kinds[0] == "queued" and kinds[-1] == "done" and "progress" in kinds


def test_the_token_opens_exactly_its_job(
    backend: ModuleType, service: str, worker: Proc, rds: object
) -> None:
    """Without its token a job's routes answer 403; one job's token opens no other job;
    a retried request (same idempotency key) gets the same job back."""
    with httpx.Client(timeout=60) as client:
        one = backend.start_render("first", user="u2", client=client)
        two = backend.start_render("second", user="u2", client=client)
        again = backend.start_render("first", user="u2", client=client)
        assert again["jobId"] == one["jobId"] and two["jobId"] != one["jobId"]
        bare = client.get(f"{service}/jobs/{one['jobId']}")
        assert bare.status_code == 403 and bare.json()["error"]["code"] == "bad_token"
        token = httpx.URL(one["status"]).params["token"]
        crossed = client.get(f"{service}/jobs/{two['jobId']}", params={"token": token})
        assert crossed.status_code == 403
        assert client.get(one["status"]).status_code == 200
        for _ in backend.follow(two["stream"], client):
            pass


def test_the_apps_origin_may_read_the_stream_and_status(
    backend: ModuleType, service: str, worker: Proc, rds: object
) -> None:
    """The browser of the app's origin gets CORS headers on the job's stream and status
    (and a preflight for the submit); another origin gets none."""
    with httpx.Client(timeout=60) as client:
        job = backend.start_render("cors", user="u3", client=client)
        status = client.get(job["status"], headers={"Origin": APP_ORIGIN})
        assert status.headers.get("access-control-allow-origin") == APP_ORIGIN
        other = client.get(job["status"], headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        with client.stream("GET", job["stream"], headers={"Origin": APP_ORIGIN}) as stream:
            assert stream.headers.get("access-control-allow-origin") == APP_ORIGIN
        for _ in backend.follow(job["stream"], client):
            pass
