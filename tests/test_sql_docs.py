"""Every query in docs/sql.md runs against seeded data, and gives the right answer."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, text

from benchmarks.sql_doc import SQL_DOC, DocQuery, read_queries
from service.db.migrate import throwaway_database
from service.db.session import get_engine, transaction
from service.usage.synthetic import SeedPlan, seed_usage
from tests.conftest import ADMIN_DSN

QUERIES = read_queries()
VIEWS = ("usage_daily", "usage_monthly", "usage_daily_by_price", "job_costs", "conversation_usage")
PLAN = SeedPlan(
    rows=3000,
    days=70,
    tenants=4,
    models=("alpha", "beta", "gamma", "unpriced"),
    unpriced_models=("unpriced",),
    stuck_jobs=3,
)
EXTRA_JOB = "00000000-0000-0000-0000-00000000ab01"
# One job finished right now: expensive, and with a usage object that did not add up.
EXTRA = f"""
WITH c AS (
    INSERT INTO conversations (id, tenant) VALUES (gen_random_uuid(), 'tenant-000') RETURNING id
),
j AS (
    INSERT INTO jobs (id, conversation_id, status, model, input_messages, request_hash,
                      tenant, attempts, created_at, started_at, first_token_at, finished_at)
    SELECT '{EXTRA_JOB}', c.id, 'succeeded', 'alpha', '[]', 'x', 'tenant-000', 1,
           now(), now(), now(), now()
    FROM c RETURNING id, conversation_id
)
INSERT INTO token_usage (job_id, conversation_id, model, tenant, prompt_tokens, cached_tokens,
                         uncached_prompt_tokens, completion_tokens, total_tokens, raw_usage,
                         usage_issues, cost_usd)
SELECT id, conversation_id, 'alpha', 'tenant-000', 100, 0, 100, 50, 160,
       '{{"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 160}}',
       '["total_tokens 160 != prompt_tokens + completion_tokens 150"]', 7.5
FROM j
"""

# Two queued jobs held back by a concurrency limit, one by a rate limit until later.
THROTTLED = """
WITH c AS (
    INSERT INTO conversations (id, tenant) VALUES (gen_random_uuid(), 'tenant-001') RETURNING id
)
INSERT INTO jobs (id, conversation_id, status, model, input_messages, request_hash, tenant,
                  priority, needs_publish, throttle_reason, throttled_until)
SELECT gen_random_uuid(), c.id, 'queued', 'beta', '[]', 'x', 'tenant-001', p, true, reason, until
FROM c, (VALUES (5, 'max_concurrent 2/2 for tenant=tenant-001 model=*', NULL::timestamptz),
                (7, 'max_concurrent 2/2 for tenant=tenant-001 model=*', NULL),
                (5, 'requests 10/10 in 60s for tenant=* model=beta', now() + interval '30 s'))
     AS t(p, reason, until)
