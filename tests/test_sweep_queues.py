"""Two queues on one database: a sweep counts the messages of every queue a live worker
consumes, so one queue's waiting jobs are not taken for lost by another queue's worker."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from service.config import get_settings
from service.db import recovery
from service.db.session import transaction
from service.producer import enqueue_completion
from service.worker.maintenance import redis_broker_depth
from service.worker.sweep import SweepReport, sweep
from tests.conftest import REDIS_URL, drop_queue, reset_settings


def _sweep_as_worker_of(queue: str, monkeypatch: pytest.MonkeyPatch) -> SweepReport:
    """One sweep, run as a worker consuming ``queue`` runs it."""
    monkeypatch.setenv("EZQ_QUEUE", queue)
    reset_settings()
    settings = get_settings()
    report = sweep(settings, worker=None, broker_depth=redis_broker_depth(settings), force=True)
    assert report is not None
    return report


def _beat(worker_id: str, queue: str) -> None:
    with transaction() as session:
        recovery.heartbeat(
            session,
            worker_id=worker_id,
            hostname="elsewhere",
            pid=1,
            queue=queue,
            lease_seconds=30,
            job_ids=[],
        )


@pytest.mark.usefixtures("service_env")
def test_a_live_workers_queue_counts_and_a_stopped_ones_jobs_go_to_the_pool(
    own_database_settings: tuple[str, Engine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Jobs waiting on queue B while B's worker is alive are left on B by the sweep of a
    worker of queue A (before, A counted B's jobs and none of B's messages, warned that
    messages were lost and republished them onto A); once B's worker has stopped, they are
    the pool's: A's sweep republishes them onto A."""
    _, engine = own_database_settings
    queue_a, queue_b = (f"ezq-sweepq-{secrets.token_hex(4)}" for _ in range(2))
    broker: Any = redis.Redis.from_url(REDIS_URL)
    try:
        monkeypatch.setenv("EZQ_QUEUE", queue_b)
        reset_settings()
        for n in range(3):
            enqueue_completion("glm-5.1", [{"role": "user", "content": f"waiting {n}"}])
        assert broker.llen(queue_b) == 3
        # Published long enough ago to be republished if taken for lost (EZQ_REDISPATCH_AFTER),
        # not so long that the sweep republishes them whatever (EZQ_SWEEP_STALE_AFTER).
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET dispatched_at = now() - interval '1 minute'"))
        _beat("worker-of-b", queue_b)

        with caplog.at_level("WARNING", logger="service.worker.sweep"):
            kept = _sweep_as_worker_of(queue_a, monkeypatch)
        assert kept.redispatched == 0
        assert "republishing" not in caplog.text
        assert (broker.llen(queue_a), broker.llen(queue_b)) == (0, 3)

        with transaction() as session:
            recovery.worker_stopped(session, "worker-of-b")
        taken = _sweep_as_worker_of(queue_a, monkeypatch)
        assert taken.redispatched == 3
        assert (broker.llen(queue_a), broker.llen(queue_b)) == (3, 3)
    finally:
        drop_queue(queue_a)
        drop_queue(queue_b)
