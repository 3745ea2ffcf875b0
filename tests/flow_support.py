"""Helpers for the flow-control tests: a unique tenant per test, slow calls, and what the
fake gateway saw of them (arrival, end, how many overlapped)."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from service.fake_gateway import Fault
from tests.conftest import run_ezq, sql
from tests.test_faults import wait_until

MODEL = "glm-5.1"

__all__ = [
    "MODEL",
    "calls_of",
    "enqueue_many",
    "max_overlap",
    "new_tenant",
    "price_per_token",
    "slow",
    "wait_until",
]


def price_per_token(model: str, env: dict[str, str] | None = None) -> None:
    """Price ``model`` at $100 per million tokens in and out ($0.0001 a token), since 2020."""
    out = run_ezq(
        "prices",
        "set",
        model,
        "--input",
        "100",
        "--cached-input",
        "100",
        "--output",
        "100",
        "--from",
        "2020-01-01",
        env=env,
    )
    assert out.returncode == 0, out.stderr


def new_tenant() -> str:
    """A tenant of the test's own, so its limits touch no other test's jobs."""
    return f"flow-{secrets.token_hex(4)}"


def slow(fake_gateway: Any, marker: str, *, latency: float, times: int = 100) -> None:
    """Make the gateway's answers to requests holding ``marker`` take ``latency`` seconds."""
    fake_gateway.add_faults(Fault(kind="normal", match=marker, latency=latency, times=times))


def enqueue_many(
    n: int,
    marker: str,
    *,
    tenant: str | None,
    priority: int | None = None,
    model: str = MODEL,
    **kwargs: Any,
) -> list[uuid.UUID]:
    from service.producer import enqueue_completion

    return [
        enqueue_completion(
            model,
            [{"role": "user", "content": f"{marker} #{i}"}],
            tenant=tenant,
            priority=priority,
            **kwargs,
        )
        for i in range(n)
    ]


def calls_of(fake_gateway: Any, marker: str) -> list[tuple[float, float]]:
    """(arrival, end) of every completed call the gateway served for ``marker``."""
    spans = []
    for request in fake_gateway.requests:
        if marker in str(request.body):
            ended = fake_gateway.ended_at(request.request_id)
            if ended is not None:
                spans.append((request.received_at, ended))
    return spans


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most calls the gateway was serving at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    # Ends sort before starts at the same instant: a call that ended as another began did
    # not overlap it.
    events.sort(key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def statuses(job_ids: list[uuid.UUID]) -> dict[str, int]:
    rows = sql(
        "SELECT status, count(*) FROM jobs WHERE id = ANY(:ids) GROUP BY status",
        ids=[str(j) for j in job_ids],
    )
    return {status: count for status, count in rows}


def admission_lag(fake_gateway: Any, marker: str, job_ids: list[uuid.UUID]) -> float:
    """The longest time between a call's admission (the claim, on the database's clock) and
    its arrival at the gateway: how far the gateway's view of a window may shift."""
    admitted = dict(
        sql(
            "SELECT j.input_messages->0->>'content', extract(epoch FROM a.admitted_at)"
            " FROM flow_admissions a JOIN jobs j ON j.id = a.job_id WHERE a.job_id = ANY(:ids)",
            ids=[str(j) for j in job_ids],
        )
    )
    lags = [
        r.received_at - float(admitted[r.body["messages"][-1]["content"]])
        for r in fake_gateway.requests
        if marker in str(r.body)
    ]
    return max(lags)
