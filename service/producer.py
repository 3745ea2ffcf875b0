"""Enqueueing jobs from Python."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy.orm import Session

from service import views
from service.config import get_settings
from service.db import queries
from service.db.session import transaction
from service.errors import ConversationNotFound, InvalidRequest, JobNotFound
from service.gateway.routing import part_problem
from service.validation import CompletionRequest, validate_request

log = logging.getLogger(__name__)


def enqueue_completion(
    model: str,
    messages: list[dict[str, Any]],
    *,
    conversation_id: uuid.UUID | str | None = None,
    params: dict[str, Any] | None = None,
    tenant: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    surface: str | None = None,
    created_by: str | None = None,
    priority: int | None = None,
) -> uuid.UUID:
    """Validate the request, store the job, publish it, and return the job id.

    The job row is written in one transaction and the Celery message is sent only after
    it commits, so a worker never sees a job that is not there. Raises ``InvalidRequest``
    (naming the field), ``ConversationNotFound`` (also for another tenant's conversation)
    or ``IdempotencyConflict``, and then nothing is written. With a new ``conversation_id``
    of None a conversation is started; its id is on the job (``ezq show``). ``surface`` is
    ``openai``, ``anthropic`` or ``auto`` (default: ``EZQ_SURFACE_DEFAULTS``' match for the
    model, else ``auto``). ``created_by`` names the API key that asked (HTTP only).
    ``priority`` (0-9, default 5) orders a backlog: higher starts first (see Flow control).
    """
    # Imported here so that validating and storing need no broker configuration.
    from service.worker.dispatch import publish_jobs

    request = validate_request(
        model=model,
        messages=messages,
        conversation_id=conversation_id,
        params=params,
        tenant=tenant,
        metadata=metadata,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
        surface=surface,
        priority=priority,
        max_request_bytes=get_settings().ezq_max_request_bytes,
    )
    with transaction() as session:
        job_id, created = queries.create_job(session, request, created_by=created_by)
        if created:
            # After create_job: an unknown conversation (or another tenant's) has been
            # refused as such, and the conversation is locked. Raising rolls the job back.
            _check_history_surface(session, request)
    if created:
        # The job is durably stored: if the broker is down, this gives up within
        # EZQ_PUBLISH_TIMEOUT and the sweep publishes the job once the broker is back, so
        # the caller gets its id rather than an error that invites a duplicate.
        publish_jobs([job_id])
    return job_id


def _check_history_surface(session: Session, request: CompletionRequest) -> None:
    """A next turn set to the anthropic surface is refused (``surface``) when the stored
    history holds a part that surface cannot carry; the worker would fail it anyway.

    One query, only for a next turn set to anthropic: a first turn, or a job on ``auto``
    or ``openai``, costs nothing more. Earlier turns still pending are not in the stored
    history yet: the worker checks the full list before its call."""
    if request.surface != "anthropic" or request.conversation_id is None:
        return
    for i, j, kind, file_data, url in queries.history_media_parts(session, request.conversation_id):
        part: dict[str, Any] = {"type": kind}
        if kind == "file":
            part["file"] = {"file_data": file_data}
        elif kind == "image_url":
            part["image_url"] = {"url": url}
        problem = part_problem(part)
        if problem is not None:
            below, reason = problem
            raise InvalidRequest(
                "surface",
                "anthropic cannot carry the conversation's history "
                f"(messages[{i}].content[{j}]{below}: {reason})",
            )


def _job_id(value: uuid.UUID | str) -> uuid.UUID:
    """``value`` as a job id; one that is not a UUID names no job (as ``stream_job`` and
    the HTTP routes answer it)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise JobNotFound(value) from None


def get_job(job_id: uuid.UUID | str, *, tenants: queries.Tenants = None) -> dict[str, Any]:
    """The job's JSON view: status, attempts, reply content, finish reason, usage, error.

    With ``tenants``, a job of any other tenant raises ``JobNotFound`` like an unknown id
    (and like an id that is not a UUID).
    """
    with transaction() as session:
        return views.job_view(session, _job_id(job_id), tenants=tenants)


def get_conversation(
    conversation_id: uuid.UUID | str, *, tenants: queries.Tenants = None
) -> dict[str, Any]:
    """The conversation's ordered messages and its jobs (scoped to ``tenants`` if given)."""
    try:
        the_id = uuid.UUID(str(conversation_id))
    except ValueError:
        raise ConversationNotFound(conversation_id) from None
    with transaction() as session:
        return views.conversation_view(session, the_id, tenants=tenants)


def cancel_job(job_id: uuid.UUID | str, *, tenants: queries.Tenants = None) -> dict[str, Any]:
    """Cancel a job that has not ended; return its view.

    Raises ``JobNotFound`` (also for a job outside ``tenants``), or ``JobAlreadyFinished``
    for a job that succeeded or failed.
    A queued job never runs; a running attempt's reply is discarded. The next turn of the
    conversation is woken, and a ``job.cancelled`` webhook goes out if one was asked for.
    """
    from service.live.publisher import job_ended
    from service.webhooks import outbox as webhook_outbox
    from service.webhooks.tasks import publish_deliveries
    from service.worker.dispatch import publish_jobs

    the_id = _job_id(job_id)
    with transaction() as session:
        job = queries.cancel_job(session, the_id, tenants=tenants)
        view = views.job_view(session, the_id)
        if job.callback_url is not None:
            webhook_outbox.add_for_job(session, job, view)
        deliveries = webhook_outbox.pending_ids_for_job(session, the_id) if job.callback_url else []
        waiting = queries.next_waiting_job(session, job.conversation_id)
    # Committed already; the sweep publishes whatever these cannot.
    publish_deliveries(deliveries)
    publish_jobs([waiting])
    job_ended(view, now=True)
    return view
