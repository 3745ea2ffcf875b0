"""The main job end to end: enqueue, a real worker, the fake gateway, Postgres."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from service import enqueue_completion
from service.fake_gateway import Fault
from service.worker.app import publish_job
from tests.conftest import request_for, sql, wait_for_job

pytestmark = pytest.mark.usefixtures("worker")

MODEL = "claude-sonnet-4-6"


def ask(prompt: str, **kwargs: Any) -> uuid.UUID:
    return enqueue_completion(MODEL, [{"role": "user", "content": prompt}], **kwargs)


def attempts_of(job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return sql(
        "SELECT attempt, http_status, error_type, retryable, gateway_request_id"
        " FROM job_attempts WHERE job_id = :j ORDER BY attempt",
        j=job_id,
    )


def test_success_stores_reply_history_and_usage(fake_gateway: Any) -> None:
    """A job succeeds with the assembled reply, its history and the final chunk's usage."""
    job_id = ask("hello there", tenant="acme", metadata={"feature": "greeting"})
    job = wait_for_job(job_id)

    assert job["status"] == "succeeded"
    assert job["content"] == "echo[1]: hello there"
    assert job["finish_reason"] == "stop"
    assert job["attempts"] == 1
    sent = request_for(fake_gateway, "hello there")
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["messages"] == [{"role": "user", "content": "hello there"}]

    rows = sql(
        "SELECT prompt_tokens, completion_tokens, cached_tokens, total_tokens, tenant, model,"
        " raw_usage FROM token_usage WHERE job_id = :j",
        j=job_id,
    )
    assert len(rows) == 1
    prompt, completion, cached, total, tenant, model, raw = rows[0]
    assert raw["output_tokens"] == 0, "the fake must send the unreliable output_tokens as 0"
    assert completion == raw["completion_tokens"] > 0
    assert prompt == raw["prompt_tokens"]
    assert cached == raw["prompt_tokens_details"]["cached_tokens"]
    assert total == raw["total_tokens"] == prompt + completion
    assert (tenant, model) == ("acme", MODEL)
    assert job["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "total_tokens": total,
    }

    history = sql(
        "SELECT seq, role, content FROM messages WHERE conversation_id = :c ORDER BY seq",
        c=job["conversation_id"],
    )
    assert history == [(1, "user", "hello there"), (2, "assistant", "echo[1]: hello there")]
    absent = sql(
        "SELECT count(*) FROM messages m JOIN token_usage u USING (conversation_id)"
        " WHERE m.conversation_id = :c AND m.tool_calls IS NULL AND u.usage_issues IS NULL",
        c=job["conversation_id"],
    )
    assert absent == [(2,)], "absent JSON values are SQL NULL, not the JSON value null"
    assert attempts_of(job_id) == [(1, 200, None, None, sent.request_id)]
    timing = sql(
        "SELECT started_at <= first_token_at AND first_token_at <= finished_at FROM jobs"
        " WHERE id = :j",
        j=job_id,
    )
    assert timing == [(True,)]


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (Fault(status=500, times=2), "server_error"),
        (Fault(status=502, times=2), "server_error"),
        (Fault(status=503, times=2), "server_error"),
        (Fault(kind="drop", times=2), "connection_error"),
        (Fault(kind="drop_mid_stream", after_chunks=2, times=2), "broken_stream"),
        (Fault(kind="truncate", after_chunks=2, times=2), "broken_stream"),
        (Fault(kind="error_frame", after_chunks=1, times=2), "server_error"),
        (Fault(kind="no_finish", times=2), "broken_stream"),
        (Fault(kind="malformed", after_chunks=1, times=2), "broken_stream"),
        (Fault(kind="non_sse", times=2), "broken_stream"),
        (Fault(kind="empty", times=2), "broken_stream"),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{v.kind}-{v.status}",
)
def test_retryable_failures_are_retried_then_succeed(
    fake_gateway: Any, fault: Fault, error_type: str
) -> None:
    """A retryable failure on the first two attempts is retried; attempt 3 succeeds."""
    marker = uuid.uuid4().hex
    fault.match = marker
    fake_gateway.add_faults(fault)

    job = wait_for_job(ask(f"retry me {marker}"))

    assert job["status"] == "succeeded", job
    assert job["attempts"] == 3
    assert job["content"] == f"echo[1]: retry me {marker}"
    attempts = attempts_of(uuid.UUID(job["job_id"]))
    assert [a[0] for a in attempts] == [1, 2, 3]
    assert [a[2] for a in attempts] == [error_type, error_type, None]
    assert [a[3] for a in attempts] == [True, True, None]
    assert len(sql("SELECT 1 FROM token_usage WHERE job_id = :j", j=job["job_id"])) == 1
    replies = sql("SELECT count(*) FROM messages WHERE job_id = :j", j=job["job_id"])
    assert replies == [(2,)], "broken attempts must never leave a partial reply behind"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 429])
