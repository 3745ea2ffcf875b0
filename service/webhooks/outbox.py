"""All SQL for webhook deliveries and their attempts. Callers own the transaction.

A delivery row is written in the transaction that gives its job a final status (the
outbox), so no finished job can lose its event. A worker claims a due delivery with a
short lease, so two messages for one delivery never POST at the same time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service import constants as c
from service.db.models import Job, WebhookAttempt, WebhookDelivery
from service.webhooks.events import event_type_for, serialise_event
from service.webhooks.retry import AttemptResult, Decision, Delivered, GiveUp

# --- writing the outbox --------------------------------------------------------------


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


def add_delivery(
    session: Session,
    *,
    job_id: uuid.UUID | None = None,
    batch_id: str | None = None,
    event_type: str,
    url: str,
    payload: str,
) -> uuid.UUID | None:
    """Insert a pending delivery, due now; None if its job or batch already has this event."""
    now = func.now()
    stmt = (
        insert(WebhookDelivery)
        .values(
            id=uuid.uuid4(),
            job_id=job_id,
            batch_id=batch_id,
            event_type=event_type,
            url=url,
            payload=payload,
            status="pending",
            next_attempt_at=now,
            # The caller publishes right after the commit; the sweep steps in if it cannot.
            dispatched_at=now,
        )
        # (job_id, event_type) or (batch_id, event_type): either unique index.
        .on_conflict_do_nothing()
        .returning(WebhookDelivery.id)
    )
    return session.execute(stmt).scalar_one_or_none()


def pending_ids_for_job(session: Session, job_id: uuid.UUID) -> list[uuid.UUID]:
    """The job's deliveries still to be sent (to publish after the commit that wrote them)."""
    stmt = select(WebhookDelivery.id).where(
        WebhookDelivery.job_id == job_id, WebhookDelivery.status == "pending"
    )
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


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing to send now: ``reason`` is missing, delivered, failed, busy or not due."""

    delivery_id: uuid.UUID
    reason: str


def _now(session: Session) -> datetime:
    return session.execute(select(func.now())).scalar_one()


def claim(
    session: Session,
    delivery_id: uuid.UUID,
    *,
    lease_seconds: float,
    early_seconds: float = c.WEBHOOK_EARLY_S,
) -> Claimed | Skipped:
    """Take a due, pending delivery for one attempt, unless another worker holds it."""
    row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None:
        return Skipped(delivery_id, "missing")
    if row.status != "pending":
        return Skipped(delivery_id, row.status)
    now = _now(session)
    if row.lease_expires_at is not None and row.lease_expires_at > now:
        return Skipped(delivery_id, "busy")
    if row.next_attempt_at is None or row.next_attempt_at > now + timedelta(seconds=early_seconds):
        return Skipped(delivery_id, "not due")
    if row.lease_expires_at is not None:
        # The previous holder's lease ran out mid-attempt: its worker died. That attempt
        # counts; if it was the last one, this extra attempt settles the outcome.
        session.execute(
            update(WebhookAttempt)
            .where(
                WebhookAttempt.delivery_id == row.id,
                WebhookAttempt.attempt == row.attempts,
                WebhookAttempt.finished_at.is_(None),
            )
            .values(finished_at=now, error="worker lost before the attempt finished")
        )
    row.attempts += 1
    row.round_attempts += 1
    row.lease_expires_at = now + timedelta(seconds=lease_seconds)
    session.add(WebhookAttempt(delivery_id=row.id, attempt=row.attempts, started_at=now))
    return Claimed(
        delivery_id=row.id,
        job_id=row.job_id,
        event_type=row.event_type,
        url=row.url,
        payload=row.payload,
        attempt=row.attempts,
        round_attempt=row.round_attempts,
    )


def finish(
    session: Session,
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
    row = session.get(WebhookDelivery, claimed.delivery_id, with_for_update=True)
    if (
        row is None
        or row.status != "pending"
        or row.attempts != claimed.attempt
        or row.lease_expires_at is None
    ):
        return False
    now = _now(session)
    session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == row.id, WebhookAttempt.attempt == claimed.attempt)
        .values(
            finished_at=now,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
        )
    )
    row.lease_expires_at = None
    row.last_status_code = result.status_code
    row.last_error = result.error
    if isinstance(decision, Delivered):
        row.status = "delivered"
        row.delivered_at = now
        row.next_attempt_at = row.dispatched_at = None
    elif isinstance(decision, GiveUp):
        row.status = "failed"
        row.next_attempt_at = row.dispatched_at = None
    else:
        assert retry_delay is not None
        row.next_attempt_at = now + timedelta(seconds=retry_delay)
        row.dispatched_at = row.next_attempt_at if published else None
    return True


def note_problem(session: Session, delivery_id: uuid.UUID, message: str) -> None:
    """Show why a delivery is not moving (a worker misconfiguration) without an attempt."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
        .values(last_error=message)
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
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest deliveries first, optionally of one job, in one status, or created since."""
    stmt = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(WebhookDelivery.created_at >= since)
    if job_id is not None:
        stmt = stmt.where(WebhookDelivery.job_id == job_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
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
