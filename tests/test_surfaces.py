"""ezrouter's two surfaces end to end: the real worker, the fake gateway over HTTP, Postgres.

A claude job with tools, thinking or cache hints goes to the Anthropic surface under
``surface=auto`` and comes back OpenAI-shaped; the next turns send tool results and
thinking blocks back; cache writes and reads are stored and priced; retries follow the
same predicate on both surfaces.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from service import InvalidRequest, enqueue_completion
from service.db.session import transaction
from service.fake_gateway import Fault
from service.usage.prices import PriceInput, add_price
from tests.conftest import run_ezq, sql, wait_for_job

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES_PATH = "/anthropic/v1/messages"
CHAT_PATH = "/v1/chat/completions"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def sent_with(fake_gateway: Any, marker: str) -> list[Any]:
    return [r for r in fake_gateway.requests if marker in r.raw.decode()]


def attempts(job_id: Any) -> list[tuple[Any, ...]]:
    return sql(
        "SELECT attempt, surface, http_status, error_type, retryable FROM job_attempts"
        " WHERE job_id = :j ORDER BY attempt",
        j=job_id,
    )


def test_tool_use_goes_to_anthropic_and_the_tool_result_turn_completes(fake_gateway: Any) -> None:
    """A claude job with tools (surface auto) runs on the Anthropic surface and returns a
    usable OpenAI tool call; the next turn with the tool result completes there too."""
    marker = uuid.uuid4().hex
    ask = [{"role": "user", "content": f"weather in Paris {marker}"}]
    params = {"tools": [WEATHER], "temperature": 0.3, "user": "u-9"}
    first = wait_for_job(enqueue_completion("claude-sonnet-4-6", ask, params=params))

    assert first["status"] == "succeeded", first
    assert first["finish_reason"] == "tool_calls"
    (call,) = first["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("toolu_")
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == f'{{"input": "weather in Paris {marker}"}}'
    (sent,) = sent_with(fake_gateway, marker)
    assert sent.path == MESSAGES_PATH
    assert sent.body["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    ]
    assert (sent.body["temperature"], sent.body["metadata"]) == (0.3, {"user_id": "u-9"})
    assert attempts(first["job_id"]) == [(1, "anthropic", 200, None, None)]

    result = {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}
    second = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6",
            [result],
            conversation_id=first["conversation_id"],
            params={"tools": [WEATHER]},
        )
    )
    assert second["status"] == "succeeded", second
    assert second["finish_reason"] == "stop" and second["content"]
    turn2 = sent_with(fake_gateway, marker)[-1]
    assert turn2.path == MESSAGES_PATH
    assistant, answer = turn2.body["messages"][1:]
    assert assistant["content"] == [
        {
            "type": "tool_use",
            "id": call["id"],
            "name": "get_weather",
            "input": {"input": f"weather in Paris {marker}"},
        }
    ]
    assert answer["content"] == [
        {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny, 21 C"}
    ]
    history = sql(
        "SELECT role, tool_calls, tool_call_id FROM messages"
        " WHERE conversation_id = :c ORDER BY seq",
        c=first["conversation_id"],
    )
    assert [row[0] for row in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1][1] == [call], "the history stays OpenAI-shaped"


def test_two_turn_thinking_sends_the_first_turns_thinking_back(fake_gateway: Any) -> None:
    """Turn 2 of a thinking conversation sends turn 1's thinking block, signature intact."""
    marker = uuid.uuid4().hex
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2000}
    first = wait_for_job(
        enqueue_completion(
            "claude-opus-4-7", [{"role": "user", "content": f"think {marker}"}], params=thinking
        )
    )
    assert first["status"] == "succeeded", first
    (blocks,) = sql(
        "SELECT thinking_blocks FROM messages WHERE job_id = :j AND role = 'assistant'",
        j=first["job_id"],
    )[0]
    assert blocks[0]["type"] == "thinking" and blocks[0]["signature"]
    assert first["thinking_blocks"] == blocks, "the job view carries them for own histories"

    second = wait_for_job(
        enqueue_completion(
            "claude-opus-4-7",
            [{"role": "user", "content": "and then?"}],
            conversation_id=first["conversation_id"],
            params=thinking,
        )
    )
    assert second["status"] == "succeeded", second
    turn1, turn2 = sent_with(fake_gateway, marker)
    assert turn1.path == turn2.path == MESSAGES_PATH
    replayed = turn2.body["messages"][1]
    assert replayed["role"] == "assistant"
    assert replayed["content"][0] == blocks[0]
    assert replayed["content"][1] == {"type": "text", "text": first["content"]}


