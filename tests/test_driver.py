"""The driver's statements (``service.db.driver``): prepared on a connection at their
first run, so that a new connection does not plan the worker's hot statements anew on
each of its first runs (psycopg prepares a statement only at its sixth)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from service.db import driver


def test_a_statement_is_prepared_at_its_first_run(own_database: tuple[str, Any]) -> None:
    _, engine = own_database
    statement = driver.DriverStatement.of(text("SELECT CAST(:n AS integer) + 1 AS answer"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        (row,) = driver.rows(conn, statement, {"n": 41})
        assert row.answer == 42
        prepared = conn.execute(
            text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :like"),
            {"like": "%+ 1 AS answer%"},
        ).scalar_one()
    assert prepared == 1
