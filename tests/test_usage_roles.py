"""``ezq db grant-readonly``: a role that can read every table and view and write nothing."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from sqlalchemy import make_url

from tests.conftest import run_ezq

pytestmark = pytest.mark.usefixtures("service_env")

VIEWS = ("usage_daily", "usage_monthly", "job_costs", "conversation_usage")
WRITES = (
    "INSERT INTO model_prices (model, input_per_mtok, cached_input_per_mtok, output_per_mtok)"
    " VALUES ('ro', 1, 1, 1)",
    "UPDATE token_usage SET cost_usd = 0",
    "DELETE FROM jobs",
    "UPDATE model_prices SET input_per_mtok = 0",
    "CREATE TABLE ro_made_this (x int)",
    "TRUNCATE token_usage",
)


def ezq(*args: str, stdin: str | None = None) -> Any:
    return run_ezq("db", "grant-readonly", *args, stdin=stdin)


def connect() -> psycopg.Connection[Any]:
    return psycopg.connect(os.environ["DATABASE_URL"].replace("+psycopg", ""))


@pytest.fixture
def role() -> Iterator[str]:
    """A fresh role name; the role and its privileges are dropped afterwards."""
    name = f"ezq_ro_{secrets.token_hex(4)}"
    yield name
    with connect() as conn:
        conn.autocommit = True
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(conn: psycopg.Connection[Any], role: str, statement: str) -> Exception | None:
    """Run ``statement`` as ``role`` in a transaction that is rolled back; its error, if any."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            cursor = conn.execute(statement)
            if cursor.description is not None:
                cursor.fetchall()
    except psycopg.Error as exc:
        return exc
    return None


def tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    ).fetchall()
    return [name for (name,) in rows]


def test_readonly_role_selects_everything_and_writes_nothing(role: str) -> None:
    """The role can SELECT every ezq table and view, and cannot insert, update or delete."""
    done = ezq(role)
    assert done.returncode == 0, done.stderr
    assert f"created role {role} (NOLOGIN)" in done.stderr
    with connect() as conn:
        assert conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
            " WHERE rolname = %s",
            (role,),
        ).fetchone() == (False, False, False, False)
        readable = [*VIEWS, *tables(conn)]
        assert {"token_usage", "model_prices", "jobs", "job_attempts"} <= set(readable)
        for name in readable:
            assert as_role(conn, role, f"SELECT * FROM {name} LIMIT 1") is None, name
        for statement in WRITES:
            error = as_role(conn, role, statement)
            assert isinstance(error, errors.InsufficientPrivilege), statement


def test_tables_created_later_are_readable_too(role: str) -> None:
    """Default privileges cover tables a later migration creates, and running twice is fine."""
    assert ezq(role).returncode == 0
    again = ezq(role)
    assert again.returncode == 0, again.stderr
    assert f"role {role} already exists" in again.stderr
    with connect() as conn, conn.transaction(force_rollback=True):
        conn.execute("CREATE TABLE later_migration (x int)")
        conn.execute("INSERT INTO later_migration VALUES (1)")
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        assert conn.execute("SELECT x FROM later_migration").fetchall() == [(1,)]


def test_login_role_gets_a_hashed_password_never_shown(role: str) -> None:
    """--login --password-stdin makes a LOGIN role; only a SCRAM hash reaches the server."""
    password = "correct horse " + secrets.token_hex(8)
    done = ezq(role, "--login", "--password-stdin", stdin=password + "\n")
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
    with connect() as conn:
        can_login, stored = conn.execute(
            "SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone() or (None, None)
    assert can_login is True
    assert stored.startswith("SCRAM-SHA-256$") and password not in stored


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["pg_monitor"], "ROLE: 'pg_monitor' is reserved by PostgreSQL"),
        (["public"], "ROLE: 'public' is reserved by PostgreSQL"),
        # What PostgreSQL's grammar takes for something else where a role goes.
        (["none"], "ROLE: 'none' is reserved by PostgreSQL"),
        (["NONE"], "ROLE: 'NONE' is reserved by PostgreSQL"),
        (["current_user"], "ROLE: 'current_user' is reserved by PostgreSQL"),
        (["Session_User"], "ROLE: 'Session_User' is reserved by PostgreSQL"),
        (["current_role"], "ROLE: 'current_role' is reserved by PostgreSQL"),
        (["x" * 64], "ROLE: must be 1 to 63 bytes"),
        (["ok_name", "--password-stdin"], "--password-stdin: only makes sense with --login"),
    ],
)
def test_bad_role_requests_fail_in_one_line(args: list[str], error: str) -> None:
    """Reserved or overlong names and a password without --login are refused up front."""
    done = ezq(*args)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"ezq: error: {error}"]


