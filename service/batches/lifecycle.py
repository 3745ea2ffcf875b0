"""How a batch ends: cancelled by its owner, finalised once its last line has ended, or
failed when its file no longer passes the checks.

Finalising picks an open batch none of whose lines is still to run, names its output and
error files, sets the final status and writes the batch's one webhook into the outbox, in
one transaction. The worker that records a line's end calls ``finalize_if_ended`` right
after that commit (a short transaction of its own, so the record path itself is
unchanged); the sweep finalises whatever that missed (a worker that died in between, a
line ended by a takeover). Row locks with SKIP LOCKED make either one finalise a batch
once.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import constants as c
from service.batches.files import new_file_id
from service.batches.results import size_of
from service.batches.views import batch_view
from service.db import batches as db
from service.db.models import Batch
from service.db.queries import Tenants
from service.db.session import transaction
from service.errors import BatchAlreadyFinished, BatchNotFound
from service.webhooks import outbox
from service.webhooks.events import serialise_event

log = logging.getLogger(__name__)

FINAL = ("completed", "failed", "expired", "cancelled")
EVENTS = {"completed": "batch.completed", "failed": "batch.failed", "cancelled": "batch.cancelled"}


def _publish(deliveries: list[uuid.UUID]) -> None:
    # Committed already; the sweep publishes whatever this cannot.
    if deliveries:
        from service.webhooks.tasks import publish_deliveries

        publish_deliveries(deliveries)


def _add_webhook(session: Session, batch: Batch) -> list[uuid.UUID]:
    """The batch's one event, in the transaction that ends it (the outbox)."""
    if batch.callback_url is None:
        return []
    event_type = EVENTS[batch.status]
    moment = batch.completed_at or batch.cancelled_at or batch.failed_at
    payload = serialise_event(event_type, batch_view(session, batch), moment)
    added = outbox.add_for_batch(
        session, batch_id=batch.id, event_type=event_type, url=batch.callback_url, payload=payload
    )
    return [added] if added is not None else []


def _result_file(session: Session, batch: Batch, kind: str) -> str | None:
    """Name the batch's output or error file, if it has any line."""
    lines, size = size_of(session, batch.id, kind)
    if not lines:
        return None
    row = db.insert_file(
        session,
        id=new_file_id(),
        tenant=batch.tenant,
        purpose="batch_output",
        filename=f"{batch.id}_{kind}.jsonl",
        bytes=size,
        line_count=lines,
        created_by=batch.created_by,
    )
    return row.id


def finalize(session: Session, batch: Batch) -> list[uuid.UUID]:
    """End an open batch none of whose lines is still to run; return webhook deliveries
    to publish after the commit."""
    now = session.scalar(select(func.now()))
    batch.finalizing_at = batch.finalizing_at or now
    batch.output_file_id = _result_file(session, batch, "output")
    batch.error_file_id = _result_file(session, batch, "error")
    if batch.status == "cancelling":
        batch.status, batch.cancelled_at = "cancelled", now
    else:
        batch.status, batch.completed_at = "completed", now
    session.flush()
    log.info("[batch=%s] %s", batch.id, batch.status)
    return _add_webhook(session, batch)


def finalize_ended(*, limit: int = c.BATCH_FINALIZE_LIMIT, batch_id: str | None = None) -> int:
    """Finalise open batches whose lines have all ended (only ``batch_id``, if given);
    return how many. The sweep's step, and the worker's after a batch line ends."""
    with transaction() as session:
        batches = db.take_ended_open_batches(session, limit=limit, batch_id=batch_id)
        deliveries = [d for batch in batches for d in finalize(session, batch)]
    _publish(deliveries)
    return len(batches)


def cancel_batch(batch_id: str, *, tenants: Tenants = None) -> dict[str, Any]:
    """Cancel a batch: lines not started never run; running lines finish and keep their
    outcome (one whose call fails is not retried: it ends cancelled, see
    ``attempts.record_failure``), and the batch is ``cancelled`` once they have (at once if
    none runs).
    Cancelling twice is a no-op; an ended batch raises BatchAlreadyFinished."""
    with transaction() as session:
        batch = db.get_batch(session, batch_id, tenants=tenants, lock=True)
        if batch is None:
            raise BatchNotFound(batch_id)
        if batch.status in FINAL and batch.status != "cancelled":
            raise BatchAlreadyFinished(batch.id, batch.status)
        deliveries: list[uuid.UUID] = []
        if batch.status == "in_progress":
            cancelled = db.cancel_pending_lines(session, batch.id)
            batch.status = "cancelling"
            batch.cancelling_at = session.scalar(select(func.now()))
            log.info("[batch=%s] cancelling: %d lines not started cancelled", batch.id, cancelled)
            if not db.has_live_lines(session, batch.id):
                deliveries = finalize(session, batch)
        view = batch_view(session, batch)
    _publish(deliveries)
    return view


def store_failed(values: dict[str, Any], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """Store a batch whose file failed the checks: ``failed``, with the errors, no job."""
    with transaction() as session:
        now = session.scalar(select(func.now()))
        batch = db.insert_batch(session, status="failed", failed_at=now, errors=errors, **values)
        deliveries = _add_webhook(session, batch)
        view = batch_view(session, batch)
    _publish(deliveries)
    return view


def get_batch(batch_id: str, *, tenants: Tenants = None) -> dict[str, Any]:
    with transaction() as session:
        batch = db.get_batch(session, batch_id, tenants=tenants)
        if batch is None:
            raise BatchNotFound(batch_id)
        return batch_view(session, batch)


def list_batches(
    *, tenants: Tenants = None, after: str | None = None, limit: int = c.BATCH_LIST_LIMIT
) -> dict[str, Any]:
    """A page of batches, newest first, in OpenAI's list shape."""
    with transaction() as session:
        rows = db.list_batches(session, tenants=tenants, after=after, limit=limit + 1)
        data = [batch_view(session, row) for row in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }
