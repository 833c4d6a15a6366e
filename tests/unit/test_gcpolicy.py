"""The collector policy of the standalone app (web/gcpolicy.py), in this process's own
collector: what a full pass finds alive is frozen, later passes do not walk it, and a
cycle it leaves is collected after the refresh period, not never."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from web.gcpolicy import CollectorPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def policy() -> Iterator[tuple[CollectorPolicy, Clock]]:
    clock = Clock()
    policy = CollectorPolicy(refresh_seconds=300, clock=clock)
    gc.collect()
    assert gc.get_freeze_count() == 0  # the tests unfreeze all at the end: nothing else froze
    policy.install()
    try:
        yield policy, clock
    finally:
        policy.uninstall()
        gc.unfreeze()
        gc.collect()


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_full_pass_freezes_what_it_found_alive(policy: tuple[CollectorPolicy, Clock]) -> None:
    p, _ = policy
    kept = Node()
    assert gc.is_tracked(kept)
    gc.collect()
    assert p.full_passes == 1 and p.freezes == 1
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # out of every later walk
    young = Node()
    assert any(o is young for o in gc.get_objects())  # what came to life since is walked
    assert p.stats()["freezes"] == 1


def test_a_frozen_cycle_is_collected_after_the_refresh_period(
    policy: tuple[CollectorPolicy, Clock],
) -> None:
    p, clock = policy
    ref = cycle()
    holder = [ref()]  # alive when the pass runs: frozen with the rest
    gc.collect()
    holder.clear()  # now unreachable, but only as a cycle
    gc.collect()
    assert ref() is not None, "frozen objects are not walked before the refresh"
    clock.now += 299
    gc.collect()
    assert ref() is not None and p.refreshes == 0
    clock.now += 2
    gc.collect()  # the pass at which the period is over puts the frozen objects back
    assert p.refreshes == 1 and gc.get_freeze_count() == 0
    gc.collect()  # the next full pass walks them all
    assert ref() is None
    assert gc.get_freeze_count() > 0  # and its survivors are frozen again
    assert p.freezes == 4


def test_a_cycle_that_dies_young_is_collected_as_always(
    policy: tuple[CollectorPolicy, Clock],
) -> None:
    gc.collect()
    ref = cycle()
    gc.collect()
    assert ref() is None


def test_younger_passes_freeze_nothing(policy: tuple[CollectorPolicy, Clock]) -> None:
    p, _ = policy
    gc.collect(0)
    gc.collect(1)
    assert p.full_passes == 0 and gc.get_freeze_count() == 0
