"""The SQL views add up: each one equals the same sums computed here from token_usage."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, text

from service.db.migrate import throwaway_database
from service.db.session import get_engine, transaction
from service.usage.synthetic import SeedPlan, seed_usage
from tests.conftest import ADMIN_DSN

SUMS = (
    "jobs",
    "prompt_tokens",
    "cached_tokens",
    "uncached_prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_jobs",
)

# Rows at the edges: no tenant, either side of midnight UTC, an unpriced one.
EDGE_ROWS = """
WITH c AS (
    INSERT INTO conversations (id, tenant) VALUES ('00000000-0000-0000-0000-0000000000e1', NULL)
    RETURNING id
), j AS (
    INSERT INTO jobs (id, conversation_id, status, model, input_messages, request_hash,
                      attempts, created_at, started_at, first_token_at, finished_at)
    SELECT ('00000000-0000-0000-0000-00000000000' || n)::uuid, c.id, 'succeeded', 'edge-model',
           '[]', 'edge', 1, t, t + interval '0.25 s', t + interval '0.7505 s', t + interval '2 s'
    FROM c, (VALUES (1, timestamptz '2026-02-28 23:59:59.999+00'),
                    (2, timestamptz '2026-03-01 00:00:00+00')) AS v(n, t)
    RETURNING id, conversation_id, finished_at
)
INSERT INTO token_usage (job_id, conversation_id, model, tenant, prompt_tokens, cached_tokens,
                         uncached_prompt_tokens, completion_tokens, total_tokens, raw_usage,
                         cost_usd, created_at)
SELECT j.id, j.conversation_id, 'edge-model', NULL, 100, 40, 60, 10, 110, '{}',
       CASE WHEN j.id = '00000000-0000-0000-0000-000000000001' THEN 0.0000123 END,
       CASE WHEN j.id = '00000000-0000-0000-0000-000000000001'
            THEN timestamptz '2026-02-28 23:59:59.999+00'
            ELSE timestamptz '2026-03-01 00:00:00+00' END
FROM j
"""


@pytest.fixture(scope="module")
def seeded() -> Iterator[Connection]:
    """A throwaway database with two months of varied usage and some edge rows; yields a
    connection whose session time zone is far from UTC."""
    with throwaway_database(ADMIN_DSN, prefix="ezq_test_views") as url:
        plan = SeedPlan(
            rows=1500,
            days=75,
            tenants=4,
            models=("a", "b", "c", "unpriced"),
            unpriced_models=("unpriced",),
        )
        with transaction(url) as session:
            seed_usage(session, plan)
            session.execute(text(EDGE_ROWS))
        engine = get_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SET TIME ZONE 'Pacific/Kiritimati'"))  # UTC+14
            yield conn
        engine.dispose()


def usage_rows(conn: Connection) -> list[dict[str, Any]]:
    result = conn.execute(text("SELECT * FROM token_usage"))
    return [dict(row._mapping) for row in result]


def add(totals: dict[str, Any], row: dict[str, Any]) -> None:
    totals["jobs"] += 1
    for name in SUMS[1:6]:
        totals[name] += row[name]
    if row["cost_usd"] is None:
        totals["unpriced_jobs"] += 1
    else:
        totals["cost_usd"] = (totals["cost_usd"] or 0) + row["cost_usd"]


def grouped(rows: list[dict[str, Any]], key: Any) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, dict[str, Any]] = defaultdict(
        lambda: dict.fromkeys(SUMS, 0) | {"cost_usd": None}
    )
    for row in rows:
        add(groups[key(row)], row)
    return dict(groups)


def utc_day(row: dict[str, Any]) -> date:
    return row["created_at"].astimezone(UTC).date()


def view(conn: Connection, name: str, keys: tuple[str, ...]) -> dict[Any, dict[str, Any]]:
    result = conn.execute(text(f"SELECT {', '.join(keys + SUMS)} FROM {name}"))
    found = {}
    for row in result:
        values = tuple(row)
        found[values[: len(keys)]] = dict(zip(SUMS, values[len(keys) :], strict=True))
    return found


def test_usage_daily_equals_sums_per_utc_day(seeded: Connection) -> None:
    """usage_daily holds, per UTC day, tenant and model, exactly the sums of token_usage."""
    rows = usage_rows(seeded)
    expected = grouped(rows, lambda r: (utc_day(r), r["tenant"], r["model"]))
    assert view(seeded, "usage_daily", ("day", "tenant", "model")) == expected
    edge = {key: value for key, value in expected.items() if key[2] == "edge-model"}
    assert set(edge) == {
        (date(2026, 2, 28), None, "edge-model"),
        (date(2026, 3, 1), None, "edge-model"),
    }
    assert edge[(date(2026, 3, 1), None, "edge-model")]["cost_usd"] is None


def test_usage_monthly_equals_sums_per_utc_month(seeded: Connection) -> None:
    """usage_monthly holds, per UTC month, tenant and model, exactly the sums of token_usage."""
    rows = usage_rows(seeded)
    expected = grouped(rows, lambda r: (utc_day(r).replace(day=1), r["tenant"], r["model"]))
    found = view(seeded, "usage_monthly", ("month", "tenant", "model"))
    assert found == expected
    assert len({key[0] for key in found}) >= 3


def test_view_totals_equal_table_totals(seeded: Connection) -> None:
    """Summed over all rows, every view gives the table's own totals and unpriced count."""
    table = seeded.execute(
        text(
            "SELECT count(*), sum(total_tokens), sum(cost_usd), count(*) - count(cost_usd)"
            " FROM token_usage"
        )
    ).one()
    for name in ("usage_daily", "usage_monthly", "conversation_usage"):
        totals = seeded.execute(
            text(
                "SELECT sum(jobs), sum(total_tokens), sum(cost_usd), sum(unpriced_jobs)"
                f" FROM {name}"
            )
        ).one()
        assert tuple(totals) == tuple(table), name
    assert table[3] > 0, "the seed has unpriced usage"


