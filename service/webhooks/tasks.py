"""Celery side of webhooks: the ``ezq.deliver_webhook`` task, publishing, and the sweep."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from celery import Task
from celery.signals import worker_shutdown

from service import constants as c
from service import metrics
from service.config import get_settings
from service.db.session import UNAVAILABLE, transaction, unavailable_because
from service.errors import ConfigError, EzqCallerError
from service.webhooks import outbox
from service.webhooks.delivery import deliver
from service.webhooks.kept import kept_clients
from service.webhooks.local import LocalDeliveries
from service.worker.app import app
from service.worker.dispatch import publish_or_flag

log = logging.getLogger(__name__)


def publish_delivery(delivery_id: uuid.UUID, countdown: float | None = None) -> None:
    """Send a delivery message; it carries only the delivery id, never a secret."""
    app.send_task(
        c.TASK_DELIVER_WEBHOOK,
        kwargs={"delivery_id": str(delivery_id)},
        queue=get_settings().ezq_queue,
        countdown=countdown,
    )


def publish_deliveries(delivery_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Publish deliveries just committed; from the broker's first refusal on, they are
    flagged unpublished for the sweep (``dispatch.publish_or_flag``): returns those."""
    return publish_or_flag(
        delivery_ids, publish_delivery, flag=outbox.mark_unpublished, noun="webhook deliveries"
    )


def deliver_here(delivery_id: uuid.UUID) -> None:
    """A delivery's first attempt in this worker process (``LocalDeliveries``); what it
    cannot decide now goes on as a message, as a delivery task's attempt would."""
    try:
        outcome = deliver(delivery_id, settings=get_settings(), publish=publish_delivery)
    except UNAVAILABLE as exc:
        log.warning(
            "[webhook=%s] database unavailable, retrying: %s", delivery_id, unavailable_because(exc)
        )
        try:
            publish_delivery(delivery_id, countdown=5.0)
        except Exception:  # its row is committed: the sweep publishes it
            log.warning("[webhook=%s] could not publish; the sweep will", delivery_id)
        return
    except ConfigError as exc:  # recorded on the delivery's row; it waits for the setting
        log.error("[webhook=%s] %s", delivery_id, exc)
        return
    metrics.webhook_delivery(outcome.status)


_local: LocalDeliveries | None = None
_local_lock = threading.Lock()


def deliver_committed(delivery_ids: list[uuid.UUID]) -> None:
    """A worker's way to send the deliveries its commit just wrote: attempted in this
    process by ``EZQ_WEBHOOK_THREADS`` threads, or published when they cannot take them."""
    global _local
    if _local is None:
        with _local_lock:
            if _local is None:
                _local = LocalDeliveries(
                    get_settings().ezq_webhook_threads,
                    deliver_one=deliver_here,
                    publish=publish_deliveries,
                )
    _local.submit(delivery_ids)


@worker_shutdown.connect
def _close_local_deliveries(**_: Any) -> None:
    # After the pool has stopped: no job hands over more. What waits is published; an
    # attempt under way gets its deadline to end (past it, its lease and the sweep).
    if _local is not None:
        _local.close(timeout=get_settings().ezq_webhook_timeout)
    kept_clients.close()


def republish_due_deliveries(
    *, grace_seconds: float = c.WEBHOOK_SWEEP_GRACE_S, batch: int = c.WEBHOOK_SWEEP_BATCH
) -> int:
    """Publish due deliveries that have no message in flight, ``batch`` at a time while a
    batch comes back full, up to ``WEBHOOK_SWEEP_BATCHES`` (every retry after the first
    short ones is published here: a receiver down while 200 jobs a second end has 200
    deliveries a second fall due again, more than one batch a sweep); return how many
    reached the broker."""
    published = 0
    for _ in range(c.WEBHOOK_SWEEP_BATCHES):
        with transaction() as session:
            due = outbox.take_republishable(session, grace_seconds=grace_seconds, limit=batch)
        left = publish_deliveries(due)
        published += len(due) - len(left)
        if left or len(due) < batch:  # the broker refused, or nothing more is due
            break
    if published:
        log.info("sweep published %d due webhook deliveries", published)
    return published


@app.task(
    name=c.TASK_DELIVER_WEBHOOK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    throws=(ConfigError, EzqCallerError),
)
def deliver_webhook(self: Task, delivery_id: str) -> dict[str, Any]:
    """Make one attempt at a webhook delivery; return what happened."""
    try:
        the_id = uuid.UUID(delivery_id)
    except ValueError:
        raise EzqCallerError(f"delivery_id: {delivery_id!r} is not a UUID") from None
    try:
        outcome = deliver(the_id, settings=get_settings(), publish=publish_delivery)
    except UNAVAILABLE as exc:
        # The database is unreachable: nothing was decided, so deliver again later.
        log.warning(
            "[webhook=%s] database unavailable, retrying: %s", the_id, unavailable_because(exc)
        )
        raise self.retry(countdown=5.0, exc=exc) from None
    metrics.webhook_delivery(outcome.status)
    return outcome.as_dict()
