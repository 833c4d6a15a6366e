"""Helpers of the ops tests (job browser, per-kind numbers): jobs of two kinds that end in
each state, and /metrics read back as numbers (prometheus-client's own parser)."""

from __future__ import annotations

import base64
import io
import secrets
from typing import Any

import httpx
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tasks.app import create_celery
from tasks.config import Settings
from tasks.demo.analyze_params import TASK as ANALYZE_TASK
from tasks.events import JobEvents
from tasks.submit import submit, task_fields

TOKEN = "ops-" + secrets.token_urlsafe(12)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = {"prompt": "a quiet harbour", "width": 64, "height": 64, "steps": 2}
ENDED = {"succeeded", "failed", "cancelled"}


def post(base: str, kind: str, body: dict[str, Any]) -> str:
    """``POST /jobs/<kind>``: the job's id."""
    answer = httpx.post(f"{base}/jobs/{kind}", json=body, timeout=10)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["jobId"]
    return job_id


def get(base: str, path: str, **params: Any) -> Any:
    answer = httpx.get(base + path, params=params, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def cancelled_imagine(base: str, rds: redis.Redis, env: dict[str, str]) -> str:
    """An imagine job recorded with no Celery message yet (so no worker takes it first),
    then cancelled with ``DELETE /jobs/<id>`` as a user would."""
    job_id = secrets.token_urlsafe(16)
    events = JobEvents.for_settings(rds, Settings.from_env(env))
    fields = {"kind": "imagine", **task_fields("jobcast.imagine", {**SMALL, "seed": 1})}
    assert events.enqueue(job_id, fields).position >= 1
    answer = httpx.delete(f"{base}/jobs/{job_id}", timeout=10)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled", answer.text
    return job_id


def failing_analyze(env: dict[str, str], rds: redis.Redis) -> str:
    """An analyze job of a damaged PNG, sent to the task through ``submit`` (the route
    refuses such an image up front): the task fails it."""
    noise = Image.effect_noise((96, 96), 64).convert("RGB")
    out = io.BytesIO()
    noise.save(out, format="PNG")
    cut = out.getvalue()[:600]
    url = "data:image/png;base64," + base64.b64encode(cut[: len(cut) - len(cut) % 3]).decode()
    settings = Settings.from_env(env)
    job_id = secrets.token_urlsafe(16)
    events = JobEvents.for_settings(rds, settings)
    line = submit(
        create_celery(settings), events, settings, job_id, ANALYZE_TASK, {"image": url},
        {"kind": "analyze"},
    )  # fmt: skip
    assert line.position >= 1
    return job_id


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``GET /metrics``: (name, sorted labels) → value."""
    answer = httpx.get(base + "/metrics", headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def sample(numbers: dict[Any, float], name: str, **labels: str) -> float | None:
    return numbers.get((name, tuple(sorted(labels.items()))))


def kind_numbers(numbers: dict[Any, float]) -> dict[Any, float]:
    """The per-kind series only (``jobcast_kind_*``)."""
    return {key: v for key, v in numbers.items() if key[0].startswith("jobcast_kind_")}
