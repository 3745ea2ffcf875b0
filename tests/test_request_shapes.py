"""OpenAI request shapes end to end: content parts and every listed field reach the
gateway as sent, the history keeps parts, and GW-001 / strict-schema replies fail."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service import enqueue_completion
from service.fake_gateway import Fault
from tests.conftest import sql, wait_for_job

pytestmark = pytest.mark.usefixtures("worker")

PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAA"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def parts_message(marker: str) -> dict[str, Any]:
    return {
        "role": "user",
        "name": "alice",
        "content": [
            {"type": "text", "text": f"describe {marker}"},
            {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {
                "type": "file",
                "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
            },
            {"type": "text", "text": "second paragraph"},
        ],
    }


def sent_with(fake_gateway: Any, marker: str) -> list[Any]:
    return [r for r in fake_gateway.requests if marker in r.raw.decode()]


def test_content_parts_and_every_field_reach_the_gateway_as_sent(fake_gateway: Any) -> None:
    """Content parts, name, and each listed request field arrive at the gateway unchanged."""
    marker = uuid.uuid4().hex
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        parts_message(marker),
    ]
    params = {
        "user": "end-user-7",
        "user_id": "internal-7",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA},
        },
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "stop": ["\n\n", "END"],
        "seed": 42,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100, "13": 5},
        "logprobs": True,
        "top_logprobs": 3,
        "reasoning_effort": "high",
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "max_completion_tokens": 300,
    }
    job = wait_for_job(enqueue_completion("gpt-5.1", messages, params=params))

    assert job["status"] == "succeeded", job
    (sent,) = sent_with(fake_gateway, marker)
    assert sent.body["messages"] == messages
    for key, value in params.items():
        assert sent.body[key] == value, key
    assert job["tool_calls"][0]["function"]["name"] == "get_weather"


def test_tool_history_and_json_object_reach_the_gateway_as_sent(fake_gateway: Any) -> None:
    """An assistant message with tool calls, its tool result and response_format
    json_object reach the OpenAI surface exactly as the producer sent them."""
    marker = uuid.uuid4().hex
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        {"role": "system", "content": "answer in json", "name": "rules"},
        {"role": "user", "content": f"weather as json {marker}"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    params = {"response_format": {"type": "json_object"}, "tools": [WEATHER], "tool_choice": "auto"}
    job = wait_for_job(enqueue_completion("gpt-5.1", messages, params=params))

    assert job["status"] == "succeeded", job
    (sent,) = sent_with(fake_gateway, marker)
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == messages
    for key, value in params.items():
        assert sent.body[key] == value, key


def test_history_keeps_parts_as_sent_and_sends_them_again(fake_gateway: Any) -> None:
    """Parts are stored as sent (content_parts), content holds their text, and the next
    turn sends the parts back unchanged."""
    marker = uuid.uuid4().hex
    first = wait_for_job(enqueue_completion("glm-5.1", [parts_message(marker)]))
    assert first["status"] == "succeeded"
    conversation = first["conversation_id"]
    second = wait_for_job(
        enqueue_completion(
            "glm-5.1", [{"role": "user", "content": "and?"}], conversation_id=conversation
        )
    )
    assert second["status"] == "succeeded"

    turn2 = sent_with(fake_gateway, marker)[-1]
    assert turn2.body["messages"][0] == parts_message(marker)
    rows = sql(
        "SELECT content, content_parts FROM messages WHERE conversation_id = :c AND seq = 1",
        c=conversation,
    )
    assert rows == [(f"describe {marker}\nsecond paragraph", parts_message(marker)["content"])]
    plain = sql(
        "SELECT count(*) FROM messages WHERE conversation_id = :c AND content_parts IS NULL",
        c=conversation,
    )
    assert plain == [(3,)], "string messages keep content_parts NULL"


def test_history_keeps_an_assistant_messages_refusal_and_reasoning(fake_gateway: Any) -> None:
    """An assistant message sent with refusal and reasoning_content reaches the gateway
    with them on its turn and, from the stored history, on every later turn."""
    marker = uuid.uuid4().hex
    said = {
        "role": "assistant",
        "content": "a1",
        "refusal": f"I refuse {marker}",
        "reasoning_content": "because",
    }
    first = wait_for_job(
        enqueue_completion(
            "glm-5.1",
            [{"role": "user", "content": f"q1 {marker}"}, said, {"role": "user", "content": "q2"}],
        )
    )
    assert first["status"] == "succeeded"
    second = wait_for_job(
        enqueue_completion(
            "glm-5.1",
            [{"role": "user", "content": "q3"}],
            conversation_id=first["conversation_id"],
        )
    )
    assert second["status"] == "succeeded"
    turn1, turn2 = sent_with(fake_gateway, marker)
    assert turn1.body["messages"][1] == said
    assert turn2.body["messages"][1] == said
    rows = sql(
        "SELECT refusal, reasoning_content FROM messages WHERE conversation_id = :c AND seq = 2",
        c=first["conversation_id"],
    )
    assert rows == [(said["refusal"], "because")]


def assert_paid_usage(job: dict[str, Any]) -> None:
    """The job has one usage row, holding the usage object the gateway's stream ended
    with, and the job (also when it failed on its reply) shows those counts."""
    rows = sql(
        "SELECT prompt_tokens, completion_tokens, raw_usage FROM token_usage WHERE job_id = :j",
        j=job["job_id"],
    )
    assert len(rows) == 1, rows
    prompt, completion, raw = rows[0]
    assert raw["prompt_tokens"] > 0 and raw["completion_tokens"] > 0, raw
    assert (prompt, completion) == (raw["prompt_tokens"], raw["completion_tokens"])
    assert job["usage"]["prompt_tokens"] == prompt
    assert job["usage"]["completion_tokens"] == completion


def test_gw001_fails_with_its_own_error_type_and_is_not_retried(fake_gateway: Any) -> None:
    """finish_reason "tool_calls" without a tool call fails the job as
    gateway_tool_calls_missing on its one attempt; the call was answered in full (and
    billed), so its usage row is written, and the job shows that usage."""
    marker = uuid.uuid4().hex
    job_id = enqueue_completion(
        "deepseek-v4-pro",
        [{"role": "user", "content": f"weather in Paris {marker}"}],
        params={"tools": [WEATHER]},
    )
    job = wait_for_job(job_id)

    assert job["status"] == "failed"
    assert job["error"]["type"] == "gateway_tool_calls_missing"
    assert job["content"] is None and job["tool_calls"] is None
    assert job["attempts"] == 1
    (sent,) = sent_with(fake_gateway, marker)
    attempts = sql(
        "SELECT attempt, http_status, error_type, retryable, gateway_request_id"
        " FROM job_attempts WHERE job_id = :j",
        j=job_id,
    )
    assert attempts == [(1, 200, "gateway_tool_calls_missing", False, sent.request_id)]
    assert_paid_usage(job)
    history = sql("SELECT count(*) FROM messages WHERE job_id = :j", j=job_id)
    assert history == [(0,)], "a failed turn leaves the history untouched"


@pytest.mark.parametrize(
    ("reply", "status", "error_type"),
    [
        ('{"city": "Paris"}', "succeeded", None),
        ("Paris, probably", "failed", "json_schema_mismatch"),
        ('{"town": "Paris"}', "failed", "json_schema_mismatch"),
        ('{"city": 75}', "failed", "json_schema_mismatch"),
    ],
)
def test_strict_json_schema_replies_must_parse_and_match(
    fake_gateway: Any, reply: str, status: str, error_type: str | None
) -> None:
    """A strict json_schema reply that is not JSON or breaks the schema fails at once as
    json_schema_mismatch; a matching one succeeds."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="normal", reply=reply, match=marker))
    params = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA},
        }
    }
    job_id = enqueue_completion(
        "glm-5.1", [{"role": "user", "content": f"json city {marker}"}], params=params
    )
    job = wait_for_job(job_id)

    assert job["status"] == status
    assert (job["error"] or {}).get("type") == error_type
    assert job["attempts"] == 1 and len(sent_with(fake_gateway, marker)) == 1
    assert_paid_usage(job)  # a mismatch was answered in full: paid, and counted
    if error_type is not None:
        assert reply not in job["error"]["message"], "reply text never reaches the error"


