"""A worker's own threads have connections of their own beside its job threads' share: the
sweep holds one for its advisory lock while its transactions take another, so a pool sized
for the job threads alone (one connection at concurrency 1) stalled the sweep, and every
job of the process with it, for the pool's timeout (30 s) at each of its turns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from service import enqueue_completion
from tests.conftest import wait_for_job
from tests.test_faults import wait_until

MODEL = "deepseek-v4-flash"
# Well under the pool's 30 s timeout, which a stalled sweep waits out before its next turn.
WITHIN_S = 15.0


def test_a_worker_of_concurrency_one_sweeps_and_runs_jobs_without_stalling(
    own_database_settings: tuple[str, Engine],
    own_queue: str,
    fake_gateway: Any,
    worker_factory: Callable[..., Any],
) -> None:
    url, engine = own_database_settings
    # The only worker on this database: every sweep turn (each second) is its own.
    worker = worker_factory(
        env={"DATABASE_URL": url, "EZQ_QUEUE": own_queue, "EZQ_SWEEP_INTERVAL": "1"},
        args=["--concurrency", "1"],
    )
    turns: set[datetime] = set()

    def three_sweep_turns() -> bool:
        with engine.connect() as conn:
            turns.update(
                conn.execute(
                    text(
                        "SELECT last_run_at FROM sweep_runs"
                        " WHERE name = 'sweep' AND last_worker IS NOT NULL"
                    )
                ).scalars()
            )
        return len(turns) >= 3

    wait_until(three_sweep_turns, "three sweep turns", timeout=WITHIN_S)
    jobs = [
        enqueue_completion(MODEL, [{"role": "user", "content": f"between sweeps {i}"}])
        for i in range(3)
    ]
    assert [wait_for_job(job, timeout=WITHIN_S)["status"] for job in jobs] == ["succeeded"] * 3
    assert "database unavailable" not in worker.log()
