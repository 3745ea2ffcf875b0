"""Assembling the SSE stream: content, tool calls, finish reason, usage, broken streams."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import BrokenStream, GatewayServerError
from service.gateway.stream import StreamAssembler, split_lines

USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 4,
    "total_tokens": 14,
    "prompt_tokens_details": {"cached_tokens": 6},
    "output_tokens": 0,
}


def frame(**fields: Any) -> bytes:
    return b"data: " + json.dumps({"object": "chat.completion.chunk", **fields}).encode()


def delta(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    d: dict[str, Any] = dict(extra)
    if content is not None:
        d["content"] = content
    return frame(id="msg_01x", choices=[{"index": 0, "delta": d, "finish_reason": finish}])


def assemble(lines: list[bytes]) -> StreamAssembler:
    assembler = StreamAssembler()
    for line in lines:
        assembler.feed(line)
    return assembler


def test_usage_on_a_separate_empty_choices_chunk() -> None:
    """Usage on a trailing chunk with "choices": [] is read without indexing choices."""
    a = assemble(
        [
            delta("", role="assistant"),
            b"",
            delta("Hel"),
            delta("lo"),
            delta(finish="stop"),
            frame(id="msg_01x", choices=[], usage=USAGE),
            b"data: [DONE]",
        ]
    )
    result = a.result(request_id="r")
    assert (result.content, result.finish_reason, result.usage) == ("Hello", "stop", USAGE)
    assert result.first_token_at is not None


def test_usage_on_the_finish_chunk() -> None:
    """Usage riding on the chunk that carries finish_reason is read too."""
    finish = frame(
        id="m", choices=[{"index": 0, "delta": {}, "finish_reason": "length"}], usage=USAGE
    )
    result = assemble([delta("Hi"), finish, b"data: [DONE]"]).result(request_id=None)
    assert (result.content, result.finish_reason, result.usage) == ("Hi", "length", USAGE)


def test_keepalive_comments_and_other_fields_are_ignored() -> None:
    """SSE comments and event/id/retry fields are not frames."""
    result = assemble(
        [
            b": ping",
            b"event: message",
            b"id: 3",
            b"retry: 10",
            delta("ok", finish="stop"),
            b"data:[DONE]",
        ]
    ).result(request_id=None)
    assert result.content == "ok"


def test_tool_call_fragments_are_merged() -> None:
    """Tool-call name and argument fragments are concatenated per index."""
    lines = [
        delta(
            tool_calls=[
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        ),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        delta(
            tool_calls=[
                {"index": 1, "id": "call_2", "function": {"name": "now", "arguments": "{}"}}
            ]
        ),
        delta(finish="tool_calls"),
        b"data: [DONE]",
    ]
    result = assemble(lines).result(request_id=None)
    assert result.content is None
    assert result.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]


def test_reasoning_content_is_kept_apart() -> None:
    """Thinking text is assembled separately from the answer."""
    result = assemble(
        [delta(reasoning_content="hmm "), delta("answer", finish="stop"), b"data: [DONE]"]
    ).result(request_id=None)
    assert (result.reasoning_content, result.content) == ("hmm ", "answer")


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [delta("partial")],
        [delta("partial"), delta(finish="stop")],
        [delta("no finish"), b"data: [DONE]"],
    ],
    ids=["empty", "cut-off", "finish-without-done", "done-without-finish"],
)
def test_a_stream_without_its_end_is_broken(lines: list[bytes]) -> None:
    """Only [DONE] after a finish reason makes a reply; anything less is a broken stream."""
    with pytest.raises(BrokenStream):
        assemble(lines).result(request_id="r")


def test_malformed_frame_is_a_broken_stream() -> None:
    """A frame that is not JSON breaks the stream."""
    with pytest.raises(BrokenStream, match="malformed"):
        assemble([delta("a"), b'data: {"id": "msg_01x", "choices": ['])


def test_error_frame_counts_as_a_server_error() -> None:
    """An error frame inside a started stream is an upstream failure (a 5xx)."""
    error = b'data: {"error": {"code": "", "message": "overloaded", "type": "upstream_error"}}'
    with pytest.raises(GatewayServerError, match="overloaded"):
        assemble([delta("a"), error])


def test_split_lines_across_chunk_boundaries() -> None:
    """Lines split across network chunks, and CRLF endings, come out whole."""
    chunks = [b'data: {"a"', b": 1}\r\n\r\nda", b"ta: [DONE]\n"]
    assert list(split_lines(chunks)) == [b'data: {"a": 1}', b"", b"data: [DONE]"]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=40))
def test_any_network_chunking_assembles_the_same_reply(cuts: list[int]) -> None:
    """However the bytes are split into network reads, the assembled reply is the same."""
    body = (
        b"\r\n\r\n".join(
            [
                delta("", role="assistant"),
                *(delta(f"w{i} ") for i in range(30)),
                delta(finish="stop"),
                frame(id="m", choices=[], usage=USAGE),
                b"data: [DONE]",
            ]
        )
        + b"\r\n\r\n"
    )
    bounds = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(bounds)]
    assembler = StreamAssembler()
    for line in split_lines(pieces):
        assembler.feed(line)
    result = assembler.result(request_id=None)
    assert result.content == "".join(f"w{i} " for i in range(30))
    assert result.usage == USAGE


@pytest.mark.parametrize(
    "payload",
    [
        b'data: {"choices": [null]}',
        b'data: {"choices": [{"delta": "text"}]}',
        b'data: {"choices": [{"delta": {"tool_calls": [7]}}]}',
        b'data: {"choices": "abc"}',
        b'data: {"usage": 5}',
        b"data: [1, 2]",
    ],
)
def test_frames_of_an_unexpected_shape_are_a_broken_stream(payload: bytes) -> None:
    """Valid JSON in a shape no chunk has is a broken stream, never a crash of the worker."""
    with pytest.raises(BrokenStream):
        assemble([delta("a"), payload])
