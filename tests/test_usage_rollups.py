"""The usage rollups stay exactly equal to the sums over token_usage, whatever writes it."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from benchmarks.sql_usage import rollup_migration
from service import cancel_job, enqueue_completion, get_job
from service.db.session import transaction
from service.fake_gateway import Fault, ModelInfo
from service.usage.periods import today_utc
from service.usage.report import ReportQuery, rolled_up_tags, run_report, source_for
from tests.conftest import run_ezq, sql, wait_for_job

pytestmark = pytest.mark.usefixtures("worker")

# The views as they were before the rollups: sums over every token_usage row.
BEFORE = rollup_migration().previous_views()
BY_PRICE_FROM_ROWS = """
    SELECT (created_at AT TIME ZONE 'UTC')::date, tenant, model, price_id, count(*),
           sum(prompt_tokens), sum(cached_tokens), sum(uncached_prompt_tokens),
           sum(completion_tokens), sum(total_tokens), sum(cost_usd),
           count(*) FILTER (WHERE cost_usd IS NULL), sum(cache_write_tokens)
    FROM token_usage GROUP BY 1, 2, 3, 4"""


def assert_rollups_exact() -> None:
    """Every usage view gives, row for row, what the sums over token_usage give. Each
    comparison is one statement, so both sides see the same snapshot while workers write."""
    compared = {**BEFORE, "usage_daily_by_price": BY_PRICE_FROM_ROWS}
    for view, rows in compared.items():
        ((missing, extra, count),) = sql(
            f"SELECT (SELECT count(*) FROM (({rows}) EXCEPT ALL (SELECT * FROM {view})) a),"
            f" (SELECT count(*) FROM ((SELECT * FROM {view}) EXCEPT ALL ({rows})) b),"
            f" (SELECT count(*) FROM {view})"
        )
        assert (missing, extra) == (0, 0), f"{view}: {missing} rows missing, {extra} extra"
        assert count > 0


# The tag rollup of one key against the same sums over token_usage, per UTC day, tenant
# and the key's value (NULL without it).
TAG_SUMS = """
    SELECT day, tenant, tag_value, sum(jobs), sum(unpriced_jobs), sum(prompt_tokens),
           sum(cached_tokens), sum(uncached_prompt_tokens), sum(completion_tokens),
           sum(total_tokens), sum(cache_write_tokens), sum(cost_usd)
    FROM usage_rollup_tags WHERE tag_key = :k
    GROUP BY 1, 2, 3 HAVING sum(jobs) <> 0"""
TAG_SUMS_FROM_ROWS = """
    SELECT (created_at AT TIME ZONE 'UTC')::date, tenant, metadata->>:k, count(*),
           count(*) FILTER (WHERE cost_usd IS NULL), sum(prompt_tokens), sum(cached_tokens),
           sum(uncached_prompt_tokens), sum(completion_tokens), sum(total_tokens),
           sum(cache_write_tokens), coalesce(sum(cost_usd), 0)
    FROM token_usage GROUP BY 1, 2, 3"""


def assert_tag_rollup_exact(key: str) -> None:
    """The tag rollup of ``key`` gives, row for row, the sums over token_usage (one
    statement, one snapshot)."""
    ((missing, extra, count),) = sql(
        f"SELECT (SELECT count(*) FROM (({TAG_SUMS_FROM_ROWS}) EXCEPT ALL ({TAG_SUMS})) a),"
        f" (SELECT count(*) FROM (({TAG_SUMS}) EXCEPT ALL ({TAG_SUMS_FROM_ROWS})) b),"
        f" (SELECT count(*) FROM ({TAG_SUMS}) c)",
        k=key,
    )
    assert (missing, extra) == (0, 0), f"tag {key}: {missing} rows missing, {extra} extra"
    assert count > 0


def tag_totals(key: str, tenant: str) -> dict[str | None, tuple[Any, ...]]:
    """Jobs, cost and unpriced jobs per value of ``key`` for the tenant, from the rollup."""
    rows = sql(
        "SELECT tag_value, sum(jobs), CASE WHEN sum(jobs) > sum(unpriced_jobs)"
        " THEN sum(cost_usd) END, sum(unpriced_jobs) FROM usage_rollup_tags"
        " WHERE tag_key = :k AND tenant = :t GROUP BY 1 HAVING sum(jobs) <> 0",
        k=key,
        t=tenant,
    )
    return {value: tuple(sums) for value, *sums in rows}


def tenant_totals(tenant: str) -> tuple[Any, ...]:
    """The tenant's jobs, tokens, cost and unpriced jobs from the rollup (usage_daily),
    checked against the same sums over token_usage."""
    ((view, rows),) = sql(
        "SELECT (SELECT ARRAY[sum(jobs), sum(total_tokens), sum(cost_usd), sum(unpriced_jobs)]"
        "        FROM usage_daily WHERE tenant = :t),"
        " (SELECT ARRAY[count(*), sum(total_tokens), sum(cost_usd),"
        "               count(*) FILTER (WHERE cost_usd IS NULL)]"
        "  FROM token_usage WHERE tenant = :t)",
        t=tenant,
    )
    assert view == rows
    return tuple(view)


@pytest.fixture
def model(fake_gateway: Any) -> Iterator[str]:
    """A model of this test's own, which no other test prices."""
    name = f"rollup-{secrets.token_hex(4)}"
    fake_gateway.models[name] = ModelInfo(name)
    yield name
    fake_gateway.models.pop(name, None)


