"""A job's record and a foreign first turn's claim with many calls in flight, on a jobs
table whose statistics were taken at a quiet moment, now and as they were before
(``service.db.row_checks``; the running calls counted only when something else is
ranked), side by side.

A throwaway database gets ``--history`` finished jobs and is analyzed (no job running),
then ``--running`` jobs are claimed: the state of a worker at ``--running`` calls in
flight whose tables were last analyzed when it was idle. Each variant runs on a
connection of its own, its statements prepared as the worker's are and run past the
sixth time (the plan Postgres keeps), then timed in alternating rounds: the wall time
per run and the CPU its Postgres backend spent (``/proc``; the server runs on this
machine). Each record and claim runs in a transaction rolled back, so the table stays as
it was; the wall time includes the rollback and the Python around the statement.

    python -m benchmarks.row_plans [--history 20000] [--running 1000] [--rounds 10] [--runs 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.history import analyzed_history
from benchmarks.procstat import cpu_seconds

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

NOW = "now (state on the row)"
BEFORE = "before (state in WHERE)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=20000, help="finished jobs")
    parser.add_argument("--running", type=int, default=1000, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200, help="statements per round")
    args = parser.parse_args()

    from service.db.migrate import throwaway_database

    with throwaway_database(ADMIN_DSN, prefix="ezq_bench_rows") as url:
        os.environ.update(DATABASE_URL=url, EZROUTER_API_KEY="sk-bench")
        measure(args.history, args.running, args.rounds, args.runs)


def _before(statement: Any) -> Any:
    """``statement`` as it was written before: the job's state checked with its id, the
    running calls counted at every ranking."""
    sql = statement.sql.replace("(status = 'running') IS TRUE", "status = 'running'")
    sql = re.sub(r" AND EXISTS \(SELECT 1 FROM heads h WHERE h\.id <> \$\d+\)", "", sql)
    return dataclasses.replace(statement, sql=sql)


def _prepare(history: int, running: int) -> list[Any]:
    """The history, analyzed, then ``running`` claimed jobs; returns their claims."""
    from service.db import attempts, queries
    from service.db.session import autocommit
    from service.validation import validate_request

    with autocommit() as conn:
        analyzed_history(conn, history)
        claims = []
        for i in range(running):
            request = validate_request(
                model="glm-5.1", messages=[{"role": "user", "content": f"job {i}"}]
            )
            job_id = queries.create_first_turn(conn, request, uuid.uuid4())
            assert job_id is not None
            claim = attempts.claim_job(conn, job_id, lease_seconds=3600, holder="bench")
            assert isinstance(claim, attempts.Claimed)
            claims.append(claim)
    return claims


def measure(history: int, running: int, rounds: int, runs: int) -> None:
    from service.db import attempts, flow, queries
    from service.db.session import dispose_engines, get_engine
    from service.validation import validate_request

    claims = _prepare(history, running)
    success = attempts._SUCCESS[True]
    first_turn = flow._FIRST_TURN_STATEMENTS[True]
    statements = {
        NOW: (success, first_turn),
        BEFORE: (_before(success), _before(first_turn)),
    }
    record_before, claim_before = statements[BEFORE]
    assert record_before.sql != success.sql and claim_before.sql != first_turn.sql
    engine = get_engine()
    conns = {name: engine.connect() for name in statements}
    call = attempts.CallOutcome(http_status=200, request_id="r", surface="openai")
    usage: dict[str, Any] = {name: 1 for name in attempts.USAGE_COLUMNS}
    usage.update(raw_usage={"prompt_tokens": 1}, usage_issues=None)
    request = validate_request(model="glm-5.1", messages=[{"role": "user", "content": "hi"}])
    turn = itertools.count()

    def using(name: str) -> tuple[Any, Any]:
        """The variant's connection, in a transaction of its own, and its statements."""
        record_sql, claim_sql = statements[name]
        attempts._SUCCESS[True], flow._FIRST_TURN_STATEMENTS[True] = record_sql, claim_sql
        return conns[name], conns[name].begin()

    def done(transaction: Any) -> None:
        transaction.rollback()
        attempts._SUCCESS[True], flow._FIRST_TURN_STATEMENTS[True] = success, first_turn

    def record(name: str) -> None:
        conn, transaction = using(name)
        try:
            ended = attempts.record_success(
                conn,
                claims[next(turn) % len(claims)],
                call,
                finish_reason="stop",
                reply={"role": "assistant", "content": "done"},
                usage=usage,
            )
            assert ended.job is not None and ended.job.status == "succeeded"
        finally:
            done(transaction)

    def claim(name: str) -> None:
        conn, transaction = using(name)
        try:
            job_id = uuid.uuid4()
            ranking = flow.ranking(
                conn,
                job_id,
                aging_s=60,
                limit=4,
                claim=flow.Lease(60.0, "bench"),
                first=queries.first_turn_values(request, job_id),
            )
            assert ranking.claim_row is not None, "the first turn was not claimed"
        finally:
            done(transaction)

    try:
        for name in statements:
            for _ in range(8):  # past the sixth run: the plan Postgres keeps
                record(name)
                claim(name)
        print(
            f"\nA job's record, {running} calls in flight, {history} finished jobs,"
            " statistics taken with none running (ms per record)"
        )
        _compare(conns, record, rounds, runs)
        print("A foreign first turn's claim (written claimed), the same table (ms per claim)")
        _compare(conns, claim, rounds, runs)
    finally:
        for conn in conns.values():
            conn.close()
        dispose_engines()


def _compare(conns: dict[str, Any], run: Callable[[str], Any], rounds: int, runs: int) -> None:
    """Alternating rounds of ``runs`` each: wall time per run (the statement, its rollback
    and the Python around them) and the CPU of the variant's Postgres backend per run."""
    pids = {
        name: int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        for name, conn in conns.items()
    }
    for conn in conns.values():
        conn.rollback()
    wall: dict[str, list[float]] = {name: [] for name in conns}
    backend: dict[str, list[float]] = {name: [] for name in conns}
    for _ in range(rounds):
        for name in conns:
            cpu, start = cpu_seconds(pids[name]), time.perf_counter()
            for _ in range(runs):
                run(name)
            wall[name].append((time.perf_counter() - start) / runs * 1e3)
            backend[name].append((cpu_seconds(pids[name]) - cpu) / runs * 1e3)
    for name in conns:
        print(
            f"  {name:<24} wall median {statistics.median(wall[name]):5.2f} ms,"
            f" Postgres CPU median {statistics.median(backend[name]):5.3f} ms"
        )
    now, before = (statistics.median(backend[name]) for name in conns)
    print(f"  Postgres CPU now / before {now / before:.2f}")


if __name__ == "__main__":
    main()
