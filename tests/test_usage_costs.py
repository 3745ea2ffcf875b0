"""The worker's usage INSERT: priced in the same statement, issues kept, written once."""

from __future__ import annotations

import secrets
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from service.db.session import transaction
from service.usage.costs import insert_priced_usage
from service.usage.prices import PriceInput, add_price
from service.usage.synthetic import SeedPlan, seed_usage
from tests.conftest import sql

pytestmark = pytest.mark.usefixtures("service_env")


def usage_for(job: tuple[Any, ...], **overrides: Any) -> dict[str, Any]:
    job_id, conversation_id, model, tenant = job
    values = {
        "job_id": job_id,
        "conversation_id": conversation_id,
        "model": model,
        "tenant": tenant,
        "meta": {"feature": "costs"},
        "prompt_tokens": 25231,
        "cached_tokens": 24901,
        "uncached_prompt_tokens": 330,
        "completion_tokens": 1000,
        "reasoning_tokens": None,
        "total_tokens": 26231,
        "raw_usage": {"prompt_tokens": 25231, "output_tokens": 0},
        "usage_issues": None,
    }
    return values | overrides


def test_insert_prices_from_the_price_in_effect_keeps_issues_and_writes_once() -> None:
    """The newest price already in effect is used (not a future one), issues are stored as
    a list and their absence as SQL NULL, and a second insert for the job does nothing."""
    tag = secrets.token_hex(3)
    model = f"costs-{tag}"
    plan = SeedPlan(
        rows=4,
        failed_share=1.0,
        days=1,
        tenants=1,
        models=(model,),
        unpriced_models=(model,),
        stuck_jobs=0,
        tenant_prefix=tag,
        tag=tag,
    )
    with transaction() as session:
        end = seed_usage(session, plan)
        for hours, price in ((-48, "1"), (-1, "3"), (24, "100")):
            add_price(
                session,
                PriceInput(
                    model,
                    Decimal(price),
                    Decimal("0.3"),
                    Decimal("15"),
                    end + timedelta(hours=hours),
                ),
            )
    jobs = sql(
        "SELECT id, conversation_id, model, tenant FROM jobs"
        " WHERE model = :m AND status = 'failed' ORDER BY id LIMIT 2",
        m=model,
    )
    issue = ["total_tokens 26231 != prompt_tokens + completion_tokens 26232"]
    with transaction() as session:
        insert_priced_usage(session, **usage_for(jobs[0], usage_issues=issue))
        insert_priced_usage(session, **usage_for(jobs[1]))
    with transaction() as session:
        insert_priced_usage(session, **usage_for(jobs[0], completion_tokens=1))
        kinds = session.execute(
            text(
                "SELECT job_id, jsonb_typeof(usage_issues), usage_issues, cost_usd,"
                " completion_tokens, p.input_per_mtok FROM token_usage u"
                " JOIN model_prices p ON p.id = u.price_id WHERE u.model = :m ORDER BY job_id"
            ),
            {"m": model},
        ).all()
    expected_cost = (330 * Decimal(3) + 24901 * Decimal("0.3") + 1000 * Decimal(15)) / 10**6
    assert [tuple(row[1:]) for row in kinds] == [
        ("array", issue, expected_cost, 1000, Decimal(3)),
        (None, None, expected_cost, 1000, Decimal(3)),
    ]
