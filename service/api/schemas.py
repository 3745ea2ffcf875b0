"""What the HTTP interface answers, as models, so ``/openapi.json`` describes every body.

The handlers return the same dicts as ``ezq show``; these models document them (and the
schema test holds the answers to them), they are not used to filter the answers.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int


class JobError(BaseModel):
    type: str = Field(description="connection_error, timeout, client_error, ...")
    status: int | None = Field(description="The gateway's HTTP status, if it answered.")
    message: str | None


class JobLease(BaseModel):
    """A running job's lease, renewed by its worker's heartbeat while the call runs."""

    expires_at: datetime = Field(description="Until when the lease holds, as last renewed.")
    holder: str | None = Field(
        default=None,
        description="The worker running the job (host:pid:id); shown to admin keys only.",
    )


class JobView(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` and ``ezq show`` return it."""

    job_id: uuid.UUID
    conversation_id: uuid.UUID
    status: JobStatus
    model: str
    surface: Literal["openai", "anthropic", "auto"]
    attempts: int
    content: str | None
    tool_calls: list[Any] | None
    thinking_blocks: list[Any] | None = Field(
        default=None, description="Anthropic surface: the reply's thinking blocks."
    )
    reasoning_content: str | None = Field(
        default=None,
        description="The reply's thinking text, on either surface (reasoning models, thinking on).",
    )
    finish_reason: str | None
    usage: Usage | None
    error: JobError | None
    tenant: str | None
    metadata: dict[str, Any]
    lease: JobLease | None = Field(default=None, description="A running job's lease; else null.")
    created_at: datetime | None
    started_at: datetime | None
    first_token_at: datetime | None
    finished_at: datetime | None
    replay_of: uuid.UUID | None = Field(description="The job this one replays, if any.")
    purged_at: datetime | None = Field(
        default=None, description="When `ezq purge` deleted the job's content, if it did."
    )


class JobList(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    jobs: list[JobView]
    next_cursor: str | None = Field(description="Null on the last page.")


class ConversationMessage(BaseModel):
    seq: int
    role: Literal["system", "user", "assistant", "tool"]
    content: Any = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    job_id: uuid.UUID | None = None


class ConversationJob(BaseModel):
    job_id: uuid.UUID
    status: JobStatus


class ConversationView(BaseModel):
    """A conversation's messages in order, and its jobs in turn order."""

    conversation_id: uuid.UUID
    tenant: str | None
    metadata: dict[str, Any]
    created_at: datetime | None
    messages: list[ConversationMessage]
    jobs: list[ConversationJob]


class Health(BaseModel):
    database: str = Field(description='"ok" or what went wrong')
    broker: str = Field(description='"ok" or what went wrong')


class ErrorDetail(BaseModel):
    type: str = Field(
        description="unauthorized, forbidden, not_found, job_not_found, "
        "conversation_not_found, batch_not_found, file_not_found, method_not_allowed, "
        "idempotency_conflict, job_already_finished, batch_already_finished, "
        "payload_too_large, invalid_request, invalid_file, unavailable"
    )
    message: str
    field: str | None = Field(default=None, description="The field at fault, if one is.")
    job_id: uuid.UUID | None = Field(
        default=None, description="idempotency_conflict: the caller's own first job."
    )
    status: str | None = Field(
        default=None, description="job_already_finished, batch_already_finished: how it ended."
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None,
        description="invalid_file: the first bad lines, each {line, param, message, code}.",
    )


class ErrorEnvelope(BaseModel):
    """Every error, on every route: ``{"error": {"type", "message", "field"?}}``."""

    error: ErrorDetail


class FileView(BaseModel):
    """A file as OpenAI's ``FileObject``: a batch input file or a batch's output/error file."""

    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class ExpiresAfter(BaseModel):
    """OpenAI's expiry of a file: checked, not applied (ezq keeps files until `ezq purge`)."""

    model_config = {"extra": "forbid"}

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2592000)


class BatchCreate(BaseModel):
    """``POST /v1/batches``: OpenAI's fields, and ezq's ``callback_url``."""

    model_config = {"extra": "forbid"}

    input_file_id: str = Field(description="A file uploaded with purpose `batch`.")
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(
        default=None, description="Up to 16 string pairs; they tag the batch and its jobs."
    )
    callback_url: str | None = Field(
        default=None, description="ezq: POST one signed webhook here when the batch ends."
    )
    priority: int | None = Field(
        default=None,
        ge=0,
        le=9,
        description="ezq: the lines' priority (0-9); default 1, below interactive work (5).",
    )
    output_expires_after: ExpiresAfter | None = Field(
        default=None,
        description="Accepted as OpenAI takes it and not applied: ezq keeps output and error"
        " files as long as the batch's jobs (until `ezq purge`).",
    )


class BatchRequestCounts(BaseModel):
    total: int
    completed: int = Field(description="Lines that succeeded (in the output file).")
    failed: int = Field(description="Lines that failed or were cancelled (in the error file).")


class BatchLineError(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"]
    data: list[BatchLineError]


class BatchView(BaseModel):
    """A batch as OpenAI's ``Batch`` object (plus ezq's ``tenant``)."""

    id: str
    object: Literal["batch"]
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating",
        "failed",
        "in_progress",
        "finalizing",
        "completed",
        "expired",
        "cancelling",
        "cancelled",
    ]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    usage: dict[str, Any] | None
    metadata: dict[str, str] | None
    tenant: str | None


class BatchList(BaseModel):
    """A page of batches, newest first; pass ``last_id`` as ``after`` for the next."""

    object: Literal["list"]
    data: list[BatchView]
    first_id: str | None
    last_id: str | None
    has_more: bool
