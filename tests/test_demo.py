"""``ezq demo`` runs a conversation end to end and leaves nothing behind."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import redis

from tests.conftest import REDIS_URL, run_ezq


def test_demo_leaves_no_keys_in_redis_and_no_files_in_tmp(service_env: dict[str, str]) -> None:
    """After the demo, its queue, kombu's keys, the results and the live token streams are
    gone, and so is its log."""
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("ezq-demo-*"))
    client = redis.Redis.from_url(REDIS_URL)
    demo_keys_before = set(client.scan_iter(match="*ezq-demo-*"))

    done = run_ezq("demo", env=service_env, timeout=120)  # against the test's fake gateway
    assert done.returncode == 0, done.stdout + done.stderr

    job_ids = re.findall(r"job ([0-9a-f-]{36})", done.stdout)
    assert len(job_ids) == 2
    assert not any(client.exists(f"celery-task-meta-{job_id}") for job_id in job_ids)
    assert not any(client.exists(f"ezq:live:{job_id}") for job_id in job_ids)
    assert set(client.scan_iter(match="*ezq-demo-*")) <= demo_keys_before
    assert set(tmp.glob("ezq-demo-*")) <= before