def test_a_failed_calls_usage_the_database_refuses_is_left_out_not_left_running(
    fake_gateway: Any, worker: Any
) -> None:
    """A reply answered in full that fails (json_schema_mismatch) and reports a count no
    token_usage column holds: the failure is recorded without a usage row, on its one
    attempt, rather than left running to be taken over and called (and billed) again. The
    refused statement's values (the job's metadata among them) are not in the log."""
    marker = uuid.uuid4().hex
    ticket = f"ticket-{uuid.uuid4().hex}"
    past_an_integer = 3_000_000_000
    fake_gateway.add_faults(
        Fault(
            kind="normal",
            reply="Paris, probably",
            match=marker,
            usage={"prompt_tokens": past_an_integer, "total_tokens": past_an_integer + 5},
        )
    )
    params = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA},
        }
    }
    job_id = enqueue_completion(
        "glm-5.1",
        [{"role": "user", "content": f"json city {marker}"}],
        params=params,
        metadata={"ticket": ticket},
    )
    job = wait_for_job(job_id)

    assert (job["status"], job["error"]["type"], job["attempts"]) == (
        "failed",
        "json_schema_mismatch",
        1,
    )
    assert job["usage"] is None
    assert sql("SELECT count(*) FROM token_usage WHERE job_id = :j", j=job_id) == [(0,)]
    attempts = sql("SELECT attempt, error_type FROM job_attempts WHERE job_id = :j", j=job_id)
    assert attempts == [(1, "json_schema_mismatch")]
    assert len(sent_with(fake_gateway, marker)) == 1
    log = worker.log()
    assert "the usage of the failed call could not be stored: NumericValueOutOfRange" in log
    assert ticket not in log and str(past_an_integer) not in log


def test_non_strict_json_schema_is_not_checked(fake_gateway: Any) -> None:
    """Without strict, a reply that does not match the schema is still a success."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="normal", reply="not json", match=marker))
    params = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA},
        }
    }
    job = wait_for_job(
        enqueue_completion("glm-5.1", [{"role": "user", "content": marker}], params=params)
    )
    assert (job["status"], job["content"]) == ("succeeded", "not json")
