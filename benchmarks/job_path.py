"""The database side of the per-job path: claim, record the reply and usage, read the view.

The gateway is replaced by an in-memory one returning a fixed 300-word completion, so the
figures are what ezq itself costs per job on top of the gateway call: wall time, SQL
statements (through SQLAlchemy or on the driver's connection) and transactions (each a
BEGIN and a COMMIT more; a statement on an autocommit connection is none) per job,
against a throwaway database.

    python -m benchmarks.job_path [--jobs 300] [--rollup-tag KEY ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from benchmarks.statements import count_statements

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


class InstantGateway:
    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], surface: str
    ) -> Any:
        from service.completion import Completion

        return Completion(
            content="word " * 300,
            finish_reason="stop",
            tool_calls=None,
            reasoning_content=None,
            usage={
                "prompt_tokens": 120,
                "completion_tokens": 300,
                "total_tokens": 420,
                "prompt_tokens_details": {"cached_tokens": 64},
                "output_tokens": 0,
            },
            first_token_at=datetime.now(UTC),
            request_id="bench",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument(
        "--rollup-tag",
        metavar="KEY",
        action="append",
        default=[],
        help="Roll this metadata tag key up first (usage_rollup_tags), to count its cost.",
    )
    args = parser.parse_args()

    from service.db.migrate import throwaway_database

    with throwaway_database(ADMIN_DSN, prefix="ezq_bench_job") as url:
        os.environ.update(DATABASE_URL=url, EZROUTER_API_KEY="sk-bench")
        if args.rollup_tag:
            from service.db.session import transaction
            from service.usage.tags import add_tag_key

            with transaction() as session:
                for key in args.rollup_tag:
                    add_tag_key(session, key)
        measure(args.jobs)


def measure(jobs: int) -> None:
    from service.config import get_settings
    from service.db import queries
    from service.db.session import dispose_engines, get_engine, transaction
    from service.validation import validate_request
    from service.worker.runner import run_job

    settings = get_settings()
    counts = count_statements(get_engine())
    ids = []
    for i in range(jobs + 30):
        request = validate_request(
            model="glm-5.1", messages=[{"role": "user", "content": f"job {i}"}]
        )
        with transaction() as session:
            ids.append(queries.create_job(session, request)[0])
    gateway = InstantGateway()
    for job_id in ids[:30]:  # warm up pools and statement caches
        run_job(job_id, gateway=gateway, settings=settings, publish=lambda _: None)
    counts.statements = counts.transactions = 0
    times = []
    for job_id in ids[30:]:
        start = time.perf_counter()
        run_job(job_id, gateway=gateway, settings=settings, publish=lambda _: None)
        times.append(time.perf_counter() - start)
    print(f"\nPer-job database path, {jobs} jobs (gateway call excluded)")
    print(
        f"  median {statistics.median(times) * 1e3:.2f} ms   p95 "
        f"{sorted(times)[int(len(times) * 0.95)] * 1e3:.2f} ms   "
        f"{counts.statements / jobs:.1f} SQL statements and"
        f" {counts.transactions / jobs:.1f} transactions"
        " per job"
    )
    dispose_engines()


if __name__ == "__main__":
    main()
