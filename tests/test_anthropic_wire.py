"""The Anthropic surface without the network: routing, request translation, stream
assembly and usage, each against hand-written Anthropic shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.errors import BrokenStream, GatewayServerError
from service.gateway.anthropic_stream import AnthropicAssembler
from service.gateway.anthropic_wire import to_anthropic
from service.gateway.routing import anthropic_problem, choose_surface
from service.tokens import normalise_usage

TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}},
}
USER = [{"role": "user", "content": "hi"}]
CACHED = [
    {
        "role": "user",
        "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
    }
]
SIGNED = [{"type": "thinking", "thinking": "t", "signature": "sig"}]

ROUTES = [
    ("auto", "claude-sonnet-4-6", USER, {}, "openai"),
    ("auto", "claude-sonnet-4-6", USER, {"tools": [TOOL]}, "anthropic"),
    ("auto", "claude-haiku-4-5", USER, {"thinking": {"type": "enabled"}}, "anthropic"),
    ("auto", "claude-opus-4-7", CACHED, {}, "anthropic"),
    (
        "auto",
        "claude-opus-4-7",
        [{"role": "assistant", "content": "a", "thinking_blocks": SIGNED}, *USER],
        {},
        "anthropic",
    ),
    ("auto", "claude-sonnet-4-6", USER, {"tools": [TOOL], "logprobs": True}, "openai"),
    ("auto", "claude-sonnet-4-6", USER, {"tools": [TOOL], "temperature": 1.5}, "openai"),
    (
        "auto",
        "claude-sonnet-4-6",
        USER,
        {"thinking": {"type": "enabled"}, "max_tokens": 50},
        "openai",
    ),
    ("auto", "deepseek-v4-pro", USER, {"tools": [TOOL]}, "openai"),
    ("auto", "glm-5.1", CACHED, {"thinking": {"type": "enabled"}}, "openai"),
    ("openai", "claude-sonnet-4-6", USER, {"tools": [TOOL]}, "openai"),
    ("anthropic", "deepseek-v4-pro", USER, {}, "anthropic"),
]


@pytest.mark.parametrize(("requested", "model", "messages", "params", "surface"), ROUTES)
def test_routing_table(
    requested: str, model: str, messages: list[Any], params: dict[str, Any], surface: str
) -> None:
    """auto sends claude with tools, thinking or cache hints to anthropic, the rest to openai;
    a named surface is always kept."""
    assert choose_surface(requested, model, messages, params) == surface


@pytest.mark.parametrize(
    ("messages", "params", "field"),
    [
        (USER, {"seed": 1}, "params.seed"),
        (USER, {"thinking": {"type": "enabled"}, "max_tokens": 1000}, "params.max_tokens"),
        (
            USER,
            {"thinking": {"type": "enabled", "budget_tokens": 4000}, "max_completion_tokens": 4000},
            "params.max_completion_tokens",
        ),
        (USER, {"response_format": {"type": "json_object"}}, "params.response_format"),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "A", "format": "wav"}}
                    ],
                }
            ],
            {},
            "messages[0].content[0]",
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f-1"}}]}],
            {},
            "messages[0].content[0].file",
        ),
    ],
)
def test_anthropic_problems_name_the_field(
    messages: list[Any], params: dict[str, Any], field: str
) -> None:
    """What the Anthropic surface cannot carry is named by its path."""
    problem = anthropic_problem(messages, params)
    assert problem is not None and problem[0] == field


def test_translation_of_a_whole_conversation() -> None:
    """System, parts, cache hints, tool calls and results, thinking blocks and the request
    fields become their Anthropic equivalents."""
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "system",
            "content": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}],
        },
        {
            "role": "user",
            "name": "alice",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                {
                    "type": "file",
                    "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "thinking_blocks": SIGNED,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]
    params = {
        "tools": [{**TOOL, "cache_control": {"type": "ephemeral"}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stop": "END",
        "temperature": 0.5,
        "user": "u-1",
        "max_tokens": 3000,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    body = to_anthropic("claude-sonnet-4-6", messages, params)
    assert body["system"] == [
        {"type": "text", "text": "be brief"},
        {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}},
    ]
    user, assistant, results = body["messages"]
    assert user["role"] == "user"
    assert user["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        },
    ]
    assert assistant == {
        "role": "assistant",
        "content": [
            SIGNED[0],
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
    }
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "text", "text": "thanks"},
        ],
    }
    assert body["tools"] == [
        {
            "name": "get_weather",
            "input_schema": {"type": "object"},
            "description": "d",
            "cache_control": {"type": "ephemeral"},
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert (body["temperature"], body["max_tokens"]) == (0.5, 3000)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}


@pytest.mark.parametrize(
    ("params", "max_tokens", "budget"),
    [
        ({}, 8192, None),
        ({"max_tokens": 100}, 100, None),
        ({"thinking": {"type": "enabled"}}, 4096 + 8192, 4096),
        ({"thinking": {"type": "enabled"}, "reasoning_effort": "high"}, 8192 + 8192, 8192),
        ({"thinking": {"type": "enabled"}, "max_tokens": 3000}, 3000, 2999),
    ],
)
def test_max_tokens_and_thinking_budget(
    params: dict[str, Any], max_tokens: int, budget: int | None
) -> None:
    """max_tokens is always sent, and above the thinking budget as Anthropic requires."""
    body = to_anthropic("claude-sonnet-4-6", USER, params)
    assert body["max_tokens"] == max_tokens
    assert (body.get("thinking") or {}).get("budget_tokens") == budget


def events(*frames: dict[str, Any]) -> list[bytes]:
    lines = []
    for frame in frames:
        lines += [f"event: {frame['type']}".encode(), b"data: " + json.dumps(frame).encode(), b""]
    return lines


START = {
    "type": "message_start",
    "message": {
        "id": "msg_01",
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 20,
            "output_tokens": 1,
        },
    },
}


def block(index: int, start: dict[str, Any], *deltas: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def end(reason: str, output: int = 7) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason},
            "usage": {"output_tokens": output},
        },
        {"type": "message_stop"},
    ]


def assemble(lines: list[bytes]) -> Any:
    assembler = AnthropicAssembler()
    for line in lines:
        assembler.feed(line)
    return assembler.result(request_id="rid")


def test_assembles_thinking_text_and_tool_use() -> None:
    """Thinking (signature kept), text and tool_use blocks become reasoning, content and
    OpenAI tool_calls; tool_use becomes finish_reason tool_calls."""
    completion = assemble(
        events(
            START,
            {"type": "ping"},
            *block(
                0,
                {"type": "thinking", "thinking": ""},
                {"type": "thinking_delta", "thinking": "hm"},
                {"type": "signature_delta", "signature": "s1"},
            ),
            *block(
                1,
                {"type": "text", "text": ""},
                {"type": "text_delta", "text": "Let me "},
                {"type": "text_delta", "text": "check."},
            ),
            *block(
                2,
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}},
                {"type": "input_json_delta", "partial_json": '{"city": '},
                {"type": "input_json_delta", "partial_json": '"Paris"}'},
            ),
            *end("tool_use"),
        )
    )
    assert completion.content == "Let me check."
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == [
        {
            "id": "toolu_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert completion.reasoning_content == "hm"
    assert completion.thinking_blocks == [{"type": "thinking", "thinking": "hm", "signature": "s1"}]
    assert completion.surface == "anthropic"
    assert completion.usage == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 20,
        "output_tokens": 7,
    }


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons_become_finish_reasons(reason: str, finish: str) -> None:
    """Anthropic stop reasons map to OpenAI finish reasons."""
    text = block(0, {"type": "text", "text": ""}, {"type": "text_delta", "text": "x"})
    assert assemble(events(START, *text, *end(reason))).finish_reason == finish


def test_streams_without_their_end_are_broken() -> None:
    """No message_stop, or no stop_reason, is a broken stream, never a reply."""
    text = block(0, {"type": "text", "text": ""}, {"type": "text_delta", "text": "x"})
    with pytest.raises(BrokenStream):
        assemble(events(START, *text))
    with pytest.raises(BrokenStream):
        assemble(events(START, *text, {"type": "message_stop"}))
    with pytest.raises(BrokenStream):
        assemble([b"data: {not json"])


def test_error_event_is_a_server_error() -> None:
    """An error event after the 200 is retried like a 5xx."""
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(GatewayServerError) as caught:
        assemble(events(START, error))
    assert caught.value.retryable


def test_anthropic_usage_lands_in_the_same_counts() -> None:
    """input + cache reads + cache writes is the prompt; reads are cached, writes a part of
    the uncached prompt; output_tokens is the completion."""
    counts = normalise_usage(
        {
            "input_tokens": 10,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 20,
            "output_tokens": 7,
        },
        surface="anthropic",
    )
    assert (counts.prompt_tokens, counts.cached_tokens, counts.uncached_prompt_tokens) == (
        35,
        20,
        15,
    )
    assert (counts.cache_write_tokens, counts.completion_tokens, counts.total_tokens) == (5, 7, 42)
    assert counts.issues == []
    assert counts.prompt_tokens == counts.cached_tokens + counts.uncached_prompt_tokens


def test_openai_surface_leaves_thinking_blocks_out() -> None:
    """Thinking blocks (an Anthropic-surface reply's) are not sent to the OpenAI surface;
    everything else goes as sent."""
    from service.gateway.openai_client import openai_messages

    history = [
        *USER,
        {"role": "assistant", "content": "a", "thinking_blocks": SIGNED},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
    ]
    sent = openai_messages(history)
    assert sent == [USER[0], {"role": "assistant", "content": "a"}, history[2]]
    assert history[1]["thinking_blocks"] == SIGNED, "the stored history is not changed"
