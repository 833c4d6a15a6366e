"""The demo's image kind: render a prompt step by step, with one blurred preview.

Everything around the rendering (lease, started, attempts, cancel, failed, done) is the
platform's (:class:`tasks.jobs.JobTask`); this module is only the workload.
"""

from __future__ import annotations

import time
from typing import Any

from tasks.demo.generator import generate
from tasks.jobs import JobContext, job_task

PREVIEW_AT_PERCENT = 30


def render(job: JobContext, prompt: str, width: int, height: int, steps: int, seed: int) -> None:
    """Draw the prompt step by step: progress each step, one blurred preview once past
    PREVIEW_AT_PERCENT, then the picture as the job's ``image.png``."""
    previewed = False
    final = None
    for frame in generate(prompt, width=width, height=height, steps=steps, seed=seed):
        job.progress(frame.step, frame.steps)
        if not previewed and frame.percent >= PREVIEW_AT_PERCENT and frame.step < frame.steps:
            job.preview(frame.to_image(), percent=frame.percent, width=width, height=height)
            previewed = True
        final = frame
    assert final is not None  # generate() yields at least one frame
    job.check()
    job.save_file("image.png", final.to_image())


@job_task(name="jobcast.imagine", failure_message="The image could not be generated.")
def imagine(
    job: JobContext, prompt: str, width: int, height: int, steps: int, seed: int
) -> dict[str, Any]:
    """Render the prompt, reporting progress, one preview and the final image."""
    began = time.monotonic()
    render(job, prompt, width, height, steps, seed)
    return {
        "url": f"{job.settings.url_prefix}/imagine/{job.id}/image",  # where the web serves it
        "width": width,
        "height": height,
        "seconds": round(time.monotonic() - began, 2),
    }
