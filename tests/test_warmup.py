"""A worker opens what its jobs need before it takes its first message, so that the first
jobs after a start do not wait for the database pool's connections or the gateway client;
a database that cannot be reached then is left for the jobs to connect to; and the
process's garbage collector runs with the worker's thresholds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import free_port, reset_settings


def _backends(engine: Engine, url: str) -> int:
    database = url.rsplit("/", 1)[1]
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalar_one()
        )


def test_a_started_worker_holds_its_pool_before_any_job(
    own_database: tuple[str, Engine], own_queue: str, worker_factory: Callable[..., Any]
) -> None:
    url, engine = own_database
    process = worker_factory(
        env={
            "DATABASE_URL": url,
            "EZQ_QUEUE": own_queue,
            "EZQ_DB_POOL_SIZE": "5",
            # Nothing else of the worker's on this database but its heartbeat.
            "EZQ_SWEEP_INTERVAL": "0",
            "EZQ_WORKER_GC_THRESHOLDS": "12345,7,9",
        }
    )
    # " ready." is logged after the warm-up: no job was sent, and the pool is open.
    assert _backends(engine, url) >= 5
    log = process.log()
    assert "warm-up: gateway client built, 5 database connections opened" in log
    # The line reads the thresholds back from the process's collector.
    assert "garbage collector thresholds 12345,7,9" in log


def test_the_worker_collects_garbage_less_often_than_cpython_by_default() -> None:
    import gc

    from service.config import Settings
    from service.worker.collector import set_thresholds

    before = gc.get_threshold()
    try:
        applied = set_thresholds(Settings().ezq_worker_gc_thresholds)
        assert applied == gc.get_threshold() == (50_000, 20, 100)
    finally:
        gc.set_threshold(*before)


def test_a_database_that_cannot_be_reached_is_left_to_the_jobs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker's command refuses to start without its database; the warm-up runs after
    # that check, so the database may have gone in between. It must not stop the start.
    from service.worker.warmup import open_database_pool

    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/ezq")
    reset_settings()
    try:
        with caplog.at_level(logging.WARNING, logger="service.worker.warmup"):
            assert open_database_pool() == 0
    finally:
        monkeypatch.undo()
        reset_settings()
    assert "the database could not be reached (OperationalError)" in caplog.text
