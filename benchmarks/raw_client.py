"""The baseline of the load benchmark: bare openai SDK streaming calls from a thread pool.

No queue, no database: what a service calling ezrouter directly would get. Run as its own
process so that its CPU is measured alone; prints one JSON line.

    python -m benchmarks.raw_client --url http://127.0.0.1:8765/v1 --concurrency 32 --jobs 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from benchmarks.procstat import cpu_seconds, peak_rss_mb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="deepseek-v4-flash")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--jobs", type=int, required=True)
    args = parser.parse_args()

    client = openai.OpenAI(api_key="sk-bench", base_url=args.url, max_retries=0, timeout=120)

    def call(i: int) -> bool:
        try:
            stream = client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": f"raw call {i}"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = [
                chunk.choices[0].delta.content or ""
                for chunk in stream
                if chunk.choices and chunk.choices[0].delta
            ]
            return bool("".join(parts))
        except openai.OpenAIError:
            return False

    pid = os.getpid()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(call, range(min(args.concurrency, 8))))  # connections and imports warm
        cpu0, start = cpu_seconds(pid), time.perf_counter()
        results = list(pool.map(call, range(args.jobs)))
        elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "cpu_s": cpu,
                "failed": results.count(False),
                "rss_mb": peak_rss_mb(pid),
            }
        )
    )


if __name__ == "__main__":
    main()
