"""The line's ordered structure: positions stay exact while departures cost O(1) (FIFO).

Each scenario runs in its own gevent-patched Python (as gunicorn's gevent worker is),
against the session's Redis, with a real hub. Departures are the publish script's own
(``started``, ``cancelled``, ``failed`` through ``JobEvents.publish``); after each step
every tracked position is compared with what Redis says (``ZRANK`` + 1). A race is made
certain by holding the hub's delivery until the other side has acted.
"""

from __future__ import annotations

import random
import secrets
import sys
from typing import Any

import pytest
from support import RedisServer, gevent_scenario, wait_until

from tasks.events import dumps
from web.line import Place
from web.sse import Event


def run_scenario(name: str, server: RedisServer) -> None:
    gevent_scenario("test_line_order", name, server)


@pytest.mark.parametrize(
    "place", [Place(1, 1, None), Place(3, 12, 0), Place(4999, 5000, 86400), Place(2, 7, None)]
)
def test_the_queued_frame_is_the_event_the_encoder_makes(place: Place) -> None:
    """The derived `queued` frame, formatted directly, is byte for byte the SSE event of
    its data as the encoder writes it (compact JSON, null for no ETA)."""
    expected = Event(event="queued", data=dumps(place.as_data())).encode()
    assert place.item().frame == expected and place.item().position == place.position


def test_fifo_departures_touch_no_tracked_job(redis_server: RedisServer) -> None:
    """Jobs leaving from the head of the line (as workers take them) move every tracked job
    up by one through the shift alone: no job's stored base changes, none is counted out
    of order, and every position is the one Redis has; the head's own departure drops it."""
    run_scenario("fifo", redis_server)


def test_out_of_order_departures_move_only_the_jobs_behind(redis_server: RedisServer) -> None:
    """Cancels and failures in the middle of the line (and jobs joining behind) leave
    the jobs ahead where they were and move those behind up: every position is Redis's."""
    run_scenario("out_of_order", redis_server)


def test_a_reading_ahead_of_the_hub_is_not_moved_twice(redis_server: RedisServer) -> None:
    """A place read after departures that the hub has not delivered yet counts them
    already: when their messages arrive it does not move again (it is #2, not #0), and
    departures after its reading move it as any other."""
    run_scenario("reading_ahead", redis_server)


def test_after_a_reconnect_and_a_counter_restart_positions_are_read_again(
    redis_server: RedisServer,
) -> None:
    """The hub's connection drops while jobs leave and the departure counter starts over
    (Redis lost it): the reread puts every position right, and the departures after it
    (with the new, lower versions) still move every tracked job."""
    run_scenario("reconnect_restart", redis_server)


def test_a_paced_flush_ends_with_every_watcher_at_its_place(redis_server: RedisServer) -> None:
    """Departures keep coming while the flush pauses between slices of frames (a low
    frame budget makes it pause often): every watcher's places only go down, and once the
    line is still, the last one each got is the job's place in Redis."""
    run_scenario("paced_flush", redis_server)


def test_the_flusher_and_the_rereader_survive_an_exception(redis_server: RedisServer) -> None:
    """An unexpected exception in a flush or a reread (a bug, a reply it cannot read) is
    logged and counted, and the greenlet goes on: every watcher still gets its job's place,
    and a reread after a reconnect still puts every position right."""
    run_scenario("survives", redis_server)


# -- the scenarios (run in the child) ----------------------------------------------------


