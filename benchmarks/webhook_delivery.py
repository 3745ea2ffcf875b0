"""One webhook attempt end to end: claim, sign, POST, record, against the same path before
its claim and record were one statement each.

Baseline: the claim and the record of an attempt as they were before, each an ORM
transaction (the row loaded ``FOR UPDATE``, the clock read, the changes flushed: five
round trips for the claim, five for the record), run through the same ``deliver``.
Ours: each one statement on an autocommit connection. Both POST the same signed events to
the same receiver (a process of its own, answering 204), one delivery at a time, in
alternating rounds over a throwaway database; printed: the medians over rounds of the
wall time and this process's CPU per delivery, and the statements and transactions each
sends to Postgres.

    python -m benchmarks.webhook_delivery [--deliveries 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from benchmarks.statements import count_statements

ADMIN_DSN = os.environ.get("EZQ_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

_RECEIVER = """
import ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) > 1:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def receiver(tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """A URL answering 204 to every POST, served by another process (over TLS with
    ``tls``, a certificate and its key)."""
    args = [str(tls[0]), str(tls[1])] if tls else []
    process = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}/hook"
    finally:
        process.kill()
        process.wait()


# --- the baseline: the claim and the record before they were one statement each ------


def orm_claim(
    session: Session, delivery_id: uuid.UUID, *, lease_seconds: float, early_seconds: float = 1.0
) -> Any:
    from service.db.models import WebhookAttempt, WebhookDelivery
    from service.webhooks.outbox import LOST_ATTEMPT, Claimed, Skipped

    row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None:
        return Skipped(delivery_id, "missing")
    if row.status != "pending":
        return Skipped(delivery_id, row.status)
    now = session.execute(select(func.now())).scalar_one()
    if row.lease_expires_at is not None and row.lease_expires_at > now:
        return Skipped(delivery_id, "busy")
    if row.next_attempt_at is None or row.next_attempt_at > now + timedelta(seconds=early_seconds):
        return Skipped(delivery_id, "not due")
    if row.lease_expires_at is not None:
        session.execute(
            update(WebhookAttempt)
            .where(
                WebhookAttempt.delivery_id == row.id,
                WebhookAttempt.attempt == row.attempts,
                WebhookAttempt.finished_at.is_(None),
            )
            .values(finished_at=now, error=LOST_ATTEMPT)
        )
    row.attempts += 1
    row.round_attempts += 1
    row.lease_expires_at = now + timedelta(seconds=lease_seconds)
    session.add(WebhookAttempt(delivery_id=row.id, attempt=row.attempts, started_at=now))
    return Claimed(
        delivery_id=row.id,
        job_id=row.job_id,
        event_type=row.event_type,
        url=row.url,
        payload=row.payload,
        attempt=row.attempts,
        round_attempt=row.round_attempts,
    )


def orm_finish(
    session: Session,
    claimed: Any,
    result: Any,
    decision: Any,
    *,
    retry_delay: float | None,
    published: bool,
) -> bool:
    from service.db.models import WebhookAttempt, WebhookDelivery
    from service.webhooks.retry import Delivered, GiveUp

    row = session.get(WebhookDelivery, claimed.delivery_id, with_for_update=True)
    if (
        row is None
        or row.status != "pending"
        or row.attempts != claimed.attempt
        or row.lease_expires_at is None
    ):
        return False
    now = session.execute(select(func.now())).scalar_one()
    session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == row.id, WebhookAttempt.attempt == claimed.attempt)
        .values(
            finished_at=now,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
        )
    )
    row.lease_expires_at = None
    row.last_status_code = result.status_code
    row.last_error = result.error
    if isinstance(decision, Delivered):
        row.status = "delivered"
        row.delivered_at = now
        row.next_attempt_at = row.dispatched_at = None
    elif isinstance(decision, GiveUp):
        row.status = "failed"
        row.next_attempt_at = row.dispatched_at = None
    else:
        assert retry_delay is not None
        row.next_attempt_at = now + timedelta(seconds=retry_delay)
        row.dispatched_at = row.next_attempt_at if published else None
    return True


