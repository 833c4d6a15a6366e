"""A burst of POSTs through the script funnel (web/funnel.py) of a real gunicorn gevent
worker: every client gets its own job and its own place, the line in Redis is the
order of those places, and the enqueues went out in fewer pipelines than POSTs. With
``JOBCAST_SCRIPT_FUNNEL=false`` the same burst gets the same answers, one call each."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import Received, Stack, iter_events, logged, own_stack

from tasks.keys import Keys

POSTS = 120


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with own_stack(tmp_path, JOBCAST_POST_RATE_LIMIT="") as s:
        yield s


@pytest.mark.parametrize("funnel", ["true", "false"])
def test_a_burst_of_posts_gets_one_place_each(stack: Stack, funnel: str) -> None:
    _, base = stack.web(JOBCAST_SCRIPT_FUNNEL=funnel)

    def post(n: int) -> dict[str, object]:
        with httpx.Client(base_url=base, timeout=30) as client:
            response = client.post("/imagine", json={"prompt": f"burst {n}", "steps": 2})
            assert response.status_code == 202, response.text
            answer: dict[str, object] = response.json()
            return answer

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(post, range(POSTS)))
    ids = [str(a["jobId"]) for a in answers]
    assert len(set(ids)) == POSTS
    assert sorted(int(str(a["position"])) for a in answers) == list(range(1, POSTS + 1))
    by_place = [str(a["jobId"]) for a in sorted(answers, key=lambda a: int(str(a["position"])))]
    line = [raw.decode() for raw in stack.client().zrange(Keys().line().queue, 0, -1)]
    assert line == by_place
    for job_id in (ids[0], ids[-1]):  # each waits in line with its queued event
        assert [phase for _, phase in logged(stack.client(), job_id)] == ["queued"]
        assert [r.event for r in until_queued(base, job_id) if r.id] == ["queued"]
    health = httpx.get(base + "/healthz", timeout=5).json()
    if funnel == "true":
        stats = health["funnel"]
        assert stats["calls"] >= POSTS and stats["batches"] < stats["calls"], stats
    else:
        assert "funnel" not in health


def until_queued(base: str, job_id: str) -> list[Received]:
    """A stream's frames up to its queued one (the job waits: no worker runs here)."""
    got = []
    for received in iter_events(base, job_id, None, 15):
        got.append(received)
        if received.event == "queued":
            break
    return got
