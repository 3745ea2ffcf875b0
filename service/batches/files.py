"""Batch files: storing an uploaded input file, and reading any file back, a slice at a time.

An input file is checked whole before anything is written (every line as a single job is
checked), then stored in ``batch_file_chunks`` slices within one transaction: a bad file
leaves no row. Output and error files are not stored: their lines are rendered from the
batch's jobs when read (``service.batches.results``), so they always match Postgres and
``ezq purge`` reaches them too.

``ezq purge`` erases an input file's bytes once none of its requests is needed (see
``service.db.purge``) and keeps its row; a file's content is then answered with
FileContentPurged, as is a batch's output or error file once every line of the batch is
purged. The file object itself is still served, its ``status_details`` saying so.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import IO, Any

from sqlalchemy.orm import Session

from service import constants as c
from service.batches.lines import checker_for
from service.batches.times import epoch
from service.config import get_settings
from service.db import batches as db
from service.db.models import BatchFile
from service.db.queries import Tenants
from service.db.session import transaction
from service.errors import EzqCallerError, FileNotFound, InvalidRequest

PURPOSE = "batch"
PURGED_DETAILS = "content purged (ezq purge)"


class FileContentPurged(FileNotFound):
    """The file exists but ``ezq purge`` erased its content (the API answers it as a 404
    ``file_not_found`` that says so)."""

    def __init__(self, file_id: object) -> None:
        self.file_id = file_id
        EzqCallerError.__init__(
            self,
            f"file {file_id}: its content was purged (ezq purge); "
            f"GET /v1/files/{file_id} still describes the file",
        )


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def check_file(stream: IO[bytes], *, tenant: str | None) -> int:
    """Check every line of ``stream``; return the number of requests, or raise
    InvalidBatchFile with the first errors by line number."""
    checker = checker_for(tenant, None)
    for _ in checker.lines_of(stream):
        pass
    checker.finish()
    return checker.lines


def store_input_file(
    stream: IO[bytes],
    *,
    filename: str,
    purpose: object,
    tenant: str | None,
    created_by: str | None,
) -> dict[str, Any]:
    """Check and store an uploaded batch file (``stream`` is rewound and read twice);
    return its file object."""
    if purpose != PURPOSE:
        raise InvalidRequest("purpose", f"must be {PURPOSE!r} (ezq stores batch input files)")
    stream.seek(0, 2)
    size = stream.tell()
    limit = get_settings().ezq_batch_max_file_bytes
    if size > limit:
        raise InvalidRequest("file", f"is {size} bytes; the limit is {limit}")
    stream.seek(0)
    line_count = check_file(stream, tenant=tenant)
    stream.seek(0)
    with transaction() as session:
        row = db.insert_file(
            session,
            id=new_file_id(),
            tenant=tenant,
            purpose=PURPOSE,
            filename=filename,
            bytes=size,
            line_count=line_count,
            created_by=created_by,
        )
        seq = 0
        while chunk := stream.read(c.BATCH_CHUNK_BYTES):
            db.insert_chunk(session, row.id, seq, chunk)
            seq += 1
        return file_view(row)


def file_view(row: BatchFile, *, purged: bool = False) -> dict[str, Any]:
    """The file as OpenAI's ``FileObject`` (``purged``: its content was erased)."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": epoch(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": PURGED_DETAILS if purged else None,
    }


def is_purged(session: Session, row: BatchFile) -> bool:
    """Whether ``ezq purge`` erased the file's content: an input file's stored bytes (a
    stored file always has some), or every line of the batch whose result file it is."""
    if row.purpose == PURPOSE:
        return not db.has_content(session, row.id)
    owner = db.batch_of_result_file(session, row.id)
    return owner is not None and db.lines_purged(session, owner[0].id)


def get_file(file_id: str, *, tenants: Tenants = None) -> dict[str, Any]:
    with transaction() as session:
        row = db.get_file(session, file_id, tenants=tenants)
        if row is None:
            raise FileNotFound(file_id)
        return file_view(row, purged=is_purged(session, row))


def input_chunks(file_id: str, session: Session | None = None) -> Iterator[bytes]:
    """An input file's bytes, one stored slice per short transaction, or each read through
    ``session``: a caller in a transaction of its own passes it, rather than take a second
    pooled connection while it holds one (as many such callers at once as the pool has
    connections would each wait for another until the pool's timeout)."""
    seq = 0
    while True:
        if session is not None:
            data = db.read_chunk(session, file_id, seq)
        else:
            with transaction() as own:
                data = db.read_chunk(own, file_id, seq)
        if data is None:
            return
        yield data
        seq += 1


def file_content(file_id: str, *, tenants: Tenants = None) -> Iterator[bytes]:
    """The file's bytes, streamed: an input file's stored slices, or a batch's output or
    error lines rendered from its jobs. Raises FileNotFound (FileContentPurged once
    ``ezq purge`` erased it) before yielding anything."""
    from service.batches.results import result_chunks

    with transaction() as session:
        row = db.get_file(session, file_id, tenants=tenants)
        if row is None:
            raise FileNotFound(file_id)
        owner = db.batch_of_result_file(session, file_id) if row.purpose != PURPOSE else None
        if owner is None:
            purged = not db.has_content(session, file_id)
        else:
            purged = db.lines_purged(session, owner[0].id)
        if purged:
            raise FileContentPurged(file_id)
    if owner is None:
        return input_chunks(file_id)
    batch, kind = owner
    return result_chunks(batch.id, kind)
