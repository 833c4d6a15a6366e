"""End to end: the analyze kind on a real worker, watched over the real SSE stream."""

from __future__ import annotations

import base64
import io
import json
import secrets
from pathlib import Path
from typing import Any

import redis
from PIL import Image
from support import Proc, Received, collect, logged

from tasks.app import create_celery
from tasks.config import Settings
from tasks.demo.analysis import STAGES
from tasks.demo.analyze_params import TASK, AnalyzeParams
from tasks.events import JobEvents
from tasks.submit import submit


def start(stack_env: dict[str, str], rds: redis.Redis, kwargs: dict[str, Any]) -> str:
    """Submit an analyze job through the low-level submit; return its id."""
    settings = Settings.from_env(stack_env)
    app = create_celery(settings)
    job_id = secrets.token_urlsafe(16)
    fields = {"kind": "analyze", "prompt": str(kwargs.get("prompt", ""))}
    events = JobEvents.for_settings(rds, settings)
    line = submit(app, events, settings, job_id, TASK, kwargs, fields)
    assert line.position >= 1
    return job_id


def of(events: list[Received], kind: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.event == kind]


def test_analyze_streams_five_steps_in_order_then_the_report(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """A generated picture's analysis streams one step per stage (1..5 of 5, in order),
    a log line each, the thumbnail's preview, then `done` with the report; the stream is
    exactly the log, and the files are saved under the job's folder."""
    params = AnalyzeParams(prompt="a red desert under a blue sky", seed=11, size=128, colours=4)
    job_id = start(stack_env, rds, params.model_dump())
    events = collect(web, job_id)
    assert [(e.id, e.event) for e in events if e.id] == logged(rds, job_id)

    steps = of(events, "step")
    assert [(s["name"], s["index"], s["total"]) for s in steps] == [
        (name, i, 5) for i, name in enumerate(STAGES, 1)
    ]
    assert steps[0]["width"] == 128 and len(steps[1]["colours"]) == 4
    messages = [line["message"] for line in of(events, "log")]
    assert messages[0] == "Drawing “a red desert under a blue sky” (128×128, seed 11) to analyze"
    assert messages[2].startswith("Palette: 4 colours, mostly #")
    assert len(messages) == 6 and all(line["level"] == "info" for line in of(events, "log"))

    kinds = [e.event for e in events if e.id]
    assert kinds[-1] == "done" and kinds.index("preview") > kinds.index("step")
    assert of(events, "progress")[-1]["percent"] == 100
    preview = of(events, "preview")[0]
    assert (preview["width"], preview["height"]) == (128, 128) and preview["blurhash"]

    done = events[-1].data
    assert len(done["palette"]) == 4
    assert abs(sum(c["share"] for c in done["palette"]) - 1) < 1e-3
    assert 0 <= done["edges"]["density"] <= 1 and done["histogram"]["brightness"]
    assert done["files"] == ["edges.png", "thumbnail.png", "report.json"]

    folder = Path(stack_env["JOBCAST_MEDIA_DIR"]) / job_id
    with Image.open(folder / "edges.png") as edges:
        assert edges.size == (128, 128) and edges.mode == "L"
    with Image.open(folder / "thumbnail.png") as thumb:
        assert thumb.size == (128, 128)
    assert json.loads((folder / "report.json").read_text()) == done


def test_an_uploaded_picture_is_what_gets_analysed(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """An uploaded half-green half-white PNG gives exactly those two colours at 50 %."""
    picture = Image.new("RGB", (300, 100), (0, 160, 0))
    picture.paste((255, 255, 255), (150, 0, 300, 100))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    job_id = start(stack_env, rds, AnalyzeParams(image=url, colours=5).model_dump())
    events = collect(web, job_id)
    assert events[-1].event == "done"
    palette = events[-1].data["palette"]
    assert sorted((c["hex"], c["share"]) for c in palette) == [("#00a000", 0.5), ("#ffffff", 0.5)]
    assert of(events, "log")[0]["message"] == "Reading the uploaded PNG"
    assert of(events, "preview")[0]["width"] == 300


def test_a_damaged_upload_fails_the_job_saying_why(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """A PNG cut short (its header reads, its pixels do not), sent straight to the task,
    ends the job with `failed` naming the problem, and no stage runs."""
    noise = Image.effect_noise((96, 96), 64).convert("RGB")
    out = io.BytesIO()
    noise.save(out, format="PNG")
    cut = out.getvalue()[:600]
    url = "data:image/png;base64," + base64.b64encode(cut[: len(cut) - len(cut) % 3]).decode()
    job_id = start(stack_env, rds, {"image": url})
    events = collect(web, job_id)
    assert events[-1].event == "failed"
    assert (
        events[-1].data["error"] == "The uploaded image could not be read: the PNG data is damaged"
    )
    assert of(events, "step") == []


def test_arguments_past_the_model_meet_its_limits(
    web: str, worker: Proc, rds: redis.Redis, stack_env: dict[str, str]
) -> None:
    """A size the model refuses, sent straight to the task, fails the job saying which
    field is wrong, instead of drawing a picture of that size."""
    job_id = start(stack_env, rds, {"size": 100_000, "colours": 3})
    events = collect(web, job_id)
    assert events[-1].event == "failed"
    assert events[-1].data["error"] == (
        "The job's parameters are not valid: size must be an integer from 64 to 512"
    )