class World:
    """A fresh prefix, N waiting jobs, a hub watching each tracked job, and a line."""

    def __init__(self, url: str, count: int, line_class: Any = None) -> None:
        import redis

        from tasks.events import JobEvents
        from tasks.keys import Keys
        from web.hub import Hub
        from web.line import Line

        self.client = redis.Redis.from_url(url)
        self.prefix = f"lineorder{secrets.token_hex(4)}:"
        self.events = JobEvents(self.client, prefix=self.prefix)
        self.keys = Keys(self.prefix)
        self.hub = Hub(url, confirm_timeout=10)
        self.jobs = [self.enqueue() for _ in range(count)]
        self.line = (line_class or Line)(self.hub, self.client, self.keys)

    def enqueue(self) -> str:
        job_id = secrets.token_urlsafe(16)
        self.events.enqueue(job_id, {"prompt": "p"})
        return job_id

    def watch(self, job_id: str) -> None:
        self.hub.watch(self.keys.channel(job_id))  # as its stream would: it stays tracked

    def track(self, job_id: str) -> None:
        if not self.hub.watchers_of(self.keys.channel(job_id).encode()):
            self.watch(job_id)
        assert self.line.track(job_id) is not None

    def leave(self, job_id: str, phase: str) -> None:
        """A departure of ``job_id``, waited for until the line has applied it."""
        seen = self.line.departures
        self.events.publish(
            job_id, phase, {}, **({} if phase == "started" else {"expect": "queued"})
        )
        wait_until(lambda: self.line.departures > seen, what=f"the departure of {job_id}")

    def check(self) -> None:
        """Every tracked job's position is the one Redis has; gone ones are not tracked."""
        for job_id in list(self.line.tracked):
            rank = self.client.zrank(self.keys.line(None).queue, job_id)
            assert rank is not None, f"{job_id} left the line but is still tracked"
            assert self.line.position(job_id) == rank + 1, (
                job_id,
                self.line.position(job_id),
                rank,
            )


def fifo(url: str) -> None:
    world = World(url, 60)
    tracked = world.jobs[::3]
    for job_id in tracked:
        world.track(job_id)
    line = world.line
    bases = {job_id: line.tracked[job_id].base for job_id in tracked}
    for job_id in world.jobs[:30]:
        world.leave(job_id, "started")
        world.check()
    survivors = [j for j in tracked if j in line.tracked]
    assert survivors == tracked[10:], "the jobs that started are still tracked"
    assert all(line.tracked[j].base == bases[j] for j in survivors), "a FIFO departure moved bases"
    assert line.out_of_order == 0 and line.shift == 30
    assert [line.position(j) for j in survivors] == [j * 3 + 1 for j in range(10)]


def out_of_order(url: str) -> None:
    world = World(url, 40)
    for job_id in world.jobs:
        world.track(job_id)
    rng = random.Random(7)
    for step in range(40):
        waiting = [j for j in world.jobs if j in world.line.tracked]
        if step % 5 == 4:
            job_id = world.enqueue()  # one joins at the back
            world.jobs.append(job_id)
            world.track(job_id)
            continue
        if len(waiting) < 3:
            break
        victim = rng.choice(waiting[1:])  # never the head: out of order
        world.leave(victim, rng.choice(["cancelled", "failed"]))
        assert victim not in world.line.tracked
        world.check()
    assert world.line.out_of_order > 0
    head = next(j for j in world.jobs if j in world.line.tracked)
    world.leave(head, "started")
    world.check()


def reading_ahead(url: str) -> None:
    import gevent.event

    from web.line import Line

    gate = gevent.event.Event()
    gate.set()

    class HeldLine(Line):
        def _on_message(self, payload: bytes) -> None:
            gate.wait(20)  # holds the hub's reader: messages wait in the socket
            super()._on_message(payload)

    world = World(url, 6, HeldLine)
    first, late = world.jobs[3], world.jobs[4]
    world.track(first)
    world.watch(late)  # subscribed now: the held reader could not confirm it later
    gate.clear()
    for job_id in world.jobs[:2]:
        world.events.publish(job_id, "started", {})  # both counted by late's reading
    world.track(late)  # read now: #3, at a version the line has not applied yet
    assert world.line.position(late) == 3 and late in world.line.ahead
    world.events.publish(world.jobs[2], "cancelled", {}, expect="queued")  # after the reading
    seen = world.line.departures
    gate.set()
    wait_until(lambda: world.line.departures == seen + 3, what="the three departures")
    assert world.line.position(late) == 2 and world.line.position(first) == 1
    assert late not in world.line.ahead, "the reading did not join the order once caught up"
    world.check()
    world.leave(first, "started")
    assert world.line.position(late) == 1
    world.check()


