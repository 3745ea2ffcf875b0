"""A worker's own webhooks, first attempted in its process right after the commit.

A job's thread hands the deliveries its final commit has just written to a few delivery
threads of the same process, instead of publishing an ``ezq.deliver_webhook`` message for
each: the first attempt then costs no publish, no broker round trips, no task of its own
and no thread of the job pool. The outbox makes it safe: the delivery row is committed
before the hand-over, so a process that dies with deliveries in hand leaves them to the
sweep (after ``WEBHOOK_SWEEP_GRACE_S``), as a message lost on its way would.

Everything else goes the way it always went, as a message each: the retries an attempt
schedules, an attempt the database was down for, and what the threads cannot take now
(all of them busy with slow receivers and as many waiting), so one slow receiver never
holds the others' events back behind it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable

log = logging.getLogger(__name__)

Publish = Callable[[list[uuid.UUID]], object]  # what it returns is not used
DeliverOne = Callable[[uuid.UUID], None]


class LocalDeliveries:
    """``threads`` daemon threads attempting deliveries; a few more waiting their turn."""

    def __init__(self, threads: int, *, deliver_one: DeliverOne, publish: Publish) -> None:
        self._threads_wanted = threads
        self._deliver_one = deliver_one
        self._publish = publish
        self._waiting: collections.deque[uuid.UUID] = collections.deque()
        self._busy = 0  # threads making an attempt
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, delivery_ids: list[uuid.UUID]) -> None:
        """Attempt these committed deliveries here, or publish those that cannot wait."""
        spill: list[uuid.UUID] = []
        with self._cond:
            if self._closed or self._threads_wanted <= 0:
                spill = list(delivery_ids)
            else:
                if not self._threads:
                    self._start()
                for delivery_id in delivery_ids:
                    # Waiting here is for a moment only: one per free thread, and as many
                    # again as there are threads. Beyond that a message is sent, and the
                    # whole job pool takes it.
                    if len(self._waiting) < 2 * self._threads_wanted - self._busy:
                        self._waiting.append(delivery_id)
                    else:
                        spill.append(delivery_id)
                if self._waiting:
                    self._cond.notify(len(self._waiting))
        if spill:
            self._publish(spill)

    def close(self, timeout: float) -> None:
        """Take no more; publish what waits; give the running attempts ``timeout`` seconds
        between them."""
        with self._cond:
            self._closed = True
            left = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        if left:
            try:
                self._publish(left)
            except Exception:  # their rows are committed: the sweep publishes them
                log.warning("could not publish %d waiting webhook deliveries", len(left))
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _start(self) -> None:
        for n in range(self._threads_wanted):
            thread = threading.Thread(target=self._work, name=f"ezq-webhook-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return  # closed
                delivery_id = self._waiting.popleft()
                self._busy += 1
            try:
                self._deliver_one(delivery_id)
            except Exception:  # a bug, not a receiver's answer: its row waits for the sweep
                log.exception("[webhook=%s] delivery attempt failed", delivery_id)
            finally:
                with self._cond:
                    self._busy -= 1
