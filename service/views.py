"""The JSON views of jobs and conversations, as every interface shows them (Python,
HTTP, the CLI, webhooks, the Celery result)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from service.db import queries
from service.db.queries import Tenants


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _thinking_text(blocks: list[Any] | None) -> str | None:
    """The thinking text of an Anthropic-surface reply's blocks (redacted ones have none)."""
    text = "".join(
        b["thinking"]
        for b in blocks or ()
        if isinstance(b, dict)
        and b.get("type") == "thinking"
        and isinstance(b.get("thinking"), str)
    )
    return text or None


def job_view(session: Session, job_id: uuid.UUID, *, tenants: Tenants = None) -> dict[str, Any]:
    """The job as callers see it: status, reply, usage and error, JSON-ready.

    A job outside ``tenants`` raises JobNotFound, exactly like an unknown id.
    """
    read = queries.read_job(session, job_id, tenants=tenants)
    reply = read.reply
    return view_of(
        read.job,
        content=reply.content if reply else None,
        tool_calls=reply.tool_calls if reply else None,
        usage=read.usage,
        thinking_blocks=reply.thinking_blocks if reply else None,
        reasoning_content=reply.reasoning_content if reply else None,
    )


def view_of(
    job: Any,
    *,
    content: str | None,
    tool_calls: list[Any] | None,
    usage: dict[str, int] | None,
    thinking_blocks: list[Any] | None = None,
    reasoning_content: str | None = None,
) -> dict[str, Any]:
    """The JSON view of ``job`` (a ``jobs`` row, ORM or Core) given its reply and usage
    counts (see ``job_view``).

    ``thinking_blocks`` (Anthropic surface) are what a producer keeping its own history
    sends back on the reply's assistant message for thinking to continue.
    ``reasoning_content``: an OpenAI-surface reply's thinking text; an Anthropic-surface
    reply's is read from its thinking blocks.
    """
    return {
        "job_id": str(job.id),
        "conversation_id": str(job.conversation_id),
        "status": job.status,
        "model": job.model,
        "surface": job.surface,
        "attempts": job.attempts,
        "content": content,
        "tool_calls": tool_calls,
        "thinking_blocks": thinking_blocks,
        "reasoning_content": reasoning_content or _thinking_text(thinking_blocks),
        "finish_reason": job.finish_reason,
        "usage": usage,
        "error": (
            {"type": job.error_type, "status": job.error_status, "message": job.error}
            if job.error_type
            else None
        ),
        "tenant": job.tenant,
        "metadata": job.meta,
        # Who runs the job now and until when their lease holds (renewed while it runs).
        "lease": (
            {"holder": job.lease_holder, "expires_at": _iso(job.lease_expires_at)}
            if job.status == "running"
            else None
        ),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "first_token_at": _iso(job.first_token_at),
        "finished_at": _iso(job.finished_at),
        "replay_of": str(job.replay_of) if job.replay_of else None,
        # When ``ezq purge`` deleted its content: a null ``content`` is then no empty reply.
        "purged_at": _iso(getattr(job, "purged_at", None)),
    }


def conversation_view(
    session: Session, conversation_id: uuid.UUID, *, tenants: Tenants = None
) -> dict[str, Any]:
    """The conversation's messages in order and its jobs; outside ``tenants``, not found."""
    conversation, messages, jobs = queries.visible_conversation(
        session, conversation_id, tenants=tenants
    )
    return {
        "conversation_id": str(conversation.id),
        "tenant": conversation.tenant,
        "metadata": conversation.meta,
        "created_at": _iso(conversation.created_at),
        "messages": [
            {
                k: v
                for k, v in {
                    "seq": m.seq,
                    "role": m.role,
                    "content": m.content_parts if m.content_parts is not None else m.content,
                    "name": m.name,
                    "tool_calls": m.tool_calls,
                    "tool_call_id": m.tool_call_id,
                    "thinking_blocks": m.thinking_blocks,
                    "refusal": m.refusal,
                    "reasoning_content": m.reasoning_content,
                    "job_id": str(m.job_id) if m.job_id else None,
                }.items()
                if v is not None
            }
            for m in messages
        ],
        "jobs": [{"job_id": str(job_id), "status": status} for job_id, status in jobs],
    }
