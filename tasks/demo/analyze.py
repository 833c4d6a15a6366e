"""The demo's ``analyze`` kind: analyse a picture in five stages, reporting each.

Per stage (:mod:`tasks.demo.analysis`): a ``step`` event with its index and a small
summary, a ``log`` line, and progress. The edge map and the thumbnail are saved as files
as soon as they exist, the thumbnail also goes out as the blurred preview, and the job
ends with the report (also saved as ``report.json``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from PIL import Image
from pydantic import ValidationError

from tasks.demo.analysis import Stage, analyze, report
from tasks.demo.analyze_params import (
    DEFAULT_COLOURS,
    DEFAULT_PROMPT,
    DEFAULT_SIZE,
    TASK,
    AnalyzeParams,
    open_upload,
)
from tasks.demo.generator import generate
from tasks.errors import JobError
from tasks.jobs import JobContext, job_task

FILES = {"edges": "edges.png", "thumbnail": "thumbnail.png"}


@job_task(name=TASK, failure_message="The image could not be analysed.")
def analyze_image(
    job: JobContext,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    colours: int = DEFAULT_COLOURS,
    image: str | None = None,
) -> dict[str, Any]:
    """Analyse the uploaded ``image``, or else the generator's picture of ``prompt``."""
    began = time.monotonic()
    try:  # the web validated these; a job submitted past the model gets the same limits
        AnalyzeParams(prompt=prompt, seed=seed, size=size, colours=colours, image=image)
    except ValidationError as exc:
        raise JobError(f"The job's parameters are not valid: {_problems(exc)}") from None
    picture = _source(job, prompt, seed, size, image)
    stages: list[Stage] = []
    for stage in analyze(picture, colours=colours):
        job.step(stage.name, index=stage.index, total=stage.total, **brief(stage))
        job.log(stage.message)
        if stage.image is not None:
            job.save_file(FILES[stage.name], stage.image)
        if stage.name == "thumbnail" and stage.image is not None:
            job.preview(stage.image, width=picture.width, height=picture.height)
        job.progress(stage.index, stage.total)
        stages.append(stage)
    result = report(stages)
    result["input"] = {"kind": "upload"} if image else {"kind": "generated", "seed": seed}
    result["prompt"] = prompt
    result["seconds"] = round(time.monotonic() - began, 2)
    result["files"] = [*FILES.values(), "report.json"]
    job.check()
    job.save_file("report.json", json.dumps(result, indent=2) + "\n")
    return result


def _source(job: JobContext, prompt: str, seed: int, size: int, image: str | None) -> Image.Image:
    if image:
        try:
            picture = open_upload(image)
        except ValueError as exc:
            raise JobError(f"The uploaded image could not be read: {exc}") from None
        job.log(f"Reading the uploaded {picture.format or 'image'}")
        return picture
    job.log(f"Drawing “{prompt}” ({size}×{size}, seed {seed}) to analyze")
    frames = generate(prompt, width=size, height=size, steps=1, seed=seed)
    return next(frames).to_image()  # one step is the finished picture


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))} {e['msg']}" for e in exc.errors())


def brief(stage: Stage) -> dict[str, Any]:
    """What a ``step`` event says about a stage: the summary without its bulk."""
    summary = stage.summary
    if stage.name == "palette":
        return {"colours": [c["hex"] for c in summary["colours"]]}
    if stage.name == "histogram":
        return {k: summary[k] for k in ("brightness", "mean", "contrast")}
    return dict(summary)