"""


@pytest.fixture(scope="module")
def conn() -> Iterator[Connection]:
    """A throwaway database with 70 days of usage, failures, retries and stuck jobs."""
    with throwaway_database(ADMIN_DSN, prefix="ezq_test_sqldoc") as url:
        with transaction(url) as session:
            # Rolled up before the seed, so the insert trigger fills the tag rollup.
            session.execute(text("SELECT usage_rollup_tag_add('feature')"))
            seed_usage(session, PLAN)
            session.execute(text(EXTRA))
            session.execute(text(THROTTLED))
        engine = get_engine(url)
        with engine.connect() as connection:
            yield connection
        engine.dispose()


def scalar(conn: Connection, query: str) -> Any:
    return conn.execute(text(query)).scalar_one()


def total(rows: list[dict[str, Any]], column: str) -> Any:
    return sum((row[column] for row in rows if row[column] is not None), Decimal(0))


# Instants at UTC midnights, computed on UTC wall-clock time: interval arithmetic on a
# timestamptz would run in the session's zone (Los Angeles here) and shift across DST.
DAYS_AGO_29 = "((now() AT TIME ZONE 'UTC')::date - 29)::timestamp AT TIME ZONE 'UTC'"
MONTH_START = "date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
LAST_MONTH_START = (
    "date_trunc('month', (now() AT TIME ZONE 'UTC') - interval '1 month') AT TIME ZONE 'UTC'"
)


def check_spend_per_day(rows: list[dict[str, Any]], conn: Connection) -> None:
    since = DAYS_AGO_29
    assert total(rows, "jobs") == scalar(
        conn, f"SELECT count(*) FROM token_usage WHERE created_at >= {since}"
    )
    assert total(rows, "cost_usd") == scalar(
        conn, f"SELECT sum(cost_usd) FROM token_usage WHERE created_at >= {since}"
    )
    assert total(rows, "unpriced_jobs") > 0


def check_month_to_date(rows: list[dict[str, Any]], conn: Connection) -> None:
    expected = dict(
        conn.execute(
            text(
                "SELECT tenant, sum(cost_usd) FROM token_usage"
                f" WHERE created_at >= {MONTH_START} GROUP BY tenant"
            )
        ).all()
    )
    assert {
        row["tenant"]: row["month_to_date_usd"]
        for row in rows
        if row["month_to_date_usd"] is not None
    } == expected
    last_month = scalar(
        conn,
        "SELECT sum(cost_usd) FROM token_usage"
        f" WHERE created_at >= {LAST_MONTH_START} AND created_at < {MONTH_START}",
    )
    assert total(rows, "last_month_usd") == last_month > 0
    for row in rows:
        assert (row["same_days_last_month_usd"] or 0) <= (row["last_month_usd"] or 0)


def check_top_conversations(rows: list[dict[str, Any]], conn: Connection) -> None:
    costs = [row["cost_usd"] for row in rows if row["cost_usd"] is not None]
    assert len(rows) == 20 and costs == sorted(costs, reverse=True)
    assert costs[0] == Decimal("7.5"), "the extra job's conversation costs the most"
    expected = conn.execute(
        text(
            "SELECT sum(cost_usd) AS cost FROM token_usage GROUP BY conversation_id"
            " HAVING max(created_at) >= now() - interval '30 days'"
            " ORDER BY cost DESC NULLS LAST LIMIT 20"
        )
    ).scalars()
    assert costs == list(expected)


def check_top_conversations_all_time(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert len(rows) == 20
    assert rows[0]["cost_usd"] == scalar(conn, "SELECT max(cost_usd) FROM conversation_usage")


def check_cache_hit(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert {row["model"] for row in rows} == set(PLAN.models)
    assert all(0 <= row["cache_hit_pct"] <= 100 for row in rows)


def check_cache_savings(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert {row["model"] for row in rows} == {"alpha", "beta", "gamma"}
    assert all(row["saved_usd"] > 0 for row in rows)
    expected = conn.execute(
        text(
            "SELECT u.model, sum(u.cached_tokens * (p.input_per_mtok - p.cached_input_per_mtok))"
            " * 0.000001 FROM token_usage u JOIN model_prices p ON p.id = u.price_id"
            f" WHERE u.created_at >= {DAYS_AGO_29} GROUP BY u.model"
        )
    ).all()
    assert {row["model"]: row["saved_usd"] for row in rows} == dict(expected)


def check_percentiles(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert total(rows, "jobs") == scalar(
        conn,
        "SELECT count(*) FROM jobs WHERE status = 'succeeded'"
        " AND created_at >= now() - interval '7 days'",
    )
    for row in rows:
        assert 0 <= row["p50_latency_ms"] <= row["p95_latency_ms"]
        assert 0 <= row["p50_ttft_ms"] <= row["p95_ttft_ms"]


def check_shares(column: str) -> Callable[[list[dict[str, Any]], Connection], None]:
    def check(rows: list[dict[str, Any]], conn: Connection) -> None:
        by_model: dict[str, Decimal] = {}
        for row in rows:
            by_model[row["model"]] = by_model.get(row["model"], Decimal(0)) + row[column]
        assert by_model and all(abs(share - 100) < Decimal("0.1") for share in by_model.values())
        assert any(row["error_type"] != "(none)" for row in rows)

    return check


def check_retries(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert total(rows, "jobs") == scalar(
        conn,
        "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed')"
        " AND created_at >= now() - interval '7 days'",
    )
    assert total(rows, "retried_jobs") > 0
    assert all(row["max_attempts"] >= 1 for row in rows)


def check_tag(rows: list[dict[str, Any]], conn: Connection) -> None:
    expected = conn.execute(
        text(
            "SELECT coalesce(metadata->>'feature', '(untagged)'), count(*), sum(total_tokens),"
            " sum(cost_usd), count(*) FILTER (WHERE cost_usd IS NULL) FROM token_usage"
            f" WHERE created_at >= {DAYS_AGO_29} GROUP BY 1"
        )
    ).all()
    assert {
        row["feature"]: (
            row["jobs"],
            row["total_tokens"],
            row["cost_usd"],
            row["unpriced_jobs"],
        )
        for row in rows
    } == {feature: tuple(sums) for feature, *sums in expected}
    assert "(untagged)" in {row["feature"] for row in rows}, "the extra job has no tag"


def check_one_tag(rows: list[dict[str, Any]], conn: Connection) -> None:
    expected = conn.execute(
        text(
            "SELECT (created_at AT TIME ZONE 'UTC')::date, count(*), sum(total_tokens),"
            ' sum(cost_usd) FROM token_usage WHERE metadata @> \'{"feature": "search"}\''
            f" AND created_at >= {DAYS_AGO_29} GROUP BY 1 ORDER BY 1"
        )
    ).all()
    assert [(row["day"], row["jobs"], row["total_tokens"], row["cost_usd"]) for row in rows] == [
        tuple(sums) for sums in expected
    ]


def check_unpriced(rows: list[dict[str, Any]], conn: Connection) -> None:
    count = scalar(conn, "SELECT count(*) FROM token_usage WHERE model = 'unpriced'")
    assert [(row["model"], row["jobs"]) for row in rows] == [("unpriced", count)]
    first, last = conn.execute(
        text(
            "SELECT min(created_at AT TIME ZONE 'UTC')::date,"
            " max(created_at AT TIME ZONE 'UTC')::date FROM token_usage WHERE cost_usd IS NULL"
        )
    ).one()
    assert (rows[0]["first_seen"], rows[0]["last_seen"]) == (first, last)


def check_stuck(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert len(rows) == PLAN.stuck_jobs
    assert all(row["status"] == "running" and row["lease_expired"] for row in rows)


def check_inconsistent(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert [str(row["job_id"]) for row in rows] == [EXTRA_JOB]
    assert rows[0]["usage_issues"] == ["total_tokens 160 != prompt_tokens + completion_tokens 150"]


def check_expensive_today(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert str(rows[0]["job_id"]) == EXTRA_JOB and rows[0]["cost_usd"] == Decimal("7.5")


def check_throttled(rows: list[dict[str, Any]], conn: Connection) -> None:
    assert [(row["throttle_reason"][:8], row["jobs"], row["top_priority"]) for row in rows] == [
        ("max_conc", 2, 7),
        ("requests", 1, 5),
    ]
    assert rows[0]["next_due"] is None and rows[1]["next_due"] is not None


CHECKS: dict[str, Callable[[list[dict[str, Any]], Connection], None]] = {
    "Spend per tenant per day": check_spend_per_day,
    "Month-to-date against last month, per tenant": check_month_to_date,
    "Top conversations by cost": check_top_conversations,
    "Top conversations by cost (2)": check_top_conversations_all_time,
    "Cache-hit ratio per model": check_cache_hit,
    "Cache-hit ratio per model (2)": check_cache_savings,
    "p50 and p95 latency and time to first token per model": check_percentiles,
    "Error rate per model and error type": check_shares("pct_of_model"),
    "Error rate per model and error type (2)": check_shares("pct_of_model_attempts"),
    "Retries per job": check_retries,
    "Usage by a metadata tag": check_tag,
    "Usage by a metadata tag (2)": check_one_tag,
    "Unpriced usage": check_unpriced,
    "Jobs still running for too long": check_stuck,
    "Jobs held back by flow control": check_throttled,
    "Usage the gateway reported inconsistently": check_inconsistent,
    "The most expensive jobs today": check_expensive_today,
}


def test_the_doc_has_the_queries_people_need() -> None:
    """docs/sql.md has at least ten ready queries, and every one of them is checked here."""
    headings = {query.heading for query in QUERIES}
    assert len(headings) >= 10
    assert {query.name for query in QUERIES} == set(CHECKS)


def documented_columns(view: str) -> set[tuple[str, str]]:
    """The (column, type) pairs of the table under the view's heading in docs/sql.md."""
    lines = SQL_DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"### `{view}`")
    found: set[tuple[str, str]] = set()
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            kind = cells[1].strip("`").replace("timestamptz", "timestamp with time zone")
            found |= {(name, kind) for name in re.findall(r"`(\w+)`", cells[0])}
    return found


@pytest.mark.parametrize("view", VIEWS)
def test_documented_columns_are_the_views_columns(conn: Connection, view: str) -> None:
    """docs/sql.md lists every column of each view with its actual type, and no other."""
    with conn.begin():
        actual = conn.execute(
            text(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = CAST(:view AS regclass) AND attnum > 0 AND NOT attisdropped"
            ),
            {"view": view},
        ).all()
    assert documented_columns(view) == {(name, kind) for name, kind in actual}


@pytest.mark.parametrize("query", QUERIES, ids=[query.name for query in QUERIES])
def test_query_runs_and_answers_right(conn: Connection, query: DocQuery) -> None:
    """The query runs read-only, in a session far from UTC, and returns what the data says."""
    with conn.begin():
        conn.execute(text("SET TRANSACTION READ ONLY"))
        conn.execute(text("SET LOCAL TIME ZONE 'America/Los_Angeles'"))
        result = conn.execute(text(query.sql))
        rows = [dict(row._mapping) for row in result]
        assert rows, "the seed should give every query something to return"
        CHECKS[query.name](rows, conn)
