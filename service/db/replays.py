"""SQL for replaying jobs: where an original stands in its conversation, what it cost.

Callers own the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from service.db.models import (
    TERMINAL_STATUSES,
    Conversation,
    Job,
    Message,
    TokenUsage,
)


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a job stands in its conversation, for deciding how to replay it."""

    earlier_history: bool  # the job was sent with messages of earlier turns
    later_turns: bool  # a later turn succeeded, or may still succeed
    already_replayed: bool  # some job already replays it


def standing(session: Session, job: Job, *, ignore: Collection[uuid.UUID] = ()) -> Standing:
    """``job``'s standing; jobs in ``ignore`` (replays made in this batch) do not count."""
    earlier_turn = select(Job.enqueue_seq).where(Job.id == Message.job_id).scalar_subquery()
    earlier = exists().where(
        Message.conversation_id == job.conversation_id,
        (Message.job_id.is_(None)) | (earlier_turn < job.enqueue_seq),
    )
    later = exists().where(
        Job.conversation_id == job.conversation_id,
        Job.enqueue_seq > job.enqueue_seq,
        Job.id.not_in(list(ignore)) if ignore else Job.id.is_not(None),
        (Job.status == "succeeded") | Job.status.not_in(TERMINAL_STATUSES),
    )
    replayed = exists().where(Job.replay_of == job.id)
    row = session.execute(select(earlier, later, replayed)).one()
    return Standing(bool(row[0]), bool(row[1]), bool(row[2]))


def lock_conversations(session: Session, conversation_ids: Collection[uuid.UUID]) -> None:
    """Hold the conversations of the jobs about to be replayed until the transaction ends,
    in one order (no two replays wait on each other's locks): a replay decided and
    written under these locks cannot be decided again by a concurrent replay of the same
    job, which waits and then sees it (``already_replayed``), nor can two replays of one
    conversation's turns interleave. An enqueue into the conversation takes the same lock."""
    if conversation_ids:
        session.execute(
            select(Conversation.id)
            .where(Conversation.id.in_(sorted(set(conversation_ids))))
            .order_by(Conversation.id)
            .with_for_update()
        )


def mark_replay(session: Session, replay_id: uuid.UUID, original_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == replay_id).values(replay_of=original_id))


def history_chars(session: Session, job: Job) -> int:
    """Characters of the history the job is sent with (earlier turns' messages)."""
    earlier_turn = select(Job.enqueue_seq).where(Job.id == Message.job_id).scalar_subquery()
    stmt = select(func.coalesce(func.sum(func.length(Message.content)), 0)).where(
        Message.conversation_id == job.conversation_id,
        (Message.job_id.is_(None)) | (earlier_turn < job.enqueue_seq),
    )
    return int(session.execute(stmt).scalar_one())


def typical_completion_tokens(session: Session, model: str) -> int:
    """The model's mean completion length over its last 1000 usage rows (0 if none)."""
    recent = (
        select(TokenUsage.completion_tokens)
        .where(TokenUsage.model == model)
        .order_by(TokenUsage.created_at.desc())
        .limit(1000)
        .subquery()
    )
    value = session.execute(select(func.avg(recent.c.completion_tokens))).scalar_one()
    return int(value or 0)