@contextlib.contextmanager
def baseline() -> Iterator[None]:
    """``deliver`` as it was: the two ORM transactions instead of the two statements."""
    from service.db.session import transaction
    from service.webhooks import delivery, outbox

    with (
        mock.patch.object(outbox, "claim", orm_claim),
        mock.patch.object(outbox, "finish", orm_finish),
        mock.patch.object(delivery, "autocommit", transaction),
    ):
        yield


# --- the run -------------------------------------------------------------------------


def new_deliveries(url: str, count: int) -> list[uuid.UUID]:
    """``count`` due deliveries of as many succeeded jobs' events, to ``url``."""
    from service.db import queries
    from service.db.session import transaction
    from service.validation import validate_request
    from service.webhooks import outbox

    ids = []
    with transaction() as session:
        for i in range(count):
            request = validate_request(
                model="glm-5.1", messages=[{"role": "user", "content": f"hook {i}"}]
            )
            job_id, _ = queries.create_job(session, request)
            delivery_id = outbox.add_delivery(
                session,
                job_id=job_id,
                event_type="job.succeeded",
                url=url,
                payload=json.dumps({"type": "job.succeeded", "data": {"id": str(job_id)}}),
            )
            assert delivery_id is not None
            ids.append(delivery_id)
    return ids


def run_round(url: str, count: int, counts: Any) -> dict[str, float]:
    from service.config import get_settings
    from service.webhooks.delivery import deliver

    settings = get_settings()
    ids = new_deliveries(url, count)
    counts.statements = counts.transactions = 0
    walls = []
    cpu_started = time.process_time()
    for delivery_id in ids:
        started = time.perf_counter()
        outcome = deliver(delivery_id, settings=settings, publish=lambda *_: None)
        walls.append(time.perf_counter() - started)
        assert outcome.status == "delivered", outcome
    return {
        "wall_ms": statistics.median(walls) * 1e3,
        "cpu_ms": (time.process_time() - cpu_started) / count * 1e3,
        "statements": counts.statements / count,
        "transactions": counts.transactions / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from service.db.migrate import throwaway_database

    with throwaway_database(ADMIN_DSN, prefix="ezq_bench_hook") as db, receiver() as url:
        os.environ.update(
            DATABASE_URL=db,
            EZROUTER_API_KEY="sk-bench",
            WEBHOOK_SECRET="whsec_" + "YmVuY2htYXJrLXNlY3JldC1mb3Itd2ViaG9va3MtMQ==",
            WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        )
        from service.db.session import dispose_engines, get_engine

        counts = count_statements(get_engine())
        run_round(url, 30, counts)  # warm up pools and statement caches, both ways
        with baseline():
            run_round(url, 30, counts)
        before: list[dict[str, float]] = []
        after: list[dict[str, float]] = []
        for _ in range(args.rounds):
            with baseline():
                before.append(run_round(url, args.deliveries, counts))
            after.append(run_round(url, args.deliveries, counts))
        dispose_engines()

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"\nOne webhook attempt, {args.deliveries} deliveries x {args.rounds} rounds")
    print(f"  {'':28} {'wall ms':>8} {'cpu ms':>8} {'statements':>11} {'transactions':>13}")
    for name, runs in (("ORM transactions (before)", before), ("one statement each", after)):
        print(
            f"  {name:28} {median(runs, 'wall_ms'):8.2f} {median(runs, 'cpu_ms'):8.2f}"
            f" {median(runs, 'statements'):11.1f} {median(runs, 'transactions'):13.1f}"
        )
    print(
        f"  ratio (after / before): wall {median(after, 'wall_ms') / median(before, 'wall_ms'):.2f},"
        f" cpu {median(after, 'cpu_ms') / median(before, 'cpu_ms'):.2f}"
    )


if __name__ == "__main__":
    main()
