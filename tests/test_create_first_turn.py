"""A first turn is written in one statement that is atomic by itself: the worker runs it on
an autocommit connection, so a job id that is taken, even by an insert still in flight,
must leave nothing behind (no conversation without its job).

Runs on a database of its own."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from service.db import queries
from service.db.session import autocommit
from service.validation import validate_request
from tests.test_faults import wait_until


@pytest.fixture
def database(own_database: tuple[str, Engine]) -> tuple[str, Engine]:
    return own_database


def _request(prompt: str) -> Any:
    return validate_request(
        model="glm-5.1", messages=[{"role": "user", "content": prompt}], tenant="acme"
    )


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_a_first_turn_writes_its_job_and_its_conversation(database: tuple[str, Engine]) -> None:
    url, engine = database
    job_id = uuid.uuid4()
    with autocommit(url) as conn:
        assert queries.create_first_turn(conn, _request("hello"), job_id) == job_id
        # The same message delivered again writes nothing.
        assert queries.create_first_turn(conn, _request("hello"), job_id) is None
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.status, j.tenant, c.tenant FROM jobs j"
                " JOIN conversations c ON c.id = j.conversation_id WHERE j.id = :id"
            ),
            {"id": job_id},
        ).all()
    assert [tuple(r) for r in rows] == [("queued", "acme", "acme")]
    assert _count(engine, "conversations") == 1


def test_a_job_id_taken_by_an_insert_in_flight_leaves_no_conversation(
    database: tuple[str, Engine],
) -> None:
    url, engine = database
    job_id = uuid.uuid4()
    with engine.connect() as first:
        first.begin()
        # Another worker's insert of the same job, not committed yet.
        queries.create_first_turn(first, _request("hello"), job_id)
        result: list[uuid.UUID | None] = []

        def second() -> None:
            with autocommit(url) as conn:
                result.append(queries.create_first_turn(conn, _request("hello"), job_id))

        racer = threading.Thread(target=second)
        racer.start()
        wait_until(lambda: _waiting_on_a_lock(engine), "the second insert waiting on the first")
        first.commit()
        racer.join(timeout=30)
    assert result == [None]
    assert _count(engine, "jobs") == 1
    assert _count(engine, "conversations") == 1  # the first insert's only


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)
