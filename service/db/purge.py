"""SQL for deleting old content while keeping every row that usage and cost are built from.

The unit is a conversation, so that no history is left half-deleted: a conversation is
purged when every one of its jobs has ended before the cutoff and none of its webhook
deliveries is still pending. Its messages are deleted; its jobs keep their row (status,
model, tenant, metadata, tokens, cost, timings, errors) but lose their request messages and
parameters and get ``purged_at``; its webhook deliveries and attempts lose their payloads
and the receivers' answers. ``token_usage`` is not touched. Callers own the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class Selection:
    before: datetime
    tenant: str | None = None
    conversation_id: uuid.UUID | None = None


@dataclass
class Counts:
    conversations: int = 0
    jobs: int = 0
    messages: int = 0
    webhook_payloads: int = 0
    job_ids: list[uuid.UUID] | None = None

    def add(self, other: Counts) -> None:
        self.conversations += other.conversations
        self.jobs += other.jobs
        self.messages += other.messages
        self.webhook_payloads += other.webhook_payloads


# Conversations with content left whose jobs have all ended before the cutoff.
_CANDIDATES = """
    SELECT DISTINCT j.conversation_id AS id
    FROM jobs j JOIN conversations c ON c.id = j.conversation_id
    WHERE j.purged_at IS NULL
      AND j.finished_at < :before
      AND (CAST(:tenant AS text) IS NULL OR c.tenant = :tenant)
      AND (CAST(:conversation AS uuid) IS NULL OR j.conversation_id = :conversation)
      AND NOT EXISTS (
          SELECT 1 FROM jobs o WHERE o.conversation_id = j.conversation_id
            AND (o.status NOT IN ('succeeded', 'failed', 'cancelled')
                 OR o.finished_at >= :before))
      AND NOT EXISTS (
          SELECT 1 FROM jobs o JOIN webhook_deliveries d ON d.job_id = o.id
          WHERE o.conversation_id = j.conversation_id AND d.status = 'pending')
"""

_PURGE = text(
    f"""
    WITH picked AS (
        SELECT id FROM conversations WHERE id IN ({_CANDIDATES})
        ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED
    ),
    gone AS (
        DELETE FROM messages m USING picked p WHERE m.conversation_id = p.id RETURNING 1
    ),
    emptied AS (
        UPDATE jobs j SET input_messages = '[]'::jsonb, params = '{{}}'::jsonb,
                          purged_at = now()
        FROM picked p WHERE j.conversation_id = p.id AND j.purged_at IS NULL
        RETURNING j.id
    ),
    payloads AS (
        UPDATE webhook_deliveries d SET payload = '', last_error = NULL
        FROM jobs j, picked p
        WHERE d.job_id = j.id AND j.conversation_id = p.id AND d.payload <> ''
        RETURNING d.id
    ),
    answers AS (
        UPDATE webhook_attempts a SET error = NULL
        FROM payloads d WHERE a.delivery_id = d.id AND a.error IS NOT NULL
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM picked), (SELECT count(*) FROM gone),
           (SELECT count(*) FROM payloads), (SELECT count(*) FROM answers),
           (SELECT coalesce(array_agg(id), '{{}}') FROM emptied)
    """
)

_COUNT = text(
    f"""
    WITH picked AS (SELECT id FROM conversations WHERE id IN ({_CANDIDATES}))
    SELECT (SELECT count(*) FROM picked),
           (SELECT count(*) FROM jobs j JOIN picked p ON j.conversation_id = p.id
            WHERE j.purged_at IS NULL),
           (SELECT count(*) FROM messages m JOIN picked p ON m.conversation_id = p.id),
           (SELECT count(*) FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
            JOIN picked p ON j.conversation_id = p.id WHERE d.payload <> '')
    """
)

# Conversations of a tenant or conversation (erasure) held back by a job that has not ended
# or a webhook still pending.
_BLOCKED = text(
    """
    SELECT count(DISTINCT c.id) FROM conversations c JOIN jobs j ON j.conversation_id = c.id
    WHERE (CAST(:tenant AS text) IS NULL OR c.tenant = :tenant)
      AND (CAST(:conversation AS uuid) IS NULL OR c.id = :conversation)
      AND j.purged_at IS NULL
      AND (j.status NOT IN ('succeeded', 'failed', 'cancelled')
           OR EXISTS (SELECT 1 FROM webhook_deliveries d
                      WHERE d.job_id = j.id AND d.status = 'pending'))
    """
)


def _params(selection: Selection) -> dict[str, object]:
    return {
        "before": selection.before,
        "tenant": selection.tenant,
        "conversation": selection.conversation_id,
    }


def purge_batch(session: Session, selection: Selection, *, batch: int) -> Counts:
    """Purge up to ``batch`` conversations; the counts say what went."""
    row = session.execute(_PURGE, {**_params(selection), "batch": batch}).one()
    conversations, messages, payloads, _answers, job_ids = row
    return Counts(int(conversations), len(job_ids), int(messages), int(payloads), list(job_ids))


def would_purge(session: Session, selection: Selection) -> Counts:
    conversations, jobs, messages, payloads = session.execute(_COUNT, _params(selection)).one()
    return Counts(int(conversations), int(jobs), int(messages), int(payloads))


def blocked(session: Session, selection: Selection) -> int:
    """Conversations of the selection's tenant or conversation that an unfinished job or a
    pending webhook holds back (0 for a selection by age alone: those are still in use)."""
    if selection.tenant is None and selection.conversation_id is None:
        return 0
    return int(session.execute(_BLOCKED, _params(selection)).scalar_one())
