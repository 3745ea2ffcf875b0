"""When this worker process next publishes jobs held by a rate window.

A job held by a rate window is due at its ``throttled_until``. Every worker process runs one
publisher (``service.worker.maintenance``) that sleeps until the next due time it knows of,
at most ``EZQ_FLOW_RECHECK``: the time the database gave at its last round, and those of the
jobs this process throttled since (``expect``, called at the throttle). Each due job is
published by one publisher of all (``flow_db.wake_due`` locks and unflags it), so
duplicates do not pile up with workers. Jobs held with no time (a concurrency limit, an
outranking) are not its: a call's end wakes them, or the sweep's recheck.
"""

from __future__ import annotations

import math
import threading
import time

# Published a moment after it is due, so that the claim that throttled it has committed
# and the database's clock has reached its time.
DUE_MARGIN_S = 0.05


class DueTimes:
    """The earliest time (monotonic) this process knows a throttled job is due."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = math.inf
        self._interrupted = False

    def expect(self, in_s: float) -> None:
        """A throttled job is due in ``in_s`` seconds: wake the publisher then."""
        at = time.monotonic() + max(in_s, 0.0) + DUE_MARGIN_S
        with self._cond:
            if at < self._next:
                self._next = at
                self._cond.notify_all()

    def wait(self, longest_s: float) -> None:
        """Sleep until the earliest due time known, at most ``longest_s``, or ``interrupt``."""
        cap = time.monotonic() + longest_s
        with self._cond:
            while not self._interrupted:
                remaining = min(self._next, cap) - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._next <= time.monotonic():
                self._next = math.inf  # reached: the round about to run takes it

    def interrupt(self) -> None:
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._interrupted = False
            self._next = math.inf


due_times = DueTimes()
