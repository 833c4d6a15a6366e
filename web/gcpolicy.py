"""Full passes of Python's cyclic collector that do not stall every stream.

A full pass (generation 2) walks every object the collector tracks. A web process with
5,000 open streams tracks about 47 per stream (gunicorn's request, parser and response,
the greenlet, its socket and watchers, our Stream and Watcher): 230,000 objects, and a
pass over them took 28-91 ms here, during which no stream is written. Python starts
one whenever a quarter more objects than the last pass kept have lived long enough to
reach generation 2, so a process that keeps opening streams pays one every few thousand
connects, and a burst of connects leaves the next one due in the middle of the publishing
that follows.

Nearly everything such a pass finds alive stays alive, or is freed by its reference
count (a closed stream leaves no reference cycle: measured, nothing for the collector).
So after each full pass the survivors are frozen (``gc.freeze()``): later passes walk
only what has come to live since, a fraction of the heap. An object frozen while alive
that later becomes part of an unreachable cycle is not collected until the next refresh:
every ``refresh_seconds`` the frozen objects are put back (``gc.unfreeze()``), the next
full pass walks them all once and collects what was left, and its survivors are frozen
again. So the memory such cycles hold is bounded by what they leak in one refresh period,
and one full-heap pass is paid per period instead of one per quarter of growth.

Everything happens in the collector's own callback, at the end of a pass Python started:
no greenlet, no timer. Only the standalone app (``create_app()`` under gevent) installs
it: an app that embeds Jobcast keeps its collector as it has it. Python 3.14's collector
is incremental (it has no such full passes): there it is not installed.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any

OLDEST = 2  # gc's oldest generation


class CollectorPolicy:
    """Freeze the survivors of every full pass; thaw them every ``refresh_seconds``."""

    def __init__(self, refresh_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.full_passes = 0
        self.freezes = 0
        self.refreshes = 0
        self.longest_ms = 0.0  # the longest full pass seen
        self._refreshed_at = clock()
        self._started_at = 0.0
        self._thawed = False  # the frozen objects were put back: the next pass walks all

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def stats(self) -> dict[str, Any]:
        return {
            "fullPasses": self.full_passes,
            "freezes": self.freezes,
            "refreshes": self.refreshes,
            "longestFullPassMs": round(self.longest_ms, 1),
        }

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # Called by the collector around every pass; an exception here would be printed
        # as unraisable and lost, so nothing below may raise.
        if info.get("generation") != OLDEST:
            return
        if phase == "start":
            self._started_at = time.perf_counter()
            return
        self.full_passes += 1
        self.longest_ms = max(self.longest_ms, (time.perf_counter() - self._started_at) * 1e3)
        now = self.clock()
        if not self._thawed and now - self._refreshed_at >= self.refresh_seconds:
            # Put the frozen objects back: the next full pass walks them and collects the
            # cycles they left. Until then, nothing is frozen.
            gc.unfreeze()
            self._thawed = True
            self._refreshed_at = now
            self.refreshes += 1
            return
        # The survivors are in generation 2, alone (a full pass merges the younger ones
        # into it): they leave the collector's walks until the next refresh.
        gc.freeze()
        self._thawed = False
        self.freezes += 1


_installed: CollectorPolicy | None = None


WANTED = sys.version_info < (3, 14)  # before Python's incremental collector


def install(refresh_seconds: float) -> CollectorPolicy:
    """The process's policy, installed on first call (one per process, as the collector
    is: a later call changes its period)."""
    global _installed
    if _installed is None:
        _installed = CollectorPolicy(refresh_seconds)
        _installed.install()
    else:
        _installed.refresh_seconds = refresh_seconds
    return _installed
