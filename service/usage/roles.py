"""A read-only role for analysts: SELECT on ezq's tables and views, nothing else.

Role statements take no bind parameters, so names and the password hash are quoted by
psycopg's SQL composition. The password is hashed (SCRAM) on this side: the plain text
reaches neither the server's statement log nor ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.errors import InvalidRequest

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


@dataclass(frozen=True, slots=True)
class Grant:
    role: str
    schema: str
    created: bool
    login: bool


def check_role_name(role: str) -> str:
    if not role or len(role.encode()) > MAX_IDENTIFIER_BYTES:
        raise InvalidRequest("ROLE", f"must be 1 to {MAX_IDENTIFIER_BYTES} bytes")
    if role.lower() == "public" or role.lower().startswith("pg_"):
        raise InvalidRequest("ROLE", f"{role!r} is reserved by PostgreSQL")
    return role


def _driver(session: Session) -> psycopg.Connection[object]:
    connection = session.connection().connection.driver_connection
    assert isinstance(connection, psycopg.Connection)
    return connection


def grant_readonly(session: Session, role: str, *, password: str | None = None) -> Grant:
    """Create ``role`` if missing (NOLOGIN, or LOGIN when a password is given) and grant it
    USAGE on ezq's schema, SELECT on every table and view in it, and SELECT on the tables
    and views that later migrations create there.

    Later objects are covered by default privileges, which apply to objects created by the
    role running this, so run it as the role that runs ``ezq db upgrade``.
    """
    check_role_name(role)
    conn = _driver(session)
    schema = session.execute(text("SELECT current_schema()")).scalar_one()
    exists = session.execute(
        text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).first()
    name = sql.Identifier(role)
    if password is not None:
        hashed = conn.pgconn.encrypt_password(password.encode(), role.encode()).decode()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(sql.SQL(verb), name, sql.Literal(hashed))
        )
    elif not exists:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(name))
    target = sql.Identifier(schema)
    for statement in (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}",
    ):
        conn.execute(sql.SQL(statement).format(schema=target, role=name))
    return Grant(role=role, schema=schema, created=not exists, login=password is not None)
