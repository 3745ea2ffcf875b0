"""A batch as OpenAI's ``Batch`` object, with counts and usage read from its jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.batches.times import epoch
from service.db import batches as db
from service.db.models import Batch

_OPEN = ("in_progress", "cancelling")


def request_counts(counts: dict[str, int], total: int) -> dict[str, int]:
    """OpenAI's counts: ``completed`` lines succeeded; ``failed`` lines failed or were
    cancelled (both are in the error file)."""
    return {
        "total": total,
        "completed": counts.get("succeeded", 0),
        "failed": counts.get("failed", 0) + counts.get("cancelled", 0),
    }


def _usage(session: Session, batch_id: str) -> dict[str, Any] | None:
    row = db.line_usage(session, batch_id)
    if row is None:
        return None
    return {
        "input_tokens": row.prompt_tokens,
        "input_tokens_details": {"cached_tokens": row.cached_tokens},
        "output_tokens": row.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": row.reasoning_tokens},
        "total_tokens": row.total_tokens,
    }


def batch_view(session: Session, batch: Batch) -> dict[str, Any]:
    """The batch as OpenAI shows it. An open batch whose lines have all ended reads as
    ``finalizing`` until the sweep writes its files and webhook."""
    counts = db.line_counts(session, batch.id)
    ended = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
    status = batch.status
    if status == "in_progress" and ended >= batch.total:
        status = "finalizing"
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": ({"object": "list", "data": batch.errors} if batch.errors is not None else None),
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": epoch(batch.created_at),
        "in_progress_at": epoch(batch.in_progress_at),
        "expires_at": epoch(batch.expires_at),
        "finalizing_at": epoch(batch.finalizing_at),
        "completed_at": epoch(batch.completed_at),
        "failed_at": epoch(batch.failed_at),
        "expired_at": epoch(batch.expired_at),
        "cancelling_at": epoch(batch.cancelling_at),
        "cancelled_at": epoch(batch.cancelled_at),
        # A batch failed at its checks ran no line: none is counted, as OpenAI shows it
        # (``batches.total`` keeps the file's line count).
        "request_counts": request_counts(counts, 0 if batch.status == "failed" else batch.total),
        "usage": _usage(session, batch.id),
        "metadata": batch.meta or None,
        "tenant": batch.tenant,
    }
