"""A batch file through the whole path: upload, submit, run, results; against its baseline,
the same requests posted one by one to ``POST /v1/jobs``, in the same run.

Starts a real ``ezq api`` and a real worker against the fake gateway in a throwaway
database, and reports: submit time (upload and create), lines per second until the batch
completed, and the API process's peak resident memory (VmHWM) before and after the
upload, so a file held whole in memory would show.

    python -m benchmarks.batch [--lines 10000] [--baseline 500] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from service.fake_gateway import FakeGateway, Fault

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
MODEL = "deepseek-v4-flash"
TOKEN = "bench-token-" + secrets.token_hex(8)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far (Linux /proc), in MiB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) / 1024
    return float("nan")


def request_line(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"line-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"summarise item {i} in one line"}],
            "max_tokens": 50,
        },
    }


def write_file(lines: int, *, pad: int = 0) -> Path:
    """A batch file of ``lines`` requests, each prompt padded by ``pad`` characters."""
    path = Path(tempfile.mkdtemp()) / "bench.jsonl"
    with path.open("wb") as out:
        for i in range(lines):
            line = request_line(i)
            line["body"]["messages"][0]["content"] += " " + "x" * pad
            out.write(json.dumps(line).encode() + b"\n")
    return path


def upload_only(client: httpx.Client, path: Path) -> float:
    """Upload (and check) a file without running it; seconds taken."""
    start = time.perf_counter()
    with path.open("rb") as stream:
        answer = client.post(
            "/v1/files", files={"file": ("big.jsonl", stream)}, data={"purpose": "batch"}
        )
    answer.raise_for_status()
    return time.perf_counter() - start


def wait_ended(client: httpx.Client, ids: list[str]) -> None:
    pending = list(ids)
    while pending:
        pending = [j for j in pending if client.get(f"/v1/jobs/{j}").json()["status"] in
                   ("queued", "running", "retrying")]  # fmt: skip
        if pending:
            time.sleep(0.2)


def baseline(client: httpx.Client, count: int) -> dict[str, float]:
    """``count`` requests posted one at a time, then run to the end."""
    latencies, ids = [], []
    start = time.perf_counter()
    for i in range(count):
        body = request_line(i)["body"]
        job = {"model": body["model"], "messages": body["messages"], "params": {"max_tokens": 50}}
        sent = time.perf_counter()
        answer = client.post("/v1/jobs", json=job)
        latencies.append(time.perf_counter() - sent)
        answer.raise_for_status()
        ids.append(answer.json()["job_id"])
    submitted = time.perf_counter() - start
    wait_ended(client, ids)
    elapsed = time.perf_counter() - start
    return {
        "submit s": submitted,
        "ms per line": statistics.median(latencies) * 1e3,
        "lines/s": count / elapsed,
    }


def batch(client: httpx.Client, path: Path, lines: int) -> dict[str, float]:
    start = time.perf_counter()
    with path.open("rb") as stream:
        uploaded = client.post(
            "/v1/files", files={"file": ("bench.jsonl", stream)}, data={"purpose": "batch"}
        )
    uploaded.raise_for_status()
    upload_s = time.perf_counter() - start
    created = client.post(
        "/v1/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    created.raise_for_status()
    submitted = time.perf_counter() - start
    batch_id = created.json()["id"]
    while True:
        view = client.get(f"/v1/batches/{batch_id}").json()
        if view["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.5)
    elapsed = time.perf_counter() - start
    content = client.get(f"/v1/files/{view['output_file_id']}/content")
    return {
        "upload s": upload_s,
        "submit s": submitted,
        "ms per line": submitted / lines * 1e3,
        "lines/s": lines / elapsed,
        "output lines": float(len(content.content.splitlines())),
        "failed": float(view["request_counts"]["failed"]),
    }


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=500, help="jobs posted one by one")
    parser.add_argument("--latency", type=float, default=0.05, help="gateway seconds per call")
    parser.add_argument(
        "--big-mib", type=int, default=100, help="then upload (only) a file this large; 0: skip"
    )
    args = parser.parse_args()

    from service.db.migrate import throwaway_database

    path = write_file(args.lines)
    logs = Path(tempfile.mkdtemp())
    port = 18000 + secrets.randbelow(2000)
    with (
        throwaway_database(ADMIN_DSN, prefix="ezq_bench_batch") as url,
        FakeGateway(reply_words=20).start() as gateway,
    ):
        if args.latency > 0:
            calls = args.lines + args.baseline
            gateway.add_faults(Fault(kind="normal", latency=args.latency, times=calls))
        env = {
            "DATABASE_URL": url,
            "EZROUTER_BASE_URL": gateway.url,
            "EZROUTER_API_KEY": "sk-bench",
            "EZQ_API_TOKENS": TOKEN,
            "EZQ_QUEUE": f"ezq-bench-{secrets.token_hex(4)}",
            "EZQ_LOG_LEVEL": "WARNING",
        }
        api = start(["api", "--port", str(port)], env, logs / "api.log")
        worker = start(["worker", "--loglevel", "WARNING"], env, logs / "worker.log")
        try:
            client = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=600,
            )
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (logs / "api.log").read_text()
                time.sleep(0.2)
            time.sleep(3)  # the worker's start-up
            idle = peak_rss_mib(api.pid)
            base = baseline(client, min(args.baseline, args.lines))
            before = peak_rss_mib(api.pid)
            ours = batch(client, path, args.lines)
            after = peak_rss_mib(api.pid)
            big_s = big_after = 0.0
            if args.big_mib:
                # 50,000 lines of about args.big_mib MiB: the largest file there may be.
                big = write_file(50_000, pad=max(0, args.big_mib * 2**20 // 50_000 - 200))
                big_s = upload_only(client, big)
                big_after = peak_rss_mib(api.pid)
        finally:
            for process in (api, worker):
                process.terminate()
                process.wait(timeout=60)

    size = path.stat().st_size / 2**20
    print(f"\n{args.lines}-line batch file ({size:.1f} MiB), gateway latency {args.latency}s")
    print(f"  {'path':<42}{'submit s':>10}{'ms/line':>10}{'lines/s':>10}")
    label = f"POST /v1/jobs, {min(args.baseline, args.lines)} one by one (baseline)"
    print(
        f"  {label:<42}{base['submit s']:>10.2f}{base['ms per line']:>10.2f}{base['lines/s']:>10.1f}"
    )
    label = f"batch: upload {ours['upload s']:.2f}s + create"
    print(
        f"  {label:<42}{ours['submit s']:>10.2f}{ours['ms per line']:>10.2f}{ours['lines/s']:>10.1f}"
    )
    print(
        f"  submit per line, batch / one by one: {ours['ms per line'] / base['ms per line']:.3f}x"
    )
    print(f"  output lines {int(ours['output lines'])}, failed {int(ours['failed'])}")
    print(
        f"  API peak RSS: idle {idle:.0f} MiB, after the baseline {before:.0f} MiB,"
        f" after the batch {after:.0f} MiB (file {size:.1f} MiB)"
    )
    if args.big_mib:
        print(
            f"  upload of a 50,000-line file of ~{args.big_mib} MiB: {big_s:.1f} s,"
            f" API peak RSS after it {big_after:.0f} MiB"
        )


if __name__ == "__main__":
    main()
