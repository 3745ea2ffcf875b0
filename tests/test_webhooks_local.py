"""A worker's first webhook attempts in its own process (``LocalDeliveries``): real threads.

The hand-over must never lose a delivery (whatever the threads cannot take is published at
once) and never let one slow receiver hold the others' events behind it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import pytest

from service.webhooks.local import LocalDeliveries

WAIT_S = 10.0


class Recorder:
    """``deliver_one`` and ``publish`` for a ``LocalDeliveries``: records who got what."""

    def __init__(self, *, blocked: bool = False) -> None:
        self.lock = threading.Condition()
        self.attempted: list[tuple[uuid.UUID, str]] = []  # (id, the thread's name)
        self.published: list[uuid.UUID] = []
        self.release = threading.Event()
        if not blocked:
            self.release.set()
        self.fail_next = False

    def deliver_one(self, delivery_id: uuid.UUID) -> None:
        with self.lock:
            self.attempted.append((delivery_id, threading.current_thread().name))
            self.lock.notify_all()
            fail, self.fail_next = self.fail_next, False
        if fail:
            raise RuntimeError("a bug in an attempt")
        assert self.release.wait(WAIT_S)

    def publish(self, delivery_ids: list[uuid.UUID]) -> None:
        with self.lock:
            self.published.extend(delivery_ids)

    def wait_attempted(self, n: int) -> list[uuid.UUID]:
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.attempted) >= n, WAIT_S), self.attempted
            return [delivery_id for delivery_id, _ in self.attempted]


def ids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


@pytest.fixture
def closing() -> Iterator[list[LocalDeliveries]]:
    made: list[LocalDeliveries] = []
    yield made
    for local in made:
        local.close(timeout=WAIT_S)


def make(threads: int, recorder: Recorder, closing: list[LocalDeliveries]) -> LocalDeliveries:
    local = LocalDeliveries(threads, deliver_one=recorder.deliver_one, publish=recorder.publish)
    closing.append(local)
    return local


def test_deliveries_are_attempted_by_the_delivery_threads_and_none_is_published(
    closing: list[LocalDeliveries],
) -> None:
    recorder = Recorder()
    local = make(2, recorder, closing)
    sent = ids(3)
    local.submit(sent[:2])
    local.submit(sent[2:])

    assert sorted(recorder.wait_attempted(3)) == sorted(sent)
    assert {name for _, name in recorder.attempted} <= {"ezq-webhook-0", "ezq-webhook-1"}
    assert recorder.published == []


def test_what_busy_threads_cannot_take_soon_is_published_at_once(
    closing: list[LocalDeliveries],
) -> None:
    recorder = Recorder(blocked=True)  # every attempt hangs, as on a slow receiver
    local = make(2, recorder, closing)
    first = ids(2)
    local.submit(first)
    assert sorted(recorder.wait_attempted(2)) == sorted(first)  # both threads busy

    waiting, spilled = ids(2), ids(3)
    local.submit(waiting + spilled)
    # As many as there are threads wait their turn here; the rest go out as messages
    # before ``submit`` returns.
    assert recorder.published == spilled

    recorder.release.set()
    assert sorted(recorder.wait_attempted(4)) == sorted(first + waiting)
    assert recorder.published == spilled


def test_no_threads_publishes_everything(closing: list[LocalDeliveries]) -> None:
    recorder = Recorder()
    local = make(0, recorder, closing)
    sent = ids(3)
    local.submit(sent)
    assert recorder.published == sent
    assert recorder.attempted == []


def test_close_publishes_what_waits_and_lets_the_running_attempt_end(
    closing: list[LocalDeliveries],
) -> None:
    recorder = Recorder(blocked=True)
    local = make(1, recorder, closing)
    running, waiting = ids(1), ids(1)
    local.submit(running)
    recorder.wait_attempted(1)
    local.submit(waiting)

    closer = threading.Thread(target=local.close, kwargs={"timeout": WAIT_S})
    closer.start()
    with recorder.lock:
        assert recorder.lock.wait_for(lambda: recorder.published == waiting, WAIT_S)
    assert closer.is_alive()  # waiting for the running attempt
    recorder.release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert [delivery_id for delivery_id, _ in recorder.attempted] == running

    late = ids(1)
    local.submit(late)  # a closed hand-over takes nothing: it publishes
    assert recorder.published == waiting + late


def test_a_failing_attempt_is_logged_and_the_thread_goes_on(
    closing: list[LocalDeliveries], caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    recorder.fail_next = True
    local = make(1, recorder, closing)
    bad, good = ids(1), ids(1)
    with caplog.at_level(logging.ERROR, logger="service.webhooks.local"):
        local.submit(bad)
        recorder.wait_attempted(1)
        local.submit(good)
        assert recorder.wait_attempted(2) == bad + good
    assert f"[webhook={bad[0]}] delivery attempt failed" in caplog.text
    assert recorder.published == []