def _create_role(role: str, *statements: str) -> None:
    with connect() as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'original-pw'").format(
            sql.Identifier(role)))  # fmt: skip
        for statement in statements:
            conn.execute(sql.SQL(statement).format(role=sql.Identifier(role)))


def test_what_postgres_refuses_is_one_line_naming_the_role(role: str) -> None:
    """A refusal of the server beyond the names checked up front (here, a caller that may
    not create roles) is one line naming ROLE, not a traceback; nothing is created."""
    _create_role(role)  # LOGIN, without CREATEROLE
    url = make_url(os.environ["DATABASE_URL"]).set(username=role, password="original-pw")
    wanted = f"{role}_new"
    done = run_ezq(
        "db",
        "grant-readonly",
        wanted,
        env={"DATABASE_URL": url.render_as_string(hide_password=False)},
    )
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [
        f"ezq: error: ROLE: PostgreSQL refused to make '{wanted}' read-only:"
        " permission denied to create role"
    ]
    with connect() as conn:
        assert (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (wanted,)).fetchone() is None
        )


def _can_read_views(role: str) -> bool:
    with connect() as conn:
        row = conn.execute("SELECT has_table_privilege(%s, 'usage_daily', 'SELECT')", (role,))
        return bool((row.fetchone() or (False,))[0])


def _stored_password(role: str) -> str | None:
    with connect() as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        return (row.fetchone() or (None,))[0]


@pytest.mark.parametrize(
    ("grant", "named"),
    [
        ("GRANT INSERT ON jobs TO {role}", "INSERT on jobs"),
        ("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}", "DELETE on alembic_version"),
        ("GRANT CREATE ON SCHEMA public TO {role}", "CREATE on schema public"),
    ],
)
def test_existing_role_that_can_write_is_refused(role: str, grant: str, named: str) -> None:
    """An existing role with write grants is refused, naming them; it keeps its password."""
    _create_role(role, grant)
    before = _stored_password(role)
    could_read = _can_read_views(role)
    done = ezq(role)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert line.startswith(f"ezq: error: ROLE: {role!r} already exists and can write (")
    assert named in line and "change nothing" not in line
    assert _stored_password(role) == before
    assert _can_read_views(role) == could_read


def test_role_writing_through_membership_is_refused(role: str) -> None:
    """Write privileges inherited from another role count too."""
    writer = role + "_w"
    _create_role(writer, "GRANT UPDATE ON token_usage TO {role}")
    try:
        _create_role(role, f'GRANT "{writer}" TO {{role}}')
        done = ezq(role)
        assert done.returncode == 1
        assert "UPDATE on token_usage" in done.stderr
    finally:
        with connect() as conn:
            conn.autocommit = True
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(writer)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(writer)))


def test_existing_role_keeps_its_password_unless_reset_is_asked(role: str) -> None:
    """--login on an existing role is refused without --reset-password; with it, it says so."""
    _create_role(role)
    before = _stored_password(role)
    refused = ezq(role, "--login", "--password-stdin", stdin="new password 1\n")
    assert refused.returncode == 1
    assert "--reset-password" in refused.stderr
    assert _stored_password(role) == before

    plain = ezq(role)
    assert plain.returncode == 0, plain.stderr
    assert "its password and LOGIN are unchanged" in plain.stderr
    assert _stored_password(role) == before

    reset = ezq(role, "--login", "--password-stdin", "--reset-password", stdin="new password 1\n")
    assert reset.returncode == 0, reset.stderr
    assert "replaced its password" in reset.stderr
    assert _stored_password(role) != before
