"""Celery's result backend keeps a short copy of each result: the database is the record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery

from tests.conftest import REDIS_URL


def test_result_expiry_defaults_to_an_hour_and_follows_the_setting(monkeypatch: Any) -> None:
    """result_expires is one hour by default and EZQ_RESULT_EXPIRES otherwise."""
    from service.config import get_settings
    from service.worker.app import celery_config

    monkeypatch.delenv("EZQ_RESULT_EXPIRES", raising=False)
    get_settings.cache_clear()
    try:
        assert celery_config()["result_expires"] == 3600
        monkeypatch.setenv("EZQ_RESULT_EXPIRES", "120")
        get_settings.cache_clear()
        assert celery_config()["result_expires"] == 120
    finally:
        get_settings.cache_clear()


@pytest.mark.usefixtures("fake_gateway")
def test_stored_result_expires_as_configured(
    worker_factory: Callable[..., Any], test_ids: dict[str, str]
) -> None:
    """A worker with EZQ_RESULT_EXPIRES=90 stores results in Redis with a TTL of at most 90 s."""
    queue = test_ids["queue"] + "-results"
    worker_factory(env={"EZQ_RESULT_EXPIRES": "90", "EZQ_QUEUE": queue})
    app = Celery("producer", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    try:
        result = app.send_task(
            "ezq.chat_completion",
            kwargs={"model": "glm-5.1", "messages": [{"role": "user", "content": "ttl"}]},
            queue=queue,
        )
        assert result.get(timeout=30)["status"] == "succeeded"
        ttl = redis.Redis.from_url(REDIS_URL).ttl(f"celery-task-meta-{result.id}")
        assert 0 < ttl <= 90
    finally:
        app.close()
