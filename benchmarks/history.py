"""A jobs table with a history, analyzed at a quiet moment: what the plan benchmarks start
from (the statistics then say no job is running or waiting)."""

from __future__ import annotations

from sqlalchemy import Connection


def analyzed_history(conn: Connection, finished: int) -> None:
    """``finished`` succeeded jobs, each of its own conversation, then ``VACUUM ANALYZE
    jobs`` (``conn`` autocommits)."""
    conn.exec_driver_sql(
        "INSERT INTO conversations (id) SELECT gen_random_uuid() FROM generate_series(1, %(n)s)",
        {"n": finished},
    )
    conn.exec_driver_sql(
        "INSERT INTO jobs (id, conversation_id, status, model, params, input_messages,"
        " request_hash, attempts, started_at, finished_at)"
        " SELECT gen_random_uuid(), c.id, 'succeeded', 'glm-5.1', '{}', '[]', 'h', 1,"
        " now(), now() FROM conversations c"
    )
    conn.exec_driver_sql("VACUUM ANALYZE jobs")
