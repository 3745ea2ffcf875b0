"""Celery tasks: thin wrappers that unpack arguments and map outcomes to Celery."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, NoReturn

from celery import Task
from celery.app.task import get_actual_ignore_result
from celery.exceptions import Ignore, Reject, Retry
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    worker_process_shutdown,
    worker_ready,
)
from sqlalchemy.exc import IntegrityError

from service import constants as c
from service.config import get_settings
from service.db import queries
from service.db.session import UNAVAILABLE, transaction, unavailable_because
from service.errors import EzqCallerError
from service.gateway import GatewayClient
from service.live import publisher as live_publisher
from service.logsetup import (
    failures_without_text,
    ignored_at_debug_only,
    install_redaction,
    receipts_at_debug_only,
)
from service.logwriter import write_in_background
from service.validation import CompletionRequest, validate_request
from service.webhooks.tasks import deliver_committed
from service.worker import maintenance
from service.worker.app import app
from service.worker.deadletter import set_aside
from service.worker.dispatch import publish_jobs
from service.worker.runner import (
    Dropped,
    Finished,
    LeftAlone,
    Outcome,
    Parked,
    RunAgainLater,
    run_job,
)
from service.worker.sweep import sweep as run_sweep
from service.worker.warmup import warm_up

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


@worker_ready.connect
def _warm_up(**_: Any) -> None:
    warm_up(gateway)


@worker_process_shutdown.connect
def _close_gateway(**_: Any) -> None:
    if _gateway is not None:
        _gateway.close()


ignored_at_debug_only(c.TASK_CHAT_COMPLETION)
failures_without_text(c.TASK_CHAT_COMPLETION)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_logs(logger: logging.Logger, loglevel: int | str = logging.INFO, **_: Any) -> None:
    install_redaction([logger])
    receipts_at_debug_only(loglevel)
    ignored_at_debug_only(c.TASK_CHAT_COMPLETION)
    failures_without_text(c.TASK_CHAT_COMPLETION)


@celeryd_after_setup.connect
def _write_logs_in_background(**_: Any) -> None:
    # The jobs' threads queue their lines; one thread writes them (service.logwriter).
    # After Celery's logging set-up, which reads the root handler's stream once it is done.
    # Celery's task logger (``celery.task``) has a handler of its own, unused by ezq.
    write_in_background(logging.getLogger())


class JobFailed(Exception):
    """The job ended ``failed``; the message carries the job's error."""


def _create_foreign_job(job_id: uuid.UUID, request: CompletionRequest) -> uuid.UUID:
    """Write the job row for a message sent by a producer that does not use our code (a
    first turn is written by its claim instead, see ``_run``)."""
    with transaction() as session:
        effective_id, _ = queries.create_job(session, request, job_id=job_id)
    return effective_id


def _job_id(value: object, fallback: str | None) -> uuid.UUID:
    if value is None:
        value = fallback
    # The value is not quoted: a wrong argument can be anything, a prompt or a chained
    # task's result with its reply (a mutable signature's), and this error is logged and
    # kept with the dead letter.
    if not isinstance(value, str):
        raise EzqCallerError(f"job_id: is not a UUID (a {type(value).__name__})")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise EzqCallerError(
            f"job_id: is not a UUID (a string of {len(value)} characters)"
        ) from None


def _given_job_id(
    job_id: object, extra: tuple[object, ...], unknown: dict[str, object], fields: dict[str, Any]
) -> object:
    """The job id a message gives, as its first argument or by name; an argument the task
    does not take is an invalid message, named like the others."""
    task = c.TASK_CHAT_COMPLETION
    if extra:
        raise EzqCallerError(
            f"args: {task} takes at most one positional argument (job_id), got {len(extra) + 1}"
        )
    if "job_id" in unknown:  # by name, as producers send it
        if job_id is not None:
            raise EzqCallerError("job_id: given both as the first argument and by name")
        job_id = unknown.pop("job_id")
    if unknown:
        names = ", ".join(sorted(unknown))
        what = "is not an argument" if len(unknown) == 1 else "are not arguments"
        raise EzqCallerError(f"{names}: {what} of {task}; it takes job_id, {', '.join(fields)}")
    return job_id


def _publish_one(job_id: uuid.UUID) -> None:
    publish_jobs([job_id])


