"""One call per outcome point: the worker, the cancel path and webhook deliveries call these.

Each call only touches in-memory (or, in multiprocess mode, memory-mapped) counters; none
does I/O, so they are safe on the hot path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from service.metrics import definitions as m
from service.metrics.labels import model_label, tenant_label

NONE = "none"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _since(start: datetime) -> float:
    # Both on this process's clock (the runner's start, now).
    return max(0.0, (datetime.now(UTC) - start).total_seconds())


def _ended(job: Any) -> None:
    """Count a job that has just ended, and how long it took from enqueue."""
    model = model_label(job.model)
    m.JOBS.labels(job.status, model, tenant_label(job.tenant)).inc()
    took = _seconds(job.created_at, job.finished_at)
    if took is not None:
        m.JOB_DURATION.labels(model, job.status).observe(took)


def job_succeeded(
    job: Any,
    *,
    call_started: datetime,
    first_token_at: datetime | None,
    tokens: Any | None,
    cost_usd: Decimal | None,
) -> None:
    """A successful call whose reply was stored: ``job`` is the row as written."""
    model = model_label(job.model)
    m.GATEWAY_ATTEMPTS.labels("success", NONE, model).inc()
    m.GATEWAY_DURATION.labels(model, "success").observe(_since(call_started))
    ttft = _seconds(call_started, first_token_at)
    if ttft is not None:
        m.TIME_TO_FIRST_TOKEN.labels(model).observe(ttft)
    _usage(job, tokens, cost_usd)
    _ended(job)


def _usage(job: Any, tokens: Any | None, cost_usd: Decimal | None) -> None:
    """Count a usage row just written (its tokens, its cost: 0 when unpriced)."""
    model, tenant = model_label(job.model), tenant_label(job.tenant)
    if tokens is not None:
        m.TOKENS.labels(model, tenant, "prompt").inc(tokens.prompt_tokens)
        m.TOKENS.labels(model, tenant, "cached").inc(tokens.cached_tokens)
        m.TOKENS.labels(model, tenant, "completion").inc(tokens.completion_tokens)
    m.COST.labels(model, tenant).inc(float(cost_usd or 0))


def attempt_failed(
    job: Any,
    *,
    error_type: str,
    final: bool,
    call_started: datetime,
    tokens: Any | None = None,
    cost_usd: Decimal | None = None,
) -> None:
    """A failed call whose outcome was recorded; ``final`` when the job failed for good;
    ``tokens`` when a usage row was written with it (a reply paid for but unusable)."""
    outcome = "failure" if final else "retry"
    model = model_label(job.model)
    m.GATEWAY_ATTEMPTS.labels(outcome, error_type, model).inc()
    m.GATEWAY_DURATION.labels(model, outcome).observe(_since(call_started))
    if tokens is not None:
        _usage(job, tokens, cost_usd)
    if final:
        _ended(job)


def call_after_cancel(
    job: Any,
    *,
    outcome: str,
    error_type: str,
    call_started: datetime,
    tokens: Any | None,
    cost_usd: Decimal | None,
) -> None:
    """A call that ended after its job was cancelled, counted as it ended (``success``, or
    ``failure`` with its error type), with the usage row it was paid for; the job's own
    end was counted by the cancel."""
    model = model_label(job.model)
    m.GATEWAY_ATTEMPTS.labels(outcome, error_type, model).inc()
    m.GATEWAY_DURATION.labels(model, outcome).observe(_since(call_started))
    if tokens is not None:
        _usage(job, tokens, cost_usd)


def job_ended_at_claim(job: Any) -> None:
    """A job that ended before any call (over budget at its claim)."""
    _ended(job)


def dead_letter(kind: str) -> None:
    m.DEAD_LETTERS.labels(kind).inc()


def attempt_lost(error_type: str, model: str) -> None:
    m.ATTEMPTS_LOST.labels(error_type, model_label(model)).inc()


def claims_undone(count: int) -> None:
    m.CLAIMS_UNDONE.inc(count)


def webhook_delivery(outcome: str) -> None:
    m.WEBHOOK_DELIVERIES.labels(outcome).inc()
