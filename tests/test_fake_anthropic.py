"""The fake gateway's Anthropic surface, driven by the official anthropic SDK and raw HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from service.fake_gateway import FakeGateway, Fault

MODEL = "claude-sonnet-4-6"
PATH = "/anthropic/v1/messages"
TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


@pytest.fixture(scope="module")
def shared_gateway() -> Iterator[FakeGateway]:
    with FakeGateway(api_keys={"sk-good"}).start() as gateway:
        yield gateway


@pytest.fixture
def gw(shared_gateway: FakeGateway) -> FakeGateway:
    """The shared gateway with faults, requests and caches cleared."""
    shared_gateway.reset()
    return shared_gateway


@pytest.fixture
def sdk(gw: FakeGateway) -> Iterator[anthropic.Anthropic]:
    """The official SDK on the fake's Anthropic root, retries off."""
    client = anthropic.Anthropic(
        base_url=gw.anthropic_url, api_key="sk-good", max_retries=0, timeout=5
    )
    yield client
    client.close()


def body(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "hello"}],
        **extra,
    }


def final(sdk: anthropic.Anthropic, **extra: Any) -> Any:
    """The assembled message of a streamed call (the surface always answers with SSE)."""
    with sdk.messages.stream(**body(**extra)) as stream:
        return stream.get_final_message()


def raw_events(gw: FakeGateway, headers: dict[str, str], payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gw.origin + PATH, headers=headers, json={**payload, "stream": True}, timeout=5
    )


def test_event_sequence_is_anthropics(gw: FakeGateway) -> None:
    """message_start, ping, content blocks, message_delta and message_stop, each with its
    event name, with the request-id header and usage split as Anthropic sends it."""
    response = raw_events(gw, {"x-api-key": "sk-good"}, body())
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-oneapi-request-id"]
    frames = [block.split("\n") for block in response.text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in frames]
    data = [json.loads(lines[1].removeprefix("data: ")) for lines in frames]
    assert names == [d["type"] for d in data]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    usage = data[0]["message"]["usage"]
    assert set(usage) == {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    }
    assert data[-2]["delta"]["stop_reason"] == "end_turn" and data[-2]["usage"]["output_tokens"] > 0


def test_sdk_stream_gives_text_thinking_and_tool_use(sdk: anthropic.Anthropic) -> None:
    """The SDK's own accumulator reads the fake's thinking (signed) and tool_use blocks."""
    message = final(
        sdk, thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000, tools=[TOOL]
    )
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "tool_use"]
    assert message.stop_reason == "tool_use"
    thinking, tool_use = message.content
    assert thinking.signature and tool_use.name == "get_weather"  # type: ignore[union-attr]
    assert tool_use.input == {"input": "hello"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": "sk-good"}, {"Authorization": "Bearer sk-good"}],
    ids=["x-api-key", "bearer"],
)
def test_both_auth_headers_are_accepted(gw: FakeGateway, headers: dict[str, str]) -> None:
    """The Anthropic surface takes the key as x-api-key or as a Bearer token."""
    assert raw_events(gw, headers, body()).status_code == 200


@pytest.mark.parametrize(
    ("headers", "payload", "status", "code"),
    [
        ({}, body(), 401, "invalid_api_key"),
        ({"x-api-key": "sk-bad"}, body(), 401, "invalid_api_key"),
        ({"x-api-key": "sk-good"}, body(model="gpt-4o"), 403, "access_denied"),
        ({"x-api-key": "sk-good"}, {"model": MODEL, "messages": []}, 400, "invalid_request"),
    ],
)
def test_errors_use_ezrouters_envelope(
    gw: FakeGateway, headers: dict[str, str], payload: dict[str, Any], status: int, code: str
) -> None:
    """Errors carry ezrouter's envelope with the request id, and the x-oneapi-request-id header."""
    response = raw_events(gw, headers, payload)
    assert response.status_code == status
    request_id = response.headers["x-oneapi-request-id"]
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"].endswith(f"(request id: {request_id})")


def test_thinking_must_come_back_signed(gw: FakeGateway) -> None:
    """A thinking block sent back with a signature the fake did not issue is a 400."""
    turn = [
        {"role": "user", "content": "a"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "x", "signature": "forged"},
                {"type": "text", "text": "b"},
            ],
        },
        {"role": "user", "content": "c"},
    ]
    response = raw_events(gw, {"x-api-key": "sk-good"}, body(messages=turn))
    assert response.status_code == 400
    assert "signature" in response.json()["error"]["message"]


def test_tool_results_must_answer_a_tool_use(gw: FakeGateway) -> None:
    """A tool_result whose id no earlier tool_use asked for is a 400."""
    turn = [
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}],
        }
    ]
    assert raw_events(gw, {"x-api-key": "sk-good"}, body(messages=turn)).status_code == 400


def test_answers_sse_even_without_stream(sdk: anthropic.Anthropic) -> None:
    """Like the OpenAI surface, a call without stream still gets SSE, which the SDK's
    non-stream path hands back as a str."""
    assert isinstance(sdk.messages.create(**body()), str)


def test_cache_control_writes_then_reads(sdk: anthropic.Anthropic) -> None:
    """The prefix up to a cache_control breakpoint is written first, read the second time."""
    system = [{"type": "text", "text": "policy " * 200, "cache_control": {"type": "ephemeral"}}]
    first, second = (final(sdk, system=system) for _ in range(2))
    assert first.usage.cache_creation_input_tokens and not first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert not second.usage.cache_creation_input_tokens


def test_faults_apply_on_this_surface(gw: FakeGateway, sdk: anthropic.Anthropic) -> None:
    """Scripted faults hit the Anthropic surface: a 503 envelope, then an in-stream error."""
    gw.add_faults(Fault(status=503), Fault(kind="error_frame", after_chunks=2))
    with pytest.raises(anthropic.InternalServerError) as caught:
        final(sdk)
    assert caught.value.status_code == 503
    with pytest.raises(anthropic.APIError):
        final(sdk)
    assert [r.path for r in gw.requests] == [PATH, PATH]
