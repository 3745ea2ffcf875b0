"""SQL at scale: every docs/sql.md query and the ``ezq usage`` report on a million rows.

Seeds a throwaway database with one million usage rows (and their jobs, attempts and
conversations) over 90 days, 50 tenants and 8 models, rolls up the ``feature`` tag, fills
the rollups, runs VACUUM ANALYZE, then times each query side by side with its baseline: the
query as it was before the rollups (benchmarks/sql_before.md, over the views as they were;
the report reading every ``token_usage`` row), and prints how the new plan reads its
tables. Then it times the worker's usage INSERT with the rollup triggers off, with the
daily and conversation rollups only (before the tag rollup) and with the tag rollup too,
alone and from concurrent writers on one hot (day, tenant, model) key, and the trigger
that gives each ``job_attempts`` row its job's model. Exits 1 when a documented query or
the report reads the whole of a big table (a Seq Scan of ``token_usage``, ``jobs``,
``job_attempts`` or ``conversations``), or answers slower than its budget (median).

    python -m benchmarks.sql_usage [--rows 1000000] [--repeat 5] [--budget-ms 100]
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
from service.usage.report import ReportQuery, report_statement, source_for
from service.usage.synthetic import SeedPlan, seed_usage

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# No documented query nor the report may read the whole of one of these.
BULK_TABLES = ("conversations", "jobs", "job_attempts", "token_usage")
# The tag key the benchmark rolls up (usage_rollup_tag_keys), as the docs' queries use.
ROLLED_UP_TAG = "feature"
SCANS = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan")


BASELINE_DOC = Path(__file__).with_name("sql_before.md")
ROLLUP_MIGRATION = Path(__file__).resolve().parent.parent / "migrations/versions/0012_rollups.py"
# Added with the rollups: the baseline runs with it dropped (in a rolled-back transaction).
NEW_TOKEN_USAGE_INDEXES = ("ix_token_usage_issues",)
BAR_MS = 100.0
# A case outside docs/sql.md and the report, shown for comparison only (no budget).
EXTRA_CASES = ("tag filter: feature = extract, all time",)


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
        "report: 90 days by month, tag:feature": ReportQuery(
            today - timedelta(days=89), today, by=("month", "tag:feature")
        ),
        "report: one tenant, 30 days by tag:feature": ReportQuery(
            today - timedelta(days=29), today, by=("tag:feature",), tenants=("tenant-007",)
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
        source = source_for(query, frozenset({ROLLED_UP_TAG}))
        after = report_statement(query, source).compile(dialect=dialect, compile_kwargs=literal)
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
    """How the plan reads each table, and whether it scans a big table sequentially."""
    raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}").scalar_one()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    paths, seq_scan = [], False
    for node in _nodes(plan):
        relation = node.get("Relation Name")
        if node["Node Type"] not in SCANS or (relation is None and "Index Name" not in node):
            continue
        where = node.get("Index Name") or relation
        paths.append(f"{node['Node Type']} {where}")
        seq_scan |= node["Node Type"] == "Seq Scan" and relation in BULK_TABLES
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


# The rollup triggers on token_usage's insert, in three states: none of them, those of
# migration 0012 (the daily and conversation rollups: before the tag rollup), and all.
ROLLUP_TRIGGERS = {"daily": "usage_rollup_insert", "tags": "usage_rollup_tags_insert"}
STATES: dict[str, tuple[str, ...]] = {
    "no rollup": (),
    "daily rollups (before)": ("daily",),
    "daily + tag rollup (after)": ("daily", "tags"),
}


def set_rollup_triggers(engine: Engine, on: tuple[str, ...]) -> None:
    with engine.begin() as conn:
        for name, trigger in ROLLUP_TRIGGERS.items():
            verb = "ENABLE" if name in on else "DISABLE"
            conn.exec_driver_sql(f"ALTER TABLE token_usage {verb} TRIGGER {trigger}")


def _p95(times: list[float]) -> float:
    return sorted(times)[int(len(times) * 0.95)]


def time_worker_inserts(engine: Engine, count: int, rounds: int = 5) -> dict[str, list[float]]:
    """ms per usage INSERT (own transaction) in each trigger state, in alternating rounds of
    ``count`` each."""
    slots = usage_slots(engine, len(STATES) * count * rounds, 0)
    times: dict[str, list[float]] = {state: [] for state in STATES}
    base = 0
    for _ in range(rounds):
        for state, on in STATES.items():
            set_rollup_triggers(engine, on)
            times[state] += [insert_usage(engine, s, None) for s in slots[base : base + count]]
            base += count
    set_rollup_triggers(engine, tuple(ROLLUP_TRIGGERS))
    return times


_EXPLAIN_INSERT = text(
    "EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO token_usage (job_id, conversation_id, model,"
    " tenant, metadata, prompt_tokens, cached_tokens, uncached_prompt_tokens,"
    " completion_tokens, total_tokens, raw_usage, cost_usd, price_id)"
    """ VALUES (:j, :c, :m, :t, '{"feature": "bench"}', 2171, 2048, 123, 300, 2471, '{}',"""
    " 0.0123, NULL)"
)
_EXPLAIN_ATTEMPT = text(
    "EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO job_attempts (job_id, attempt, started_at)"
    " VALUES (:j, 100, now())"
)


def _explained(conn: Connection, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
    raw = conn.execute(statement, params).scalar_one()
    result: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    return result


def trigger_times(engine: Engine, slots: list[Any]) -> dict[str, float]:
    """Server-side medians in ms, from EXPLAIN ANALYZE of single-row INSERTs (one
    transaction each): on token_usage the daily and the tag rollup triggers, the foreign-key
    checks and the whole INSERT; on job_attempts (rolled back) the trigger that sets its
    model, and the whole INSERT."""
    found: dict[str, list[float]] = {
        "daily rollup trigger": [],
        "tag rollup trigger (1 key)": [],
        "usage foreign keys": [],
        "usage insert": [],
        "attempt model trigger": [],
        "attempt insert": [],
    }
    for job_id, conversation_id, model, tenant in slots:
        with engine.begin() as conn:
            result = _explained(
                conn, _EXPLAIN_INSERT, {"j": job_id, "c": conversation_id, "m": model, "t": tenant}
            )
        triggers = result.get("Triggers", [])
        for key, name in (
            ("daily rollup trigger", "usage_rollup_insert"),
            ("tag rollup trigger (1 key)", "usage_rollup_tags_insert"),
        ):
            found[key].append(sum(t["Time"] for t in triggers if t["Trigger Name"] == name))
        found["usage foreign keys"].append(
            sum(t["Time"] for t in triggers if "Constraint Name" in t)
        )
        found["usage insert"].append(result["Execution Time"])
        with engine.connect() as conn, conn.begin() as tx:
            result = _explained(conn, _EXPLAIN_ATTEMPT, {"j": job_id})
            tx.rollback()
        triggers = result.get("Triggers", [])
        found["attempt model trigger"].append(
            sum(t["Time"] for t in triggers if t["Trigger Name"] == "job_attempts_model")
        )
        found["attempt insert"].append(result["Execution Time"])
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


def run_cases(engine: Engine, cases: list[Case], repeat: int, budget_ms: float) -> list[str]:
    """Times the cases; returns what fails: a Seq Scan of a big table or over budget."""
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
            flag = "  <-- SEQ SCAN of a big table" if seq_scan else ""
            over = f"  <-- over {budget_ms:.0f} ms" if after > budget_ms else ""
            before_text = f"{before:9.1f}" if before is not None else f"{'-':>9}"
            print(
                f"{case.name:<{width}}  {before_text}  {after:8.1f}  {ratio}"
                f"  {got['rows']['after']:5}  {'; '.join(paths)}{flag}{over}"
            )
            if got["rows"].get("before", got["rows"]["after"]) != got["rows"]["after"]:
                print(f"{'':<{width}}  (rows before: {got['rows']['before']})")
            if case.name in EXTRA_CASES:
                continue
            if seq_scan:
                failures.append(f"{case.name} (seq scan)")
            if after > budget_ms:
                failures.append(f"{case.name} ({after:.0f} ms)")
    return failures


def run_inserts(engine: Engine, rows: int) -> None:
    times = time_worker_inserts(engine, 200)
    print(
        f"\nworker's priced usage INSERT, own transaction, table at {rows:,} rows"
        f" ({len(times['no rollup'])} each, alternating rounds):"
    )
    for state, got in times.items():
        print(f"  {state:<28} median {statistics.median(got):.2f} ms  p95 {_p95(got):.2f}")
    server = trigger_times(engine, usage_slots(engine, 500, 3000))
    print(
        "server side, EXPLAIN ANALYZE of 500 single-row usage and attempt INSERTs (medians): "
        + ", ".join(f"{name} {ms * 1000:.0f} us" for name, ms in server.items())
    )
    writers, per_writer, hold_s = 16, 40, 0.005
    count = writers * per_writer
    slots = usage_slots(engine, len(STATES) * count, 3500)
    print(
        f"{writers} concurrent writers on one (day, tenant, model) key, each transaction held"
        f" {hold_s * 1000:.0f} ms after its insert ({count} rows each way):"
    )
    for i, (state, on) in enumerate(STATES.items()):
        set_rollup_triggers(engine, on)
        tenant = f"bench-hot-{i}"
        rate, p95 = concurrent_inserts(
            engine, slots[i * count : (i + 1) * count], writers, hold_s, tenant
        )
        print(f"  {state:<28} {rate:7.1f} rows/s, p95 {p95:.1f} ms")
    set_rollup_triggers(engine, tuple(ROLLUP_TRIGGERS))
    with engine.connect() as conn:
        key_rows, exact, tags_exact = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM usage_rollup_daily WHERE tenant = :t),"
                " (SELECT ROW(sum(jobs), sum(total_tokens), sum(cost_usd))"
                "  FROM usage_rollup_daily WHERE tenant = :t)::text"
                " = (SELECT ROW(count(*), sum(total_tokens), sum(cost_usd))"
                "    FROM token_usage WHERE tenant = :t)::text,"
                " (SELECT ROW(sum(jobs), sum(total_tokens), sum(cost_usd))"
                "  FROM usage_rollup_tags WHERE tenant = :t AND tag_key = :k)::text"
                " = (SELECT ROW(count(*), sum(total_tokens), sum(cost_usd))"
                "    FROM token_usage WHERE tenant = :t)::text"
            ),
            {"t": f"bench-hot-{len(STATES) - 1}", "k": ROLLED_UP_TAG},
        ).one()
    print(
        f"  with both: {key_rows} daily rollup rows for the hot key; equal to token_usage:"
        f" {exact}; tag rollup equal: {tags_exact}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budget-ms", type=float, default=BAR_MS)
    args = parser.parse_args(argv)

    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with throwaway_database(ADMIN_DSN, prefix="ezq_bench_sql") as url:
        engine = create_engine(url)
        plan = SeedPlan(rows=args.rows)
        started = time.perf_counter()
        with engine.begin() as conn:  # the table is empty: nothing to fill yet
            conn.execute(text("SELECT usage_rollup_tag_add(:k)"), {"k": ROLLED_UP_TAG})
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
                " pg_size_pretty(pg_total_relation_size('usage_rollup_conversations')),"
                " (SELECT count(*) FROM usage_rollup_tags),"
                " pg_size_pretty(pg_total_relation_size('usage_rollup_tags'))"
            ).one()
        print(
            f"seeded {plan.rows:,} usage rows ({plan.days} days, {plan.tenants} tenants,"
            f" {len(plan.models)} models) in {seeded:.1f}s, rollups rebuilt in {rebuilt:.1f}s;"
            f" token_usage {sizes[0]}, its indexes {sizes[1]} (utc_day covering index"
            f" {sizes[2]}); usage_rollup_daily {sizes[3]:,} rows {sizes[4]},"
            f" usage_rollup_conversations {sizes[5]:,} rows {sizes[6]},"
            f" usage_rollup_tags ({ROLLED_UP_TAG!r}) {sizes[7]:,} rows {sizes[8]}"
        )
        failures = run_cases(engine, doc_cases() + report_cases(), args.repeat, args.budget_ms)
        run_inserts(engine, plan.rows)
        engine.dispose()
    if failures:
        print(f"\nFAIL: {'; '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
