"""Per-chunk cost of assembling a stream: the SDK's typed chunks against raw frames.

Baseline: what the openai SDK does with ``stream=True`` (its SSE decoder and a typed
``ChatCompletionChunk`` per frame). Ours: ``split_lines`` + ``StreamAssembler`` on the
raw bytes from ``with_streaming_response``. Both run side by side on the same input, first
in memory (pure CPU), then end to end over loopback against the fake gateway.

The same comparison for the Anthropic surface: the anthropic SDK's typed events
(``RawMessageStreamEvent`` per event), its ``MessageStream`` accumulator (what
``messages.stream()`` gives), and ours (``AnthropicAssembler`` on the raw lines).

    python -m benchmarks.stream_assembly [--chunks 500] [--calls 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
from anthropic._streaming import Stream as AnthropicStream
from anthropic.lib.streaming import MessageStream
from anthropic.types import RawMessageStreamEvent
from openai._streaming import Stream
from openai.types.chat import ChatCompletionChunk

from service.config import Settings
from service.fake_gateway import FakeGateway
from service.gateway.anthropic_stream import AnthropicAssembler
from service.gateway.client import GatewayClient
from service.gateway.stream import StreamAssembler, split_lines

MODEL = "claude-sonnet-4-6"


def sse_body(chunks: int) -> bytes:
    frames = []
    base = {"id": "msg_01abc", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    frames.append(
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
    )
    for i in range(chunks):
        frames.append(
            {
                **base,
                "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}],
            }
        )
    frames.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": chunks,
        "total_tokens": 100 + chunks,
        "prompt_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
    }
    frames.append({**base, "choices": [], "usage": usage})
    body = "".join(f"data: {json.dumps(f)}\n\n" for f in frames) + "data: [DONE]\n\n"
    return body.encode()


def sdk_typed(client: openai.OpenAI, body: bytes) -> str:
    response = httpx2.Response(
        200,
        content=body,
        headers={"content-type": "text/event-stream"},
        request=httpx2.Request("POST", "http://fake/v1/chat/completions"),
    )
    parts: list[str] = []
    for chunk in Stream(cast_to=ChatCompletionChunk, response=response, client=client):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


def network_pieces(body: bytes) -> list[bytes]:
    # Network reads arrive in pieces; 4 KiB pieces approximate httpx's chunking.
    return [body[i : i + 4096] for i in range(0, len(body), 4096)]


def raw_frames(pieces: list[bytes]) -> str:
    assembler = StreamAssembler()
    for line in split_lines(pieces):
        assembler.feed(line)
    return assembler.result(request_id=None).content or ""


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median seconds per call, and peak traced memory of one call in KiB."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(samples), peak / 1024


def report(
    title: str,
    chunks: int,
    baseline: tuple[float, float],
    ours: tuple[float, float],
    names: tuple[str, str] = ("SDK typed chunks (baseline)", "raw frames + StreamAssembler"),
    extra: tuple[str, tuple[float, float]] | None = None,
) -> None:
    print(f"\n{title}")
    print(f"  {'path':<38}{'per call':>12}{'per event':>12}{'peak mem':>12}")
    rows = [(names[0], baseline), *([extra] if extra else []), (names[1], ours)]
    for name, (t, mem) in rows:
        print(f"  {name:<38}{t * 1e3:>9.2f} ms{t / chunks * 1e6:>9.2f} us{mem:>9.0f} KiB")
    print(
        f"  speed-up: {baseline[0] / ours[0]:.2f}x   memory: {baseline[1] / max(ours[1], 1):.2f}x less"
    )


def anthropic_body(deltas: int) -> bytes:
    """An Anthropic Messages stream: one text block of ``deltas`` text_delta events."""
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_01abc",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 100, "output_tokens": 1},
            },
        },
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f"word{i} "},
            }
            for i in range(deltas)
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": deltas},
        },
        {"type": "message_stop"},
    ]
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    return body.encode()


def _anthropic_response(body: bytes) -> httpx2.Response:
    return httpx2.Response(
        200,
        content=body,
        headers={"content-type": "text/event-stream"},
        request=httpx2.Request("POST", "http://fake/anthropic/v1/messages"),
    )


def anthropic_typed(client: anthropic.Anthropic, body: bytes) -> str:
    parts: list[str] = []
    stream = AnthropicStream(
        cast_to=RawMessageStreamEvent, response=_anthropic_response(body), client=client
    )  # type: ignore[arg-type]
    for event in stream:
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            parts.append(event.delta.text)
    return "".join(parts)


def anthropic_accumulated(client: anthropic.Anthropic, body: bytes) -> str:
    raw = AnthropicStream(
        cast_to=RawMessageStreamEvent, response=_anthropic_response(body), client=client
    )  # type: ignore[arg-type]
    message = MessageStream(raw, anthropic.NOT_GIVEN).get_final_message()
    return "".join(b.text for b in message.content if b.type == "text")


def anthropic_raw(pieces: list[bytes]) -> str:
    assembler = AnthropicAssembler()
    for line in split_lines(pieces):
        assembler.feed(line)
    return assembler.result(request_id=None).content or ""


def anthropic_section(deltas: int, calls: int) -> None:
    body = anthropic_body(deltas)
    client = anthropic.Anthropic(
        api_key="sk-bench", base_url="http://127.0.0.1:9/anthropic", max_retries=0
    )
    pieces = network_pieces(body)
    assert (
        anthropic_typed(client, body)
        == anthropic_raw(pieces)
        == anthropic_accumulated(client, body)
    )
    events = deltas + 6
    report(
        f"Anthropic surface in memory: {events} events, {len(body)} bytes (median of 30)",
        events,
        timed(lambda: anthropic_typed(client, body), 30),
        timed(lambda: anthropic_raw(pieces), 30),
        names=("SDK typed events (baseline)", "raw lines + AnthropicAssembler"),
        extra=(
            "SDK MessageStream accumulator",
            timed(lambda: anthropic_accumulated(client, body), 30),
        ),
    )
    with FakeGateway(reply_words=deltas, chunk_chars=6).start() as gateway:
        settings = Settings(ezrouter_api_key="sk-bench", ezrouter_base_url=gateway.url)
        ours = GatewayClient(settings)
        sdk = anthropic.Anthropic(api_key="sk-bench", base_url=gateway.anthropic_url, max_retries=0)
        messages = [{"role": "user", "content": "benchmark"}]

        def via_sdk() -> None:
            parts = []
            stream = sdk.messages.create(
                model=MODEL, max_tokens=8192, messages=messages, stream=True
            )  # type: ignore[arg-type]
            for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)

        def via_ours() -> None:
            ours.complete(MODEL, messages, {}, "anthropic")

        with httpx2.Client() as http:
            raw = http.post(
                f"{gateway.anthropic_url}/v1/messages",
                headers={"x-api-key": "sk-bench"},
                json={"model": MODEL, "max_tokens": 8192, "messages": messages, "stream": True},
            ).content
        frames = sum(1 for line in raw.split(b"\n") if line.startswith(b"data:"))
        report(
            f"Anthropic surface over loopback: {frames} events per call (median of {calls})",
            frames,
            timed(via_sdk, calls),
            timed(via_ours, calls),
            names=("SDK typed events (baseline)", "raw lines + AnthropicAssembler"),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()

    body = sse_body(args.chunks)
    client = openai.OpenAI(api_key="sk-bench", base_url="http://127.0.0.1:9/v1", max_retries=0)
    pieces = network_pieces(body)
    assert sdk_typed(client, body) == raw_frames(pieces)
    report(
        f"In memory: {args.chunks} content chunks, {len(body)} bytes (median of 30)",
        args.chunks,
        timed(lambda: sdk_typed(client, body), 30),
        timed(lambda: raw_frames(pieces), 30),
    )

    words = args.chunks
    with FakeGateway(reply_words=words, chunk_chars=6).start() as gateway:
        settings = Settings(ezrouter_api_key="sk-bench", ezrouter_base_url=gateway.url)
        ours = GatewayClient(settings)
        sdk = openai.OpenAI(api_key="sk-bench", base_url=gateway.url, max_retries=0)
        messages = [{"role": "user", "content": "benchmark"}]

        def via_sdk() -> None:
            parts = []
            stream = sdk.chat.completions.create(
                model=MODEL,
                messages=messages,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)

        def via_ours() -> None:
            ours.complete(MODEL, messages, {})

        frames = len(gateway_frames(gateway.url))
        report(
            f"Over loopback against the fake gateway: {frames} frames per call (median of {args.calls})",
            frames,
            timed(via_sdk, args.calls),
            timed(via_ours, args.calls),
        )
    anthropic_section(args.chunks, args.calls)


def gateway_frames(url: str) -> list[bytes]:
    with httpx2.Client() as http:
        body = http.post(
            f"{url}/chat/completions",
            headers={"authorization": "Bearer sk-bench"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "benchmark"}]},
        ).content
    return [line for line in body.split(b"\n") if line.startswith(b"data:")]


if __name__ == "__main__":
    main()