def reconnect_restart(url: str) -> None:
    world = World(url, 30)
    tracked = world.jobs[5::2]
    for job_id in tracked:
        world.track(job_id)
    for job_id in world.jobs[:3]:
        world.leave(job_id, "started")
    line, client = world.line, world.client
    reconnects, rereads = world.hub.reconnects, line.rereads
    client.delete(world.keys.line(None).version)  # Redis lost the counter
    client.client_kill_filter(_type="pubsub")
    for job_id in world.jobs[3:5]:  # missed or delivered with lower versions
        world.events.publish(job_id, "started", {})
    world.events.publish(tracked[2], "cancelled", {}, expect="queued")  # the last of them
    wait_until(
        lambda: (
            world.hub.reconnects > reconnects
            and line.rereads > rereads
            and line._rereader is None
            and tracked[2] not in line.tracked
        ),
        what="the reread, and the cancelled job gone",
    )
    world.check()
    for job_id in (tracked[0], tracked[4]):  # the head starts; one behind it fails
        world.leave(job_id, "started" if job_id == tracked[0] else "failed")
        world.check()
    assert tracked[0] not in line.tracked and tracked[4] not in line.tracked


def paced_flush(url: str) -> None:
    from web.hub import Watcher
    from web.line import Line

    class SlowLine(Line):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, interval=0.3, max_updates_per_second=1000, **kwargs)

    world = World(url, 50, SlowLine)
    watchers: dict[str, list[Watcher]] = {}
    for job_id in world.jobs[10:]:
        watchers[job_id] = [world.hub.watch(world.keys.channel(job_id)) for _ in range(4)]
        world.track(job_id)
    got: dict[Watcher, list[int]] = {w: [] for ws in watchers.values() for w in ws}

    def take() -> None:
        for watcher, seen in got.items():
            seen.extend(i.position for i in watcher.take() if i.position is not None)

    for job_id in world.jobs[:10] + world.jobs[20:25]:  # FIFO, then some out of order
        phase = "started" if job_id in world.jobs[:10] else "cancelled"
        world.events.publish(
            job_id, phase, {}, **({} if phase == "started" else {"expect": "queued"})
        )
        take()
    waiting = [j for j in watchers if j not in world.jobs[20:25]]
    wait_until(lambda: world.line.departures == 15, what="the departures")
    world.check()

    def settled() -> bool:
        take()
        return all(
            got[w] and got[w][-1] == world.line.position(j) for j in waiting for w in watchers[j]
        )

    wait_until(settled, what="every watcher's last place to be its job's")
    for seen in got.values():
        assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen), seen


def survives(url: str) -> None:
    from web.hub import Watcher
    from web.line import Line

    failures = {"flush": 1, "reread": 1}

    class FlakyLine(Line):
        def _flush(self) -> None:
            if failures["flush"]:
                failures["flush"] -= 1
                raise RuntimeError("a flush that breaks once")
            super()._flush()

        def _reread_all(self) -> bool:
            if failures["reread"]:
                failures["reread"] -= 1
                raise RuntimeError("a reread that breaks once")
            return super()._reread_all()

    world = World(url, 12, FlakyLine)
    watchers: dict[str, Watcher] = {}
    for job_id in world.jobs[4:]:
        watchers[job_id] = world.hub.watch(world.keys.channel(job_id))
        world.track(job_id)
    for job_id in world.jobs[:2]:
        world.leave(job_id, "started")
    last: dict[str, int] = {}

    def settled() -> bool:
        for job_id, watcher in watchers.items():
            for item in watcher.take():
                if item.position is not None:
                    last[job_id] = item.position
        return all(last.get(j) == world.line.position(j) for j in watchers)

    wait_until(settled, what="every watcher's place after a flush that broke")
    rereads = world.line.rereads
    world.client.client_kill_filter(_type="pubsub")  # the hub reconnects: a reread
    world.events.publish(world.jobs[2], "started", {})
    wait_until(
        lambda: (
            failures["reread"] == 0
            and world.line.rereads > rereads
            and world.line._rereader is None
        ),
        what="a reread that broke, then one that held",
    )
    world.check()
    assert world.line.crashes == 2 and failures == {"flush": 0, "reread": 0}


SCENARIOS = {
    "survives": survives,
    "paced_flush": paced_flush,
    "fifo": fifo,
    "out_of_order": out_of_order,
    "reading_ahead": reading_ahead,
    "reconnect_restart": reconnect_restart,
}


def main() -> None:
    """In the child: run the scenario named by argv[1] against the Redis at argv[2]."""
    SCENARIOS[sys.argv[1]](sys.argv[2])
    print("ok")
