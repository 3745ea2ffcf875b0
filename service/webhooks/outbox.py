"""All SQL for webhook deliveries and their attempts. Callers own the transaction.

A delivery row is written in the transaction that gives its job a final status (the
outbox), so no finished job can lose its event. A worker claims a due delivery with a
short lease, so two messages for one delivery never POST at the same time. The claim and
the record of an attempt, run once per delivery, are one statement each: on an
autocommit connection, one round trip apiece.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, select, text, update
from sqlalchemy.orm import Session

from service import constants as c
from service.db import driver
from service.db.driver import DriverStatement
from service.db.models import Job, WebhookAttempt, WebhookDelivery
from service.db.row_checks import on_row
from service.db.session import Executor
from service.webhooks.events import event_type_for, serialise_event
from service.webhooks.retry import AttemptResult, Decision, Delivered, GiveUp

# --- writing the outbox --------------------------------------------------------------


# A delivery found by id (or a job's deliveries), its state checked on the row
# (``row_checks``): checked in the same WHERE, with statistics taken when nothing was
# pending, the plans read every pending delivery through the index of due ones.
_PENDING_ROW = on_row("webhook_deliveries.status = 'pending'")


def add_for_job(session: Session, job: Job | Row[Any], data: dict[str, Any]) -> uuid.UUID | None:
    """Write the event for a job that has just ended, if it asked for a callback.

    ``data`` is the job's JSON view; the event is serialised here, once.
    """
    if job.callback_url is None:
        return None
    event_type = event_type_for(job.status)
    payload = serialise_event(event_type, data, job.finished_at)
    return add_delivery(
        session, job_id=job.id, event_type=event_type, url=job.callback_url, payload=payload
    )


def add_for_batch(
    session: Session, *, batch_id: str, event_type: str, url: str, payload: str
) -> uuid.UUID | None:
    """Write the one event of a batch that has just ended (``batch.completed``, ...)."""
    return add_delivery(session, batch_id=batch_id, event_type=event_type, url=url, payload=payload)


# Once per job with a callback, inside the transaction that ends the job.
_ADD_DELIVERY = DriverStatement.of(
    text(
        """
        INSERT INTO webhook_deliveries
            (id, job_id, batch_id, event_type, url, payload, status, next_attempt_at,
             dispatched_at)
        -- Due now; the caller publishes right after the commit (dispatched now), and the
        -- sweep steps in if it cannot.
        VALUES (:id, :job_id, :batch_id, :event_type, :url, :payload, 'pending', now(), now())
        -- (job_id, event_type) or (batch_id, event_type): either unique index.
        ON CONFLICT DO NOTHING
        RETURNING id
        """
    )
)


def add_delivery(
    executor: Executor,
    *,
    job_id: uuid.UUID | None = None,
    batch_id: str | None = None,
    event_type: str,
    url: str,
    payload: str,
) -> uuid.UUID | None:
    """Insert a pending delivery, due now; None if its job or batch already has this event."""
    added = driver.rows(
        executor,
        _ADD_DELIVERY,
        {
            "id": uuid.uuid4(),
            "job_id": job_id,
            "batch_id": batch_id,
            "event_type": event_type,
            "url": url,
            "payload": payload,
        },
    )
    return added[0].id if added else None


def pending_ids_for_job(session: Session, job_id: uuid.UUID) -> list[uuid.UUID]:
    """The job's deliveries still to be sent (to publish after the commit that wrote them)."""
    stmt = select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id, text(_PENDING_ROW))
    return list(session.scalars(stmt))


