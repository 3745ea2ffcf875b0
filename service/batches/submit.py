"""Turning an uploaded file into a batch: every line a queued job, written in bulk in one
transaction, then published in slices by the one after-commit publisher.

The file was checked when it was uploaded; it is checked again here against the batch's
tenant, metadata and today's settings, before any line is written. Should a line fail now
(a setting changed since the upload), the batch is stored ``failed`` with OpenAI's
``errors`` (line numbers) and no job, and its ``batch.failed`` webhook goes out.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import constants as c
from service.batches.files import FileContentPurged, input_chunks
from service.batches.lines import BatchLine, LineChecker, checker_for
from service.batches.views import batch_view
from service.db import batches as db
from service.db.queries import Tenants
from service.db.session import transaction
from service.errors import FileNotFound, InvalidBatchFile, InvalidRequest
from service.validation import checked_callback_url, checked_priority, storable

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


@dataclass(frozen=True, slots=True)
class Created:
    """A new batch as OpenAI's ``Batch``, and its jobs still to publish."""

    view: dict[str, Any]
    job_ids: list[uuid.UUID]


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


class _ChunkReader(io.RawIOBase):
    """A stored file's slices as a readable stream, so lines are read without the whole."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            self._buffer = next(self._chunks, b"")
            if not self._buffer:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def check_metadata(value: object) -> dict[str, str]:
    """OpenAI's metadata: up to 16 string pairs, keys up to 64 and values up to 512
    characters. It tags the batch and each of its jobs."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("metadata", f"must be an object, not {type(value).__name__}")
    if len(value) > METADATA_MAX_KEYS:
        raise InvalidRequest("metadata", f"holds {len(value)} keys; the limit is 16")
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= METADATA_MAX_KEY:
            raise InvalidRequest("metadata", f"keys are strings of 1 to {METADATA_MAX_KEY}")
        if not isinstance(item, str) or len(item) > METADATA_MAX_VALUE:
            raise InvalidRequest(
                f"metadata.{key}", f"must be a string of at most {METADATA_MAX_VALUE} characters"
            )
    storable("metadata", value)
    return dict(value)


