"""Jobcast's public surface: what an app that adopts it imports.

    import jobcast

    jobcast.configure_celery(app)                 # your Celery app runs Jobcast jobs

    @jobcast.job_task(name="myapp.render")        # a task that reports as a job
    def render(job, prompt): ...

    handle = jobcast.submit(render.s(prompt="a cat"))   # from any process

    jobcast.register_kind(jobcast.Kind(name="render", params=RenderParams,
                                       task="myapp.render"))  # POST /jobs/render
    jobcast.Jobcast(flask_app, url_prefix="/jobcast")     # embed the routes and pages

The names resolve lazily, so a worker that imports ``jobcast`` loads no Flask and a web
process no more than it uses. The implementation lives in ``tasks`` (the platform core
that workers need) and ``web`` (the HTTP side).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "configure_celery": "tasks.app",
    "job_task": "tasks.jobs",
    "JobTask": "tasks.jobs",
    "JobContext": "tasks.jobs",
    "submit": "tasks.handle",
    "JobHandle": "tasks.handle",
    "JobError": "tasks.errors",
    "JobCancelled": "tasks.errors",
    "QueueFull": "tasks.errors",
    "EventTooLarge": "tasks.events",
    "Settings": "tasks.config",
    "Kind": "tasks.kinds",
    "register_kind": "tasks.kinds",
    "Jobcast": "web.embed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobcast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
