"""The migrations are a public interface: they build, tear down and match the models."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.db import migrate
from service.db.models import Base
from tests.conftest import ADMIN_DSN


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"ezq_migr_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = "postgresql+psycopg://" + ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    yield url
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    """Migrations go from empty to head, back to base, and up again."""
    migrate.upgrade("head", empty_database)
    assert {"conversations", "messages", "jobs", "job_attempts", "token_usage"} <= tables(
        empty_database
    )
    migrate.downgrade("base", empty_database)
    assert tables(empty_database) == {"alembic_version"}
    migrate.upgrade("head", empty_database)
    assert "jobs" in tables(empty_database)


def test_models_match_migrations(empty_database: str) -> None:
    """Autogenerate finds no difference between the models and the migrated schema."""
    migrate.upgrade("head", empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
