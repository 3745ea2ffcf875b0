"""Listening to Celery's events (what Flower and `celery events` see) from a test."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class EventLog:
    """Every Celery event on the broker while it runs, collected by a thread; a wait
    wakes on each event that arrives."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._receiver: Any = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def __enter__(self) -> EventLog:
        self._thread.start()
        # Any event (a worker's heartbeat too) says the listener's queue is bound.
        self._wait(lambda: bool(self.events), "any Celery event", timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True  # seen within a second (kombu's drain loop)
        self._thread.join(timeout=10)

    def _listen(self) -> None:
        from service.worker.app import app

        def record(event: dict[str, Any]) -> None:
            with self._arrived:
                self.events.append(event)
                self._arrived.notify_all()

        try:
            with app.connection_for_read() as conn:
                self._receiver = app.events.Receiver(conn, handlers={"*": record})
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # reported by the waits, not lost in the thread
            with self._arrived:
                self._failure = exc
                self._arrived.notify_all()

    def _wait(self, found: Callable[[], Any], what: str, timeout: float) -> Any:
        with self._arrived:
            result = self._arrived.wait_for(lambda: self._failure is not None or found(), timeout)
            if self._failure is not None:
                raise AssertionError(f"the event listener failed: {self._failure!r}")
            assert result, f"no {what} within {timeout}s"
            return result

    def of_task(self, task_id: str) -> list[dict[str, Any]]:
        with self._arrived:
            return [e for e in self.events if e.get("uuid") == task_id]

    def wait_for(self, kind: str, task_id: str | None = None, timeout: float = 15) -> Any:
        """The first event of type ``kind`` (for ``task_id``, if given), received before
        or within ``timeout`` seconds."""

        def first() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in self.events
                    if e.get("type") == kind and task_id in (None, e.get("uuid"))
                ),
                None,
            )

        return self._wait(first, f"{kind} event", timeout)

    def count(self, kind: str, node: str = "") -> int:
        """How many events of type ``kind`` came from workers named ``node``..."""
        with self._arrived:
            return self._count(kind, node)

    def wait_count(self, kind: str, node: str, at_least: int, timeout: float = 15) -> None:
        """Until ``at_least`` events of type ``kind`` came from workers named ``node``..."""
        self._wait(lambda: self._count(kind, node) >= at_least, f"{at_least} {kind}", timeout)

    def _count(self, kind: str, node: str) -> int:
        return sum(
            1
            for e in self.events
            if e.get("type") == kind and str(e.get("hostname", "")).startswith(node)
        )
