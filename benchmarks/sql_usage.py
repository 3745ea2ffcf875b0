"""SQL at scale: every docs/sql.md query and the ``ezq usage`` report on a million rows.

Seeds a throwaway database with one million usage rows (and their jobs, attempts and
conversations) over 90 days, 50 tenants and 8 models, runs VACUUM ANALYZE, then times each
query and prints how its plan reads ``token_usage`` (EXPLAIN (FORMAT JSON)). Exits 1 when a
query that must stay index-backed scans the whole table.

    python -m benchmarks.sql_usage [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.orm import Session

from benchmarks.sql_doc import read_queries
from service.db.migrate import throwaway_database
from service.usage.costs import insert_priced_usage
from service.usage.periods import today_utc
from service.usage.report import ReportQuery, report_statement
from service.usage.synthetic import SeedPlan, seed_usage

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# The issue's bar: these must never read the whole of token_usage.
MUST_USE_INDEX = (
    "Month-to-date against last month, per tenant",
    "report: last 7 days by day",
    "report: month to date by tenant",
)
BULK_TABLES = ("conversations", "jobs", "job_attempts", "token_usage")
SCANS = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan")


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    sql: str


def report_cases() -> list[Case]:
    today = today_utc()
    queries = {
        "report: last 7 days by day": ReportQuery(today - timedelta(days=6), today),
        "report: last 30 days by day, model": ReportQuery(
            today - timedelta(days=29), today, by=("day", "model")
        ),
        "report: month to date by tenant": ReportQuery(today.replace(day=1), today, ("tenant",)),
        "report: 90 days by month, tenant": ReportQuery(
            today - timedelta(days=89), today, by=("month", "tenant")
        ),
        "report: one tenant, 30 days by day": ReportQuery(
            today - timedelta(days=29), today, tenants=("tenant-007",)
        ),
        "report: 30 days by tag:feature": ReportQuery(
            today - timedelta(days=29), today, by=("tag:feature",)
        ),
    }
    cases = [
        # A selective tag over all time: the GIN index on metadata answers it.
        Case(
            "tag filter: feature = extract, all time",
            "SELECT count(*), sum(cost_usd) FROM token_usage"
            """ WHERE metadata @> '{"feature": "extract"}'""",
        )
    ]
    for name, query in queries.items():
        compiled = report_statement(query).compile(
            dialect=create_engine("postgresql+psycopg://").dialect,
            compile_kwargs={"literal_binds": True, "render_postcompile": True},
        )
        cases.append(Case(name, str(compiled)))
    return cases


@contextmanager
def bulk_load(session: Session) -> Iterator[None]:
    """Load fast, as one would restore a dump: without foreign-key triggers, and with the
    secondary indexes dropped and then rebuilt in one sorted pass each (the rebuilt ones
    are the migrations' own definitions, read back from the catalog)."""
    session.execute(text("SET LOCAL synchronous_commit = off"))
    session.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
    session.execute(text("SET LOCAL session_replication_role = replica"))
    indexes = session.execute(
        text(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema() AND tablename = ANY(:tables)"
            " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        ),
        {"tables": list(BULK_TABLES)},
    ).all()
    for name, _ in indexes:
        session.execute(text(f'DROP INDEX "{name}"'))
    yield
    for _, definition in indexes:
        session.execute(text(definition))
    session.execute(text("SET LOCAL session_replication_role = origin"))


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def access_paths(conn: Connection, sql: str) -> tuple[list[str], bool]:
    """How the plan reads each table, and whether it scans token_usage sequentially."""
    raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}").scalar_one()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    paths, seq_scan = [], False
    for node in _nodes(plan):
        relation = node.get("Relation Name")
        if node["Node Type"] not in SCANS or (relation is None and "Index Name" not in node):
            continue
        where = node.get("Index Name") or relation
        paths.append(f"{node['Node Type']} {where}")
        seq_scan |= node["Node Type"] == "Seq Scan" and relation == "token_usage"
    return sorted(set(paths)), seq_scan


def timed(conn: Connection, sql: str, repeat: int) -> tuple[float, int]:
    """Median wall time in ms over ``repeat`` runs, after one warm-up, and the row count."""
    rows = len(conn.exec_driver_sql(sql).all())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        conn.exec_driver_sql(sql).all()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), rows


def time_worker_inserts(engine: Engine, count: int) -> tuple[float, float]:
    """Median and p95 ms of the worker's priced usage INSERT, one transaction each, into
    the full table (for failed jobs, which have no usage yet)."""
    with engine.connect() as conn:
        jobs = conn.execute(
            text(
                "SELECT id, conversation_id, model, tenant FROM jobs"
                " WHERE status = 'failed' LIMIT :n"
            ),
            {"n": count},
        ).all()
    usage = {"prompt_tokens": 2171, "prompt_tokens_details": {"cached_tokens": 2048}}
    times = []
    for job_id, conversation_id, model, tenant in jobs:
        start = time.perf_counter()
        with Session(engine) as session, session.begin():
            insert_priced_usage(
                session,
                job_id=job_id,
                conversation_id=conversation_id,
                model=model,
                tenant=tenant,
                meta={"feature": "bench"},
                prompt_tokens=2171,
                cached_tokens=2048,
                uncached_prompt_tokens=123,
                completion_tokens=300,
                reasoning_tokens=None,
                total_tokens=2471,
                raw_usage=usage,
                usage_issues=None,
            )
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    with throwaway_database(ADMIN_DSN, prefix="ezq_bench_sql") as url:
        engine = create_engine(url)
        plan = SeedPlan(rows=args.rows)
        started = time.perf_counter()
        with Session(engine) as session, session.begin(), bulk_load(session):
            seed_usage(session, plan)
        seeded = time.perf_counter() - started
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
            sizes = conn.exec_driver_sql(
                "SELECT pg_size_pretty(pg_table_size('token_usage')),"
                " pg_size_pretty(pg_indexes_size('token_usage')),"
                " pg_size_pretty(pg_relation_size('ix_token_usage_utc_day'))"
            ).one()
        print(
            f"seeded {plan.rows:,} usage rows ({plan.days} days, {plan.tenants} tenants,"
            f" {len(plan.models)} models) in {seeded:.1f}s + VACUUM ANALYZE in"
            f" {time.perf_counter() - started - seeded:.1f}s; token_usage {sizes[0]},"
            f" its indexes {sizes[1]} (utc_day covering index {sizes[2]})"
        )
        cases = [Case(q.name, q.sql) for q in read_queries()] + report_cases()
        failures = []
        width = max(len(case.name) for case in cases)
        print(f"\n{'query':<{width}}  {'median ms':>9}  {'rows':>6}  plan")
        with engine.connect() as conn:
            for case in cases:
                paths, seq_scan = access_paths(conn, case.sql)
                ms, rows = timed(conn, case.sql, args.repeat)
                flag = "  <-- SEQ SCAN of token_usage" if seq_scan else ""
                print(f"{case.name:<{width}}  {ms:9.1f}  {rows:6}  {'; '.join(paths)}{flag}")
                if seq_scan and case.name in MUST_USE_INDEX:
                    failures.append(case.name)
        median, p95 = time_worker_inserts(engine, 500)
        print(
            f"\nworker's priced usage INSERT (own transaction, table at {plan.rows:,} rows):"
            f" median {median:.2f} ms, p95 {p95:.2f} ms"
        )
        engine.dispose()
    if failures:
        print(f"\nFAIL: sequential scan of token_usage in: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
