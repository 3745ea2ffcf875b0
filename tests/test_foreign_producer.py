"""Another service's Celery app sends ezq.chat_completion by name, without our code."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
from celery import Celery

from service import cancel_job, enqueue_completion, get_job
from service.fake_gateway import Fault
from tests.conftest import sql, wait_for_job
from tests.test_faults import wait_until

pytestmark = pytest.mark.usefixtures("worker")


def test_send_task_runs_and_returns_the_json_result(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any
) -> None:
    """send_task with the request fields creates the job and returns its JSON dict."""
    result = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={
            "model": "deepseek-v4-flash",
            "messages": [{"role": "user", "content": "from afar"}],
            "tenant": "billing",
            "metadata": {"feature": "invoices"},
        },
        queue=service_env["EZQ_QUEUE"],
    )
    value = result.get(timeout=30)

    assert value["status"] == "succeeded"
    assert value["content"] == "echo[1]: from afar"
    assert value["finish_reason"] == "stop"
    assert value["job_id"] == result.id
    assert set(value["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "total_tokens",
    }
    assert uuid.UUID(value["conversation_id"])
    assert sql("SELECT tenant, metadata FROM jobs WHERE id = :j", j=result.id) == [
        ("billing", {"feature": "invoices"})
    ]
    assert same_view(value, get_job(result.id)), "the task returns the job as stored"


def same_view(returned: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Equal views: every field alike, timestamps as the same instants."""
    stamps = [k for k in stored if k.endswith("_at")]
    as_instants = all(
        (returned[k] is None and stored[k] is None)
        or datetime.fromisoformat(returned[k]) == datetime.fromisoformat(stored[k])
        for k in stamps
    )
    rest = {k: v for k, v in returned.items() if k not in stamps}
    return as_instants and rest == {k: v for k, v in stored.items() if k not in stamps}


def test_send_task_with_its_own_job_id_and_a_second_turn(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any
) -> None:
    """A foreign producer may choose the job id and continue a conversation."""
    job_id = str(uuid.uuid4())
    first = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={
            "job_id": job_id,
            "model": "glm-5.1",
            "messages": [{"role": "user", "content": "a"}],
        },
        queue=service_env["EZQ_QUEUE"],
    ).get(timeout=30)
    assert first["job_id"] == job_id
    second = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={
            "model": "glm-5.1",
            "messages": [{"role": "user", "content": "b"}],
            "conversation_id": first["conversation_id"],
        },
        queue=service_env["EZQ_QUEUE"],
    ).get(timeout=30)
    assert second["content"] == "echo[3]: b"


def test_send_task_with_bad_input_fails_and_writes_nothing(
    foreign_app: Celery, service_env: dict[str, str]
) -> None:
    """A malformed foreign request fails the task with the field named; no row is written."""
    result = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={"model": "glm-5.1", "messages": [{"role": "robot", "content": "x"}]},
        queue=service_env["EZQ_QUEUE"],
    )
    with pytest.raises(Exception, match=r"messages\[0\]\.role"):
        result.get(timeout=30)
    assert sql("SELECT count(*) FROM jobs WHERE id = :j", j=result.id) == [(0,)]


def test_failed_job_fails_the_task(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any
) -> None:
    """A job that ends failed makes the task fail, so a chain stops there."""
    result = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        queue=service_env["EZQ_QUEUE"],
    )
    with pytest.raises(Exception, match="failed"):
        result.get(timeout=30)
    assert wait_for_job(result.id)["error"]["status"] == 403


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "a different question"}]},
        {"model": "claude-haiku-4-5"},
        {"tenant": "someone-else"},
    ],
)
def test_existing_job_id_with_a_different_request_is_refused(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any, change: dict[str, Any]
) -> None:
    """A message naming an existing job_id with another request fails like an idempotency
    conflict, and does not hand back that job's result."""
    job_id = str(uuid.uuid4())
    request = {"model": "glm-5.1", "messages": [{"role": "user", "content": "mine"}]}
    kwargs = {"job_id": job_id, **request}
    first = foreign_app.send_task(
        "ezq.chat_completion", kwargs=kwargs, queue=service_env["EZQ_QUEUE"]
    )
    assert first.get(timeout=30)["content"] == "echo[1]: mine"
    again = foreign_app.send_task(
        "ezq.chat_completion", kwargs={**kwargs, **change}, queue=service_env["EZQ_QUEUE"]
    )
    with pytest.raises(Exception, match=r"job_id: .* already names a job with a different request"):
        again.get(timeout=30)
    assert sql("SELECT count(*), min(model) FROM jobs WHERE id = :j", j=job_id) == [(1, "glm-5.1")]
    same = foreign_app.send_task(
        "ezq.chat_completion", kwargs=kwargs, queue=service_env["EZQ_QUEUE"]
    )
    assert same.get(timeout=30)["job_id"] == job_id


