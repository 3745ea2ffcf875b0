"""claim function: a worker takes a job for one attempt in one round trip

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 19:00:00

Adds ``ezq_claim_job(job_id, lease_seconds, holder)``, the worker's claim as one SQL
function (each statement inside still reads what committed before it, as separate
statements did): lock the job; say why it cannot run (ended, running elsewhere, retry not
due, an earlier turn of its conversation not finished: then parked); else take it
(running, attempts + 1, lease, a ``job_attempts`` row) and return what the gateway call
needs, the conversation's history as an array of rows in ``seq`` order.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIM = """
CREATE FUNCTION ezq_claim_job(p_job_id uuid, p_lease_seconds double precision, p_holder text)
RETURNS TABLE (
    outcome text, status text, conversation_id uuid, attempt integer, model text,
    params jsonb, input_messages jsonb, history jsonb, tenant text, surface text,
    due_in_s double precision, blocking_job_id uuid
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
            NULL::double precision, NULL::uuid;
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
            extract(epoch FROM j.dispatched_at - now())::double precision, NULL::uuid;
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
            NULL::double precision, blocker;
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
        NULL::uuid;
END
$$
"""


def upgrade() -> None:
    op.execute(CLAIM)


def downgrade() -> None:
    op.execute("DROP FUNCTION ezq_claim_job(uuid, double precision, text)")
