"""CPU per gateway call on the OpenAI surface: the SDK's typed create() against the body
posted as it is, by conversation length.

Baseline: ``chat.completions.with_streaming_response.create(...)``, which walks the whole
request against the endpoint's parameter types on every call. Ours: ``OpenAISurface``,
which posts the stored, already validated body through the same SDK client
(``client.post``). Both read the same raw SSE with ``StreamAssembler``, against the fake
gateway in a process of its own, one call at a time, in alternating rounds; printed: the
median over rounds of the client process's CPU per call, and the ratio.

    python -m benchmarks.gateway_request [--calls 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import openai

from benchmarks.load import Gateway
from service.gateway.reading import http_response_of, stream_call
from service.gateway.stream import StreamAssembler

MODEL = "deepseek-v4-flash"
LENGTHS = (1, 10, 40)


def conversation(turns: int) -> list[dict[str, Any]]:
    """``turns`` messages alternating user and assistant, ending on the user's, each a
    short paragraph (what a multi-turn job sends)."""
    text = "Please summarise the following notes in two sentences. " * 4
    last = turns - 1
    return [
        {"role": "user" if (last - i) % 2 == 0 else "assistant", "content": f"{text} ({i})"}
        for i in range(turns)
    ]


def cpu_per_call(call: Callable[[], Any], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    gateway = Gateway(words=None)
    os.environ.setdefault("EZROUTER_API_KEY", "sk-bench")
    os.environ["EZROUTER_BASE_URL"] = gateway.url
    try:
        gateway.latency(0, 1)
        from service.config import get_settings
        from service.gateway.openai_client import OpenAISurface

        surface = OpenAISurface(get_settings())
        client = openai.OpenAI(api_key="sk-bench", base_url=gateway.url, max_retries=0)

        print(f"\nCPU per gateway call (ms), {args.calls} calls x {args.rounds} rounds, medians")
        print(f"{'messages':>9}{'SDK create':>12}{'post as is':>12}{'ratio':>8}")
        for turns in LENGTHS:
            messages = conversation(turns)

            def via_create(messages: list[dict[str, Any]] = messages) -> None:
                stream_call(
                    lambda: http_response_of(
                        client.chat.completions.with_streaming_response.create(
                            model=MODEL,
                            messages=messages,  # type: ignore[arg-type]
                            stream=True,
                            stream_options={"include_usage": True},
                        )
                    ),
                    StreamAssembler(),
                    deadline_s=60,
                )

            def via_post(messages: list[dict[str, Any]] = messages) -> None:
                surface.complete(MODEL, messages, {})

            before: list[float] = []
            after: list[float] = []
            via_create(), via_post()  # connections and imports warm
            for _ in range(args.rounds):
                before.append(cpu_per_call(via_create, args.calls))
                after.append(cpu_per_call(via_post, args.calls))
            b, a = statistics.median(before) * 1e3, statistics.median(after) * 1e3
            print(f"{turns:>9}{b:>12.3f}{a:>12.3f}{a / b:>8.2f}")
        surface.close()
        client.close()
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
