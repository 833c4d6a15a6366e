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
