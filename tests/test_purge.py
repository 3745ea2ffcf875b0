"""``ezq purge`` and EZQ_RETENTION_DAYS: old content goes, usage and cost stay exact."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from sqlalchemy import text

from service import enqueue_completion, get_conversation, get_job
from service.db.session import transaction
from tests.conftest import REDIS_URL, WorkerProcess, run_ezq, sql, sweep_paused, wait_for_job
from tests.seeding import seed_job
from tests.test_faults import wait_until

MODEL = "glm-5.1"
USAGE = (
    "SELECT count(*), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),"
    " sum(cost_usd), array_agg(id ORDER BY id) FROM token_usage WHERE tenant = :t"
)
DAILY = "SELECT sum(jobs), sum(total_tokens), sum(cost_usd) FROM usage_daily WHERE tenant = :t"


def conversation(tenant: str, *, days_ago: float = 0.0) -> dict[str, Any]:
    """A finished two-turn conversation whose jobs ended ``days_ago`` days ago."""
    first = wait_for_job(
        enqueue_completion(MODEL, [{"role": "user", "content": "one"}], tenant=tenant)
    )
    second = wait_for_job(
        enqueue_completion(
            MODEL,
            [{"role": "user", "content": "two"}],
            tenant=tenant,
            conversation_id=first["conversation_id"],
        )
    )
    assert first["status"] == second["status"] == "succeeded"
    if days_ago:
        with transaction() as session:
            session.execute(
                text(
                    "UPDATE jobs SET finished_at = now() - make_interval(days => :d)"
                    " WHERE conversation_id = :c"
                ),
                {"d": days_ago, "c": first["conversation_id"]},
            )
    return {"id": first["conversation_id"], "jobs": [first["job_id"], second["job_id"]]}


def purge(*args: str) -> str:
    done = run_ezq("purge", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.usefixtures("worker")
def test_purge_keeps_usage_exact_and_deletes_content(fake_gateway: Any) -> None:
    """Content of old conversations goes; usage rows, their totals and recent content stay."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    old = conversation(tenant, days_ago=100)
    recent = conversation(tenant)
    delivery = uuid.uuid4()
    with transaction() as session:  # a delivered webhook whose payload holds the reply
        session.execute(
            text(
                "INSERT INTO webhook_deliveries (id, job_id, event_type, url, payload, status)"
                " VALUES (:id, :job, 'job.succeeded', 'https://example.com/h',"
                " '{\"content\": \"secret reply\"}', 'delivered')"
            ),
            {"id": delivery, "job": old["jobs"][1]},
        )
    usage_before, daily_before = sql(USAGE, t=tenant), sql(DAILY, t=tenant)
    # Jobs sent by another service's Celery app keep a result in the backend (ezq's own
    # messages store none): one such result, holding the reply.
    results = redis.Redis.from_url(REDIS_URL)
    results.set(f"celery-task-meta-{old['jobs'][0]}", '{"result": {"content": "secret"}}')
    # Each job's live token stream holds its reply too, written just after the job ended.
    streams = [f"ezq:live:{job}" for job in (*old["jobs"], *recent["jobs"])]
    wait_until(lambda: all(results.exists(k) for k in streams), "live streams written", 10)
    assert all(results.exists(k) for k in streams)

    dry = purge("--before", "90d", "--tenant", tenant, "--dry-run")
    assert dry == "would purge 1 conversation: 2 jobs, 4 messages, 1 webhook payload, 0 batch files"
    assert len(get_conversation(old["id"])["messages"]) == 4

    assert purge("--before", "90d", "--tenant", tenant) == (
        "purged 1 conversation: 2 jobs, 4 messages, 1 webhook payload, 0 batch files"
    )
    assert sql("SELECT payload FROM webhook_deliveries WHERE id = :d", d=delivery) == [("",)]
    # Still listed and shown, so "no such delivery" would be wrong: its payload is gone.
    redelivered = run_ezq("webhooks", "redeliver", str(delivery))
    assert redelivered.returncode == 1 and redelivered.stderr.strip().splitlines() == [
        f"ezq: error: DELIVERY_ID: webhook delivery {delivery} exists but its payload was"
        " purged (ezq purge), so its event cannot be sent again"
    ]
    unknown = uuid.uuid4()
    missing = run_ezq("webhooks", "redeliver", str(unknown))
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"ezq: error: DELIVERY_ID: no webhook delivery {unknown}"
    ]
    assert sql(USAGE, t=tenant) == usage_before and sql(DAILY, t=tenant) == daily_before
    assert get_conversation(old["id"])["messages"] == []
    purged = get_job(old["jobs"][1])
    assert purged["status"] == "succeeded" and purged["content"] is None
    assert purged["usage"] is not None and purged["tenant"] == tenant
    # Said so, rather than reading like an empty reply.
    [(when,)] = sql("SELECT purged_at FROM jobs WHERE id = :j", j=old["jobs"][1])
    assert purged["purged_at"] == when.isoformat()
    assert get_job(recent["jobs"][0])["purged_at"] is None
    assert sql(
        "SELECT input_messages, params, purged_at IS NOT NULL FROM jobs WHERE id = :j",
        j=old["jobs"][0],
    ) == [([], {}, True)]
    assert not results.exists(f"celery-task-meta-{old['jobs'][0]}")
    assert [bool(results.exists(k)) for k in streams] == [False, False, True, True]
    assert len(get_conversation(recent["id"])["messages"]) == 4
    # Nothing left to purge; a purged job cannot be replayed.
    assert purge("--before", "90d", "--tenant", tenant).startswith("purged 0 conversations")
    replay = run_ezq("jobs", "replay", old["jobs"][0])
    assert "purged" in replay.stderr and replay.stdout == "" and replay.returncode == 1


