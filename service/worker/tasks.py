"""Celery tasks: thin wrappers that unpack arguments and map outcomes to Celery."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_shutdown
from sqlalchemy.exc import OperationalError

from service import constants as c
from service.config import get_settings
from service.db import queries
from service.db.session import transaction
from service.errors import EzqCallerError
from service.gateway import GatewayClient
from service.logsetup import install_redaction
from service.ops.purge import purge_expired
from service.validation import validate_request
from service.webhooks.tasks import publish_deliveries, republish_due_deliveries
from service.worker.app import app, publish_job
from service.worker.runner import Finished, LeftAlone, RunAgainLater, run_job

log = logging.getLogger(__name__)

_gateway: GatewayClient | None = None
_gateway_lock = threading.Lock()


def gateway() -> GatewayClient:
    """The process's one gateway client, shared by all worker threads."""
    global _gateway
    if _gateway is None:
        with _gateway_lock:
            if _gateway is None:
                _gateway = GatewayClient(get_settings())
    return _gateway


@worker_process_shutdown.connect
def _close_gateway(**_: Any) -> None:
    if _gateway is not None:
        _gateway.close()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_logs(logger: logging.Logger, **_: Any) -> None:
    install_redaction([logger])


class JobFailed(Exception):
    """The job ended ``failed``; the message carries the job's error."""


def _create_foreign_job(job_id: uuid.UUID, fields: dict[str, Any]) -> uuid.UUID:
    """Write the job row for a message sent by a producer that does not use our code."""
    request = validate_request(
        max_request_bytes=get_settings().ezq_max_request_bytes,
        **fields,
    )
    with transaction() as session:
        effective_id, _ = queries.create_job(session, request, job_id=job_id)
    return effective_id


@app.task(
    name=c.TASK_CHAT_COMPLETION,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    throws=(JobFailed, EzqCallerError),
)
def chat_completion(
    self: Task,
    job_id: str | None = None,
    *,
    model: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    conversation_id: str | None = None,
    params: dict[str, Any] | None = None,
    tenant: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    surface: str | None = None,
) -> dict[str, Any]:
    """Run one chat-completion job and return its JSON view.

    Our producer sends only ``job_id``; other services send the request fields too (and
    optionally ``job_id``), and the job row is created here on first delivery. Raises
    ``JobFailed`` when the job ends failed, so a chain stops there.
    """
    try:
        the_id = uuid.UUID(job_id or self.request.id)
    except (ValueError, TypeError, AttributeError):  # job_id=12345 is an int, not a str
        raise EzqCallerError(f"job_id: {job_id!r} is not a UUID") from None
    try:
        if model is not None or messages is not None:
            the_id = _create_foreign_job(
                the_id,
                {
                    "model": model,
                    "messages": messages,
                    "conversation_id": conversation_id,
                    "params": params,
                    "tenant": tenant,
                    "metadata": metadata,
                    "idempotency_key": idempotency_key,
                    "callback_url": callback_url,
                    "surface": surface,
                },
            )
        outcome = run_job(
            the_id,
            gateway=gateway(),
            settings=get_settings(),
            publish=publish_job,
            deliveries=self.request.retries,
            publish_webhooks=publish_deliveries,
        )
    except OperationalError as exc:
        # The database is unreachable: nothing was decided, so deliver again later.
        log.warning("[job=%s] database unavailable, retrying: %s", the_id, exc.orig)
        raise self.retry(countdown=5.0, exc=exc) from None
    if isinstance(outcome, Finished):
        if outcome.failed:
            error = outcome.result.get("error") or {}
            raise JobFailed(f"job {the_id} failed: {error.get('type')}: {error.get('message')}")
        return outcome.result
    if isinstance(outcome, RunAgainLater):
        raise self.retry(countdown=outcome.countdown)
    assert isinstance(outcome, LeftAlone)
    raise Ignore()


@app.task(name=c.TASK_SWEEP)
def sweep() -> dict[str, int]:
    """Republish jobs and webhook deliveries that should be moving but have no message."""
    with transaction() as session:
        stale = queries.redispatch_stale_jobs(
            session, older_than_s=get_settings().ezq_sweep_stale_after
        )
    for job_id in stale:
        publish_job(job_id)
    if stale:
        log.info("sweep republished %d stale jobs", len(stale))
    return {
        "jobs": len(stale),
        "webhooks": republish_due_deliveries(),
        "purged_conversations": purge_expired(),  # EZQ_RETENTION_DAYS
    }
