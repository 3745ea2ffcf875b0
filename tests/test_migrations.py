"""The migrations are a public interface: they build, tear down and match the models."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from service.db import migrate
from service.db.models import Base
from tests.conftest import ADMIN_DSN


def _new_database() -> Iterator[str]:
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


empty_database = pytest.fixture(_new_database)
other_empty_database = pytest.fixture(_new_database)


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


def _indexes(url: str, table_names: list[str]) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT indexdef FROM pg_indexes WHERE tablename = ANY(:names)"),
                {"names": table_names},
            )
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def test_indexes_match_the_models(empty_database: str, other_empty_database: str) -> None:
    """Every index the migrations build is the models' index, condition and all (autogenerate
    compares neither a partial index's condition nor an expression index)."""
    migrate.upgrade("head", empty_database)
    engine = create_engine(other_empty_database)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()
    names = list(Base.metadata.tables)
    migrated, modelled = _indexes(empty_database, names), _indexes(other_empty_database, names)
    assert migrated - modelled == set(), "built by the migrations, not in the models"
    assert modelled - migrated == set(), "in the models, not built by the migrations"
