"""SQL at scale: every docs/sql.md query and the ``ezq usage`` report on a million rows.

Seeds a throwaway database with one million usage rows (and their jobs, attempts and
conversations) over 90 days, 50 tenants and 8 models, fills the rollups, runs VACUUM
ANALYZE, then times each query side by side with its baseline: the query as it was before
the rollups (benchmarks/sql_before.md, over the views as they were; the report reading
every ``token_usage`` row), and prints how the new plan reads its tables. Then it times the
worker's usage INSERT with the rollup trigger on and off, alone and from concurrent writers
on one hot (day, tenant, model) key. Exits 1 when a query that must stay index-backed scans
the whole of ``token_usage``.

    python -m benchmarks.sql_usage [--rows 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
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


BASELINE_DOC = Path(__file__).with_name("sql_before.md")
ROLLUP_MIGRATION = Path(__file__).resolve().parent.parent / "migrations/versions/0012_rollups.py"
# Added with the rollups: the baseline runs with it dropped (in a rolled-back transaction).
NEW_TOKEN_USAGE_INDEXES = ("ix_token_usage_issues",)
BAR_MS = 100.0


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    sql: str
    before: str | None = None  # the baseline query, run over the baseline views


def rollup_migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_ezq_0012", ROLLUP_MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def create_baseline_views(conn: Connection) -> None:
    """Schema ``before``: the usage views as they were before the rollups."""
    conn.exec_driver_sql("CREATE SCHEMA before")
    for name, body in rollup_migration().previous_views().items():
        conn.exec_driver_sql(f"CREATE VIEW before.{name} AS {body}")


def doc_cases() -> list[Case]:
    before = {q.name: q.sql for q in read_queries(BASELINE_DOC)}
    return [Case(q.name, q.sql, before.get(q.name)) for q in read_queries()]


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
    dialect = create_engine("postgresql+psycopg://").dialect
    literal = {"literal_binds": True, "render_postcompile": True}
    for name, query in queries.items():
        after = report_statement(query).compile(dialect=dialect, compile_kwargs=literal)
        before = report_statement(query, "rows").compile(dialect=dialect, compile_kwargs=literal)
        cases.append(Case(name, str(after), str(before)))
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


def _once(conn: Connection, sql: str) -> tuple[float, int]:
    start = time.perf_counter()
    rows = len(conn.exec_driver_sql(sql).all())
    return (time.perf_counter() - start) * 1000, rows


@contextmanager
def baseline(conn: Connection) -> Iterator[None]:
    """The schema as it was before the rollups, in a transaction that is rolled back."""
    with conn.begin() as tx:
        for name in NEW_TOKEN_USAGE_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("SET LOCAL search_path = before, public")
        yield
        tx.rollback()


def timed_side_by_side(conn: Connection, case: Case, repeat: int) -> dict[str, Any]:
    """Medians in ms of the baseline and the new query, runs interleaved (after one warm-up
    each) so that both see the same machine, and the row counts."""
    before: list[float] = []
    after: list[float] = []
    rows = {}
    for i in range(repeat + 1):
        if case.before is not None:
            with baseline(conn):
                ms, rows["before"] = _once(conn, case.before)
            if i:
                before.append(ms)
        with conn.begin():
            ms, rows["after"] = _once(conn, case.sql)
        if i:
            after.append(ms)
    return {
        "before": statistics.median(before) if before else None,
        "after": statistics.median(after),
        "rows": rows,
    }


_USAGE = {"prompt_tokens": 2171, "prompt_tokens_details": {"cached_tokens": 2048}}
# Model of the concurrent writers' one hot rollup key (the tenant is per run).
HOT_MODEL = "claude-sonnet-4-6"


def usage_slots(engine: Engine, count: int, offset: int) -> list[Any]:
    """Failed jobs (they have no usage yet) to write usage rows for."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT id, conversation_id, model, tenant FROM jobs"
                    " WHERE status = 'failed' ORDER BY id OFFSET :o LIMIT :n"
                ),
                {"n": count, "o": offset},
            ).all()
        )


def insert_usage(engine: Engine, slot: Any, hot: str | None, hold_s: float = 0.0) -> float:
    """The worker's priced usage INSERT in its own transaction; ms. ``hold_s`` keeps the
    transaction open afterwards, as the rest of the worker's record transaction does."""
    job_id, conversation_id, model, tenant = slot
    start = time.perf_counter()
    with Session(engine) as session, session.begin():
        insert_priced_usage(
            session,
            job_id=job_id,
            conversation_id=conversation_id,
            model=HOT_MODEL if hot else model,
            tenant=hot or tenant,
            meta={"feature": "bench"},
            prompt_tokens=2171,
            cached_tokens=2048,
            uncached_prompt_tokens=123,
            completion_tokens=300,
            reasoning_tokens=None,
            total_tokens=2471,
            raw_usage=_USAGE,
            usage_issues=None,
        )
        if hold_s:
            session.execute(text("SELECT pg_sleep(:s)"), {"s": hold_s})
    return (time.perf_counter() - start) * 1000


