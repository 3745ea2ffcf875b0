"""The outbox's claim and record of one delivery attempt, against Postgres.

A claim takes a due, pending delivery for one attempt under a lease, or says why not; the
record of the attempt writes its outcome and the delivery's next state only while that
lease is still the caller's. Each is run here as the delivery task runs it: on a
connection of its own, committed by itself.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from service.db import queries
from service.db.driver import driver_connection
from service.db.session import autocommit, transaction
from service.validation import validate_request
from service.webhooks import outbox
from service.webhooks.retry import AttemptResult, Decision, Delivered, GiveUp, RetryIn
from tests.conftest import sweep_paused

pytestmark = pytest.mark.usefixtures("service_env")

LEASE_S = 30.0
OK = AttemptResult(200, None, 12)
BROKEN = AttemptResult(503, "HTTP 503: down", 40)


@pytest.fixture
def delivery() -> Iterator[uuid.UUID]:
    """A pending delivery of a job's event, due now, never attempted. No sweep runs while
    the test does: the suite's worker, which sweeps this database every second, would
    publish a due delivery without a message and claim it itself."""
    request = validate_request(
        model="glm-5.1", messages=[{"role": "user", "content": "outbox"}], callback_url=None
    )
    with sweep_paused():
        with transaction() as session:
            job_id, _ = queries.create_job(session, request)
            delivery_id = outbox.add_delivery(
                session,
                job_id=job_id,
                event_type="job.succeeded",
                url="http://127.0.0.1:9/hook",
                payload='{"type": "job.succeeded"}',
            )
        assert delivery_id is not None
        yield delivery_id
    with transaction() as session:
        session.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job_id})


def _row(delivery_id: uuid.UUID) -> dict[str, Any]:
    with transaction() as session:
        row = session.execute(
            text("SELECT *, now() AS now FROM webhook_deliveries WHERE id = :id"),
            {"id": delivery_id},
        )
        return dict(row.mappings().one())


def _attempts(delivery_id: uuid.UUID) -> list[dict[str, Any]]:
    with transaction() as session:
        rows = session.execute(
            text(
                "SELECT attempt, started_at, finished_at, status_code, error, duration_ms"
                " FROM webhook_attempts WHERE delivery_id = :id ORDER BY attempt"
            ),
            {"id": delivery_id},
        )
        return [dict(r) for r in rows.mappings()]


def _set(delivery_id: uuid.UUID, assignments: str) -> None:
    with transaction() as session:
        session.execute(
            text(f"UPDATE webhook_deliveries SET {assignments} WHERE id = :id"),
            {"id": delivery_id},
        )


def _claim(delivery_id: uuid.UUID) -> outbox.Claimed | outbox.Skipped:
    with autocommit() as conn:
        return outbox.claim(conn, delivery_id, lease_seconds=LEASE_S)


def _finish(
    claimed: outbox.Claimed,
    result: AttemptResult,
    decision: Decision,
    *,
    retry_delay: float | None = None,
    published: bool = False,
) -> bool:
    with autocommit() as conn:
        return outbox.finish(
            conn, claimed, result, decision, retry_delay=retry_delay, published=published
        )


def _close(a: datetime, b: datetime, seconds: float = 2.0) -> bool:
    return abs((a - b).total_seconds()) < seconds


def test_a_due_delivery_is_claimed_under_a_lease_with_its_attempt_started(
    delivery: uuid.UUID,
) -> None:
    claimed = _claim(delivery)

    assert isinstance(claimed, outbox.Claimed)
    assert (claimed.delivery_id, claimed.attempt, claimed.round_attempt) == (delivery, 1, 1)
    assert claimed.event_type == "job.succeeded"
    assert claimed.url == "http://127.0.0.1:9/hook"
    assert claimed.payload == '{"type": "job.succeeded"}'
    assert claimed.job_id is not None
    row = _row(delivery)
    assert (row["attempts"], row["round_attempts"], row["status"]) == (1, 1, "pending")
    assert _close(row["lease_expires_at"], row["now"] + timedelta(seconds=LEASE_S))
    [attempt] = _attempts(delivery)
    assert attempt["attempt"] == 1
    assert attempt["finished_at"] is None
    assert _close(attempt["started_at"], row["now"])


def test_a_held_lease_keeps_a_second_claim_out(delivery: uuid.UUID) -> None:
    assert isinstance(_claim(delivery), outbox.Claimed)

    assert _claim(delivery) == outbox.Skipped(delivery, "busy")
    assert _row(delivery)["attempts"] == 1
    assert len(_attempts(delivery)) == 1


@pytest.mark.parametrize(
    ("assignments", "reason"),
    [
        ("status = 'delivered', next_attempt_at = NULL", "delivered"),
        ("status = 'failed', next_attempt_at = NULL", "failed"),
        ("next_attempt_at = now() + interval '1 minute'", "not due"),
        ("next_attempt_at = NULL", "not due"),
    ],
)
def test_a_delivery_not_to_send_now_is_skipped_untouched(
    delivery: uuid.UUID, assignments: str, reason: str
) -> None:
    _set(delivery, assignments)
    before = _row(delivery)

    assert _claim(delivery) == outbox.Skipped(delivery, reason)
    after = _row(delivery)
    assert {k: v for k, v in after.items() if k != "now"} == {
        k: v for k, v in before.items() if k != "now"
    }
    assert _attempts(delivery) == []


def test_a_delivery_due_within_the_early_margin_is_claimed(delivery: uuid.UUID) -> None:
    _set(delivery, "next_attempt_at = now() + interval '0.5 seconds'")

    assert isinstance(_claim(delivery), outbox.Claimed)


def test_a_missing_delivery_is_skipped() -> None:
    missing = uuid.uuid4()
    assert _claim(missing) == outbox.Skipped(missing, "missing")


def test_an_expired_lease_closes_the_lost_attempt_and_starts_the_next(
    delivery: uuid.UUID,
) -> None:
    assert isinstance(_claim(delivery), outbox.Claimed)
    _set(delivery, "lease_expires_at = now() - interval '1 second'")

    claimed = _claim(delivery)

    assert isinstance(claimed, outbox.Claimed)
    assert (claimed.attempt, claimed.round_attempt) == (2, 2)
    lost, started = _attempts(delivery)
    assert lost["attempt"] == 1
    assert lost["finished_at"] is not None
    assert lost["error"] == "worker lost before the attempt finished"
    assert (started["attempt"], started["finished_at"]) == (2, None)


def test_a_finished_attempt_is_not_closed_again_by_the_next_claim(delivery: uuid.UUID) -> None:
    first = _claim(delivery)
    assert isinstance(first, outbox.Claimed)
    assert _finish(first, BROKEN, RetryIn(0.0), retry_delay=0.0)
    [recorded] = _attempts(delivery)

    assert isinstance(_claim(delivery), outbox.Claimed)
    assert _attempts(delivery)[0] == recorded


def test_a_delivered_attempt_ends_the_delivery(delivery: uuid.UUID) -> None:
    claimed = _claim(delivery)
    assert isinstance(claimed, outbox.Claimed)

    assert _finish(claimed, OK, Delivered())

    row = _row(delivery)
    assert row["status"] == "delivered"
    assert _close(row["delivered_at"], row["now"])
    assert row["next_attempt_at"] is row["dispatched_at"] is row["lease_expires_at"] is None
    assert (row["last_status_code"], row["last_error"]) == (200, None)
    [attempt] = _attempts(delivery)
    assert (attempt["status_code"], attempt["error"], attempt["duration_ms"]) == (200, None, 12)
    assert attempt["finished_at"] is not None


def test_a_given_up_attempt_fails_the_delivery(delivery: uuid.UUID) -> None:
    claimed = _claim(delivery)
    assert isinstance(claimed, outbox.Claimed)

    assert _finish(claimed, BROKEN, GiveUp("no more attempts"))

    row = _row(delivery)
    assert (row["status"], row["delivered_at"]) == ("failed", None)
    assert row["next_attempt_at"] is row["dispatched_at"] is row["lease_expires_at"] is None
    assert (row["last_status_code"], row["last_error"]) == (503, "HTTP 503: down")
    [attempt] = _attempts(delivery)
    assert (attempt["status_code"], attempt["error"], attempt["duration_ms"]) == (
        503,
        "HTTP 503: down",
        40,
    )


@pytest.mark.parametrize("published", [True, False])
def test_a_retried_attempt_schedules_the_next(delivery: uuid.UUID, published: bool) -> None:
    claimed = _claim(delivery)
    assert isinstance(claimed, outbox.Claimed)
    failed = AttemptResult(None, "timeout: read", 5000)

    assert _finish(claimed, failed, RetryIn(90.0), retry_delay=90.0, published=published)

    row = _row(delivery)
    assert (row["status"], row["lease_expires_at"], row["delivered_at"]) == (
        "pending",
        None,
        None,
    )
    assert _close(row["next_attempt_at"], row["now"] + timedelta(seconds=90))
    # A published retry is a message due then; an unpublished one waits for the sweep.
    assert row["dispatched_at"] == (row["next_attempt_at"] if published else None)
    assert (row["last_status_code"], row["last_error"]) == (None, "timeout: read")
    [attempt] = _attempts(delivery)
    assert (attempt["status_code"], attempt["error"]) == (None, "timeout: read")


def test_an_attempt_whose_lease_was_taken_over_is_not_recorded(delivery: uuid.UUID) -> None:
    first = _claim(delivery)
    assert isinstance(first, outbox.Claimed)
    _set(delivery, "lease_expires_at = now() - interval '1 second'")
    second = _claim(delivery)
    assert isinstance(second, outbox.Claimed)

    assert not _finish(first, OK, Delivered())

    row = _row(delivery)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 2, None)
    lost, running = _attempts(delivery)
    assert lost["error"] == "worker lost before the attempt finished"
    assert lost["status_code"] is None
    assert running["finished_at"] is None
    assert _finish(second, OK, Delivered())
    assert _row(delivery)["status"] == "delivered"


@pytest.mark.parametrize(
    "assignments",
    [
        "lease_expires_at = NULL",
        "status = 'delivered'",
        "attempts = attempts + 1",
    ],
)
def test_an_attempt_no_longer_holding_its_delivery_is_not_recorded(
    delivery: uuid.UUID, assignments: str
) -> None:
    claimed = _claim(delivery)
    assert isinstance(claimed, outbox.Claimed)
    _set(delivery, assignments)
    before = _row(delivery)

    assert not _finish(claimed, OK, Delivered())

    after = _row(delivery)
    assert {k: v for k, v in after.items() if k != "now"} == {
        k: v for k, v in before.items() if k != "now"
    }
    assert _attempts(delivery)[0]["finished_at"] is None


def test_a_claim_waiting_on_another_sees_its_lease_and_is_kept_out(delivery: uuid.UUID) -> None:
    """Two claims at once: the second waits for the first's commit, then reads the row as
    the first left it (not as it was when it started), so only one attempt starts."""
    outcome: list[outbox.Claimed | outbox.Skipped] = []
    with transaction() as session:
        first = outbox.claim(session, delivery, lease_seconds=LEASE_S)
        assert isinstance(first, outbox.Claimed)
        second = threading.Thread(target=lambda: outcome.append(_claim(delivery)))
        second.start()
        _wait_until_blocked_on_a_lock()
    second.join(timeout=10)

    assert outcome == [outbox.Skipped(delivery, "busy")]
    assert [a["attempt"] for a in _attempts(delivery)] == [1]
    assert _row(delivery)["attempts"] == 1


def _wait_until_blocked_on_a_lock(timeout: float = 10.0) -> None:
    """Until a backend waits on a lock in a statement on ``webhook_deliveries``: each look
    is a round trip to Postgres, which paces the loop."""
    deadline = time.monotonic() + timeout
    with autocommit() as conn:
        while time.monotonic() < deadline:
            (waiting,) = driver_connection(conn).execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND position('webhook_deliveries' in query) > 0"
            ).fetchone() or (0,)
            if waiting:
                return
    raise AssertionError("the second claim never waited for the first's lock")


def test_a_worker_without_a_secret_leaves_the_delivery_to_the_sweep(
    delivery: uuid.UUID,
) -> None:
    """A worker that cannot sign (no WEBHOOK_SECRET) notes why on the delivery and leaves it
    to the sweep after its grace, no longer counted as a message on the broker (counted,
    every sweep saw fewer messages than expected and republished the whole backlog)."""
    _set(delivery, "dispatched_at = now()")
    with transaction() as session:
        outbox.note_problem(session, delivery, "WEBHOOK_SECRET is not set on the worker")
    row = _row(delivery)  # ``recovery.messages_expected`` counts those with dispatched_at
    assert row["last_error"] == "WEBHOOK_SECRET is not set on the worker"
    assert row["dispatched_at"] is None
    assert _close(row["next_attempt_at"], row["now"] + timedelta(seconds=120))


def test_publishing_stops_at_the_first_refusal(
    delivery: uuid.UUID, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the broker refuses a delivery's message, the rest are left to the sweep without
    waiting on it again for each (the sweep publishes hundreds at a time, under its lock),
    and none of them counts as a message on the broker any more."""
    import logging

    from service.webhooks import tasks

    tried: list[uuid.UUID] = []

    def refused(delivery_id: uuid.UUID, countdown: float | None = None) -> None:
        tried.append(delivery_id)
        raise ConnectionRefusedError(111, "Connection refused")

    _set(delivery, "dispatched_at = now()")
    monkeypatch.setattr(tasks, "publish_delivery", refused)
    ids = [delivery, *(uuid.uuid4() for _ in range(4))]
    with caplog.at_level(logging.WARNING, logger=tasks.__name__):
        tasks.publish_deliveries(ids)
    assert tried == ids[:1]
    assert [r.getMessage() for r in caplog.records] == [
        "broker unavailable (ConnectionRefusedError): 5 webhook deliveries stored,"
        " the sweep publishes them when it is back"
    ]
    assert _row(delivery)["dispatched_at"] is None