# --- claiming and recording attempts -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """This worker owns the delivery for one attempt."""

    delivery_id: uuid.UUID
    job_id: uuid.UUID | None  # None for a batch's event
    event_type: str
    url: str
    payload: str
    attempt: int  # counts every attempt ever made; numbers the webhook_attempts rows
    round_attempt: int  # counts attempts since the delivery was created or redelivered
    # The job's or batch's tenant, whose own secret signs the event (None: no tenant).
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing to send now: ``reason`` is missing, delivered, failed, busy or not due."""

    delivery_id: uuid.UUID
    reason: str


LOST_ATTEMPT = "worker lost before the attempt finished"

# One statement, so one round trip that commits by itself: the delivery is locked, and
# taken for one attempt only if it is pending, due (or due within ``early``) and no live
# lease holds it. A lease that ran out mid-attempt means its worker died: that attempt
# counts and is closed here; if it was the last one, this extra attempt settles the
# outcome. The row as it was before is returned with what was taken, so a skip says why.
_CLAIM = DriverStatement.of(
    text(
        """
        WITH current AS (
            SELECT id, status, attempts, lease_expires_at, next_attempt_at
            FROM webhook_deliveries WHERE id = :delivery_id
            FOR UPDATE
        ), taken AS (
            UPDATE webhook_deliveries d
            SET attempts = d.attempts + 1,
                round_attempts = d.round_attempts + 1,
                lease_expires_at = now() + make_interval(secs => :lease_seconds)
            FROM current c
            WHERE d.id = c.id
              AND c.status = 'pending'
              AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
              AND c.next_attempt_at <= now() + make_interval(secs => :early_seconds)
            RETURNING d.id, d.job_id, d.batch_id, d.event_type, d.url, d.payload,
                      d.attempts, d.round_attempts
        ), lost AS (
            UPDATE webhook_attempts a
            SET finished_at = now(), error = :lost_error
            FROM current c
            WHERE a.delivery_id = c.id
              AND a.attempt = c.attempts
              AND a.finished_at IS NULL
              AND c.lease_expires_at IS NOT NULL
              AND EXISTS (SELECT FROM taken)
        ), started AS (
            INSERT INTO webhook_attempts (delivery_id, attempt, started_at)
            SELECT id, attempts, now() FROM taken
        )
        SELECT c.status, c.lease_expires_at > now() AS busy,
               t.id AS taken_id, t.job_id, t.event_type, t.url, t.payload, t.attempts,
               t.round_attempts,
               coalesce((SELECT j.tenant FROM jobs j WHERE j.id = t.job_id),
                        (SELECT b.tenant FROM batches b WHERE b.id = t.batch_id)) AS tenant
        FROM current c LEFT JOIN taken t ON true
        """
    )
)


def claim(
    executor: Executor,
    delivery_id: uuid.UUID,
    *,
    lease_seconds: float,
    early_seconds: float = c.WEBHOOK_EARLY_S,
) -> Claimed | Skipped:
    """Take a due, pending delivery for one attempt, unless another worker holds it."""
    found = driver.rows(
        executor,
        _CLAIM,
        {
            "delivery_id": delivery_id,
            "lease_seconds": lease_seconds,
            "early_seconds": early_seconds,
            "lost_error": LOST_ATTEMPT,
        },
    )
    if not found:
        return Skipped(delivery_id, "missing")
    row = found[0]
    if row.taken_id is None:
        if row.status != "pending":
            return Skipped(delivery_id, row.status)
        return Skipped(delivery_id, "busy" if row.busy else "not due")
    return Claimed(
        delivery_id=row.taken_id,
        job_id=row.job_id,
        event_type=row.event_type,
        url=row.url,
        payload=row.payload,
        attempt=row.attempts,
        round_attempt=row.round_attempts,
        tenant=row.tenant,
    )


# One statement, one round trip: the attempt's outcome and the delivery's next state are
# written only while the caller's lease still holds the delivery (pending, on this
# attempt, leased); otherwise nothing is. A NULL retry delay is no next attempt.
_FINISH = DriverStatement.of(
    text(
        f"""
        WITH recorded AS (
            UPDATE webhook_deliveries
            SET lease_expires_at = NULL,
                last_status_code = CAST(:status_code AS integer),
                last_error = CAST(:error AS text),
                status = CAST(:status AS text),
                delivered_at = CASE WHEN CAST(:status AS text) = 'delivered'
                                    THEN now() ELSE delivered_at END,
                next_attempt_at = now() + CAST(:retry_delay AS float8) * interval '1 second',
                dispatched_at = CASE WHEN CAST(:published AS boolean)
                                     THEN now() + CAST(:retry_delay AS float8)
                                          * interval '1 second' END
            WHERE id = :delivery_id
              AND {_PENDING_ROW}
              AND attempts = :attempt
              AND lease_expires_at IS NOT NULL
            RETURNING id
        ), finished AS (
            UPDATE webhook_attempts
            SET finished_at = now(),
                status_code = CAST(:status_code AS integer),
                error = CAST(:error AS text),
                duration_ms = :duration_ms
            WHERE delivery_id IN (SELECT id FROM recorded) AND attempt = :attempt
        )
        SELECT count(*) AS recorded FROM recorded
        """
    )
)


def finish(
    executor: Executor,
    claimed: Claimed,
    result: AttemptResult,
    decision: Decision,
    *,
    retry_delay: float | None,
    published: bool,
) -> bool:
    """Record the attempt and the delivery's next state; False if the lease was lost.

    ``retry_delay`` is the wait before the next attempt when ``decision`` is a retry;
    ``published`` says a message is being published for it (a short delay).
    """
    if isinstance(decision, Delivered):
        status, retry_delay, published = "delivered", None, False
    elif isinstance(decision, GiveUp):
        status, retry_delay, published = "failed", None, False
    else:
        assert retry_delay is not None
        status = "pending"
    [row] = driver.rows(
        executor,
        _FINISH,
        {
            "delivery_id": claimed.delivery_id,
            "attempt": claimed.attempt,
            "status": status,
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
            "retry_delay": retry_delay,
            "published": published,
        },
    )
    return bool(row.recorded)


def note_problem(session: Session, delivery_id: uuid.UUID, message: str) -> None:
    """Show why a delivery is not moving (a worker misconfiguration) without an attempt,
    and leave it to the sweep after its grace: its message is spent, and a delivery counted
    as having one made every sweep believe the broker had lost messages (and republish
    every job waiting in the backlog)."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, text(_PENDING_ROW))
        .values(
            last_error=message,
            dispatched_at=None,
            next_attempt_at=func.now() + timedelta(seconds=c.WEBHOOK_SWEEP_GRACE_S),
        )
    )