def set_rollup_trigger(engine: Engine, on: bool) -> None:
    with engine.begin() as conn:
        verb = "ENABLE" if on else "DISABLE"
        conn.exec_driver_sql(f"ALTER TABLE token_usage {verb} TRIGGER usage_rollup_insert")


def _p95(times: list[float]) -> float:
    return sorted(times)[int(len(times) * 0.95)]


def time_worker_inserts(engine: Engine, count: int, rounds: int = 5) -> dict[bool, list[float]]:
    """ms per usage INSERT (own transaction) with the rollup trigger off and on, in
    alternating rounds of ``count`` each."""
    slots = usage_slots(engine, 2 * count * rounds, 0)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for on in (False, True):
            set_rollup_trigger(engine, on)
            base = (2 * r + on) * count
            times[on] += [insert_usage(engine, s, None) for s in slots[base : base + count]]
    set_rollup_trigger(engine, True)
    return times


_EXPLAIN_INSERT = text(
    "EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO token_usage (job_id, conversation_id, model,"
    " tenant, prompt_tokens, cached_tokens, uncached_prompt_tokens, completion_tokens,"
    " total_tokens, raw_usage, cost_usd, price_id)"
    " VALUES (:j, :c, :m, :t, 2171, 2048, 123, 300, 2471, '{}', 0.0123, NULL)"
)


def trigger_times(engine: Engine, slots: list[Any]) -> dict[str, float]:
    """Server-side medians in ms, from EXPLAIN ANALYZE of single-row usage INSERTs (one
    transaction each): the rollup trigger, the three foreign-key checks, the whole INSERT."""
    found: dict[str, list[float]] = {"rollup trigger": [], "foreign keys": [], "insert": []}
    for job_id, conversation_id, model, tenant in slots:
        with engine.begin() as conn:
            raw = conn.execute(
                _EXPLAIN_INSERT, {"j": job_id, "c": conversation_id, "m": model, "t": tenant}
            ).scalar_one()
        result = (json.loads(raw) if isinstance(raw, str) else raw)[0]
        triggers = result.get("Triggers", [])
        found["rollup trigger"].append(
            sum(t["Time"] for t in triggers if t["Trigger Name"] == "usage_rollup_insert")
        )
        found["foreign keys"].append(sum(t["Time"] for t in triggers if "Constraint Name" in t))
        found["insert"].append(result["Execution Time"])
    return {name: statistics.median(times) for name, times in found.items()}


