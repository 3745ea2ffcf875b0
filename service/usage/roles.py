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
# Names PostgreSQL's grammar takes for something else where a role goes (RoleSpec in
# gram.y): "none" and "public" are refused as role names, the others name the current or
# session role. Refused in any case: even where a quoted "PUBLIC" could be created, GRANT
# ... TO public, typed as people do, would mean every role.
RESERVED_ROLE_NAMES = frozenset({"none", "public", "current_user", "current_role", "session_user"})


@dataclass(frozen=True, slots=True)
class Grant:
    role: str
    schema: str
    created: bool
    login: bool
    password_set: bool


# What a read-only role must not be able to do on any table of the schema.
WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def write_privileges(session: Session, role: str, schema: str) -> list[str]:
    """What ``role`` can change in ``schema``, directly, by membership or as owner.

    ``has_table_privilege`` counts inherited grants, PUBLIC's and ownership, so an
    empty list means the role really cannot write there.
    """
    found: list[str] = []
    if session.execute(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).scalar():
        found.append("SUPERUSER")
    if session.execute(
        text("SELECT has_schema_privilege(:role, :schema, 'CREATE')"),
        {"role": role, "schema": schema},
    ).scalar():
        found.append(f"CREATE on schema {schema}")
    rows = session.execute(
        text(
            "SELECT c.relname, p.privilege FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " CROSS JOIN unnest(CAST(:privileges AS text[])) AS p(privilege)"
            " WHERE n.nspname = :schema AND c.relkind IN ('r', 'p')"
            " AND has_table_privilege(:role, c.oid, p.privilege)"
            " ORDER BY c.relname, p.privilege"
        ),
        {"role": role, "schema": schema, "privileges": list(WRITE_PRIVILEGES)},
    ).all()
    found.extend(f"{privilege} on {table}" for table, privilege in rows)
    return found


def _describe(privileges: list[str], shown: int = 4) -> str:
    more = len(privileges) - shown
    return ", ".join(privileges[:shown]) + (f" and {more} more" if more > 0 else "")


def check_role_name(role: str) -> str:
    if not role or len(role.encode()) > MAX_IDENTIFIER_BYTES:
        raise InvalidRequest("ROLE", f"must be 1 to {MAX_IDENTIFIER_BYTES} bytes")
    if role.lower() in RESERVED_ROLE_NAMES or role.lower().startswith("pg_"):
        raise InvalidRequest("ROLE", f"{role!r} is reserved by PostgreSQL")
    return role


def _driver(session: Session) -> psycopg.Connection[object]:
    connection = session.connection().connection.driver_connection
    assert isinstance(connection, psycopg.Connection)
    return connection


def grant_readonly(
    session: Session, role: str, *, password: str | None = None, reset_password: bool = False
) -> Grant:
    """Create ``role`` if missing (NOLOGIN, or LOGIN when a password is given) and grant it
    USAGE on ezq's schema, SELECT on every table and view in it, and SELECT on the tables
    and views that later migrations create there.

    An existing role that can already write in the schema is refused (``InvalidRequest``
    listing what it can do): granting it SELECT would not make it read-only. An existing
    role's password is changed only with ``reset_password``, never as a side effect.

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
    if exists:
        can_write = write_privileges(session, role, schema)
        if can_write:
            raise InvalidRequest(
                "ROLE",
                f"{role!r} already exists and can write ({_describe(can_write)}); refusing to"
                " call it read-only: revoke those privileges first, or choose a new role name",
            )
        if password is not None and not reset_password:
            raise InvalidRequest(
                "--login",
                f"role {role!r} already exists and has its own password; add"
                " --reset-password to replace it",
            )
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
    # Checked after granting too: PUBLIC's grants (CREATE on public before PostgreSQL 15)
    # would let even a new role write, and then "read-only" would be a lie.
    can_write = write_privileges(session, role, schema)
    if can_write:
        raise InvalidRequest(
            "ROLE",
            f"{role!r} could still write ({_describe(can_write)}) through grants to PUBLIC or"
            " a role it belongs to; nothing was changed",
        )
    return Grant(
        role=role,
        schema=schema,
        created=not exists,
        login=password is not None,
        password_set=password is not None,
    )