def mark_unpublished(session: Session, delivery_ids: list[uuid.UUID]) -> None:
    """Deliveries whose message could not be published: no longer counted as on the
    broker (``recovery.messages_expected``), so that the sweep neither takes them for lost
    jobs' messages nor waits out a grace before publishing them."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(delivery_ids), text(_PENDING_ROW))
        .values(dispatched_at=None)
    )


# --- the sweep -----------------------------------------------------------------------


def take_republishable(
    session: Session, *, grace_seconds: float, limit: int = c.WEBHOOK_SWEEP_BATCH
) -> list[uuid.UUID]:
    """Due deliveries with no live lease whose last message is overdue (or that never had
    one); marks them as dispatched now, so the next sweep leaves them to that message."""
    stmt = text(
        """
        UPDATE webhook_deliveries SET dispatched_at = now()
        WHERE id IN (
            SELECT id FROM webhook_deliveries
            WHERE status = 'pending'
              AND next_attempt_at <= now()
              AND (lease_expires_at IS NULL OR lease_expires_at < now())
              AND (dispatched_at IS NULL
                   OR dispatched_at < now() - make_interval(secs => :grace))
            ORDER BY next_attempt_at
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        RETURNING id
        """
    )
    return list(session.execute(stmt, {"grace": grace_seconds, "limit": limit}).scalars())


# --- operating -----------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def delivery_view(row: WebhookDelivery) -> dict[str, Any]:
    """A delivery as operators see it (without the payload), JSON-ready."""
    return {
        "id": str(row.id),
        "job_id": str(row.job_id) if row.job_id else None,
        "batch_id": row.batch_id,
        "event_type": row.event_type,
        "url": row.url,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at),
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "created_at": _iso(row.created_at),
        "delivered_at": _iso(row.delivered_at),
    }


def list_deliveries(
    session: Session,
    *,
    job_id: uuid.UUID | None = None,
    statuses: Sequence[str] = (),
    since: datetime | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest deliveries first, optionally of one job, in any of ``statuses``, or
    created since."""
    stmt = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(WebhookDelivery.created_at >= since)
    if job_id is not None:
        stmt = stmt.where(WebhookDelivery.job_id == job_id)
    if statuses:
        stmt = stmt.where(WebhookDelivery.status.in_(statuses))
    return [delivery_view(row) for row in session.scalars(stmt)]


def attempts_view(session: Session, delivery_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every attempt of a delivery, in order."""
    rows = session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.attempt)
    )
    return [
        {
            "attempt": a.attempt,
            "started_at": _iso(a.started_at),
            "finished_at": _iso(a.finished_at),
            "status_code": a.status_code,
            "error": a.error,
            "duration_ms": a.duration_ms,
        }
        for a in rows
    ]


def get_delivery(session: Session, delivery_id: uuid.UUID) -> dict[str, Any] | None:
    """One delivery with its payload and attempts, or None."""
    row = session.get(WebhookDelivery, delivery_id)
    if row is None:
        return None
    return {
        **delivery_view(row),
        "payload": row.payload,
        "attempt_log": attempts_view(session, delivery_id),
    }


def failed_since(session: Session, since: datetime) -> list[uuid.UUID]:
    """Failed deliveries of events created at or after ``since``."""
    stmt = select(WebhookDelivery.id).where(
        WebhookDelivery.status == "failed", WebhookDelivery.created_at >= since
    )
    return list(session.scalars(stmt.order_by(WebhookDelivery.created_at)))


def payload_purged(session: Session, delivery_id: uuid.UUID) -> bool | None:
    """Whether the delivery's payload was purged (``ezq purge``), None without a delivery."""
    payload = session.scalar(
        select(WebhookDelivery.payload).where(WebhookDelivery.id == delivery_id)
    )
    return None if payload is None else payload == ""


def redeliver(session: Session, delivery_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Make deliveries pending and due now with a fresh round of attempts; same event and
    webhook-id. Returns the ids found; the caller publishes them after the commit."""
    if not delivery_ids:
        return []
    stmt = (
        update(WebhookDelivery)
        # A purged delivery has no payload left to send.
        .where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.payload != "")
        .values(
            status="pending",
            round_attempts=0,
            next_attempt_at=func.now(),
            dispatched_at=func.now(),
            delivered_at=None,
        )
        .returning(WebhookDelivery.id)
    )
    return list(session.execute(stmt).scalars())
