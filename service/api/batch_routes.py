"""OpenAI-compatible files and batches: the official ``openai`` SDK pointed at ezq
(``base_url=http://host:8000/v1``, an ezq key as ``api_key``) works unchanged.

Included by ``service.api.app`` with one line; the app's authentication, error envelope
and body limit apply (``POST /v1/files`` has its own, larger limit, and its body is
spooled to disk, never held whole). Everything is scoped to the key's tenants: another
tenant's batch or file answers 404 exactly like an unknown one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from service import constants as c
from service.api.auth import Caller
from service.api.body import parse_json_object
from service.api.schemas import BatchCreate, BatchList, BatchView, ExpiresAfter, FileView
from service.errors import InvalidRequest
from service.shapes import first_error
from service.validation import checked_tenant

router = APIRouter()

CREATE_FIELDS = tuple(BatchCreate.model_fields)
# The multipart fields of an upload: OpenAI's `file`, `purpose` and `expires_after` (as the
# SDK sends it: `expires_after[anchor]`, `expires_after[seconds]`), and ezq's `tenant`.
EXPIRES_AFTER_FIELDS = ("expires_after[anchor]", "expires_after[seconds]")
UPLOAD_FIELDS = ("file", "purpose", "tenant", *EXPIRES_AFTER_FIELDS)


def _check_expires_after(field: str, value: object) -> None:
    """OpenAI's ``expires_after`` (a file's) or ``output_expires_after`` (a batch's), checked
    as OpenAI checks it and not applied: ezq keeps files until ``ezq purge``."""
    try:
        ExpiresAfter.model_validate(value)
    except ValidationError as exc:
        raise first_error(field, exc) from None


MAX_LIST_LIMIT = 100
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["batch"]},
                    "tenant": {"type": "string", "description": "ezq: one of the key's tenants."},
                },
            }
        }
    },
}


def _tenant(principal: Any, value: object) -> str | None:
    return checked_tenant(principal.tenant_for(checked_tenant(value)))


def _filename(value: str | None) -> str:
    """The upload's name as shown back: printable, valid Unicode, at most 255 characters."""
    kept = "".join(ch for ch in (value or "") if ch.isprintable())
    name = kept.encode("utf-8", "replace").decode("utf-8")[:255]
    return name or "batch.jsonl"


@router.post(
    "/v1/files",
    response_model=None,
    responses={200: {"model": FileView}},
    openapi_extra={"requestBody": UPLOAD_BODY},
)
async def upload_file(request: Request, principal: Caller) -> dict[str, Any]:
    """Upload a batch input file (multipart: `file`, `purpose=batch`). Every line is checked
    as a single job is before anything is stored: a bad file is a 422 `invalid_file` naming
    the first bad lines (`errors`: line, param, message), and nothing is written."""
    from service.batches.files import store_input_file

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("body", "must be multipart/form-data with `file` and `purpose`")
    try:
        form = await request.form(max_files=1)
    except (MultiPartException, HTTPException) as exc:
        # Starlette answers a malformed multipart body with a 400 of its own.
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise InvalidRequest("body", f"is not a valid multipart form: {detail}") from None
    try:
        unknown = sorted(set(form.keys()) - set(UPLOAD_FIELDS))
        if unknown:
            shown = unknown[0].replace("\x00", "\\x00") or "body"
            raise InvalidRequest(shown, "is not a known field (send file, purpose and tenant)")
        repeated = sorted(name for name in set(form.keys()) if len(form.getlist(name)) > 1)
        if repeated:
            # Taking the last of several values silently would act on what was not meant
            # (another of the key's tenants), as `GET /v1/jobs` refuses a repeated filter.
            raise InvalidRequest(repeated[0], "may be given once")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("file", "is required (a JSONL file)")
        tenant = _tenant(principal, form.get("tenant"))
        if any(name in form for name in EXPIRES_AFTER_FIELDS):
            _check_expires_after(
                "expires_after",
                {name[14:-1]: form.get(name) for name in EXPIRES_AFTER_FIELDS if name in form},
            )
        return await run_in_threadpool(
            store_input_file,
            upload.file,
            filename=_filename(upload.filename),
            purpose=form.get("purpose"),
            tenant=tenant,
            created_by=principal.key_id,
        )
    finally:
        await form.close()


@router.get("/v1/files/{file_id}", response_model=None, responses={200: {"model": FileView}})
def read_file(file_id: str, principal: Caller) -> dict[str, Any]:
    """The file: id, bytes, filename, purpose (`batch`, or `batch_output` for results)."""
    from service.batches.files import get_file

    return get_file(file_id, tenants=principal.tenants)


@router.get(
    "/v1/files/{file_id}/content",
    response_model=None,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "JSONL."}},
)
def read_file_content(file_id: str, principal: Caller) -> StreamingResponse:
    """The file's bytes, streamed: an input file as uploaded, or a batch's output or error
    lines (rendered from its jobs, in file order)."""
    from service.batches.files import file_content

    chunks = file_content(file_id, tenants=principal.tenants)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.post(
    "/v1/batches",
    response_model=None,
    responses={200: {"model": BatchView}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BatchCreate"}}
            },
        }
    },
)
async def create_batch(
    request: Request, principal: Caller, background: BackgroundTasks
) -> dict[str, Any]:
    """Create a batch from an uploaded file: each line becomes a queued job of the file's
    tenant, all stored in one transaction and published right after the answer. A line
    that no longer passes the checks makes the batch `failed` with `errors` (line
    numbers), and no job is written."""
    from service.batches.submit import create_batch as create
    from service.batches.submit import publish_lines

    payload = parse_json_object(await request.body())
    unknown = sorted(set(payload) - set(CREATE_FIELDS))
    if unknown:
        raise InvalidRequest(unknown[0], "is not a known field")
    if payload.get("output_expires_after") is not None:
        _check_expires_after("output_expires_after", payload["output_expires_after"])
    created = await run_in_threadpool(
        create,
        input_file_id=payload.get("input_file_id"),
        endpoint=payload.get("endpoint"),
        completion_window=payload.get("completion_window"),
        metadata=payload.get("metadata"),
        callback_url=payload.get("callback_url"),
        priority=payload.get("priority"),
        tenants=principal.tenants,
        created_by=principal.key_id,
    )
    # Publishing thousands of messages takes seconds: the caller has its batch meanwhile.
    background.add_task(publish_lines, created.job_ids)
    return created.view