@pytest.mark.parametrize(
    ("schedule", "visibility_timeout", "as_message"),
    [("5", "45", True), ("60", "45", False), ("60", "300", True)],
    ids=["5s-of-45s", "60s-of-45s", "60s-of-300s"],
)
def test_a_retry_goes_out_as_a_countdown_only_within_a_third_of_the_visibility_timeout(
    delivery: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
    schedule: str,
    visibility_timeout: str,
    as_message: bool,
) -> None:
    """A retry due within a third of the broker's visibility timeout is published with its
    countdown. A later one is not: the broker would hand its held-back message to another
    worker every visibility timeout while it waited (the default schedule's 5-minute step
    came back every 45 s). It waits in the database with no message, and the sweep
    publishes it once it is due."""
    import base64
    import random
    import secrets

    from service.config import get_settings
    from service.webhooks.delivery import deliver

    for name, value in {
        "WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",  # its URL, port 9, refuses: a retry
        "EZQ_WEBHOOK_RETRY_SCHEDULE": schedule,
        "EZQ_BROKER_VISIBILITY_TIMEOUT": visibility_timeout,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        published: list[tuple[uuid.UUID, float | None]] = []
        outcome = deliver(
            delivery,
            settings=settings,
            publish=lambda delivery_id, countdown=None: published.append((delivery_id, countdown)),
            rng=random.Random(7),
        )
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    assert outcome.status == "retrying", outcome
    row = _row(delivery)
    delay = (row["next_attempt_at"] - row["now"]).total_seconds()
    assert 0.8 * float(schedule) - 2 <= delay <= 1.2 * float(schedule), delay
    if as_message:
        assert [d for d, _ in published] == [delivery]
        assert abs((published[0][1] or 0) - delay) < 2, (published, delay)
        assert row["dispatched_at"] is not None  # counted as a message on the broker
        return
    assert published == []
    assert row["dispatched_at"] is None  # no message: the sweep's to publish
    assert delivery not in _taken_by_the_sweep()  # not due yet
    _set(delivery, "next_attempt_at = now()")
    assert delivery in _taken_by_the_sweep()


def _taken_by_the_sweep() -> list[uuid.UUID]:
    """The due deliveries the sweep's next run would publish (taken, then rolled back, so
    that other rows of the shared database stay as they are)."""
    from sqlalchemy.orm import Session

    from service import constants as c
    from service.db.session import get_engine

    with Session(get_engine()) as session:
        try:
            # Every due one, so that others of the shared database cannot crowd it out.
            return outbox.take_republishable(
                session, grace_seconds=c.WEBHOOK_SWEEP_GRACE_S, limit=1_000_000
            )
        finally:
            session.rollback()


def test_a_retry_whose_message_the_broker_refused_is_left_to_the_sweep(
    delivery: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry recorded as published whose message the broker then refused no longer counts
    as a message on the broker: the sweep publishes it when it is due, not after its grace
    (and no sweep meanwhile believes the broker lost messages)."""
    import base64
    import secrets

    from service.config import get_settings
    from service.webhooks.delivery import deliver

    def refused(delivery_id: uuid.UUID, countdown: float | None = None) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    for name, value in {
        "WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "EZQ_WEBHOOK_RETRY_SCHEDULE": "5",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        outcome = deliver(delivery, settings=get_settings(), publish=refused)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert outcome.status == "retrying", outcome
    assert _row(delivery)["dispatched_at"] is None
    _set(delivery, "next_attempt_at = now()")
    assert delivery in _taken_by_the_sweep()


@pytest.mark.usefixtures("service_env")
def test_the_sweep_publishes_every_due_delivery_a_batch_at_a_time(
    own_database_settings: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due deliveries beyond one batch go out in the same sweep, a batch at a time (every
    retry after the first short ones is published by the sweep); a batch the broker
    refuses ends it, the rest flagged for the next sweep."""
    from service.webhooks import tasks

    request = validate_request(model="glm-5.1", messages=[{"role": "user", "content": "due"}])
    with transaction() as session:
        due = [
            outbox.add_delivery(
                session,
                job_id=queries.create_job(session, request)[0],
                event_type="job.succeeded",
                url="http://127.0.0.1:9/hook",
                payload="{}",
            )
            for _ in range(5)
        ]
        # Committed without a message (their publish was refused, or the worker died)
        session.execute(text("UPDATE webhook_deliveries SET dispatched_at = NULL"))
    published: list[uuid.UUID] = []
    monkeypatch.setattr(tasks, "publish_delivery", lambda d, countdown=None: published.append(d))
    assert tasks.republish_due_deliveries(batch=2) == 5
    assert sorted(published) == sorted(due)
    assert tasks.republish_due_deliveries(batch=2) == 0  # each has its message now

    tried: list[uuid.UUID] = []

    def refused(delivery_id: uuid.UUID, countdown: float | None = None) -> None:
        tried.append(delivery_id)
        raise ConnectionRefusedError(111, "Connection refused")

    with transaction() as session:
        session.execute(text("UPDATE webhook_deliveries SET dispatched_at = NULL"))
    monkeypatch.setattr(tasks, "publish_delivery", refused)
    assert tasks.republish_due_deliveries(batch=2) == 0
    assert len(tried) == 1  # one refusal, not one a batch
    with transaction() as session:
        waiting = session.execute(
            text("SELECT count(*) FROM webhook_deliveries WHERE dispatched_at IS NULL")
        ).scalar_one()
    assert waiting == 5  # all of them the next sweep's
