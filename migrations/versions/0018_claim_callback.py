"""claim function returns the job's callback_url

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02 14:00:00

``ezq_claim_job(job_id, lease_seconds, holder)`` returns one more column, last:
``callback_url``, the job's webhook URL (NULL: no webhook). The worker then knows at
claim whether the job's end writes a webhook outbox row, and records a job without one
and without a flow-control settlement in a single statement on an autocommit
connection. Otherwise unchanged (the body is migration 0015's); a caller that names the
first twelve columns reads what it read before.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROP = "DROP FUNCTION ezq_claim_job(uuid, double precision, text)"

# Migration 0015's function, with callback_url returned last.
CLAIM = """
CREATE FUNCTION ezq_claim_job(p_job_id uuid, p_lease_seconds double precision, p_holder text)
RETURNS TABLE (
    outcome text, status text, conversation_id uuid, attempt integer, model text,
    params jsonb, input_messages jsonb, history jsonb, tenant text, surface text,
    due_in_s double precision, blocking_job_id uuid, callback_url text
)
LANGUAGE plpgsql AS $$
DECLARE
    j jobs%ROWTYPE;
    blocker uuid;
    rows jsonb;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found', NULL::text, NULL::uuid, NULL::integer, NULL::text,
            NULL::jsonb, NULL::jsonb, NULL::jsonb, NULL::text, NULL::text,
            NULL::double precision, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    IF j.status IN ('succeeded', 'failed', 'cancelled') THEN
        outcome := 'finished';
    ELSIF j.status = 'running' THEN
        outcome := 'busy';
    ELSIF j.status = 'retrying' AND j.dispatched_at > now() THEN
        -- An extra message (a duplicate, a wake-up, the sweep) must not skip the backoff.
        outcome := 'not_due';
    END IF;
    IF outcome IS NOT NULL THEN
        RETURN QUERY SELECT outcome, j.status, j.conversation_id, j.attempts, j.model,
            NULL::jsonb, NULL::jsonb, NULL::jsonb, j.tenant, j.surface,
            extract(epoch FROM j.dispatched_at - now())::double precision, NULL::uuid,
            j.callback_url;
        RETURN;
    END IF;
    -- One turn at a time per conversation: two workers claiming two turns decide one
    -- after the other, and the second reads what the first committed.
    PERFORM 1 FROM conversations c WHERE c.id = j.conversation_id FOR UPDATE;
    SELECT b.id INTO blocker FROM jobs b
     WHERE b.conversation_id = j.conversation_id AND b.id <> j.id
       AND b.status NOT IN ('succeeded', 'failed', 'cancelled')
       AND (b.enqueue_seq < j.enqueue_seq OR b.status = 'running')
     ORDER BY b.enqueue_seq LIMIT 1;
    IF blocker IS NOT NULL THEN
        UPDATE jobs SET needs_publish = true WHERE id = j.id;
        RETURN QUERY SELECT 'wait', j.status, j.conversation_id, j.attempts, j.model,
            NULL::jsonb, NULL::jsonb, NULL::jsonb, j.tenant, j.surface,
            NULL::double precision, blocker, j.callback_url;
        RETURN;
    END IF;
    UPDATE jobs SET attempts = j.attempts + 1, status = 'running',
           started_at = coalesce(j.started_at, now()),
           lease_expires_at = now() + make_interval(secs => p_lease_seconds),
           lease_holder = p_holder, needs_publish = false
     WHERE id = j.id;
    INSERT INTO job_attempts (job_id, attempt, started_at) VALUES (j.id, j.attempts + 1, now());
    SELECT coalesce(jsonb_agg(jsonb_build_array(
               m.role, coalesce(m.content_parts, to_jsonb(m.content)), m.name, m.tool_calls,
               m.tool_call_id, m.thinking_blocks) ORDER BY m.seq), '[]'::jsonb)
      INTO rows FROM messages m WHERE m.conversation_id = j.conversation_id;
    RETURN QUERY SELECT 'claimed', 'running'::text, j.conversation_id, j.attempts + 1, j.model,
        j.params, j.input_messages, rows, j.tenant, j.surface, NULL::double precision,
        NULL::uuid, j.callback_url;
END
$$
"""


def _claim_0015() -> str:
    """Migration 0015's function, as it was (read from that migration)."""
    path = Path(__file__).with_name("0015_claim_function.py")
    spec = importlib.util.spec_from_file_location("ezq_migration_0015", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.CLAIM)


def upgrade() -> None:
    # The return type changes, which CREATE OR REPLACE cannot do; both in one transaction.
    op.execute(DROP)
    op.execute(CLAIM)


def downgrade() -> None:
    op.execute(DROP)
    op.execute(_claim_0015())
