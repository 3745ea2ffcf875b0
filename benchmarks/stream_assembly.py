"""Per-chunk cost of assembling a stream: the SDK's typed chunks against raw frames.

Baseline: what the openai SDK does with ``stream=True`` (its SSE decoder and a typed
``ChatCompletionChunk`` per frame). Ours: ``split_lines`` + ``StreamAssembler`` on the
raw bytes from ``with_streaming_response``. Both run side by side on the same input, first
in memory (pure CPU), then end to end over loopback against the fake gateway.

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

import httpx2
import openai
from openai._streaming import Stream
from openai.types.chat import ChatCompletionChunk

from service.config import Settings
from service.fake_gateway import FakeGateway
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
    title: str, chunks: int, baseline: tuple[float, float], ours: tuple[float, float]
) -> None:
    print(f"\n{title}")
    print(f"  {'path':<34}{'per call':>12}{'per chunk':>12}{'peak mem':>12}")
    for name, (t, mem) in (
        ("SDK typed chunks (baseline)", baseline),
        ("raw frames + StreamAssembler", ours),
    ):
        print(f"  {name:<34}{t * 1e3:>9.2f} ms{t / chunks * 1e6:>9.2f} us{mem:>9.0f} KiB")
    print(
        f"  speed-up: {baseline[0] / ours[0]:.2f}x   memory: {baseline[1] / max(ours[1], 1):.2f}x less"
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
