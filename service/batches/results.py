"""A batch's output and error lines, rendered from its jobs a page at a time.

Output lines (succeeded jobs) are OpenAI's: ``{"id", "custom_id", "response":
{"status_code": 200, "request_id", "body": <a ChatCompletion with usage>}, "error": null}``.
Error lines (failed and cancelled jobs) carry ``error: {"code", "message"}`` and, when the
gateway answered, its status in ``response``. Lines come in file order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session

from service.batches.times import epoch
from service.db import batches as db
from service.db.session import transaction

OUTPUT_STATUSES = ("succeeded",)
ERROR_STATUSES = ("failed", "cancelled")
KINDS = {
    "output": OUTPUT_STATUSES,
    "error": ERROR_STATUSES,
    "all": OUTPUT_STATUSES + ERROR_STATUSES,
}
PAGE_LINES = 500
CANCELLED = {
    "code": "batch_cancelled",
    "message": "the request was cancelled before it ran",
}


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


def result_line(row: Row[Any]) -> dict[str, Any]:
    """One ended job as its output or error line."""
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
        line["error"] = dict(CANCELLED)
        if row.attempts:
            # Cancelled while it waited to retry, or during a call: it did run.
            tries = f"{row.attempts} attempt{'s' if row.attempts > 1 else ''}"
            line["error"]["message"] = f"the request was cancelled after {tries}"
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


def _page(session: Session | None, batch_id: str, kind: str, after: int) -> list[Row[Any]]:
    if session is not None:
        return db.result_rows(
            session, batch_id, statuses=KINDS[kind], after=after, limit=PAGE_LINES
        )
    with transaction() as own:
        return db.result_rows(own, batch_id, statuses=KINDS[kind], after=after, limit=PAGE_LINES)


def result_lines(
    batch_id: str, kind: str, *, session: Session | None = None
) -> Iterator[dict[str, Any]]:
    """The batch's ``output``, ``error`` or ``all`` lines in file order: a page per short
    transaction, or all in ``session``'s."""
    after = 0
    while True:
        rows = _page(session, batch_id, kind, after)
        for row in rows:
            yield result_line(row)
        if len(rows) < PAGE_LINES:
            return
        after = rows[-1].enqueue_seq


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