@app.task(
    name=c.TASK_CHAT_COMPLETION,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    throws=(JobFailed, EzqCallerError),
    # Celery formats the result into its "succeeded" line and its task-succeeded event
    # (what Flower shows); ours holds the reply. Cut to nothing: cheaper, and no reply text.
    resultrepr_maxsize=1,
    # Remote control (``celery inspect``) answers without the task's arguments.
    Request="service.worker.request:Request",
)
def chat_completion(
    self: Task,
    job_id: str | None = None,
    # job_id is positional-only and the rest is gathered, so that no message's arguments
    # make Python raise before the body runs: a TypeError there would be logged as a task
    # failure with a traceback, never kept as a dead letter. _given_job_id checks them.
    /,
    *extra: object,
    model: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    conversation_id: str | None = None,
    params: dict[str, Any] | None = None,
    tenant: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    surface: str | None = None,
    priority: int | None = None,
    **unknown: object,
) -> dict[str, Any]:
    """Run one chat-completion job and return its JSON view.

    Our producer sends only ``job_id``; other services send the request fields too (and
    optionally ``job_id``), and the job row is created here on first delivery. Raises
    ``JobFailed`` when the job ends failed, so a chain stops there. A message whose
    arguments cannot be a job is kept as a dead letter and fails with ``EzqCallerError``.
    """
    fields = {
        "model": model,
        "messages": messages,
        "conversation_id": conversation_id,
        "params": params,
        "tenant": tenant,
        "metadata": metadata,
        "idempotency_key": idempotency_key,
        "callback_url": callback_url,
        "surface": surface,
        "priority": priority,
    }
    # A foreign message's first turn (the common case): not written here, but by its claim,
    # in the same round trip and transaction (one commit where there were two).
    first_turn: CompletionRequest | None = None
    try:
        the_id = _job_id(_given_job_id(job_id, extra, unknown, fields), self.request.id)
        # Any request field makes it a request, so a missing model or messages is named.
        if any(value is not None for value in fields.values()):
            request = validate_request(
                max_request_bytes=get_settings().ezq_max_request_bytes, **fields
            )
            if queries.is_first_turn(request):
                first_turn = request
            else:
                the_id = _create_foreign_job(the_id, request)
        outcome = _run(self, the_id, first_turn)
    except EzqCallerError as exc:
        set_aside(
            {"args": list(self.request.args or ()), "kwargs": self.request.kwargs or {}},
            f"invalid arguments: {exc}",
            kind="invalid_arguments",
            queue=(self.request.delivery_info or {}).get("routing_key"),
            task_name=self.name,
            message_id=self.request.id,
        )
        raise
    except UNAVAILABLE as exc:
        # A foreign message's job could not be written: the message is all there is of the
        # job, so it must come back, never be dropped.
        log.warning(
            "[job=%s] database unavailable, not created yet; retrying: %s",
            self.request.id,
            unavailable_because(exc),
        )
        _retry(self, None, countdown=5.0)
    if isinstance(outcome, Finished):
        live_publisher.job_ended(outcome.result)
        if outcome.failed:
            raise JobFailed(_failure(the_id, outcome.result))
        return outcome.result
    if isinstance(outcome, RunAgainLater):
        _retry(self, the_id, countdown=outcome.countdown)
    if isinstance(outcome, Parked):
        if outcome.ran is not None:
            live_publisher.job_ended(outcome.ran)  # the job that ran here has ended
        log.debug("[job=%s] parked: %s", the_id, outcome.reason)
    elif isinstance(outcome, Dropped):
        log.debug("[job=%s] stale message dropped: %s", the_id, outcome.reason)
    else:
        assert isinstance(outcome, LeftAlone)
    raise Ignore()


def _failure(job_id: uuid.UUID, view: dict[str, Any]) -> str:
    """What ``JobFailed`` says: the job's status, and its error when it has one (a job
    cancelled before it ended has none)."""
    error = view.get("error")
    if not error:
        return f"job {job_id} {view['status']}"
    return f"job {job_id} {view['status']}: {error.get('type')}: {error.get('message')}"


def _reports_its_job(task: Task) -> bool:
    """Whether this message must end with its own job's result: a producer waits for it
    (a result is stored), or a chain or chord goes on from it. It then runs its own job
    only (see service.flow.admission), and one that ended is answered, not dropped."""
    request = task.request
    if not get_actual_ignore_result(task, request):
        return True
    return bool(request.callbacks or request.errbacks or request.chain or request.chord)


def _run(task: Task, job_id: uuid.UUID, first_turn: CompletionRequest | None) -> Outcome:
    """``run_job`` for the message's job; ``first_turn``: its request, written by the claim.
    An outage of the database before anything was decided delivers the message again."""

    def run(job_id: uuid.UUID, create: CompletionRequest | None) -> Outcome:
        return run_job(
            job_id,
            gateway=gateway(),
            settings=get_settings(),
            publish=_publish_one,
            deliveries=task.request.retries,
            publish_webhooks=deliver_committed,
            holder=maintenance.identity.id,
            active=maintenance.active_jobs,
            own_only=_reports_its_job(task),
            create=create,
        )

    try:
        if first_turn is None:
            return run(job_id, None)
        try:
            return run(job_id, first_turn)
        except IntegrityError as exc:
            if not queries.id_taken(exc):
                raise
        # Its id is taken, and nothing was written or claimed: this message was delivered
        # before (its job exists), or it names another job's id. The general way says which.
        return run(_create_foreign_job(job_id, first_turn), None)
    except UNAVAILABLE as exc:
        if first_turn is not None:
            raise  # its job may not be written: the caller gives the message back
        log.warning("[job=%s] database unavailable, retrying: %s", job_id, unavailable_because(exc))
        _retry(task, job_id, countdown=5.0)


def _retry(task: Task, job_id: uuid.UUID | None, *, countdown: float) -> NoReturn:
    """Deliver the message again after ``countdown``. If the broker refuses, park the job
    for the sweep; a job with no row yet (``job_id`` None: its foreign message is all there
    is of it) gives its message back unacknowledged instead."""
    try:
        raise task.retry(countdown=countdown)
    except Retry:
        raise
    except Exception as exc:  # the broker is down
        if job_id is None:
            raise Reject(requeue=True) from None
        log.warning(
            "[job=%s] could not schedule its next run (%s); parked", job_id, type(exc).__name__
        )
        try:
            with transaction() as session:
                queries.park(session, job_id)
        except UNAVAILABLE:
            pass  # the sweep's stale window finds it
        raise Ignore() from None


@app.task(name=c.TASK_SWEEP)
def sweep() -> dict[str, int]:
    """Run the sweep now (it also runs by itself inside every worker process)."""
    report = run_sweep(
        get_settings(),
        worker=maintenance.identity.id,
        broker_depth=maintenance.redis_broker_depth(get_settings()),
        force=True,
    )
    if report is None:
        return {"jobs": 0, "webhooks": 0, "purged_conversations": 0, "skipped": 1}
    return {
        "jobs": report.jobs,
        "webhooks": report.webhooks,
        "taken_over": report.taken_over,
        "purged_conversations": report.purged_conversations,
    }
