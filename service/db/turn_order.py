"""The SQL that keeps a conversation's turns in order: a pending job waits while an earlier
turn of its conversation has not ended."""

from __future__ import annotations

# For a job ``j``. The ``OFFSET 0`` keeps the check a probe of the conversation's index for
# each job it is asked about, whatever the table's statistics say. Without it the planner
# may turn it into an anti-join hashing every unfinished job, the cheaper plan for a table
# it believes tiny; the hot statements are prepared, so a plan made while the table was
# small (a new database, its first minute) is kept as the table grows until the next
# ANALYZE: the ranking then read all of ``jobs`` three times per claim (12 ms at 5,000
# queued jobs against 1.6 ms, `benchmarks.ranking_plan`).
NOT_HELD_BACK = """
    NOT EXISTS (
        SELECT 1 FROM jobs e
        WHERE e.conversation_id = j.conversation_id
          AND e.enqueue_seq < j.enqueue_seq
          AND e.status NOT IN ('succeeded', 'failed', 'cancelled')
        OFFSET 0)
"""
