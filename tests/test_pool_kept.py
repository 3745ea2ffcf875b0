"""A worker keeps the database connections it opens: under a steady load of more threads
than steady connections, the ones opened for the burst are not closed when handed back
(each new one is a new Postgres backend, which plans the hot statements afresh)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from service import enqueue_completion
from tests.conftest import wait_for_job

MODEL = "deepseek-v4-flash"
THREADS = 8
STEADY = 2
JOBS = 160


def _sessions_opened(engine: Engine, url: str) -> int:
    """Connections ever made to the test's database (counted by Postgres at each connect)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT sessions FROM pg_stat_database WHERE datname = :db"),
                {"db": url.rsplit("/", 1)[1]},
            ).scalar_one()
        )


def test_a_worker_under_steady_load_opens_no_connection_beyond_its_pool(
    own_database_settings: tuple[str, Engine],
    own_queue: str,
    fake_gateway: Any,
    worker_factory: Callable[..., Any],
) -> None:
    url, engine = own_database_settings
    worker = worker_factory(
        env={
            "DATABASE_URL": url,
            "EZQ_QUEUE": own_queue,
            "EZQ_WORKER_CONCURRENCY": str(THREADS),
            "EZQ_DB_POOL_SIZE": str(STEADY),
            "EZQ_SWEEP_INTERVAL": "0",
        }
    )
    # Off in a worker, the sweep says so: some worker of the database must run it.
    assert "the sweep is off in this worker (EZQ_SWEEP_INTERVAL=0)" in worker.log()
    # This process's producer and the test's engine make their connections here, and
    # reuse them from now on.
    wait_for_job(enqueue_completion(MODEL, [{"role": "user", "content": "first"}]))
    before = _sessions_opened(engine, url)

    jobs = [
        enqueue_completion(MODEL, [{"role": "user", "content": f"steady {i}"}]) for i in range(JOBS)
    ]
    for job in jobs:
        assert wait_for_job(job)["status"] == "succeeded"

    # Eight threads share at most eight connections (the two steady ones and six opened
    # for the burst, each at most once), and the publisher of due jobs at most one of the
    # two kept for the process's own threads (the heartbeat has its own, opened before);
    # a connection whose backend the server closed would be replaced, which nothing here
    # does.
    opened = _sessions_opened(engine, url) - before
    most = THREADS + 1 - STEADY
    assert opened <= most, f"{opened} connections opened for {JOBS} jobs"