def concurrent_inserts(
    engine: Engine, slots: list[Any], writers: int, hold_s: float, tenant: str
) -> tuple[float, float]:
    """Usage rows per second and p95 ms per transaction, ``writers`` threads writing to one
    (day, tenant, model) key, each transaction kept open ``hold_s`` after the insert."""
    times: list[float] = []
    lock = threading.Lock()

    def write(mine: list[Any]) -> None:
        got = [insert_usage(engine, slot, tenant, hold_s) for slot in mine]
        with lock:
            times.extend(got)

    threads = [threading.Thread(target=write, args=(slots[i::writers],)) for i in range(writers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(slots) / (time.perf_counter() - start), _p95(times)


def run_cases(engine: Engine, cases: list[Case], repeat: int) -> list[str]:
    failures = []
    width = max(len(case.name) for case in cases)
    print(
        f"\n{'query':<{width}}  {'before ms':>9}  {'after ms':>8}  {'ratio':>6}  {'rows':>5}"
        "  plan after"
    )
    with engine.connect() as conn:
        for case in cases:
            paths, seq_scan = access_paths(conn, case.sql)
            conn.rollback()
            got = timed_side_by_side(conn, case, repeat)
            before, after = got["before"], got["after"]
            ratio = f"{before / after:5.1f}x" if before else "     -"
            flag = "  <-- SEQ SCAN of token_usage" if seq_scan else ""
            over = "  <-- over 100 ms" if after > BAR_MS else ""
            before_text = f"{before:9.1f}" if before is not None else f"{'-':>9}"
            print(
                f"{case.name:<{width}}  {before_text}  {after:8.1f}  {ratio}"
                f"  {got['rows']['after']:5}  {'; '.join(paths)}{flag}{over}"
            )
            if got["rows"].get("before", got["rows"]["after"]) != got["rows"]["after"]:
                print(f"{'':<{width}}  (rows before: {got['rows']['before']})")
            if seq_scan and case.name in MUST_USE_INDEX:
                failures.append(case.name)
    return failures


def run_inserts(engine: Engine, rows: int) -> None:
    times = time_worker_inserts(engine, 200)
    off, on = times[False], times[True]
    print(
        f"\nworker's priced usage INSERT, own transaction, table at {rows:,} rows"
        f" ({len(on)} each, alternating rounds): trigger off median"
        f" {statistics.median(off):.2f} ms p95 {_p95(off):.2f};"
        f" trigger on median {statistics.median(on):.2f} ms p95 {_p95(on):.2f}"
    )
    server = trigger_times(engine, usage_slots(engine, 500, 2000))
    print(
        "server side, EXPLAIN ANALYZE of 500 single-row usage INSERTs (medians): "
        + ", ".join(f"{name} {ms * 1000:.0f} us" for name, ms in server.items())
    )
    writers, per_writer, hold_s = 16, 40, 0.005
    slots = usage_slots(engine, 2 * writers * per_writer, 2500)
    print(
        f"{writers} concurrent writers on one (day, tenant, model) key, each transaction held"
        f" {hold_s * 1000:.0f} ms after its insert ({writers * per_writer} rows each way):"
    )
    for on, part in ((False, slots[: writers * per_writer]), (True, slots[writers * per_writer :])):
        set_rollup_trigger(engine, on)
        tenant = f"bench-hot-{'on' if on else 'off'}"
        rate, p95 = concurrent_inserts(engine, part, writers, hold_s, tenant)
        print(f"  trigger {'on ' if on else 'off'}: {rate:7.1f} rows/s, p95 {p95:.1f} ms")
    set_rollup_trigger(engine, True)
    with engine.connect() as conn:
        key_rows, exact = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM usage_rollup_daily WHERE tenant = :t),"
                " (SELECT ROW(sum(jobs), sum(total_tokens), sum(cost_usd))"
                "  FROM usage_rollup_daily WHERE tenant = :t)::text"
                " = (SELECT ROW(count(*), sum(total_tokens), sum(cost_usd))"
                "    FROM token_usage WHERE tenant = :t)::text"
            ),
            {"t": "bench-hot-on"},
        ).one()
    print(f"  trigger on: {key_rows} rollup rows for the hot key; equal to token_usage: {exact}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    with throwaway_database(ADMIN_DSN, prefix="ezq_bench_sql") as url:
        engine = create_engine(url)
        plan = SeedPlan(rows=args.rows)
        started = time.perf_counter()
        with Session(engine) as session, session.begin(), bulk_load(session):
            seed_usage(session, plan)
        seeded = time.perf_counter() - started
        with engine.begin() as conn:
            # The bulk load ran without triggers, as a restore does: fill the rollups.
            conn.exec_driver_sql("SELECT usage_rollup_rebuild()")
            create_baseline_views(conn)
        rebuilt = time.perf_counter() - started - seeded
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
            sizes = conn.exec_driver_sql(
                "SELECT pg_size_pretty(pg_table_size('token_usage')),"
                " pg_size_pretty(pg_indexes_size('token_usage')),"
                " pg_size_pretty(pg_relation_size('ix_token_usage_utc_day')),"
                " (SELECT count(*) FROM usage_rollup_daily),"
                " pg_size_pretty(pg_total_relation_size('usage_rollup_daily')),"
                " (SELECT count(*) FROM usage_rollup_conversations),"
                " pg_size_pretty(pg_total_relation_size('usage_rollup_conversations'))"
            ).one()
        print(
            f"seeded {plan.rows:,} usage rows ({plan.days} days, {plan.tenants} tenants,"
            f" {len(plan.models)} models) in {seeded:.1f}s, rollups rebuilt in {rebuilt:.1f}s;"
            f" token_usage {sizes[0]}, its indexes {sizes[1]} (utc_day covering index"
            f" {sizes[2]}); usage_rollup_daily {sizes[3]:,} rows {sizes[4]},"
            f" usage_rollup_conversations {sizes[5]:,} rows {sizes[6]}"
        )
        failures = run_cases(engine, doc_cases() + report_cases(), args.repeat)
        run_inserts(engine, plan.rows)
        engine.dispose()
    if failures:
        print(f"\nFAIL: sequential scan of token_usage in: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