@router.get("/v1/batches", response_model=None, responses={200: {"model": BatchList}})
def list_batches(
    principal: Caller,
    after: Annotated[str | None, Query(description="The `last_id` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = c.BATCH_LIST_LIMIT,
) -> dict[str, Any]:
    """The key's batches, newest first."""
    from service.batches.lifecycle import list_batches as page
    from service.db.batches import is_batch_id

    if after is not None and not is_batch_id(after):
        # A cursor that names no batch would silently answer the first page again.
        raise InvalidRequest("after", "is not a batch id (the `last_id` of a page)")

    return page(tenants=principal.tenants, after=after, limit=limit)


@router.get("/v1/batches/{batch_id}", response_model=None, responses={200: {"model": BatchView}})
def read_batch(batch_id: str, principal: Caller) -> dict[str, Any]:
    """The batch: status, request_counts, output_file_id, error_file_id, timestamps."""
    from service.batches.lifecycle import get_batch

    return get_batch(batch_id, tenants=principal.tenants)


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=None,
    responses={200: {"model": BatchView}},
)
def cancel_batch(batch_id: str, principal: Caller) -> dict[str, Any]:
    """Cancel a batch: lines not started never run, finished ones stay in its output;
    `cancelling` until its running lines end, then `cancelled`. 409 if it had ended."""
    from service.batches.lifecycle import cancel_batch as cancel

    return cancel(batch_id, tenants=principal.tenants)
