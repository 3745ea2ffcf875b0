"""A batch's output and error lines, rendered from its jobs a page at a time.

Output lines (succeeded jobs) are OpenAI's: ``{"id", "custom_id", "response":
{"status_code": 200, "request_id", "body": <a ChatCompletion with usage>}, "error": null}``.
Error lines (failed and cancelled jobs) carry ``error: {"code", "message"}`` and, when the
gateway answered, its status in ``response``. Lines come in file order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.orm import Session

from service.batches.times import epoch
from service.db import batches as db
from service.db.models import Batch
from service.db.session import transaction

OUTPUT_STATUSES = ("succeeded",)
ERROR_STATUSES = ("failed", "cancelled")
KINDS = {
    "output": OUTPUT_STATUSES,
    "error": ERROR_STATUSES,
    "all": OUTPUT_STATUSES + ERROR_STATUSES,
}
PAGE_LINES = 500
# A line ended by its batch's cancel, and one whose own job was cancelled.
CANCELLED = {
    "code": "batch_cancelled",
    "message": "the request was cancelled before it ran",
}
CANCELLED_ALONE = {
    "code": "cancelled",
    "message": "the request was cancelled (POST /v1/jobs/{id}/cancel) before it ran",
}
# What ``job_attempts.error_type`` says of an attempt whose job was cancelled while it ran
# (``cancel_job``); a batch's cancel lets a running attempt finish instead.
ATTEMPT_CANCELLED = "cancelled"

_LAST_ATTEMPTS = text(
    """
    SELECT a.job_id, a.error_type, a.finished_at
    FROM job_attempts a JOIN jobs j ON j.id = a.job_id AND a.attempt = j.attempts
    WHERE a.job_id = ANY(:ids)
    """
)


def _usage(row: Row[Any]) -> dict[str, Any] | None:
    if row.total_tokens is None:
        return None
    return {
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.total_tokens,
        "prompt_tokens_details": {"cached_tokens": row.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": row.reasoning_tokens or 0},
    }


def _completion(row: Row[Any]) -> dict[str, Any]:
    """The reply as OpenAI's ``ChatCompletion``; its id is the job's."""
    message: dict[str, Any] = {"role": "assistant", "content": row.content, "refusal": None}
    if row.tool_calls:
        message["tool_calls"] = row.tool_calls
    return {
        "id": str(row.id),
        "object": "chat.completion",
        "created": epoch(row.finished_at),
        "model": row.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": row.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(row),
    }


def result_line(row: Row[Any], *, cancelled_by_batch: bool = True) -> dict[str, Any]:
    """One ended job as its output or error line; a cancelled one says whether its
    batch's cancel ended it (``batch_cancelled``) or a cancel of its own job
    (``cancelled``: see ``cancelled_alone``)."""
    line: dict[str, Any] = {"id": f"batch_req_{row.id.hex}", "custom_id": row.custom_id}
    if row.status == "succeeded":
        line["response"] = {
            "status_code": 200,
            "request_id": row.gateway_request_id,
            "body": _completion(row),
        }
        line["error"] = None
    elif row.status == "cancelled":
        line["response"] = None
        line["error"] = dict(CANCELLED if cancelled_by_batch else CANCELLED_ALONE)
        if row.attempts:
            # Cancelled while it waited to retry, or during a call: it did run.
            tries = f"{row.attempts} attempt{'s' if row.attempts > 1 else ''}"
            line["error"]["message"] = line["error"]["message"].replace(
                "before it ran", f"after {tries}"
            )
    else:
        line["response"] = (
            {
                "status_code": row.error_status,
                "request_id": row.gateway_request_id,
                "body": {"error": {"message": row.error, "type": row.error_type}},
            }
            # Only an HTTP error is a response of its own: a call the gateway answered
            # with 200 and then failed (a broken stream, a reply that broke the request's
            # rules) is an error line without one, not a 200 that reads as a success.
            if row.error_status is not None and row.error_status >= 400
            else None
        )
        line["error"] = {"code": row.error_type, "message": row.error}
    return line


def cancelled_alone(session: Session, batch_id: str, rows: list[Row[Any]]) -> set[uuid.UUID]:
    """The ids of the cancelled ``rows`` that a cancel of their own job ended
    (``POST /v1/jobs/{id}/cancel``), not their batch's cancel. Read after the rows: a
    line the rows show cancelled was so before what this reads.

    In a batch never cancelled, every cancelled line was cancelled alone. Otherwise a line
    is the batch's when the batch's cancel ended it before it ran (in the cancel's own
    transaction: at the batch's ``cancelling_at`` exactly), or when its call failed after
    that cancel and was not retried (the job and its last attempt end in one statement:
    at the same ``finished_at``); a running line cancelled alone has its last attempt
    ended ``cancelled`` at its cancel, which comes first."""
    cancelled = [row for row in rows if row.status == "cancelled"]
    if not cancelled:
        return set()
    batch = session.get(Batch, batch_id)
    cancelling_at = batch.cancelling_at if batch is not None else None
    if cancelling_at is None:
        return {row.id for row in cancelled}
    ran = [row.id for row in cancelled if row.attempts]
    last = {a.job_id: a for a in session.execute(_LAST_ATTEMPTS, {"ids": ran})} if ran else {}
    alone = set()
    for row in cancelled:
        attempt = last.get(row.id)
        if attempt is not None and attempt.error_type == ATTEMPT_CANCELLED:
            alone.add(row.id)
        elif row.finished_at == cancelling_at:
            continue  # the batch's cancel, before the line ran (again)
        elif attempt is not None and attempt.finished_at == row.finished_at:
            continue  # its call failed after the batch's cancel: not retried
        else:
            alone.add(row.id)
    return alone


def _lines(session: Session, batch_id: str, kind: str, after: int) -> list[tuple[Row[Any], bool]]:
    rows = db.result_rows(session, batch_id, statuses=KINDS[kind], after=after, limit=PAGE_LINES)
    alone = cancelled_alone(session, batch_id, rows)
    return [(row, row.id not in alone) for row in rows]


def _page(
    session: Session | None, batch_id: str, kind: str, after: int
) -> list[tuple[Row[Any], bool]]:
    """A page of rows, each with whether its batch's cancel ended it (for a cancelled one)."""
    if session is not None:
        return _lines(session, batch_id, kind, after)
    with transaction() as own:
        return _lines(own, batch_id, kind, after)


def result_lines(
    batch_id: str, kind: str, *, session: Session | None = None
) -> Iterator[dict[str, Any]]:
    """The batch's ``output``, ``error`` or ``all`` lines in file order: a page per short
    transaction, or all in ``session``'s."""
    after = 0
    while True:
        rows = _page(session, batch_id, kind, after)
        for row, by_batch in rows:
            yield result_line(row, cancelled_by_batch=by_batch)
        if len(rows) < PAGE_LINES:
            return
        after = rows[-1][0].enqueue_seq


def encode(line: dict[str, Any]) -> bytes:
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def result_chunks(batch_id: str, kind: str) -> Iterator[bytes]:
    """The lines as JSONL bytes, a page per chunk."""
    page: list[bytes] = []
    for line in result_lines(batch_id, kind):
        page.append(encode(line))
        if len(page) >= PAGE_LINES:
            yield b"".join(page)
            page = []
    if page:
        yield b"".join(page)


def size_of(session: Session, batch_id: str, kind: str) -> tuple[int, int]:
    """How many lines and bytes the batch's ``kind`` file holds, as ``session`` sees it."""
    lines = size = 0
    for line in result_lines(batch_id, kind, session=session):
        lines += 1
        size += len(encode(line))
    return lines, size