@pytest.mark.usefixtures("worker")
def test_erasure_of_one_conversation_and_unfinished_ones(fake_gateway: Any) -> None:
    """--conversation erases that conversation at once; one with a queued job is left alone."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    chat = conversation(tenant)
    # ``busy`` has no message: the suite's worker, which sweeps this database every
    # second, would publish and run it before the purge looks.
    with sweep_paused():
        busy = seed_job(tenant=tenant, status="queued")

        assert purge("--conversation", chat["id"]) == (
            "purged 1 conversation: 2 jobs, 4 messages, 0 webhook payloads, 0 batch files"
        )
        assert get_conversation(chat["id"])["messages"] == []

        done = run_ezq("purge", "--tenant", tenant)
        assert done.returncode == 0
        assert done.stdout.startswith("purged 0 conversations")
        assert "1 selected conversation still has unfinished jobs" in done.stderr
        assert sql("SELECT purged_at FROM jobs WHERE id = :j", j=busy) == [(None,)]

        # Purging by age alone reports nothing held back: running conversations are in use.
        by_age = run_ezq("purge", "--before", "3650d")
        assert by_age.returncode == 0 and by_age.stderr == ""


@pytest.mark.usefixtures("worker")
def test_dry_run_counts_the_conversations_it_would_leave_alone(fake_gateway: Any) -> None:
    """A dry run says on stderr, as the real run does, how many selected conversations an
    unfinished job holds back; it deletes nothing."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    chat = conversation(tenant)
    # ``busy`` has no message: the suite's worker, which sweeps this database every
    # second, would publish and run it before the purge looks.
    with sweep_paused():
        busy = seed_job(tenant=tenant, status="queued")

        dry = run_ezq("purge", "--tenant", tenant, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.strip() == (
            "would purge 1 conversation: 2 jobs, 4 messages, 0 webhook payloads, 0 batch files"
        )
        assert "1 selected conversation still has unfinished jobs" in dry.stderr
        assert len(get_conversation(chat["id"])["messages"]) == 4
        assert sql("SELECT purged_at FROM jobs WHERE id = :j", j=busy) == [(None,)]


def test_retention_runs_from_the_sweep(
    worker_factory: Callable[..., WorkerProcess], own_queue: str, fake_gateway: Any
) -> None:
    """With EZQ_RETENTION_DAYS the sweep, which every worker runs by itself, purges
    conversations older than that and leaves younger ones alone."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    # The worker runs the conversations' jobs (on this test's queue) and sweeps.
    worker_factory(env={"EZQ_QUEUE": own_queue, "EZQ_RETENTION_DAYS": "30"})
    old = conversation(tenant, days_ago=31)
    recent = conversation(tenant, days_ago=29)

    deadline = time.monotonic() + 30
    while get_conversation(old["id"])["messages"]:
        assert time.monotonic() < deadline, "the sweep never purged the old conversation"
        time.sleep(0.2)
    assert len(get_conversation(recent["id"])["messages"]) == 4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "--before"),
        (["--before", "yesterday"], "--before"),
        (["--conversation", "nope"], "--conversation"),
        (["--tenant", " "], "--tenant"),
    ],
)
def test_bad_purge_input_is_one_line(
    service_env: dict[str, str], args: list[str], needle: str
) -> None:
    """Bad input names the option, writes nothing, and prints no traceback."""
    done = run_ezq("purge", *args)
    assert done.returncode != 0
    assert needle in done.stderr and "Traceback" not in done.stderr
