"""The driver's statements (``service.db.driver``): prepared on a connection at their
first run, so that a new connection does not plan the worker's hot statements anew on
each of its first runs (psycopg prepares a statement only at its sixth); a driver error is
raised as SQLAlchemy's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from service.db import driver

_INSERT = driver.DriverStatement.of(text("INSERT INTO driver_t (id) VALUES (:id) RETURNING id"))
_COUNT = driver.DriverStatement.of(text("SELECT count(*) AS n FROM driver_t WHERE id = :id"))


@pytest.fixture
def autocommit_conn(own_database: tuple[str, Any]) -> Iterator[Connection]:
    _, engine = own_database
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CREATE TABLE driver_t (id integer PRIMARY KEY)"))
        yield conn


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


def test_a_failing_statement_raises_sqlalchemys_error_and_the_connection_goes_on(
    autocommit_conn: Connection,
) -> None:
    driver.rows(autocommit_conn, _INSERT, {"id": 2})
    with pytest.raises(IntegrityError) as raised:
        driver.rows(autocommit_conn, _INSERT, {"id": 2})
    assert "driver_t_pkey" in str(raised.value)
    # The connection is usable again, outside any transaction.
    (row,) = driver.rows(autocommit_conn, _COUNT, {"id": 2})
    assert row.n == 1


def test_a_name_used_twice_is_one_placeholder_and_json_is_sent_as_a_document(
    own_database: tuple[str, Any],
) -> None:
    _, engine = own_database
    statement = driver.DriverStatement.of(
        text(
            "SELECT CAST(:n AS integer) * CAST(:n AS integer) AS square,"
            " CAST(:doc AS jsonb) ->> 'k' AS k, '100%' AS literal, CAST(:none AS jsonb) AS none"
        ),
        json=("doc", "none"),
    )
    assert statement.names == ("n", "doc", "none")
    assert "$1" in statement.sql and "%(" not in statement.sql
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        (row,) = driver.rows(conn, statement, {"n": 7, "doc": {"k": "v"}, "none": None})
    assert (row.square, row.k, row.literal, row.none) == (49, "v", "100%", None)


def test_a_statement_longer_than_psycopgs_query_cache_runs_with_its_values(
    own_database: tuple[str, Any],
) -> None:
    # psycopg caches its parse of %(name)s placeholders only for statements under 4 KB;
    # the ranking is longer. Numbered placeholders need no parse at all.
    _, engine = own_database
    padding = " ".join(f"CAST(:p{i} AS integer) AS c{i}," for i in range(150))
    statement = driver.DriverStatement.of(text(f"SELECT {padding} CAST(:p0 AS text) AS again"))
    assert len(statement.query) > 4096
    params = {f"p{i}": i for i in range(150)}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        (row,) = driver.rows(conn, statement, params)
    assert (row.c0, row.c149, row.again) == (0, 149, "0")


def test_a_missing_value_is_named(own_database: tuple[str, Any]) -> None:
    _, engine = own_database
    with (
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(TypeError, match="no value for the statement's parameter 'id'"),
    ):
        driver.rows(conn, _COUNT, {"other": 1})


# ``service.db.session.autocommit``: the pool's connection as it is, switched to autocommit
# for its user and back before it returns to the pool.

_PID = driver.DriverStatement.of(text("SELECT pg_backend_pid() AS pid"))


def test_autocommit_commits_each_statement_and_hands_the_connection_back_transactional(
    own_database: tuple[str, Any],
) -> None:
    from service.db.session import autocommit, get_engine, transaction

    url, engine = own_database
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE driver_t (id integer PRIMARY KEY)"))
    with autocommit(url) as conn:
        driver.rows(conn, _INSERT, {"id": 1})
        (row,) = driver.rows(conn, _PID, {})
        autocommit_pid = row.pid
    with engine.connect() as other:  # committed: another connection sees it
        assert other.execute(text("SELECT count(*) FROM driver_t")).scalar_one() == 1

    # The pool hands the connection just returned out next: a transaction on it is one
    # (a rollback undoes its insert), not autocommit statements left as they were.
    with pytest.raises(RuntimeError), transaction(url) as session:
        (row,) = driver.rows(session, _PID, {})
        assert row.pid == autocommit_pid
        driver.rows(session, _INSERT, {"id": 2})
        raise RuntimeError("roll back")
    with engine.connect() as other:
        assert other.execute(text("SELECT array_agg(id) FROM driver_t")).scalar_one() == [1]
    get_engine(url).dispose()


def test_autocommit_raises_sqlalchemys_error_for_a_lost_connection_and_replaces_it(
    own_database: tuple[str, Any],
) -> None:
    from sqlalchemy.exc import OperationalError

    from service.db.session import UNAVAILABLE, autocommit, get_engine

    url, engine = own_database
    with autocommit(url) as conn:
        (row,) = driver.rows(conn, _PID, {})
        with engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": row.pid})
        with pytest.raises(OperationalError) as raised:
            driver.rows(conn, _PID, {})
        assert raised.value.connection_invalidated
        assert isinstance(raised.value, UNAVAILABLE)
    with autocommit(url) as conn:  # a new connection, working
        (again,) = driver.rows(conn, _PID, {})
    assert again.pid != row.pid
    get_engine(url).dispose()


def test_autocommit_raises_sqlalchemys_error_when_the_server_cannot_be_reached() -> None:
    from sqlalchemy.exc import OperationalError

    from service.db.session import UNAVAILABLE, autocommit, get_engine

    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1
    with pytest.raises(OperationalError) as raised, autocommit(url):
        pass
    assert isinstance(raised.value, UNAVAILABLE)
    get_engine(url).dispose()
