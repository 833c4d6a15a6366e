"""A user's own Celery app and tasks, outside ``tasks/``: what the platform tests run.

Workers start it as ``celery -A platform_app worker``; nothing here comes from Jobcast
but the public surface (``import jobcast``).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from celery import Celery
from pydantic import BaseModel, ConfigDict, Field

import jobcast

app = Celery("platform_app", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
jobcast.configure_celery(app)
app.conf.task_default_queue = "jobcast"


@jobcast.job_task(name="user.count")
def count(job: jobcast.JobContext, n: int, fail: str = "") -> dict[str, Any]:
    """Count to ``n`` in five stages, logging as it goes; ``fail`` makes it fail."""
    digest = b""
    for i in range(1, n + 1):
        if i % max(1, n // 5) == 1 or n < 5:
            job.step("stage", index=min(5, 1 + 5 * (i - 1) // n), total=5)
        digest = hashlib.sha256(digest + str(i).encode()).digest()
        job.log(f"counted {i} of {n}")
        job.progress(i, n)
        if fail == "job" and i == n // 2:
            raise jobcast.JobError(f"Stopped at {i}: the input asked for it.")
        if fail == "crash" and i == n // 2:
            raise RuntimeError("secret /etc/shadow path in a traceback")
    return {"counted": n, "digest": digest.hex()[:16], "meta": job.meta}


@jobcast.job_task(name="user.spin")
def spin(job: jobcast.JobContext, limit: int = 10**9) -> dict[str, Any]:
    """Hash until cancelled (or ``limit`` rounds): a long job to cancel."""
    digest = b""
    for i in range(limit):
        digest = hashlib.sha256(digest).digest()
        job.progress(i % 100, 100)
    return {"rounds": limit}


@jobcast.job_task(name="user.chat")
def chat(job: jobcast.JobContext, tokens: int, rate: float = 60.0) -> dict[str, Any]:
    """Stream ``tokens`` words at ``rate`` per second, as an LLM answering would."""
    words = []
    began = time.monotonic()
    for i in range(tokens):
        word = f"w{i} "
        words.append(word)
        job.delta(word)
        pause = began + (i + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the model's pace, not a test waiting for something
    return {"text": "".join(words)}


@jobcast.job_task(name="user.oversize")
def oversize(job: jobcast.JobContext, text_bytes: int, result_bytes: int) -> dict[str, Any]:
    """One ``delta`` of ``text_bytes`` (longer than an event takes) and a result of
    ``result_bytes``."""
    job.delta("é" * (text_bytes // 2))
    job.flush()
    return {"blob": "x" * result_bytes}


@jobcast.job_task(name="user.misbehave")
def misbehave(job: jobcast.JobContext, how: str) -> Any:
    """Ways a careless body goes wrong (the review's attacks): ``how`` names one."""
    if how == "surrogate-then-raise":
        job.delta("fine so far ")
        job.delta("\ud800")  # a lone surrogate: no UTF-8 for it
    if how == "held-text-then-joberror":
        job.delta("fine so far ")
        try:
            job.delta("\udfff")
        except ValueError:
            pass  # a careless body carries on
        raise jobcast.JobError("It went wrong after some text.")
    if how == "long-error":
        raise jobcast.JobError("Tool output: " + "x" * 70_000)
    if how == "surrogate-error":
        raise jobcast.JobError("Bad byte in \udcff the input.")
    if how == "async-cancelled":
        import asyncio

        raise asyncio.CancelledError()  # a BaseException, as an asyncio body leaks it
    if how == "reject":
        from celery.exceptions import Reject

        raise Reject("not for us", requeue=False)
    if how == "control-text":
        job.delta("\x01" * 20_000)  # 6 bytes each once JSON-escaped
        job.flush()
        return {"ok": True}
    return {"how": how}


@jobcast.job_task(name="user.retrying")
def retrying(job: jobcast.JobContext, times: int, countdown: float = 0) -> dict[str, Any]:
    """``self.retry()`` until this is attempt ``times + 1``, then done."""
    job.log(f"attempt {job.attempt}")
    if job.attempt <= times:
        raise job.task.retry(countdown=countdown, max_retries=100)
    return {"attempt": job.attempt}


@jobcast.job_task(name="user.chatter")
def chatter(job: jobcast.JobContext, lines: int, every: float = 0.02) -> dict[str, Any]:
    """Only logs (no progress, no step): ``lines`` lines, ``every`` seconds apart."""
    for i in range(lines):
        job.log(f"line {i}", attempt=job.attempt)
        time.sleep(every)  # the work's own pace
    return {"lines": lines}


@jobcast.job_task(name="user.overtime", time_limit=2)
def overtime(job: jobcast.JobContext, seconds: float) -> dict[str, Any]:
    """Work ``seconds`` under a 2 s hard time limit (Celery kills the pool process)."""
    job.log("working")
    time.sleep(seconds)  # the work itself
    return {"seconds": seconds}


class CountParams(BaseModel):
    """What ``POST /jobs/count`` takes: validation, defaults and the OpenAPI schema."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(ge=1, le=1000, description="How far to count.")


# Offered over HTTP by every web process that imports this module (JOBCAST_IMPORTS).
jobcast.register_kind(
    jobcast.Kind(name="count", params=CountParams, task="user.count", queue="user",
                 title="Count to n", description="Counts, logging every number.")
)  # fmt: skip


@jobcast.job_task(name="user.part")
def part(
    job: jobcast.JobContext, *values: Any, n: int = 10, every: float = 0.01, fail: bool = False
) -> Any:
    """A canvas member: ``n`` steps ``every`` seconds apart, then the values it was given
    (a link's predecessor results come first) and its own ``n``; ``fail`` fails it."""
    for i in range(1, n + 1):
        job.progress(i, n)
        time.sleep(every)  # the work's own pace
        if fail and i == n // 2:
            raise jobcast.JobError(f"part {job.id} stopped at {i}")
    return {"got": list(values), "n": n}


@jobcast.job_task(name="user.total")
def total(job: jobcast.JobContext, values: Any) -> int:
    """A chord callback: the sum of its members' ``n``."""
    job.progress(1, 1)
    return sum(v["n"] for v in values)