def test_client_errors_fail_at_once(fake_gateway: Any, status: int) -> None:
    """Every 4xx, 429 included, fails the job after one attempt with the gateway's message."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(status=status, match=marker, times=5))

    job = wait_for_job(ask(f"no retry {marker}"))

    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert job["error"]["status"] == status
    assert job["error"]["type"] == "client_error"
    assert "request id:" in job["error"]["message"]
    assert job["content"] is None
    assert sum(1 for r in fake_gateway.requests if marker in str(r.body)) == 1
    assert sql("SELECT count(*) FROM token_usage WHERE job_id = :j", j=job["job_id"]) == [(0,)]
    assert sql(
        "SELECT count(*) FROM messages WHERE conversation_id = :c", c=job["conversation_id"]
    ) == [(0,)]
    (attempt,) = attempts_of(uuid.UUID(job["job_id"]))
    assert attempt[1:4] == (status, "client_error", False)
    assert attempt[4], "the gateway request id is kept for support tickets"


def test_unknown_model_is_refused_by_the_gateway_and_not_retried(fake_gateway: Any) -> None:
    """A model the gateway does not know fails with 403 access_denied, once."""
    job = wait_for_job(enqueue_completion("no-such-model", [{"role": "user", "content": "hi"}]))
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert job["error"]["status"] == 403


def test_retries_exhausted_end_failed(fake_gateway: Any) -> None:
    """When every attempt fails with a 503, the job ends failed after the maximum attempts."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(status=503, match=marker, times=10))

    job = wait_for_job(ask(f"always down {marker}"))

    assert job["status"] == "failed"
    assert job["attempts"] == 3
    assert job["error"]["status"] == 503
    assert job["error"]["type"] == "server_error"
    assert [a[1] for a in attempts_of(uuid.UUID(job["job_id"]))] == [503, 503, 503]


@pytest.mark.slow
def test_stalled_stream_times_out_and_is_retried(fake_gateway: Any) -> None:
    """A gateway that stops sending trips the read timeout, counted as a retryable error."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="normal", latency=3.0, match=marker))

    job = wait_for_job(ask(f"slow {marker}"))

    assert job["status"] == "succeeded"
    assert job["attempts"] == 2
    assert attempts_of(uuid.UUID(job["job_id"]))[0][2] == "timeout"


@pytest.mark.slow
def test_trickling_stream_hits_the_attempt_deadline(fake_gateway: Any) -> None:
    """A stream that trickles under the read timeout is cut at the per-attempt deadline."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(
        Fault(kind="normal", chunk_delay=1.0, match=marker, reply="x" * 200, times=1)
    )

    job = wait_for_job(ask(f"trickle {marker}"))

    assert job["status"] == "succeeded"
    assert job["attempts"] == 2
    first = attempts_of(uuid.UUID(job["job_id"]))[0]
    assert first[2] == "timeout"


def test_two_turns_send_the_full_history(fake_gateway: Any) -> None:
    """Turn 2 sends turn 1's messages and reply, then its own; the reply is appended."""
    first = wait_for_job(
        enqueue_completion(
            MODEL,
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}],
        )
    )
    second = wait_for_job(ask("two", conversation_id=first["conversation_id"]))

    assert second["conversation_id"] == first["conversation_id"]
    assert second["content"] == "echo[4]: two"
    assert request_for(fake_gateway, "two").body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "echo[2]: one"},
        {"role": "user", "content": "two"},
    ]
    assert second["usage"]["cached_tokens"] > 0, "the repeated prefix is reported as cached"


