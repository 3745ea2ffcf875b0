"""SQL for deleting old content while keeping every row that usage and cost are built from.

The unit is a conversation, so that no history is left half-deleted: a conversation is
purged when every one of its jobs has ended before the cutoff and none of its webhook
deliveries is still pending. Its messages are deleted; its jobs keep their row (status,
model, tenant, metadata, tokens, cost, timings, errors) but lose their request messages and
parameters and get ``purged_at``; its webhook deliveries and attempts lose their payloads
and the receivers' answers. ``token_usage`` is not touched. Callers own the transaction.

Batch input files hold every line's request as uploaded, so they are erased too: their
``batch_file_chunks`` rows are deleted, their ``batch_files`` row (id, tenant, name, size,
line count) is kept. A file is erased whole, once every batch made from it has ended and
every one of their lines' jobs is purged (a file uploaded and never used: once it is
selected by its tenant and upload time), never while one line's request is still needed.
Output and error files are not stored: they are rendered from the jobs, so purging the
lines reaches them.
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
    files: int = 0  # batch input files whose content was erased

    def add(self, other: Counts) -> None:
        self.conversations += other.conversations
        self.jobs += other.jobs
        self.messages += other.messages
        self.webhook_payloads += other.webhook_payloads
        self.files += other.files


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


# Batch input files of the selection that still hold content: the tenant's (or every
# tenant's), uploaded before the cutoff; with a conversation, the files one of whose
# lines is that conversation's.
_FILES_IN_SCOPE = """
    SELECT f.id FROM batch_files f
    WHERE f.purpose = 'batch'
      AND f.created_at < :before
      AND (CAST(:tenant AS text) IS NULL OR f.tenant = :tenant)
      AND (CAST(:conversation AS uuid) IS NULL OR EXISTS (
          SELECT 1 FROM batches b JOIN jobs j ON j.batch_id = b.id
          WHERE b.input_file_id = f.id AND j.conversation_id = :conversation))
      AND EXISTS (SELECT 1 FROM batch_file_chunks k WHERE k.file_id = f.id)
"""

# Of those, the files no request of which is still needed: every batch made from it has
# ended, and each of their lines' jobs is purged ({pending} is empty; a dry run counts
# the jobs this purge would purge as purged). A file no batch used qualifies at once.
_FILES_DONE = (
    _FILES_IN_SCOPE
    + """
      AND NOT EXISTS (
          SELECT 1 FROM batches b WHERE b.input_file_id = f.id
            AND b.status NOT IN ('completed', 'failed', 'expired', 'cancelled'))
      AND NOT EXISTS (
          SELECT 1 FROM batches b JOIN jobs j ON j.batch_id = b.id
          WHERE b.input_file_id = f.id AND j.purged_at IS NULL {pending})
"""
)

# Row locks keep a batch being created from a file (its insert holds the file's row with
# FOR KEY SHARE) and the file's erasure apart: SKIP LOCKED leaves such a file for later.
_PURGE_FILES = text(
    f"""
    WITH picked AS (
        SELECT id FROM batch_files WHERE id IN ({_FILES_DONE.format(pending="")})
        ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED
    ),
    gone AS (
        DELETE FROM batch_file_chunks k USING picked p WHERE k.file_id = p.id
        RETURNING k.file_id
    )
    SELECT (SELECT count(*) FROM picked), (SELECT count(DISTINCT file_id) FROM gone)
    """
)

_COUNT_FILES = text(
    "SELECT count(*) FROM ("
    + _FILES_DONE.format(pending=f"AND j.conversation_id NOT IN ({_CANDIDATES})")
    + ") done"
)

_HELD_FILES = text(f"SELECT count(*) FROM ({_FILES_IN_SCOPE}) held")


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


def purge_files(session: Session, selection: Selection, *, batch: int) -> tuple[int, int]:
    """Erase the content of up to ``batch`` input files none of whose requests is still
    needed (run after the conversations are purged); return how many files were picked
    and how many had content erased."""
    picked, erased = session.execute(_PURGE_FILES, {**_params(selection), "batch": batch}).one()
    return int(picked), int(erased)


def would_purge(session: Session, selection: Selection) -> Counts:
    params = _params(selection)
    conversations, jobs, messages, payloads = session.execute(_COUNT, params).one()
    files = session.execute(_COUNT_FILES, params).scalar_one()
    return Counts(int(conversations), int(jobs), int(messages), int(payloads), files=int(files))


def blocked(session: Session, selection: Selection) -> int:
    """Conversations of the selection's tenant or conversation that an unfinished job or a
    pending webhook holds back (0 for a selection by age alone: those are still in use)."""
    if selection.tenant is None and selection.conversation_id is None:
        return 0
    return int(session.execute(_BLOCKED, _params(selection)).scalar_one())


def held_files(session: Session, selection: Selection) -> int:
    """Batch input files of the selection's tenant or conversation that still hold content
    (0 for a selection by age alone): after a purge, those a batch not ended or a line not
    purged holds back (with ``--conversation``, the file's other lines)."""
    if selection.tenant is None and selection.conversation_id is None:
        return 0
    return int(session.execute(_HELD_FILES, _params(selection)).scalar_one())
