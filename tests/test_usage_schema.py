"""Migration 0003: what it creates, what its downgrade removes, and the row fix it makes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from service.db import migrate
from service.db.models import USAGE_INDEX_INCLUDE
from tests.conftest import ADMIN_DSN

VIEWS = {"usage_daily", "usage_monthly", "job_costs", "conversation_usage"}
INDEXES = {"ix_token_usage_utc_day", "ix_token_usage_unpriced"}


@pytest.fixture
def empty_database() -> Iterator[tuple[str, str]]:
    """An empty database: its SQLAlchemy URL and its libpq URL."""
    name = f"ezq_usage_migr_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    libpq = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    yield libpq.replace("postgresql://", "postgresql+psycopg://", 1), libpq
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def catalog(libpq: str) -> dict[str, Any]:
    with psycopg.connect(libpq) as conn:
        views = {
            r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")
        }
        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'token_usage'"
            ).fetchall()
        )
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'token_usage'"
            )
        }
        prices = conn.execute("SELECT to_regclass('model_prices') IS NOT NULL").fetchone()
    return {"views": views, "indexes": indexes, "columns": columns, "prices": prices == (True,)}


def test_upgrade_creates_and_downgrade_drops_the_usage_objects(
    empty_database: tuple[str, str],
) -> None:
    """Head has the price table, cost columns, views and indexes; 0002 has none of them."""
    url, libpq = empty_database
    migrate.upgrade("head", url)
    head = catalog(libpq)
    assert head["views"] >= VIEWS and head["prices"]
    assert {"cost_usd", "price_id"} <= head["columns"]
    # Autogenerate does not compare INCLUDE lists or partial-index predicates: check here
    # that the migration built what the models declare.
    utc_day = head["indexes"]["ix_token_usage_utc_day"]
    assert "((created_at AT TIME ZONE 'UTC'::text))::date), tenant, model)" in utc_day
    assert utc_day.endswith(f"INCLUDE ({', '.join(USAGE_INDEX_INCLUDE)})")
    assert "cost_usd IS NULL" in head["indexes"]["ix_token_usage_unpriced"]

    migrate.downgrade("0002", url)
    down = catalog(libpq)
    assert not down["views"] & VIEWS and not down["prices"]
    assert not {"cost_usd", "price_id"} & down["columns"]
    assert not INDEXES & set(down["indexes"])

    migrate.upgrade("head", url)
    assert catalog(libpq)["views"] >= VIEWS


def test_upgrade_turns_json_null_issues_into_sql_null(empty_database: tuple[str, str]) -> None:
    """Rows written before 0003 with usage_issues = JSON null read as consistent after it."""
    url, libpq = empty_database
    migrate.upgrade("0002", url)
    with psycopg.connect(libpq) as conn:
        conn.execute(
            "INSERT INTO conversations (id) VALUES ('00000000-0000-0000-0000-0000000000c1')"
        )
        for n, issues in ((1, "null"), (2, '["total_tokens 9 != 10"]')):
            job = f"00000000-0000-0000-0000-00000000000{n}"
            conn.execute(
                "INSERT INTO jobs (id, conversation_id, model, input_messages, request_hash)"
                " VALUES (%s, '00000000-0000-0000-0000-0000000000c1', 'm', '[]', 'h')",
                (job,),
            )
            conn.execute(
                "INSERT INTO token_usage (job_id, conversation_id, model, prompt_tokens,"
                " cached_tokens, uncached_prompt_tokens, completion_tokens, total_tokens,"
                " raw_usage, usage_issues) VALUES (%s, '00000000-0000-0000-0000-0000000000c1',"
                " 'm', 5, 0, 5, 5, 9, '{}', %s::jsonb)",
                (job, issues),
            )
    migrate.upgrade("head", url)
    with psycopg.connect(libpq) as conn:
        rows = conn.execute(
            "SELECT usage_issues, cost_usd FROM token_usage ORDER BY job_id"
        ).fetchall()
    assert rows == [(None, None), (["total_tokens 9 != 10"], None)]
