"""Live queue positions: exact, only ever going down, cheap, and the same on every web node."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from support import Proc, Received, gunicorn_web, iter_events, post_job, wait_until

BLOCKER = {"width": 512, "height": 512, "steps": 60}
MEDIUM = {"width": 256, "height": 256, "steps": 10}
TINY = {"width": 64, "height": 64, "steps": 1}


def job_keys(client: redis.Redis) -> set[bytes]:
    """Jobcast's keys, but the web processes' own metrics (rewritten every 2 s)."""
    return {k for k in client.scan_iter("jobcast:*") if not k.startswith(b"jobcast:web:")}


def positions(events: list[Received]) -> list[int]:
    return [e.data["position"] for e in events if e.event == "queued"]


def wait_running(rds: redis.Redis, job_id: str) -> None:
    wait_until(lambda: rds.hget(f"jobcast:job:{{{job_id}}}", "state") == b"running", 60, "running")


class Watch:
    """Read a stream in a thread, keeping every event, until it ends or we stop."""

    def __init__(self, base: str, job_id: str, until: str = "") -> None:
        self.events: list[Received] = []
        self.until = until
        self.thread = threading.Thread(target=self._run, args=(base, job_id), daemon=True)
        self.thread.start()

    def _run(self, base: str, job_id: str) -> None:
        for event in iter_events(base, job_id, timeout=120):
            self.events.append(event)
            if event.event == self.until:
                return

    def join(self) -> list[Received]:
        self.thread.join(120)
        assert not self.thread.is_alive(), "stream did not end"
        return self.events


def test_twelfth_job_sees_its_position_fall_to_one_then_start(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """12 jobs at once on one worker: the last one's positions only go down, reach 1, then started."""
    jobs = [post_job(web, prompt=f"city at night {n}", **MEDIUM) for n in range(12)]
    assert [j["position"] for j in jobs] == sorted(j["position"] for j in jobs)
    watch = Watch(web, jobs[-1]["jobId"], until="started")
    events = watch.join()
    seen = positions(events)
    assert seen[0] == jobs[-1]["position"]
    assert all(b <= a for a, b in itertools.pairwise(seen)), seen
    assert seen[-1] == 1
    assert len(set(seen)) >= 4  # it really moved while we watched
    assert [e.event for e in events][-1] == "started"
    derived = [e for e in events if e.event == "queued" and e.id is None]
    assert derived and all("etaSeconds" in e.data and "queueLength" in e.data for e in derived)
    wait_until(lambda: rds.zcard("jobcast:queue") == 0, 90, "the line to empty")


