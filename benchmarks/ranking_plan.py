"""The claim's ranking on a jobs table that grew after its plan was made, with and without
the index probe kept for the check of a conversation's earlier turns
(``service.db.turn_order``), side by side.

The worker's hot statements are prepared; Postgres keeps a prepared statement's plan from
its sixth run until the table is next analyzed. On a new database that plan is made from a
table of a few jobs. Here each variant runs on a connection of its own: prepared and run on
a table of one job, then, after ``--jobs`` queued first turns were added, timed in
alternating rounds; then again after an ANALYZE (the plans each variant settles on).

Then the claim of a message whose sender waits for its result (a foreign producer's first
turn, ranking nothing else): written claimed by its ranking's statement (now) against its
insert followed by the ranking that claimed it with ``ezq_claim_job`` in one round trip
(before), each on a connection of its own, in alternating rounds, with how many of the
statement's runs Postgres planned anew (``pg_prepared_statements.custom_plans``: ``rank``
is written into the statement so that its shape does not depend on its values).

    python -m benchmarks.ranking_plan [--jobs 5000] [--rounds 10] [--runs 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50, help="rankings per round")
    args = parser.parse_args()

    from service.db.migrate import throwaway_database

    with throwaway_database(ADMIN_DSN, prefix="ezq_bench_rank") as url:
        os.environ.update(DATABASE_URL=url, EZROUTER_API_KEY="sk-bench")
        measure(args.jobs, args.rounds, args.runs)
        measure_first_turn_claim(args.rounds, args.runs)


def _create(count: int) -> list[uuid.UUID]:
    from service.db import queries
    from service.db.session import autocommit
    from service.validation import validate_request

    with autocommit() as conn:
        return [
            queries.create_first_turn(
                conn,
                validate_request(
                    model="glm-5.1", messages=[{"role": "user", "content": f"job {i}"}]
                ),
                uuid.uuid4(),
            )
            or uuid.uuid4()
            for i in range(count)
        ]


def measure(jobs: int, rounds: int, runs: int) -> None:
    from service.db import flow
    from service.db.session import dispose_engines, get_engine

    with_probe = flow._RANKING_STATEMENTS[True]
    without = dataclasses.replace(with_probe, sql=with_probe.sql.replace("OFFSET 0", ""))
    assert without.sql != with_probe.sql
    variants = {"index probe (now)": with_probe, "anti-join (before)": without}
    engine = get_engine()
    conns = {name: engine.connect() for name in variants}
    try:
        for conn in conns.values():
            conn.execution_options(isolation_level="AUTOCOMMIT")

        def rank(name: str, job_id: uuid.UUID) -> Any:
            flow._RANKING_STATEMENTS[True] = variants[name]
            try:
                return flow.ranking(conns[name], job_id, aging_s=60, limit=4)
            finally:
                flow._RANKING_STATEMENTS[True] = with_probe

        (first,) = _create(1)
        for name in variants:
            for _ in range(8):  # past the sixth run: the plan Postgres keeps
                rank(name, first)
        last = _create(jobs)[-1]
        print(f"\nThe claim's ranking, {jobs} queued jobs, plans made at 1 job (ms per ranking)")
        _compare(variants, lambda name: rank(name, last), rounds, runs)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE jobs")
        print("The same after ANALYZE (each re-planned from the table's statistics)")
        _compare(variants, lambda name: rank(name, last), rounds, runs)
    finally:
        for conn in conns.values():
            conn.close()
        dispose_engines()


# The first turn's insert and the ranking that claimed it by ``ezq_claim_job``, as a
# foreign message's claim ran them before its ranking wrote the job claimed itself: two
# statements in one round trip (psycopg's pipeline) and one transaction.
_INSERT_THEN_CLAIM = "baseline: insert, then ranking + ezq_claim_job (before)"
_WRITTEN_CLAIMED = "first turn written claimed by its ranking (now)"


def measure_first_turn_claim(rounds: int, runs: int) -> None:
    import psycopg
    from psycopg.rows import namedtuple_row
    from sqlalchemy import text

    from service.db import driver, flow, queries
    from service.db.session import dispose_engines, get_engine
    from service.validation import validate_request

    insert = driver.DriverStatement.of(
        text(queries._CREATE_NEW_SQL.replace("ON CONFLICT DO NOTHING", "")),
        json=queries.FIRST_TURN_JSON,
    )
    engine = get_engine()
    conns = {name: engine.connect() for name in (_WRITTEN_CLAIMED, _INSERT_THEN_CLAIM)}
    request = validate_request(model="glm-5.1", messages=[{"role": "user", "content": "hi"}])
    lease = flow.Lease(60.0, "bench")

    def insert_then_claim(conn: Any, job_id: uuid.UUID) -> Any:
        values = queries.first_turn_values(request, job_id)
        ranking = flow._RANKING_STATEMENTS[False]
        params = {
            **values,
            "aging": 60.0,
            "limit": 4,
            "claim": True,
            "lease_seconds": lease.seconds,
            "holder": lease.holder,
        }
        raw = conn.connection.driver_connection
        cursors = [psycopg.RawCursor(raw, row_factory=namedtuple_row) for _ in range(2)]
        with raw.pipeline():
            for cursor, statement in zip(cursors, (insert, ranking), strict=True):
                cursor.execute(statement.query, driver._values(statement, params), prepare=True)
        return cursors[1].fetchall()[-1]

    def claim(name: str) -> None:
        """A first turn written and claimed, as a foreign producer's message is; then
        ended, so that the queue stays as it was."""
        job_id = uuid.uuid4()
        if name == _WRITTEN_CLAIMED:
            ranking = flow.ranking(
                conns[name],
                job_id,
                aging_s=60.0,
                limit=4,
                rank=False,
                claim=lease,
                first=queries.first_turn_values(request, job_id),
            )
            row = ranking.claim_row
        else:
            row = insert_then_claim(conns[name], job_id)
        assert row is not None and row.attempt == 1, "the job was not claimed"
        conns[name].exec_driver_sql(
            "UPDATE jobs SET status = 'succeeded', finished_at = now(),"
            " lease_expires_at = NULL WHERE id = %(id)s",
            {"id": job_id},
        )

    try:
        for conn in conns.values():
            conn.execution_options(isolation_level="AUTOCOMMIT")
        print(
            "\nA foreign first turn written and claimed (its sender waits for the result:"
            " nothing else ranked; ms per claim)"
        )
        _compare(conns, claim, rounds, runs)
        planned = (
            conns[_WRITTEN_CLAIMED]
            .exec_driver_sql(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%%WITH RECURSIVE tenants%%'"
            )
            .one()
        )
        print(
            f"  now: runs on a plan kept {planned.generic_plans}, planned anew"
            f" {planned.custom_plans}"
        )
    finally:
        for conn in conns.values():
            conn.close()
        dispose_engines()


def _compare(variants: dict[str, Any], run: Callable[[str], Any], rounds: int, runs: int) -> None:
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            start = time.perf_counter()
            for _ in range(runs):
                run(name)
            per_round[name].append((time.perf_counter() - start) / runs * 1e3)
    medians = {name: statistics.median(values) for name, values in per_round.items()}
    for name, value in medians.items():
        print(
            f"  {name:<26} median {value:7.2f} ms   rounds {min(per_round[name]):.2f}"
            f" to {max(per_round[name]):.2f}"
        )
    now, before = medians.values()
    print(f"  ratio now / before {now / before:.2f}")


if __name__ == "__main__":
    main()