@pytest.mark.parametrize("job_id", [12345, ["x"], {"a": 1}, "not-a-uuid"])
def test_job_id_of_the_wrong_type_fails_cleanly(
    foreign_app: Celery, service_env: dict[str, str], worker: Any, job_id: object
) -> None:
    """A job_id that is not a UUID string fails the task with a message, not a crash."""
    result = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={
            "job_id": job_id,
            "model": "glm-5.1",
            "messages": [{"role": "user", "content": "x"}],
        },
        queue=service_env["EZQ_QUEUE"],
    )
    with pytest.raises(Exception, match=r"job_id: is not a UUID"):
        result.get(timeout=30)
    assert "AttributeError" not in worker.log()


def test_a_reused_idempotency_key_runs_nothing_new_and_answers_with_the_first_job(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any
) -> None:
    """A second message with the same request and idempotency key (another task id)
    writes no job and calls nothing: its result is the first job's."""
    key = f"invoice-{uuid.uuid4()}"
    kwargs = {
        "model": "glm-5.1",
        "messages": [{"role": "user", "content": f"once only {key}"}],
        "tenant": "billing",
        "idempotency_key": key,
    }
    first = foreign_app.send_task(
        "ezq.chat_completion", kwargs=kwargs, queue=service_env["EZQ_QUEUE"]
    )
    value = first.get(timeout=30)
    calls = calls_with(fake_gateway, key)
    again = foreign_app.send_task(
        "ezq.chat_completion", kwargs=kwargs, queue=service_env["EZQ_QUEUE"]
    )
    assert again.get(timeout=30) == value
    assert value["job_id"] == first.id != again.id
    assert calls_with(fake_gateway, key) == calls == 1
    assert sql(
        "SELECT count(*) FROM jobs WHERE tenant = 'billing' AND idempotency_key = :k", k=key
    ) == [(1,)]
    assert sql("SELECT count(*) FROM jobs WHERE id = :j", j=again.id) == [(0,)]


def calls_with(fake_gateway: Any, text: str) -> int:
    """Completion calls the fake received whose last message holds ``text``."""
    return sum(text in str(r.body["messages"][-1]["content"]) for r in fake_gateway.requests)


def test_a_turn_that_waits_for_the_one_before_still_returns_its_result(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any
) -> None:
    """A second turn sent while the first still runs waits for it in the database; the
    producer waiting on the second's message gets its result all the same."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(latency=2.0, match=f"slow first {marker}"))
    first = enqueue_completion("glm-5.1", [{"role": "user", "content": f"slow first {marker}"}])
    conversation = wait_until_running(first)["conversation_id"]

    second = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={
            "model": "glm-5.1",
            "messages": [{"role": "user", "content": f"then me {marker}"}],
            "conversation_id": conversation,
        },
        queue=service_env["EZQ_QUEUE"],
    )
    value = second.get(timeout=30)
    assert value["status"] == "succeeded" and value["job_id"] == second.id
    assert value["content"] == f"echo[3]: then me {marker}"
    assert calls_with(fake_gateway, f"then me {marker}") == 1


def test_a_retry_due_later_than_a_message_may_wait_still_returns_its_result(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any, worker_factory: Any
) -> None:
    """A retry due later than a third of the visibility timeout (parked for the sweep when
    nobody waits) keeps the message of a producer waiting on its result coming back."""
    queue = f"ezq-longretry-{uuid.uuid4().hex[:8]}"
    # The first retry is due in 5 to 10 s; a message may be held back 10 / 3 s at most.
    worker_factory(
        env={
            "EZQ_QUEUE": queue,
            "EZQ_BROKER_VISIBILITY_TIMEOUT": "10",
            "EZQ_RETRY_BACKOFF_BASE": "10",
            "EZQ_RETRY_BACKOFF_MAX": "10",
        }
    )
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(status=503, match=marker))
    result = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={"model": "glm-5.1", "messages": [{"role": "user", "content": marker}]},
        queue=queue,
    )
    value = result.get(timeout=60)
    assert value["status"] == "succeeded" and value["attempts"] == 2
    assert calls_with(fake_gateway, marker) == 2


def wait_until_running(job_id: str) -> dict[str, Any]:
    """The job's view once a worker has claimed it."""
    job: dict[str, Any] = {}

    def running() -> bool:
        nonlocal job
        job = get_job(job_id)
        return bool(job["status"] == "running")

    wait_until(running, "the job is running")
    return job


