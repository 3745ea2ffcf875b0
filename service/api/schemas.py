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
    finish_reason: str | None
    usage: Usage | None
    error: JobError | None
    tenant: str | None
    metadata: dict[str, Any]
    created_at: datetime | None
    started_at: datetime | None
    first_token_at: datetime | None
    finished_at: datetime | None
    replay_of: uuid.UUID | None = Field(description="The job this one replays, if any.")


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
        "conversation_not_found, method_not_allowed, idempotency_conflict, "
        "job_already_finished, payload_too_large, invalid_request, unavailable"
    )
    message: str
    field: str | None = Field(default=None, description="The field at fault, if one is.")
    job_id: uuid.UUID | None = Field(
        default=None, description="idempotency_conflict: the caller's own first job."
    )
    status: JobStatus | None = Field(
        default=None, description="job_already_finished: how the job ended."
    )


class ErrorEnvelope(BaseModel):
    """Every error, on every route: ``{"error": {"type", "message", "field"?}}``."""

    error: ErrorDetail
