"""A job's view is read at one moment: never a row from before its end beside a reply from after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from service import get_job
from service.db.session import get_engine
from tests.conftest import sql
from tests.seeding import seed_job


@pytest.fixture
def finish_during_the_read(service_env: dict[str, str]) -> Iterator[list[uuid.UUID]]:
    """Once the job view has run its first statement, another connection ends the job
    (status, reply and usage, committed together, as a worker's record does) before the
    next statement runs, the view's own if it has another. Append the job's id to arm it."""
    armed: list[uuid.UUID] = []
    statements = 0
    dsn = service_env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    def before(*_: Any) -> None:
        nonlocal statements
        if not armed:
            return
        statements += 1
        if statements == 2:
            with psycopg.connect(dsn) as conn:
                finish(conn, armed[0])

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", before)
    yield armed
    event.remove(engine, "before_cursor_execute", before)


def finish(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> None:
    conn.execute(
        "UPDATE jobs SET status = 'succeeded', finish_reason = 'stop', finished_at = now(),"
        " first_token_at = now() WHERE id = %s",
        (job_id,),
    )
    conn.execute(
        "INSERT INTO messages (conversation_id, seq, role, content, job_id)"
        " SELECT conversation_id, 100, 'assistant', 'the reply', id FROM jobs WHERE id = %s",
        (job_id,),
    )
    conn.execute(
        "INSERT INTO token_usage (job_id, conversation_id, model, prompt_tokens,"
        " completion_tokens, total_tokens, cached_tokens, uncached_prompt_tokens, raw_usage)"
        " SELECT id, conversation_id, model, 3, 2, 5, 0, 3, '{}' FROM jobs WHERE id = %s",
        (job_id,),
    )


def test_a_job_ending_while_its_view_is_read_shows_one_moment(
    finish_during_the_read: list[uuid.UUID],
) -> None:
    """The view shows the job as running with no reply (the moment it was read), not
    running with the reply and usage of an end committed during the read."""
    job_id = seed_job("read me", status="running")
    finish_during_the_read.append(job_id)

    view = get_job(job_id)

    assert sql("SELECT status FROM jobs WHERE id = :j", j=job_id) == [("succeeded",)]
    shown = (view["status"], view["content"], view["usage"], view["finish_reason"])
    assert shown == ("running", None, None, None)
    # Read again, it shows the end whole.
    again = get_job(job_id)
    assert (again["status"], again["content"], again["finish_reason"]) == (
        "succeeded",
        "the reply",
        "stop",
    )
    assert again["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "cached_tokens": 0,
        "total_tokens": 5,
    }
