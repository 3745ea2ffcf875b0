"""Listening to Celery's events (what Flower and `celery events` see) from a test."""

from __future__ import annotations

import threading
import time
from typing import Any


class EventLog:
    """Every Celery event on the broker while it runs, collected by a thread."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._receiver: Any = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def __enter__(self) -> EventLog:
        self._thread.start()
        # Any event (a worker's heartbeat too) says the listener's queue is bound.
        assert self._listening.wait(30), "no Celery event received"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True  # seen within a second (kombu's drain loop)
        self._thread.join(timeout=10)

    def _listen(self) -> None:
        from service.worker.app import app

        def record(event: dict[str, Any]) -> None:
            with self._lock:
                self.events.append(event)
            self._listening.set()

        try:
            with app.connection_for_read() as conn:
                self._receiver = app.events.Receiver(conn, handlers={"*": record})
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # reported by the next wait, not lost in the thread
            self._failure = exc

    def _check(self) -> None:
        if self._failure is not None:
            raise AssertionError(f"the event listener failed: {self._failure!r}")

    def of_task(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("uuid") == task_id]

    def wait_for(
        self, kind: str, task_id: str | None = None, timeout: float = 15
    ) -> dict[str, Any]:
        """The first event of type ``kind`` (for ``task_id``, if given) received after now
        or before; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._check()
            with self._lock:
                for event in self.events:
                    if event.get("type") == kind and task_id in (None, event.get("uuid")):
                        return event
            assert time.monotonic() < deadline, f"no {kind} event within {timeout}s"
            time.sleep(0.05)

    def count(self, kind: str, node: str = "") -> int:
        """How many events of type ``kind`` came from workers named ``node``..."""
        self._check()
        with self._lock:
            return sum(
                1
                for e in self.events
                if e.get("type") == kind and str(e.get("hostname", "")).startswith(node)
            )