def test_late_viewer_gets_current_position_at_once(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """A client that connects while the job waits is told where it stands right after the backlog."""
    blocker = post_job(web, **BLOCKER)
    wait_running(rds, blocker["jobId"])
    waiting = [post_job(web, **TINY) for _ in range(4)]
    last = waiting[-1]["jobId"]
    frames: list[list[str]] = []
    with httpx.stream("GET", f"{web}/imagine/{last}/stream", timeout=10) as response:
        block: list[str] = []
        for line in response.iter_lines():
            if line:
                block.append(line)
            elif block:
                frames.append(block)
                block = []
            if len(frames) == 3:
                break
    retry, durable, derived = frames
    assert retry == ["retry: 3000"]
    assert durable[0].startswith("id: ") and durable[1] == "event: queued"
    assert derived[0] == "event: queued" and len(derived) == 2  # no id: line
    data = json.loads(derived[1].removeprefix("data: "))
    assert data["position"] == 4 and data["queueLength"] == 4 and "etaSeconds" in data
    status = httpx.get(f"{web}/imagine/{last}").json()
    assert status["state"] == "queued" and status["position"] == 4 and status["queueLength"] == 4


def test_cancelling_job_five_moves_everyone_behind_up(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """Cancel the 5th waiting job: jobs 6.. each see their position drop by exactly one."""
    blocker = post_job(web, **BLOCKER)
    wait_running(rds, blocker["jobId"])
    waiting = [post_job(web, **TINY) for _ in range(8)]
    assert [j["position"] for j in waiting] == list(range(1, 9))
    behind = waiting[5:]
    watches = [Watch(web, j["jobId"]) for j in behind]
    wait_until(lambda: all(len(positions(w.events)) >= 2 for w in watches), 20, "current positions")
    assert httpx.delete(f"{web}/imagine/{waiting[4]['jobId']}").json()["state"] == "cancelled"
    wait_until(lambda: all(len(positions(w.events)) >= 3 for w in watches), 20, "moved positions")
    for n, w in enumerate(watches):
        assert positions(w.events)[:3] == [6 + n, 6 + n, 5 + n]
    ahead = waiting[:4]
    for job in ahead:
        assert httpx.get(f"{web}/imagine/{job['jobId']}").json()["position"] == ahead.index(job) + 1


def test_full_line_is_refused_with_retry_after(
    web_with: Callable[..., str], worker: Proc, rds: redis.Redis
) -> None:
    """Above JOBCAST_MAX_QUEUE waiting jobs: 429, Retry-After, JSON error, nothing enqueued."""
    small_line_web = web_with(JOBCAST_MAX_QUEUE="3")  # its line holds at most 3 waiting jobs
    blocker = post_job(small_line_web, **BLOCKER)
    wait_running(rds, blocker["jobId"])
    for _ in range(3):
        post_job(small_line_web, **TINY)
    keys_before = job_keys(rds)
    celery_before = rds.llen("jobcast")
    response = httpx.post(small_line_web + "/imagine", json={"prompt": "one too many", **TINY})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "queue_full"
    assert job_keys(rds) == keys_before
    assert rds.llen("jobcast") == celery_before and rds.zcard("jobcast:queue") == 3


@pytest.fixture
def second_web(stack_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Another web process on the same Redis (a second node)."""
    proc, base = gunicorn_web(stack_env, tmp_path / "web2.log", workers=2)
    yield base
    proc.stop()


def test_two_web_processes_agree(web: str, second_web: str, worker: Proc, rds: redis.Redis) -> None:
    """Watchers of one job on different web processes see the same positions as the line moves."""
    blocker = post_job(web, **BLOCKER)
    wait_running(rds, blocker["jobId"])
    waiting = [post_job(web, **TINY) for _ in range(4)]
    target = waiting[-1]["jobId"]
    watches = [Watch(base, target) for base in (web, second_web, second_web, second_web)]
    wait_until(lambda: all(len(positions(w.events)) >= 2 for w in watches), 20, "current positions")
    for job in waiting[:2]:
        httpx.delete(f"{web}/imagine/{job['jobId']}")
        wait_until(
            lambda: (
                all(positions(w.events)[-1] == positions(watches[0].events)[-1] for w in watches)
                and positions(watches[0].events)[-1] < 4
            ),
            20,
            "every node to see the move",
        )
    wait_until(
        lambda: all(positions(w.events)[-1] == 2 for w in watches), 20, "position 2 everywhere"
    )
    assert httpx.get(f"{second_web}/imagine/{target}").json()["position"] == 2


def test_a_second_viewer_of_a_waiting_job_gets_its_place_from_the_first(
    web: str, worker: Proc, rds: redis.Redis
) -> None:
    """A job this process follows already: another stream of it is told the same place
    without a read (the departures keep it current), and both see it move."""
    blocker = post_job(web, **BLOCKER)
    wait_running(rds, blocker["jobId"])
    waiting = [post_job(web, **TINY) for _ in range(4)]
    last = waiting[-1]["jobId"]
    first = Watch(web, last)
    wait_until(lambda: len(positions(first.events)) >= 2, 20, "the first viewer's place")

    def shortcuts() -> int:
        return int(httpx.get(f"{web}/healthz", timeout=5).json()["line"]["shortcuts"])

    before = shortcuts()
    second = Watch(web, last)
    wait_until(lambda: len(positions(second.events)) >= 2, 20, "the second viewer's place")
    assert shortcuts() == before + 1
    assert positions(second.events)[:2] == [4, 4] == positions(first.events)[:2]
    assert httpx.delete(f"{web}/imagine/{waiting[1]['jobId']}").json()["state"] == "cancelled"
    for watch in (first, second):
        wait_until(lambda w=watch: 3 in positions(w.events), 20, "the place to move")
        assert positions(watch.events)[:3] == [4, 4, 3]
