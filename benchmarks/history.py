"""A jobs table with a history, analyzed at a quiet moment: what the plan benchmarks start
from (the statistics then say no job is running or waiting)."""

from __future__ import annotations

from typing import Any


def analyzed_history(conn: Any, finished: int) -> None:
    """``finished`` succeeded jobs, each of its own conversation, then ``VACUUM ANALYZE
    jobs`` (``conn``, any executor of ``service.db.driver``, autocommits)."""
    from service.db.driver import driver_connection

    raw = driver_connection(conn)
    raw.execute(
        "INSERT INTO conversations (id) SELECT gen_random_uuid() FROM generate_series(1, %(n)s)",
        {"n": finished},
    )
    raw.execute(
        "INSERT INTO jobs (id, conversation_id, status, model, params, input_messages,"
        " request_hash, attempts, started_at, finished_at)"
        " SELECT gen_random_uuid(), c.id, 'succeeded', 'glm-5.1', '{}', '[]', 'h', 1,"
        " now(), now() FROM conversations c"
    )
    raw.execute("VACUUM ANALYZE jobs")