def test_a_job_id_that_is_a_chained_result_is_not_quoted(
    foreign_app: Celery, service_env: dict[str, str], worker: Any
) -> None:
    """A mutable signature in a chain receives the previous task's result (with its reply)
    as its job_id: the error names the type only, and neither the log nor the dead
    letter's reason quotes the value."""
    secret = f"reply text {uuid.uuid4().hex}"
    result = foreign_app.send_task(
        "ezq.chat_completion",
        args=[{"status": "succeeded", "content": secret}],
        kwargs={"model": "glm-5.1", "messages": [{"role": "user", "content": "next"}]},
        queue=service_env["EZQ_QUEUE"],
    )
    with pytest.raises(Exception, match=r"job_id: is not a UUID \(a dict\)"):
        result.get(timeout=30)
    reasons = sql("SELECT reason FROM dead_letters WHERE message_id = :m", m=result.id)
    assert reasons == [("invalid arguments: job_id: is not a UUID (a dict)",)]
    assert secret not in worker.log()


def test_a_cancelled_job_fails_the_task_saying_so(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any
) -> None:
    """A job cancelled while it runs fails its task with "cancelled", not an empty error."""
    marker = uuid.uuid4().hex
    # About 2.7 s of stream (frames 0.3 s apart, each within the suite's 1.5 s read timeout
    # and the whole within its 4 s attempt deadline): time to cancel it mid-call.
    fake_gateway.add_faults(Fault(reply="a slow reply " * 4, chunk_delay=0.3, match=marker))
    result = foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={"model": "glm-5.1", "messages": [{"role": "user", "content": marker}]},
        queue=service_env["EZQ_QUEUE"],
    )
    wait_until(lambda: bool(sql("SELECT 1 FROM jobs WHERE id = :j", j=result.id)), "job written")
    wait_until_running(result.id)
    cancel_job(result.id)
    with pytest.raises(Exception) as failed:
        result.get(timeout=30)
    assert str(failed.value) == f"job {result.id} cancelled"


def test_a_chain_goes_on_from_a_message_whose_job_had_ended(
    foreign_app: Celery, service_env: dict[str, str], fake_gateway: Any
) -> None:
    """A message delivered again after its job ended still answers with that job when a
    chain goes on from it, even sent without a result (``ignore_result``): the next task
    of the chain runs."""
    marker = uuid.uuid4().hex
    first = wait_for_job(
        enqueue_completion("glm-5.1", [{"role": "user", "content": f"first {marker}"}])
    )
    queue = service_env["EZQ_QUEUE"]
    following = foreign_app.signature(
        "ezq.chat_completion",
        kwargs={"model": "glm-5.1", "messages": [{"role": "user", "content": f"then {marker}"}]},
        queue=queue,
        immutable=True,
    )
    foreign_app.send_task(
        "ezq.chat_completion",
        kwargs={"job_id": first["job_id"]},
        queue=queue,
        ignore_result=True,
        link=following,
    )
    wait_until(lambda: calls_with(fake_gateway, f"then {marker}") == 1, "the chain's next task")
