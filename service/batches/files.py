"""Batch files: storing an uploaded input file, and reading any file back, a slice at a time.

An input file is checked whole before anything is written (every line as a single job is
checked), then stored in ``batch_file_chunks`` slices within one transaction: a bad file
leaves no row. Output and error files are not stored: their lines are rendered from the
batch's jobs when read (``service.batches.results``), so they always match Postgres and
``ezq purge`` reaches them too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import IO, Any

from service import constants as c
from service.batches.lines import checker_for
from service.batches.times import epoch
from service.config import get_settings
from service.db import batches as db
from service.db.models import BatchFile
from service.db.queries import Tenants
from service.db.session import transaction
from service.errors import FileNotFound, InvalidRequest

PURPOSE = "batch"


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


def file_view(row: BatchFile) -> dict[str, Any]:
    """The file as OpenAI's ``FileObject``."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": epoch(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def get_file(file_id: str, *, tenants: Tenants = None) -> dict[str, Any]:
    with transaction() as session:
        row = db.get_file(session, file_id, tenants=tenants)
        if row is None:
            raise FileNotFound(file_id)
        return file_view(row)


def input_chunks(file_id: str) -> Iterator[bytes]:
    """An input file's bytes, one stored slice per short transaction."""
    seq = 0
    while True:
        with transaction() as session:
            data = db.read_chunk(session, file_id, seq)
        if data is None:
            return
        yield data
        seq += 1


def file_content(file_id: str, *, tenants: Tenants = None) -> Iterator[bytes]:
    """The file's bytes, streamed: an input file's stored slices, or a batch's output or
    error lines rendered from its jobs. Raises FileNotFound before yielding anything."""
    from service.batches.results import result_chunks

    with transaction() as session:
        row = db.get_file(session, file_id, tenants=tenants)
        if row is None:
            raise FileNotFound(file_id)
        owner = db.batch_of_result_file(session, file_id) if row.purpose != PURPOSE else None
    if owner is None:
        return input_chunks(file_id)
    batch, kind = owner
    return result_chunks(batch.id, kind)
