"""A claim's ranking under a backlog, on a jobs table whose statistics were taken when
nothing waited, now and as it was before migration 0019 and the heads fetched one by one
(``service.db.flow``), side by side.

Two throwaway databases get the same ``--history`` finished jobs and are analyzed (no job
waiting), then ``--backlog`` queued jobs over ``--tenants`` tenants: a backlog that
formed after the last ANALYZE, as one does in a big table (autovacuum analyzes it again
after a tenth of its rows changed). One database is at head, the other at revision 0018
(``ix_jobs_pending_dispatch`` over every pending job), ranked there with the statement as
it was (the heads fetched by an array of ids, their state checked in the ``WHERE``). Each
variant runs on a connection of its own, its statement prepared as the worker's is and
run past the sixth time (the plan Postgres keeps), then timed in alternating rounds: the
ranking of a waiting job (its best rivals, nothing claimed), wall time and the CPU of its
Postgres backend (``/proc``; the server runs on this machine), and the rows of ``jobs``
each ranking read.

    python -m benchmarks.backlog_ranking [--history 20000] [--backlog 2000] [--tenants 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from contextlib import ExitStack
from typing import Any

from benchmarks.history import analyzed_history
from benchmarks.procstat import cpu_seconds

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

NOW = "now (0019, heads by key)"
BEFORE = "before (0018, by array)"

# The candidates as the ranking fetched them before (in place of ``flow._HEADS_BY_KEY``):
# by an array of the heads' ids, their state checked in the same WHERE.
_HEADS_BEFORE = """FROM jobs j
        LEFT JOIN running r ON r.tenant IS NOT DISTINCT FROM j.tenant
        WHERE :rank AND j.id = ANY(ARRAY(SELECT id FROM heads)) AND j.status IN ('queued', 'retrying')
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=20000, help="finished jobs")
    parser.add_argument("--backlog", type=int, default=2000, help="queued jobs")
    parser.add_argument("--tenants", type=int, default=4, help="tenants the backlog is of")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50, help="rankings per round")
    args = parser.parse_args()

    from service.db.migrate import downgrade, throwaway_database

    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(throwaway_database(ADMIN_DSN, prefix="ezq_bench_backlog"))
            for name in (NOW, BEFORE)
        }
        downgrade("0018", urls[BEFORE])
        os.environ.update(EZROUTER_API_KEY="sk-bench")
        measure(urls, args.history, args.backlog, args.tenants, args.rounds, args.runs)


def _statement(name: str) -> Any:
    from sqlalchemy import text

    from service.db import flow
    from service.db.driver import DriverStatement

    sql = flow._RANKING
    if name == BEFORE:
        assert flow._HEADS_BY_KEY in sql
        sql = sql.replace(flow._HEADS_BY_KEY, _HEADS_BEFORE)
    return DriverStatement.of(text(sql.replace(":rank", "true")))


def _prepare(url: str, history: int, backlog: int, tenants: int) -> list[uuid.UUID]:
    """The history, analyzed, then the backlog; returns the queued jobs' ids."""
    from service.db import queries
    from service.db.session import autocommit
    from service.validation import validate_request

    with autocommit(url) as conn:
        analyzed_history(conn, history)
        queued = []
        for i in range(backlog):
            request = validate_request(
                model="glm-5.1",
                messages=[{"role": "user", "content": f"job {i}"}],
                tenant=f"tenant-{i % tenants}",
            )
            job_id = queries.create_first_turn(conn, request, uuid.uuid4())
            assert job_id is not None
            queued.append(job_id)
    return queued


def _jobs_read(conn: Any) -> int:
    # Within the connection's transaction: Postgres adds earlier transactions' reads to
    # these counts until it reports them.
    return int(
        conn.exec_driver_sql(
            "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables"
            " WHERE relname = 'jobs'"
        ).scalar_one()
    )


def measure(
    urls: dict[str, str], history: int, backlog: int, tenants: int, rounds: int, runs: int
) -> None:
    from service.db import flow
    from service.db.session import dispose_engines, get_engine

    queued = {name: _prepare(url, history, backlog, tenants) for name, url in urls.items()}
    statements = {name: _statement(name) for name in urls}
    ranking = flow._RANKING_STATEMENTS[True]
    conns = {name: get_engine(url).connect() for name, url in urls.items()}
    pids = {
        name: int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        for name, conn in conns.items()
    }

    def rank(name: str, i: int) -> None:
        flow._RANKING_STATEMENTS[True] = statements[name]
        try:
            # A waiting job from the backlog's middle: it is ranked against the best.
            job_id = queued[name][backlog // 2 + i % (backlog // 2)]
            result = flow.ranking(conns[name], job_id, aging_s=60, limit=4)
            assert result.own is not None and len(result.candidates) == 4
        finally:
            flow._RANKING_STATEMENTS[True] = ranking

    try:
        for name in urls:
            for i in range(8):  # past the sixth run: the plan Postgres keeps
                rank(name, i)
            conns[name].rollback()
        read: dict[str, float] = {}
        for name in urls:
            with conns[name].begin():
                before = _jobs_read(conns[name])
                for i in range(10):
                    rank(name, i)
                read[name] = (_jobs_read(conns[name]) - before) / 10
        wall: dict[str, list[float]] = {name: [] for name in urls}
        cpu: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(rounds):
            for name in urls:
                with conns[name].begin():
                    used, start = cpu_seconds(pids[name]), time.perf_counter()
                    for i in range(runs):
                        rank(name, i)
                    wall[name].append((time.perf_counter() - start) / runs * 1e3)
                    cpu[name].append((cpu_seconds(pids[name]) - used) / runs * 1e3)
        print(
            f"\nA claim's ranking, {backlog} jobs queued over {tenants} tenants after the"
            f" statistics were taken ({history} finished jobs, none waiting)"
        )
        for name in urls:
            print(
                f"  {name:<26} wall median {statistics.median(wall[name]):6.2f} ms,"
                f" Postgres CPU median {statistics.median(cpu[name]):6.3f} ms,"
                f" rows of jobs read {read[name]:7.0f}"
            )
        now, before = (statistics.median(cpu[name]) for name in (NOW, BEFORE))
        print(f"  Postgres CPU now / before {now / before:.3f}")
    finally:
        for conn in conns.values():
            conn.close()
        dispose_engines()


if __name__ == "__main__":
    main()