def test_cache_writes_and_reads_are_stored_and_priced(fake_gateway: Any) -> None:
    """cache_control hints send the job to the Anthropic surface; the first call's cache
    write and the second's cache read land in token_usage and are priced exactly."""
    # A model no other test prices: a price added now would outrank theirs.
    model = "claude-sonnet-4-6"
    with transaction() as session:
        add_price(
            session,
            PriceInput(
                model=model,
                input_per_mtok=Decimal("1"),
                cached_input_per_mtok=Decimal("0.1"),
                output_per_mtok=Decimal("5"),
                cache_write_input_per_mtok=Decimal("1.25"),
            ),
        )
    marker = uuid.uuid4().hex
    system = [
        {"type": "text", "text": f"policy {marker} " * 100, "cache_control": {"type": "ephemeral"}}
    ]
    jobs = [
        wait_for_job(
            enqueue_completion(
                model, [{"role": "system", "content": system}, {"role": "user", "content": q}]
            )
        )
        for q in ("first", "second")
    ]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    rows = [
        sql(
            "SELECT prompt_tokens, cached_tokens, uncached_prompt_tokens, cache_write_tokens,"
            " completion_tokens, total_tokens, cost_usd, raw_usage"
            " FROM token_usage WHERE job_id = :j",
            j=job["job_id"],
        )[0]
        for job in jobs
    ]
    (_, c1, _, w1, _, _, _, raw1), (_, c2, _, w2, _, _, _, raw2) = rows
    assert w1 == raw1["cache_creation_input_tokens"] > 0 and c1 == 0
    assert c2 == raw2["cache_read_input_tokens"] == w1 and w2 == 0
    for prompt, cached, uncached, written, completion, total, cost, raw in rows:
        assert prompt == raw["input_tokens"] + cached + written == cached + uncached
        assert total == prompt + completion and completion == raw["output_tokens"]
        expected = (
            Decimal(uncached - written) * 1
            + Decimal(written) * Decimal("1.25")
            + Decimal(cached) * Decimal("0.1")
            + Decimal(completion) * 5
        ) / 1_000_000
        assert cost == expected
    assert attempts(jobs[0]["job_id"])[0][1] == "anthropic"
    view = sql("SELECT cache_write_tokens FROM job_costs WHERE job_id = :j", j=jobs[0]["job_id"])
    assert view == [(w1,)]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=503),
        Fault(kind="drop"),
        Fault(kind="drop_mid_stream", after_chunks=3),
        Fault(kind="error_frame", after_chunks=2),
        # Past the worker's read timeout (EZQ_GATEWAY_READ_TIMEOUT, 1.5 s in the tests):
        # the same timeout as on the OpenAI surface, and a timeout is retried.
        Fault(latency=3.0),
    ],
    ids=["503", "drop", "drop_mid_stream", "error_event", "read_timeout"],
)
def test_anthropic_surface_retries_5xx_and_drops(fake_gateway: Any, fault: Fault) -> None:
    """A 5xx, a dropped connection, a broken stream or a read timeout on the Anthropic
    surface is retried, and the second attempt succeeds."""
    marker = uuid.uuid4().hex
    fault.match = marker
    fake_gateway.add_faults(fault)
    job = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6", [{"role": "user", "content": marker}], params={"tools": [WEATHER]}
        )
    )
    assert job["status"] == "succeeded", job
    rows = attempts(job["job_id"])
    assert [(a, s, r) for a, s, _, _, r in rows] == [(1, "anthropic", True), (2, "anthropic", None)]
    assert len(sent_with(fake_gateway, marker)) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429])
