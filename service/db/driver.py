"""The worker's hot statements, run on the driver's connection (psycopg) directly.

Each is written once as a SQLAlchemy ``text`` clause and compiled here once to Postgres's
own placeholders (``$1``, ``$2``, ...), with the order of its parameters. Running it on the
connection SQLAlchemy checked out (autocommit, or inside a session's transaction) skips
SQLAlchemy's per-statement work: the execution context, the result's metadata, the row
processing; running it on a ``psycopg.RawCursor`` skips psycopg's parse of ``%(name)s``
placeholders, which it caches only for statements under 4 KB (the ranking is 5.6 KB, and
was parsed anew at each claim). The rows are named tuples with the same attribute names.

A driver error is raised as the same SQLAlchemy exception SQLAlchemy would have raised
(``OperationalError`` for a lost server, so callers' outage handling is unchanged), and
a connection lost that way is invalidated, so that the pool does not hand it out again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Engine, TextClause
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection

from service.db.session import DriverConnection, Executor, is_disconnect, sqlalchemy_error

# Postgres's numbered placeholders: a name used twice is one ``$n``.
_DIALECT = PGDialect_psycopg(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A statement with numbered placeholders, the parameter names they stand for, in
    order, and the positions of those that are JSON documents."""

    sql: str
    names: tuple[str, ...]
    json_at: tuple[int, ...]
    query: bytes = field(init=False, repr=False)  # ``sql`` encoded once, as psycopg sends it

    def __post_init__(self) -> None:
        object.__setattr__(self, "query", self.sql.encode())

    @classmethod
    def of(cls, clause: TextClause, *, json: Iterable[str] = ()) -> DriverStatement:
        compiled = clause.compile(dialect=_DIALECT)
        sql, names, documents = str(compiled), tuple(compiled.positiontup or ()), set(json)
        json_at = tuple(i for i, name in enumerate(names) if name in documents)
        return cls(sql, names, json_at)


def rows(executor: Executor, statement: DriverStatement, params: Mapping[str, Any]) -> list[Any]:
    """Run ``statement`` on ``executor``'s connection (joining a session's transaction);
    return its rows as named tuples."""
    engine, pooled, connection = _parts(executor)
    driver = pooled.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with psycopg.RawCursor(driver, row_factory=namedtuple_row) as cursor:
            # Prepared at its first run on a connection, not its sixth (psycopg's
            # default): each of a new connection's first runs planned the statement anew,
            # 5 ms each for the ranking.
            cursor.execute(statement.query, _values(statement, params), prepare=True)
            return cursor.fetchall()
    except psycopg.Error as exc:
        raise _as_sqlalchemy(engine, pooled, connection, statement.sql, exc) from exc


def driver_connection(executor: Executor) -> psycopg.Connection[Any]:
    """The driver's connection under ``executor`` (a session's: that of its transaction)."""
    driver = _parts(executor)[1].driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def _parts(executor: Executor) -> tuple[Engine, PoolProxiedConnection, Connection | None]:
    """``executor``'s engine, its pool's connection, and SQLAlchemy's around it if any."""
    if isinstance(executor, DriverConnection):
        return executor.engine, executor.pooled, None
    connection = executor.connection() if isinstance(executor, Session) else executor
    return connection.engine, connection.connection, connection


def _values(statement: DriverStatement, params: Mapping[str, Any]) -> list[Any]:
    """``params`` in the order of the statement's placeholders; JSON documents wrapped."""
    try:
        values = [params[name] for name in statement.names]
    except KeyError as exc:
        raise TypeError(f"no value for the statement's parameter {exc.args[0]!r}") from None
    for i in statement.json_at:
        if values[i] is not None:
            values[i] = Jsonb(values[i])
    return values


def _as_sqlalchemy(
    engine: Engine,
    pooled: PoolProxiedConnection,
    connection: Connection | None,
    sql: str,
    exc: psycopg.Error,
) -> Exception:
    """The exception SQLAlchemy raises for ``exc``; a lost connection is invalidated (and
    ``connection``, SQLAlchemy's around it, if any)."""
    disconnected = is_disconnect(engine, exc, pooled.driver_connection)
    if disconnected and pooled.is_valid:
        # As SQLAlchemy does on a disconnect: every pooled connection opened before it is
        # replaced at its next checkout (the server may have restarted), then this one.
        engine.pool._invalidate(pooled, exc)  # and ``pooled`` itself
        if connection is not None:
            connection.invalidate(exc)
    return sqlalchemy_error(engine, exc, sql, disconnected=disconnected)