def test_turns_enqueued_together_run_in_order(fake_gateway: Any) -> None:
    """Turns enqueued at once run one at a time in enqueue order and never interleave."""
    first = wait_for_job(ask("start"))
    conversation_id = first["conversation_id"]
    # Slow the first of the new turns so the others are delivered while it runs.
    fake_gateway.add_faults(Fault(kind="normal", latency=0.5, match="turn-0"))
    job_ids = [ask(f"turn-{i}", conversation_id=conversation_id) for i in range(5)]
    jobs = [wait_for_job(j) for j in job_ids]

    assert [j["status"] for j in jobs] == ["succeeded"] * 5
    history = sql(
        "SELECT role, content FROM messages WHERE conversation_id = :c ORDER BY seq",
        c=conversation_id,
    )
    expected = [("user", "start"), ("assistant", "echo[1]: start")]
    for i in range(5):
        expected += [("user", f"turn-{i}"), ("assistant", f"echo[{len(expected) + 1}]: turn-{i}")]
    assert history == expected


def test_failed_turn_leaves_history_unchanged_and_next_turn_runs(fake_gateway: Any) -> None:
    """A failed turn adds nothing to the history; the turn after it still runs."""
    first = wait_for_job(ask("keep"))
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(status=400, match=marker))
    failed = ask(f"bad {marker}", conversation_id=first["conversation_id"])
    after = ask("after", conversation_id=first["conversation_id"])

    assert wait_for_job(failed)["status"] == "failed"
    assert wait_for_job(after)["content"] == "echo[3]: after"
    contents = sql(
        "SELECT content FROM messages WHERE conversation_id = :c ORDER BY seq",
        c=first["conversation_id"],
    )
    assert contents == [("keep",), ("echo[1]: keep",), ("after",), ("echo[3]: after",)]


def test_duplicate_delivery_adds_nothing(fake_gateway: Any) -> None:
    """The same job delivered several times at once, and again after it finished, runs once."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="normal", latency=0.3, match=marker))
    job_id = ask(f"once {marker}")
    threads = [threading.Thread(target=publish_job, args=(job_id,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = wait_for_job(job_id)
    publish_job(job_id)  # redelivered after the result was committed
    wait_for_job(job_id)
    import time

    time.sleep(1.0)

    assert job["attempts"] == 1
    assert sql("SELECT count(*) FROM messages WHERE job_id = :j", j=job_id) == [(2,)]
    assert sql("SELECT count(*) FROM token_usage WHERE job_id = :j", j=job_id) == [(1,)]
    assert sum(1 for r in fake_gateway.requests if marker in str(r.body)) == 1
    assert wait_for_job(job_id)["attempts"] == 1


def test_params_reach_the_gateway(fake_gateway: Any) -> None:
    """Sampling parameters and ezrouter extensions are forwarded in the request body."""
    job = wait_for_job(
        ask(
            "params",
            params={
                "temperature": 0.2,
                "max_tokens": 50,
                "user_id": "u-1",
                "thinking": {"type": "enabled"},
            },
        )
    )
    body = request_for(fake_gateway, "params").body
    assert job["status"] == "succeeded"
    assert (body["temperature"], body["max_tokens"], body["user_id"]) == (0.2, 50, "u-1")
    assert body["thinking"] == {"type": "enabled"}


def test_tool_calls_are_assembled(fake_gateway: Any) -> None:
    """Tool-call fragments are assembled into the reply message's tool_calls."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="tool_calls", match=marker))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]

    # On the OpenAI surface: under auto, a claude model with tools would go to anthropic.
    job = wait_for_job(ask(f"weather {marker}", params={"tools": tools}, surface="openai"))

    assert job["status"] == "succeeded"
    assert job["finish_reason"] == "tool_calls"
    (call,) = job["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str) and call["function"]["arguments"]