def test_anthropic_surface_never_retries_4xx(fake_gateway: Any, status: int) -> None:
    """Every 4xx on the Anthropic surface fails the job at once as client_error."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(status=status, match=marker))
    job = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6", [{"role": "user", "content": marker}], surface="anthropic"
        )
    )
    assert job["status"] == "failed"
    assert (job["error"]["type"], job["error"]["status"]) == ("client_error", status)
    assert attempts(job["job_id"]) == [(1, "anthropic", status, "client_error", False)]
    assert len(sent_with(fake_gateway, marker)) == 1


def test_named_openai_surface_keeps_claude_tools_there_and_meets_gw001(fake_gateway: Any) -> None:
    """surface=openai is obeyed: claude-sonnet-4-6 with tools hits GW-001 on that surface."""
    marker = uuid.uuid4().hex
    job = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6",
            [{"role": "user", "content": marker}],
            params={"tools": [WEATHER]},
            surface="openai",
        )
    )
    assert job["status"] == "failed" and job["surface"] == "openai"
    assert job["error"]["type"] == "gateway_tool_calls_missing"
    assert attempts(job["job_id"]) == [(1, "openai", 200, "gateway_tool_calls_missing", False)]
    assert [r.path for r in sent_with(fake_gateway, marker)] == [CHAT_PATH]


def test_plain_claude_chat_stays_on_the_openai_surface(fake_gateway: Any) -> None:
    """Without tools, thinking or cache hints, auto keeps claude on the OpenAI surface."""
    marker = uuid.uuid4().hex
    job = wait_for_job(
        enqueue_completion("claude-sonnet-4-6", [{"role": "user", "content": marker}])
    )
    assert job["status"] == "succeeded" and job["surface"] == "auto"
    assert [r.path for r in sent_with(fake_gateway, marker)] == [CHAT_PATH]
    assert attempts(job["job_id"])[0][1] == "openai"


def test_surface_is_checked_at_enqueue() -> None:
    """An unknown surface, or a field the named anthropic surface cannot carry, is refused."""
    with pytest.raises(InvalidRequest) as caught:
        enqueue_completion("glm-5.1", [{"role": "user", "content": "x"}], surface="gemini")
    assert caught.value.field == "surface"
    with pytest.raises(InvalidRequest) as caught:
        enqueue_completion(
            "claude-sonnet-4-6",
            [{"role": "user", "content": "x"}],
            params={"logprobs": True},
            surface="anthropic",
        )
    assert caught.value.field == "params.logprobs"


def test_cli_surface_flag(service_env: dict[str, str], fake_gateway: Any) -> None:
    """ezq enqueue --surface anthropic runs a plain prompt on the Anthropic surface."""
    marker = uuid.uuid4().hex
    done = run_ezq(
        "enqueue",
        "--model",
        "deepseek-v4-pro",
        "--surface",
        "anthropic",
        "--wait",
        marker,
        env=service_env,
    )
    assert done.returncode == 0, done.stderr
    assert [r.path for r in sent_with(fake_gateway, marker)] == [MESSAGES_PATH]
    bad = run_ezq("enqueue", "--model", "m", "--surface", "gemini", "x", env=service_env)
    assert bad.returncode != 0 and "--surface" in bad.stderr


def test_surface_as_a_celery_kwarg(service_env: dict[str, str], fake_gateway: Any) -> None:
    """Another service's send_task may name the surface in its kwargs."""
    from celery import Celery

    from tests.conftest import REDIS_URL

    app = Celery("other-service", broker=REDIS_URL, backend=REDIS_URL)
    marker = uuid.uuid4().hex
    try:
        result = app.send_task(
            "ezq.chat_completion",
            kwargs={
                "model": "kimi-k2.6",
                "messages": [{"role": "user", "content": marker}],
                "surface": "anthropic",
            },
            queue=service_env["EZQ_QUEUE"],
        )
        reply = result.get(timeout=30)
    finally:
        app.close()
    assert reply["status"] == "succeeded" and reply["surface"] == "anthropic"
    assert [r.path for r in sent_with(fake_gateway, marker)] == [MESSAGES_PATH]


def test_model_pattern_default(monkeypatch: pytest.MonkeyPatch, fake_gateway: Any) -> None:
    """EZQ_SURFACE_DEFAULTS gives a model pattern its surface when the request names none."""
    from service.config import get_settings

    monkeypatch.setenv("EZQ_SURFACE_DEFAULTS", "deepseek-*=anthropic,*=auto")
    get_settings.cache_clear()
    try:
        marker = uuid.uuid4().hex
        job = wait_for_job(
            enqueue_completion("deepseek-v4-flash", [{"role": "user", "content": marker}])
        )
        named = enqueue_completion(
            "deepseek-v4-flash", [{"role": "user", "content": "x"}], surface="openai"
        )
    finally:
        monkeypatch.delenv("EZQ_SURFACE_DEFAULTS")
        get_settings.cache_clear()
    assert job["status"] == "succeeded" and job["surface"] == "anthropic"
    assert [r.path for r in sent_with(fake_gateway, marker)] == [MESSAGES_PATH]
    assert sql("SELECT surface FROM jobs WHERE id = :j", j=named) == [("openai",)]


def test_own_history_sends_thinking_blocks_back(fake_gateway: Any) -> None:
    """A producer keeping its own history replays the job view's thinking_blocks on the
    assistant message; they reach the Anthropic surface with their signature."""
    marker = uuid.uuid4().hex
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2000}
    ask = {"role": "user", "content": f"own history {marker}"}
    first = wait_for_job(enqueue_completion("claude-sonnet-4-6", [ask], params=thinking))
    assert first["status"] == "succeeded" and first["thinking_blocks"]
    reply = {
        "role": "assistant",
        "content": first["content"],
        "thinking_blocks": first["thinking_blocks"],
    }
    second = wait_for_job(
        enqueue_completion(
            "claude-sonnet-4-6", [ask, reply, {"role": "user", "content": "go on"}], params=thinking
        )
    )
    assert second["status"] == "succeeded", second
    sent = sent_with(fake_gateway, marker)[-1].body["messages"][1]["content"]
    assert sent[0] == first["thinking_blocks"][0]
