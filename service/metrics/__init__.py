"""Prometheus metrics: what the worker and ``ezq api`` count, and what Postgres says now.

Counters and histograms live in the process that does the work (multiprocess-safe: with
``PROMETHEUS_MULTIPROC_DIR`` set, every process writes its own file and any of them serves
the sum). Gauges of the backlog are computed from Postgres when scraped (see
``service.metrics.backlog``). Names and labels are a public interface: README, Metrics.
"""

from __future__ import annotations

from service.metrics.events import (
    NONE,
    attempt_failed,
    attempt_lost,
    call_after_cancel,
    claims_undone,
    dead_letter,
    job_ended_at_claim,
    job_succeeded,
    webhook_delivery,
)

__all__ = [
    "NONE",
    "attempt_failed",
    "attempt_lost",
    "call_after_cancel",
    "claims_undone",
    "dead_letter",
    "job_ended_at_claim",
    "job_succeeded",
    "webhook_delivery",
]