def test_conversation_usage_equals_sums_per_conversation(seeded: Connection) -> None:
    """conversation_usage holds each conversation's sums and first and last usage."""
    rows = usage_rows(seeded)
    expected = grouped(rows, lambda r: (r["conversation_id"],))
    assert view(seeded, "conversation_usage", ("conversation_id",)) == expected
    spans = seeded.execute(
        text("SELECT conversation_id, first_used_at, last_used_at FROM conversation_usage")
    ).all()
    for conversation_id, first, last in spans:
        times = [r["created_at"] for r in rows if r["conversation_id"] == conversation_id]
        assert (first, last) == (min(times), max(times))


def ms(delta: timedelta | None) -> int | None:
    if delta is None:
        return None
    micros = Decimal(delta // timedelta(microseconds=1))
    return int((micros / 1000).quantize(Decimal(1), ROUND_HALF_UP))


def test_job_costs_has_one_row_per_job_with_its_usage_and_times(seeded: Connection) -> None:
    """job_costs has every job once, its usage and cost, and its times in milliseconds."""
    jobs = {
        row.id: row
        for row in seeded.execute(
            text("SELECT id, status, created_at, started_at, first_token_at, finished_at FROM jobs")
        )
    }
    usage = {row["job_id"]: row for row in usage_rows(seeded)}
    found = seeded.execute(
        text(
            "SELECT job_id, status, total_tokens, cost_usd, price_id, queue_ms, latency_ms,"
            " ttft_ms FROM job_costs"
        )
    ).all()
    assert len(found) == len(jobs)
    assert {row.job_id for row in found} == set(jobs)
    assert any(row.status == "failed" and row.total_tokens is None for row in found)
    for row in found:
        job, used = jobs[row.job_id], usage.get(row.job_id)
        assert row.status == job.status
        assert row.total_tokens == (used["total_tokens"] if used else None)
        assert row.cost_usd == (used["cost_usd"] if used else None)
        assert row.price_id == (used["price_id"] if used else None)
        started = job.started_at
        assert row.queue_ms == ms(started - job.created_at if started else None)
        assert row.latency_ms == ms(job.finished_at - started if job.finished_at else None)
        assert row.ttft_ms == ms(job.first_token_at - started if job.first_token_at else None)
    edge = {row.job_id: row for row in found if str(row.job_id).startswith("00000000")}
    assert {(row.latency_ms, row.ttft_ms) for row in edge.values()} == {(1750, 501)}


def test_day_filters_read_the_rollup_index(seeded: Connection) -> None:
    """A filter on usage_daily.day is pushed into an index scan of the rollup's key."""
    seeded.execute(text("SET enable_seqscan = off"))
    try:
        plan = (
            seeded.execute(
                text(
                    "EXPLAIN SELECT sum(cost_usd) FROM usage_daily"
                    " WHERE day >= (now() AT TIME ZONE 'UTC')::date - 6"
                )
            )
            .scalars()
            .all()
        )
    finally:
        seeded.execute(text("RESET enable_seqscan"))
    assert any("ix_usage_rollup_daily_key" in line for line in plan), plan
    assert any("Index Cond" in line and "day >=" in line for line in plan), plan
    assert not any("token_usage" in line for line in plan), plan