def _line_rows(
    lines: list[BatchLine], batch_id: str, created_by: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    conversations, jobs = [], []
    for line in lines:
        request = line.request
        conversation_id = uuid.uuid4()
        conversations.append(
            {"id": conversation_id, "tenant": request.tenant, "meta": request.metadata}
        )
        jobs.append(
            {
                "id": uuid.uuid4(),
                "conversation_id": conversation_id,
                "status": "queued",
                "model": request.model,
                "params": request.params,
                "input_messages": list(request.messages),
                "tenant": request.tenant,
                "meta": request.metadata,
                "request_hash": request.fingerprint(),
                "surface": request.surface,
                "created_by": created_by,
                "batch_id": batch_id,
                "custom_id": line.custom_id,
                "priority": request.priority,
            }
        )
    return conversations, jobs


def _write_lines(
    session: Session, checker: LineChecker, file_id: str, batch_id: str, created_by: str | None
) -> list[uuid.UUID]:
    """Check every line and write each slice of valid ones; raise InvalidBatchFile (which
    rolls the whole transaction back) if any line is invalid."""
    job_ids: list[uuid.UUID] = []
    pending: list[BatchLine] = []

    def flush() -> None:
        conversations, jobs = _line_rows(pending, batch_id, created_by)
        db.insert_lines(session, conversations, jobs)
        job_ids.extend(job["id"] for job in jobs)
        pending.clear()

    stream = io.BufferedReader(_ChunkReader(input_chunks(file_id, session)), c.BATCH_CHUNK_BYTES)
    for line in checker.lines_of(stream):
        if line is None or checker.errors:
            pending.clear()  # nothing more is written; the rest is only checked
            continue
        pending.append(line)
        if len(pending) >= c.BATCH_INSERT_LINES:
            flush()
    checker.finish()
    if pending:
        flush()
    return job_ids


def create_batch(
    *,
    input_file_id: object,
    endpoint: object,
    completion_window: object,
    metadata: object = None,
    callback_url: object = None,
    priority: object = None,
    tenants: Tenants = None,
    created_by: str | None = None,
) -> Created:
    """Create a batch from an uploaded file: its lines become queued jobs, committed
    together. Returns the batch as OpenAI's ``Batch`` and the jobs, which the caller
    publishes (``publish_lines``). Lines run at ``priority`` (0-9), by default below
    interactive work (``BATCH_PRIORITY_DEFAULT``). Raises InvalidRequest naming a bad
    field, FileNotFound for an unknown file (or one outside ``tenants``), FileContentPurged
    for a file whose content ``ezq purge`` erased (nothing is written)."""
    if endpoint != c.BATCH_ENDPOINT:
        raise InvalidRequest("endpoint", f"must be {c.BATCH_ENDPOINT} (ezq runs chat completions)")
    if completion_window != c.BATCH_COMPLETION_WINDOW:
        raise InvalidRequest("completion_window", f"must be {c.BATCH_COMPLETION_WINDOW!r}")
    if not isinstance(input_file_id, str):
        raise InvalidRequest("input_file_id", "is required (a file id)")
    meta = check_metadata(metadata)
    url = checked_callback_url(callback_url)
    rank = checked_priority(priority, c.BATCH_PRIORITY_DEFAULT)
    with transaction() as session:
        source = db.get_file(session, input_file_id, tenants=tenants)
        if source is None:
            raise FileNotFound(input_file_id)
        if source.purpose != "batch":
            # The caller's own file (``get_file`` is scoped), served by GET /v1/files: not
            # "no file", but the wrong kind of file.
            raise InvalidRequest(
                "input_file_id",
                f"{input_file_id} is a batch's result file (purpose {source.purpose}); "
                "give a file uploaded with purpose batch",
            )
        tenant, total = source.tenant, source.line_count
    batch_id = new_batch_id()
    checker = checker_for(tenant, meta, rank)
    values: dict[str, Any] = {
        "id": batch_id,
        "tenant": tenant,
        "endpoint": c.BATCH_ENDPOINT,
        "completion_window": c.BATCH_COMPLETION_WINDOW,
        "input_file_id": input_file_id,
        "meta": meta,
        "callback_url": url,
        "created_by": created_by,
        "total": total,
    }
    try:
        with transaction() as session:
            now = session.scalar(select(func.now()))
            assert now is not None
            window = timedelta(seconds=c.BATCH_COMPLETION_WINDOW_S)
            db.insert_batch(
                session, status="in_progress", in_progress_at=now, expires_at=now + window, **values
            )
            # The batch's row now holds the file's (FOR KEY SHARE): ``ezq purge`` cannot
            # erase it from here on, and may have done so before.
            if not db.has_content(session, input_file_id):
                raise FileContentPurged(input_file_id)
            job_ids = _write_lines(session, checker, input_file_id, batch_id, created_by)
            view = batch_view(session, db.get_batch(session, batch_id) or _missing(batch_id))
    except InvalidBatchFile as exc:
        from service.batches.lifecycle import store_failed

        return Created(store_failed(values, exc.errors), [])
    return Created(view, job_ids)


def publish_lines(job_ids: list[uuid.UUID]) -> None:
    """Publish a committed batch's jobs, a slice at a time, through the one after-commit
    publisher. Should this process die part way, the sweep republishes the rest (they
    are pending jobs with no message, like any job whose publish was lost)."""
    from service.worker.dispatch import publish_jobs

    for start in range(0, len(job_ids), c.BATCH_INSERT_LINES):
        publish_jobs(job_ids[start : start + c.BATCH_INSERT_LINES])


def _missing(batch_id: str) -> Any:
    raise RuntimeError(f"batch {batch_id} vanished inside its own transaction")
