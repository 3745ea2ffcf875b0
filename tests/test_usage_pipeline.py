"""Usage and cost as the real worker writes them, from the fake gateway's streams."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from service import enqueue_completion
from service.db.session import transaction
from service.fake_gateway import Fault
from service.usage.prices import PriceInput, add_price
from tests.conftest import API_KEY, sql, wait_for_job

pytestmark = pytest.mark.usefixtures("worker")

# Models no other test prices: one priced here, one never priced anywhere.
PRICED_MODEL = "glm-5.1"
UNPRICED_MODEL = "gpt-5.1"
THINKING = {"thinking": {"type": "enabled", "budget_tokens": 1024}}


def run(model: str, prompt: str, **kwargs: Any) -> dict[str, Any]:
    job = wait_for_job(enqueue_completion(model, [{"role": "user", "content": prompt}], **kwargs))
    assert job["status"] == "succeeded", job
    return job


def replay_final_usage(gateway: Any, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Send ``body`` again and return the last usage object of the stream, and whether it
    rode on the chunk that carried the finish reason."""
    usage: dict[str, Any] | None = None
    on_finish = False
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{gateway.url}/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            frame = json.loads(line.removeprefix("data: "))
            if frame.get("usage"):
                usage = frame["usage"]
                choices = frame.get("choices") or [{}]
                on_finish = choices[0].get("finish_reason") is not None
    assert usage is not None
    return usage, on_finish


def usage_row(job_id: uuid.UUID | str) -> dict[str, Any]:
    columns = (
        "prompt_tokens, cached_tokens, uncached_prompt_tokens, completion_tokens,"
        " reasoning_tokens, total_tokens, raw_usage, usage_issues, cost_usd, price_id"
    )
    rows = sql(f"SELECT {columns} FROM token_usage WHERE job_id = :j", j=job_id)
    assert len(rows) == 1
    return dict(zip([c.strip() for c in columns.split(",")], rows[0], strict=True))


@pytest.mark.parametrize("placement", ["separate", "finish"])
def test_usage_matches_the_final_chunk(fake_gateway: Any, placement: str) -> None:
    """Each turn's row holds the final chunk's usage, cached and reasoning tokens included
    and the zero ``output_tokens`` ignored, wherever the gateway put the usage."""
    if placement == "finish":
        fake_gateway.add_faults(Fault(kind="usage_on_finish"), Fault(kind="usage_on_finish"))
    first = run("deepseek-v4-pro", "what is a prompt cache?", params=THINKING)
    second = wait_for_job(
        enqueue_completion(
            "deepseek-v4-pro",
            [{"role": "user", "content": "and why does it save money?"}],
            conversation_id=uuid.UUID(first["conversation_id"]),
            params=THINKING,
        )
    )
    assert second["status"] == "succeeded"
    # Only this test's requests: the sweep may run other tests' leftover jobs meanwhile.
    sent = [
        request.body
        for request in fake_gateway.requests
        if request.body["messages"][-1]["content"]
        in ("what is a prompt cache?", "and why does it save money?")
    ]
    assert len(sent) == 2
    # Replaying the same requests on a fresh prompt cache reproduces the same streams.
    fake_gateway.reset()
    if placement == "finish":
        fake_gateway.add_faults(Fault(kind="usage_on_finish"), Fault(kind="usage_on_finish"))
    for job, body in zip((first, second), sent, strict=True):
        final, on_finish = replay_final_usage(fake_gateway, body)
        assert on_finish == (placement == "finish")
        row = usage_row(job["job_id"])
        assert row["raw_usage"] == final
        assert final["output_tokens"] == 0
        assert row["completion_tokens"] == final["completion_tokens"] > 0
        assert row["prompt_tokens"] == final["prompt_tokens"]
        assert row["cached_tokens"] == final["prompt_tokens_details"]["cached_tokens"]
        assert row["uncached_prompt_tokens"] == row["prompt_tokens"] - row["cached_tokens"]
        assert row["reasoning_tokens"] == final["completion_tokens_details"]["reasoning_tokens"]
        assert 0 < row["reasoning_tokens"] < row["completion_tokens"]
        assert row["total_tokens"] == final["total_tokens"]
        assert row["usage_issues"] is None
    assert usage_row(second["job_id"])["cached_tokens"] > 0, "turn 2 re-sends turn 1's prefix"


def expected_cost(row: dict[str, Any], price: PriceInput) -> Decimal:
    return (
        row["uncached_prompt_tokens"] * price.input_per_mtok
        + row["cached_tokens"] * price.cached_input_per_mtok
        + row["completion_tokens"] * price.output_per_mtok
    ) / 1_000_000


def test_cost_comes_from_the_price_in_effect_and_never_changes(fake_gateway: Any) -> None:
    """Usage is priced when written from the price then in effect; a later price (or one
    that starts in the future) leaves it alone and prices only later usage."""
    first_price = PriceInput(PRICED_MODEL, Decimal("0.6"), Decimal("0.11"), Decimal("2.2"))
    second_price = PriceInput(PRICED_MODEL, Decimal("0.7"), Decimal("0.13"), Decimal("2.9"))
    with transaction() as session:
        first_row = add_price(session, first_price)
        now = session.execute(text("SELECT now()")).scalar_one()
        add_price(
            session,
            PriceInput(PRICED_MODEL, Decimal(50), Decimal(50), Decimal(50), now + timedelta(1)),
        )
    assert first_row is not None
    early = run(PRICED_MODEL, "price me")
    early_usage = usage_row(early["job_id"])
    assert early_usage["price_id"] == first_row.id
    assert early_usage["cost_usd"] == expected_cost(early_usage, first_price) > 0

    with transaction() as session:
        second_row = add_price(session, second_price)
    assert second_row is not None
    late = run(PRICED_MODEL, "price me again, with a longer prompt this time")
    late_usage = usage_row(late["job_id"])
    assert late_usage["price_id"] == second_row.id
    assert late_usage["cost_usd"] == expected_cost(late_usage, second_price)
    assert usage_row(early["job_id"]) == early_usage


def test_usage_without_a_price_has_a_null_cost(fake_gateway: Any) -> None:
    """A model without a price gets a NULL cost and no price id, never a zero."""
    job = run(UNPRICED_MODEL, "nobody priced me")
    row = usage_row(job["job_id"])
    assert row["total_tokens"] > 0
    assert (row["cost_usd"], row["price_id"]) == (None, None)


def test_a_retried_job_has_one_usage_row_priced_once(fake_gateway: Any) -> None:
    """Retries never add usage rows: attempts live in job_attempts, usage once per job."""
    with transaction() as session:
        add_price(session, PriceInput("kimi-k2.6", Decimal("1"), Decimal("0.1"), Decimal("4")))
    fake_gateway.add_faults(Fault(status=503), Fault(kind="drop_mid_stream", after_chunks=2))
    job = run("kimi-k2.6", "third time lucky", tenant="retry-usage")
    assert job["attempts"] == 3
    assert sql("SELECT count(*) FROM job_attempts WHERE job_id = :j", j=job["job_id"]) == [(3,)]
    row = usage_row(job["job_id"])
    assert row["cost_usd"] is not None
    assert row["completion_tokens"] == job["usage"]["completion_tokens"]