@pytest.fixture
def tag_key() -> Iterator[str]:
    """A tag key of this test's own, rolled up while it runs."""
    key = f"rollup-tag-{secrets.token_hex(4)}"
    with transaction() as session:
        session.execute(text("SELECT usage_rollup_tag_add(:k)"), {"k": key})
    yield key
    with transaction() as session:
        session.execute(text("SELECT usage_rollup_tag_drop(:k)"), {"k": key})


def turn(
    model: str,
    tenant: str,
    prompt: str,
    conversation: Any = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    job = wait_for_job(
        enqueue_completion(
            model,
            [{"role": "user", "content": prompt}],
            tenant=tenant,
            conversation_id=conversation,
            metadata=metadata,
        )
    )
    assert job["status"] == "succeeded", job
    return job


def cancelled_spend(fake_gateway: Any, model: str, tenant: str) -> uuid.UUID:
    """A job cancelled while its call runs: the call's usage is still written."""
    marker = uuid.uuid4().hex
    # About 2.7 s of stream (frames 0.3 s apart, each within the suite's 1.5 s read timeout
    # and the whole within its 4 s attempt deadline): time to cancel it mid-call.
    fake_gateway.add_faults(
        Fault(kind="normal", reply="a slow reply " * 4, chunk_delay=0.3, match=marker)
    )
    job_id = enqueue_completion(
        model, [{"role": "user", "content": f"slow {marker}"}], tenant=tenant
    )
    deadline = time.monotonic() + 15
    while get_job(job_id)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancel_job(job_id)
    while sql("SELECT job_cancelled FROM token_usage WHERE job_id = :j", j=job_id) != [(True,)]:
        assert time.monotonic() < deadline + 15, "the cancelled call's usage was never written"
        time.sleep(0.05)
    return job_id


def test_rollups_equal_the_sums_through_inserts_cancels_recomputes_purges_and_deletes(
    fake_gateway: Any, model: str, tag_key: str
) -> None:
    """Usage the worker writes (turns, concurrent jobs, a cancelled job's spend), a price
    recompute, a purge and a deleted job all leave every usage view, and the tag rollup,
    equal to the sums over token_usage, unpriced rows and NULL costs included."""
    tenant = f"rollup-{secrets.token_hex(4)}"

    # Turns of two conversations, and a burst of jobs on one (day, tenant, model) key that
    # the worker records concurrently; tagged with two values of the rolled-up key, a JSON
    # null, a number, another key only, or nothing.
    first = turn(model, tenant, "one", metadata={tag_key: "a"})
    turn(model, tenant, "two", first["conversation_id"], metadata={tag_key: None})
    turn(model, tenant, "three", metadata={"other": "x"})
    tags: list[dict[str, Any] | None] = [{tag_key: "a"}, {tag_key: "b"}, {tag_key: 7}, None]
    burst = [
        enqueue_completion(
            model, [{"role": "user", "content": f"burst {i}"}], tenant=tenant, metadata=tags[i % 4]
        )
        for i in range(24)
    ]
    assert all(wait_for_job(job)["status"] == "succeeded" for job in burst)
    assert_rollups_exact()
    assert_tag_rollup_exact(tag_key)
    jobs, _, cost, unpriced = tenant_totals(tenant)
    assert (jobs, cost, unpriced) == (27, None, 27), "no price yet: a NULL cost, all unpriced"
    assert tag_totals(tag_key, tenant) == {
        "a": (7, None, 7),
        "b": (6, None, 6),
        "7": (6, None, 6),
        None: (8, None, 8),
    }

    cancelled = cancelled_spend(fake_gateway, model, tenant)
    assert_rollups_exact()
    assert_tag_rollup_exact(tag_key)
    assert tenant_totals(tenant)[0] == 28, "the cancelled job's spend counts"

    done = run_ezq(
        "prices", "set", model, "--input", "3", "--cached-input", "0.3", "--output", "15"
    )
    assert done.returncode == 0, done.stderr
    done = run_ezq("prices", "recompute", "--since", "1d", "--model", model)
    assert done.returncode == 0 and done.stdout.strip() == "priced 28 usage rows", done
    assert_rollups_exact()
    assert_tag_rollup_exact(tag_key)
    jobs, _, cost, unpriced = tenant_totals(tenant)
    assert (jobs, unpriced) == (28, 0) and cost > 0
    by_tag = tag_totals(tag_key, tenant)
    assert sum(v[0] for v in by_tag.values()) == 28 and all(v[2] == 0 for v in by_tag.values())
    assert sum(v[1] for v in by_tag.values()) == cost, "the recompute priced every tag's rows"
    assert sql("SELECT sum(cost_usd) FROM conversation_usage WHERE tenant = :t", t=tenant) == [
        (cost,)
    ]

    priced = turn(model, tenant, "four", first["conversation_id"], metadata={tag_key: "b"})
    assert_rollups_exact()
    assert_tag_rollup_exact(tag_key)
    after_insert = tenant_totals(tenant)
    assert after_insert[0] == 29 and after_insert[2] > cost

    purged = run_ezq("purge", "--tenant", tenant)
    assert purged.returncode == 0, purged.stderr
    assert sql("SELECT count(*) FROM jobs WHERE tenant = :t AND purged_at IS NULL", t=tenant) == [
        (0,)
    ]
    assert_rollups_exact()
    assert_tag_rollup_exact(tag_key)
    assert tenant_totals(tenant) == after_insert, "a purge keeps usage and cost"

    # A deleted job takes its usage row with it (ON DELETE CASCADE), and its sums.
    with transaction() as session:
        session.execute(
            text("DELETE FROM jobs WHERE id = ANY(:ids)"),
            {"ids": [uuid.UUID(priced["job_id"]), cancelled]},
        )
    assert_rollups_exact()
    assert_tag_rollup_exact(tag_key)
    assert tenant_totals(tenant)[0] == 27
    assert sum(v[0] for v in tag_totals(tag_key, tenant).values()) == 27


def test_a_rollup_key_written_concurrently_gets_rows_but_keeps_exact_sums(model: str) -> None:
    """Writers that find a key's row held by an open transaction add a row instead of
    waiting for it; the view still sums to token_usage exactly."""
    tenant = f"rollup-{secrets.token_hex(4)}"
    first = turn(model, tenant, "first")
    with transaction() as holder:
        # Hold the key's row as a worker's unfinished record transaction would.
        held = holder.execute(
            text("SELECT id FROM usage_rollup_daily WHERE tenant = :t FOR UPDATE"), {"t": tenant}
        ).all()
        assert len(held) == 1
        second = turn(model, tenant, "second", first["conversation_id"])
    assert_rollups_exact()
    assert sql("SELECT count(*) FROM usage_rollup_daily WHERE tenant = :t", t=tenant) == [(2,)]
    assert sql("SELECT jobs FROM usage_daily WHERE tenant = :t", t=tenant) == [(2,)]
    assert second["status"] == "succeeded"


@pytest.mark.parametrize(
    "by", [(), ("day",), ("month", "tenant"), ("model", "tenant"), ("day", "model")]
)
def test_the_report_from_the_rollup_equals_the_report_from_the_rows(by: tuple[str, ...]) -> None:
    """``ezq usage`` read from the rollup gives what it gives from every token_usage row,
    filters included."""
    today = today_utc()
    with transaction() as session:
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        tenants = tuple(
            session.execute(text("SELECT DISTINCT tenant FROM token_usage LIMIT 2")).scalars()
        )
        for query in (
            ReportQuery(today.replace(year=today.year - 1), today, by),
            ReportQuery(today, today, by, tenants=tuple(t for t in tenants if t)),
        ):
            from_rollup = run_report(session, query)
            assert from_rollup == run_report(session, query, "rows")
    assert from_rollup.rows or not tenants


def test_a_tag_key_added_later_is_filled_from_the_usage_and_dropped_with_its_rows(
    model: str,
) -> None:
    """``usage_rollup_tag_add`` computes a key's rollup from the usage already written;
    ``usage_rollup_tag_drop`` removes it; added again, it is computed afresh, not twice."""
    tenant = f"rollup-{secrets.token_hex(4)}"
    key = f"rollup-late-{secrets.token_hex(4)}"
    turn(model, tenant, "early one", metadata={key: "x"})
    turn(model, tenant, "early two", metadata={key: "y", "other": 1})
    assert sql("SELECT count(*) FROM usage_rollup_tags WHERE tag_key = :k", k=key) == [(0,)]
    added = run_ezq("db", "tag-rollup", "add", key)
    assert added.returncode == 0 and "rolled up" in added.stderr, added
    try:
        assert_tag_rollup_exact(key)
        assert tag_totals(key, tenant) == {"x": (1, None, 1), "y": (1, None, 1)}
        turn(model, tenant, "later", metadata={key: "x"})
        assert_tag_rollup_exact(key)
        listed = run_ezq("db", "tag-rollup", "list", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        rows = {item["key"]: item["rows"] for item in json.loads(listed.stdout)}
        assert rows[key] >= 2, "a row per value, and others for the usage without the key"
        with transaction() as session:  # dropped and added again in one go: no double count
            session.execute(text("SELECT usage_rollup_tag_drop(:k)"), {"k": key})
            assert (
                session.execute(
                    text("SELECT count(*) FROM usage_rollup_tags WHERE tag_key = :k"), {"k": key}
                ).scalar_one()
                == 0
            )
            session.execute(text("SELECT usage_rollup_tag_add(:k)"), {"k": key})
        assert_tag_rollup_exact(key)
        assert tag_totals(key, tenant) == {"x": (2, None, 2), "y": (1, None, 1)}
    finally:
        dropped = run_ezq("db", "tag-rollup", "drop", key)
    assert dropped.returncode == 0 and "dropped" in dropped.stderr, dropped
    assert sql("SELECT count(*) FROM usage_rollup_tags WHERE tag_key = :k", k=key) == [(0,)]


@pytest.mark.parametrize("by", [("tag",), ("day", "tag"), ("tag", "tenant"), ("month", "tag")])
def test_the_report_by_a_rolled_up_tag_equals_the_report_from_the_rows(
    model: str, tag_key: str, by: tuple[str, ...]
) -> None:
    """``ezq usage --by tag:KEY`` for a rolled-up KEY reads the tag rollup and gives what
    it gives from every token_usage row, filters included; an unknown key, or a grouping or
    filter by model (the tag rollup has no model), reads the rows."""
    tenant = f"rollup-{secrets.token_hex(4)}"
    for i, value in enumerate(("a", "b", None, "a")):
        turn(model, tenant, f"tagged {i}", metadata={tag_key: value} if value else None)
    dimensions = tuple(f"tag:{tag_key}" if name == "tag" else name for name in by)
    today = today_utc()
    with transaction() as session:
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        for query in (
            ReportQuery(today.replace(year=today.year - 1), today, dimensions),
            ReportQuery(today, today, dimensions, tenants=(tenant,)),
        ):
            assert source_for(query, rolled_up_tags(session, query)) == "tags"
            from_rollup = run_report(session, query)
            assert from_rollup == run_report(session, query, "rows")
        assert from_rollup.totals.jobs == 4
        for query in (
            ReportQuery(today, today, (*dimensions, "model"), tenants=(tenant,)),
            ReportQuery(today, today, dimensions, tenants=(tenant,), models=(model,)),
        ):
            assert source_for(query, rolled_up_tags(session, query)) == "rows"
            assert run_report(session, query).totals.jobs == 4
        unknown = ReportQuery(today, today, ("tag:no-such-key",), tenants=(tenant,))
        assert source_for(unknown, rolled_up_tags(session, unknown)) == "rows"
        assert run_report(session, unknown).totals.jobs == 4


def test_a_tag_value_longer_than_an_index_entry_is_rolled_up(model: str, tag_key: str) -> None:
    """A rolled-up key's value may be as long as metadata allows: the worker still writes
    the usage, and the rollup stays exact."""
    tenant = f"rollup-{secrets.token_hex(4)}"
    long_value = secrets.token_hex(4000)  # 8,000 characters: more than a btree entry holds
    turn(model, tenant, "long one", metadata={tag_key: long_value})
    turn(model, tenant, "long two", metadata={tag_key: long_value})
    assert tag_totals(tag_key, tenant) == {long_value: (2, None, 2)}
    assert_tag_rollup_exact(tag_key)


def test_an_attempt_carries_its_jobs_model(model: str) -> None:
    """Every ``job_attempts`` row gets its job's model from the trigger, whoever writes it."""
    job = turn(model, f"rollup-{secrets.token_hex(4)}", "attempt model")
    assert sql("SELECT model FROM job_attempts WHERE job_id = :j", j=job["job_id"]) == [(model,)]
    with transaction() as session:
        session.execute(
            text("INSERT INTO job_attempts (job_id, attempt, model) VALUES (:j, 99, 'wrong')"),
            {"j": job["job_id"]},
        )
        got = session.execute(
            text("SELECT model FROM job_attempts WHERE job_id = :j AND attempt = 99"),
            {"j": job["job_id"]},
        ).scalar_one()
        session.rollback()
    assert got == model
