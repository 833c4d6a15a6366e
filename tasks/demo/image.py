"""The demo workload: generate an image step by step and report every phase."""

from __future__ import annotations

import time
from typing import Any

from celery import Task, shared_task

from tasks.app import context
from tasks.demo.generator import generate
from tasks.errors import JobCancelled
from tasks.lease import JobLease, LeaseLost, held
from tasks.media import image_path, save_png
from tasks.reporter import Reporter

PREVIEW_AT_PERCENT = 30


@shared_task(bind=True, name="jobcast.imagine", acks_late=True, reject_on_worker_lost=True)
def imagine(
    self: Task, job_id: str, prompt: str, width: int, height: int, steps: int, seed: int
) -> dict[str, Any] | None:
    """Render the prompt, reporting started, progress, one preview and done."""
    ctx = context(self.app)
    with held(ctx.events, job_id, ctx.settings.job_lease_seconds, need_record=True) as lease:
        if lease is None:
            return None  # a second copy of the message (a live attempt runs it), or no job
        reporter = Reporter(ctx.events, job_id)
        attempt = reporter.started(
            worker=self.request.hostname or "worker", expect="queued,running"
        )
        if attempt is None:
            return None  # cancelled while it waited, expired, or ended by an earlier attempt
        if attempt > ctx.settings.max_attempts:
            reporter.failed(f"Gave up after {attempt - 1} attempts: the worker kept stopping.")
            return None
        try:
            image_url = f"{ctx.settings.url_prefix}/imagine/{job_id}/image"
            args = (ctx.settings.media_dir, image_url, job_id, prompt, width, height, steps, seed)
            return _render(reporter, lease, *args)
        except LeaseLost:
            return None  # another attempt owns the job now and reports it
        except JobCancelled:
            reporter.cancelled(reason="cancelled while running")
            return None
        except Exception:
            reporter.failed("The image could not be generated.", retryable=False)
            raise


def _render(
    reporter: Reporter,
    lease: JobLease,
    media_dir: str,
    image_url: str,
    job_id: str,
    prompt: str,
    width: int,
    height: int,
    steps: int,
    seed: int,
) -> dict[str, Any]:
    began = time.monotonic()
    previewed = False
    final = None
    for frame in generate(prompt, width=width, height=height, steps=steps, seed=seed):
        lease.check()
        reporter.check_cancelled()
        reporter.progress(frame.step, frame.steps)
        if not previewed and frame.percent >= PREVIEW_AT_PERCENT and frame.step < frame.steps:
            reporter.preview(frame.to_image(), percent=frame.percent, width=width, height=height)
            previewed = True
        final = frame
    assert final is not None  # generate() yields at least one frame
    lease.check()
    save_png(final.to_image(), image_path(media_dir, job_id))
    seconds = round(time.monotonic() - began, 2)
    result = {
        "url": image_url,  # under JOBCAST_URL_PREFIX, where the web serves it
        "width": width,
        "height": height,
        "seconds": seconds,
    }
    reporter.done(**result)
    return result
