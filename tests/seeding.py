"""Jobs written straight to the test database, in any state, without a broker message."""

from __future__ import annotations

import secrets
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.db import queries
from service.db.session import transaction
from service.usage.synthetic import SeedPlan, seed_usage
from service.validation import validate_request


def seed_job(
    prompt: str = "hello",
    *,
    model: str = "glm-5.1",
    status: str = "queued",
    error_type: str | None = None,
    age_s: float = 0.0,
    **fields: Any,
) -> uuid.UUID:
    """A stored job in ``status`` (created ``age_s`` ago); no message is published."""
    request = validate_request(
        model=model, messages=[{"role": "user", "content": prompt}], **fields
    )
    with transaction() as session:
        job_id, _ = queries.create_job(session, request)
        ended = status in ("succeeded", "failed", "cancelled")
        session.execute(
            text(
                "UPDATE jobs SET status = :status, error_type = CAST(:error_type AS text),"
                " error = CASE WHEN CAST(:error_type AS text) IS NULL THEN NULL"
                " ELSE 'seeded failure' END,"
                " attempts = :attempts,"
                " created_at = now() - make_interval(secs => :age),"
                " finished_at = CASE WHEN :ended THEN now() - make_interval(secs => :age / 2)"
                " END WHERE id = :id"
            ),
            {
                "status": status,
                "error_type": error_type,
                "attempts": 0 if status == "queued" else 1,
                "age": age_s,
                "ended": ended,
                "id": job_id,
            },
        )
    return job_id


def queued_first_turns(engine: Engine, count: int) -> list[uuid.UUID]:
    """``count`` queued first turns on ``engine``'s database, each of its own conversation;
    no message is published."""
    with Session(engine) as session, session.begin():
        return [
            queries.create_job(
                session,
                validate_request(
                    model="glm-5.1", messages=[{"role": "user", "content": f"job {i}"}]
                ),
            )[0]
            for i in range(count)
        ]


def seed_cheap_usage(cost: Decimal, *, model: str, url: str | None = None) -> str:
    """One usage row of a new tenant, written now and costing ``cost`` (which no per-token
    price of a real call would give exactly); returns the tenant."""
    tag = secrets.token_hex(4)
    plan = SeedPlan(
        rows=1,
        days=1,
        tenants=1,
        models=(model,),
        unpriced_models=(model,),
        stuck_jobs=0,
        failed_share=0.0,
        retried_share=0.0,
        tenant_prefix=f"cheap-{tag}",
        tag=tag,
    )
    with transaction(url) as session:
        seed_usage(session, plan)
        # The rollup triggers move the row to today's (this month's) totals with its cost.
        tenant: str = session.execute(
            text(
                "UPDATE token_usage SET cost_usd = :cost, created_at = now()"
                " WHERE tenant LIKE :prefix RETURNING tenant"
            ),
            {"cost": cost, "prefix": f"cheap-{tag}-%"},
        ).scalar_one()
    return tenant
