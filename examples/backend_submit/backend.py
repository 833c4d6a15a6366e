"""A plain-Python backend beside a standalone Jobcast service.

Your app (Django, FastAPI, anything) keeps its own users and pages; Jobcast runs next to
it (`jobcast dev`, or docker compose) with ``JOBCAST_SIGNING_KEY`` set and your app's
origin in ``JOBCAST_CORS_ORIGINS``. The backend submits over HTTP and hands the browser
only what it needs for exactly that job: the stream URL, which carries the job's token.
Run it as a script to watch a job from the terminal:

    JOBCAST_URL=http://127.0.0.1:8000 python backend.py "a lighthouse at dusk"
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse

JOBCAST_URL = os.environ.get("JOBCAST_URL", "http://127.0.0.1:8000")


def start_render(prompt: str, *, user: str, client: httpx.Client) -> dict[str, Any]:
    """What your view returns to its page: the job and the URLs its browser may use."""
    response = client.post(
        f"{JOBCAST_URL}/jobs/imagine",
        json={"prompt": prompt, "width": 128, "height": 128, "steps": 8},
        # The same key returns the same job: a retried request does not render twice.
        headers={"Idempotency-Key": hashlib.sha256(f"{user}:{prompt}".encode()).hexdigest()},
    )
    if response.status_code not in (200, 202):
        error = response.json()["error"]  # every Jobcast error is JSON
        raise RuntimeError(f"Jobcast refused the job: {error['code']}: {error['message']}")
    job = response.json()
    return {
        "jobId": job["jobId"],
        "stream": JOBCAST_URL + job["stream"],  # signed: opens this job and no other
        "status": JOBCAST_URL + job["status"],
    }


def follow(stream_url: str, client: httpx.Client) -> Iterator[tuple[str, dict[str, Any]]]:
    """The job's events, as the browser's EventSource would get them, to the end."""
    with connect_sse(client, "GET", stream_url) as source:
        source.response.raise_for_status()
        for event in source.iter_sse():
            if event.data:
                yield event.event, json.loads(event.data)


def main(prompt: str) -> int:
    with httpx.Client(timeout=httpx.Timeout(60, connect=5)) as client:
        job = start_render(prompt, user="cli", client=client)
        print(f"job {job['jobId']}")
        for kind, data in follow(job["stream"], client):
            print(kind, json.dumps(data))
            if kind in ("done", "failed", "cancelled"):
                return 0 if kind == "done" else 1
    return 1


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "a lighthouse at dusk"))
