"""Limits and budgets as records: set, list and delete, shared by the CLI and the HTTP API.

Each call is one short transaction; workers read the tables at every claim, so a change
applies to the next claim in every process, without a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from service import constants as c
from service.config import get_settings
from service.db import flow as flow_db
from service.db.models import ANY
from service.db.session import transaction
from service.errors import InvalidRequest
from service.validation import checked_tenant

_MAX_INT = 2**31 - 1  # the columns are Postgres integers
_MAX_USD = Decimal(10) ** 13  # numeric(20, 6)
# The decimals a budget keeps (numeric(20, 6)): a finer amount would be rounded when stored.
USD_SCALE = 6
_MAX_NAME = 500

# Each caller names the fields as its users typed them: the HTTP body's fields by default,
# the command line's flags when it passes its own (e.g. {"max_concurrent": "--concurrency"}).
Names = Mapping[str, str]


def _called(names: Names | None, field: str) -> str:
    return (names or {}).get(field, field)


def _name(field: str, value: str | None) -> str:
    if value is None or value == "":
        return ANY
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string, not {type(value).__name__}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidRequest(field, "must be valid Unicode (no lone surrogates)") from None
    if len(value) > _MAX_NAME or "\x00" in value:
        raise InvalidRequest(field, f"must be at most {_MAX_NAME} characters, without NUL")
    return value


def _scope(tenant: str | None, model: str | None, names: Names | None) -> tuple[str, str]:
    tenant = _name(_called(names, "tenant"), tenant)
    model = _name(_called(names, "model"), model)
    if tenant == ANY and model == ANY:
        raise InvalidRequest(_called(names, "tenant"), "a limit needs a tenant, a model, or both")
    return tenant, model


def _new_tenant(tenant: str, names: Names | None) -> None:
    """A tenant a limit or budget is set for is checked as every tenant given to ezq is
    (deleting takes any, so that a row stored before that check can still go)."""
    if tenant != ANY:
        checked_tenant(tenant, _called(names, "tenant"))


def _positive(field: str, value: int | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_INT:
        raise InvalidRequest(field, f"must be an integer from 1 to {_MAX_INT}, not {value!r}")
    return value


def limit_record(limit: flow_db.Limit) -> dict[str, Any]:
    return {
        "tenant": limit.tenant,
        "model": limit.model,
        "max_concurrent": limit.max_concurrent,
        "requests_per_window": limit.requests_per_window,
        "tokens_per_window": limit.tokens_per_window,
        "adaptive_ttft_ms": limit.adaptive_ttft_ms,
        # What is in force now: the adaptive limit's current value, else max_concurrent.
        "current_concurrency": limit.concurrency,
    }


def set_limit(
    *,
    tenant: str | None,
    model: str | None,
    max_concurrent: int | None = None,
    requests_per_window: int | None = None,
    tokens_per_window: int | None = None,
    adaptive_ttft_ms: int | None = None,
    names: Names | None = None,
) -> dict[str, Any]:
    """Create or replace the limit of a scope (``*``/None: any tenant or any model).

    ``names``: what the caller's users call each field, for the errors (HTTP's by default).
    """
    scope = _scope(tenant, model, names)
    _new_tenant(scope[0], names)
    given = {
        "max_concurrent": max_concurrent,
        "requests_per_window": requests_per_window,
        "tokens_per_window": tokens_per_window,
        "adaptive_ttft_ms": adaptive_ttft_ms,
    }
    values = {field: _positive(_called(names, field), v) for field, v in given.items()}
    _check_limit_values(values, names)
    with transaction() as session:
        limit = flow_db.set_limit(session, tenant=scope[0], model=scope[1], **values)
    wake_throttled()
    return limit_record(limit)


def _check_limit_values(values: Mapping[str, int | None], names: Names | None) -> None:
    """A limit limits something; an adaptive one adapts below a fixed ceiling."""
    if all(v is None for v in values.values()):
        # adaptive_ttft_ms alone is refused below, for want of its ceiling.
        fields = ("max_concurrent", "requests_per_window", "tokens_per_window")
        listed = ", ".join(_called(names, f) for f in fields)
        raise InvalidRequest(_called(names, fields[0]), f"give at least one of {listed}")
    if values["adaptive_ttft_ms"] is not None and values["max_concurrent"] is None:
        ceiling = _called(names, "max_concurrent")
        raise InvalidRequest(
            _called(names, "adaptive_ttft_ms"), f"needs {ceiling} (the adaptive ceiling)"
        )


def list_limits() -> list[dict[str, Any]]:
    with transaction() as session:
        return [limit_record(limit) for limit in flow_db.list_limits(session)]


def delete_limit(*, tenant: str | None, model: str | None, names: Names | None = None) -> bool:
    scope = _scope(tenant, model, names)
    with transaction() as session:
        deleted = flow_db.delete_limit(session, tenant=scope[0], model=scope[1])
    wake_throttled()
    return deleted


def wake_throttled() -> None:
    """Publish the best-ranked throttled jobs now: a changed limit may admit them. Each
    checks its limits again at its claim; those still held wait again."""
    from service.worker.dispatch import publish_jobs

    with transaction() as session:
        woken = flow_db.wake_throttled(
            session, limit=c.FLOW_WAKE_ON_CHANGE, aging_s=get_settings().ezq_priority_aging
        )
    publish_jobs(woken)


def budget_record(budget: flow_db.Budget) -> dict[str, Any]:
    return {
        "tenant": budget.tenant,
        "model": budget.model,
        "monthly_usd": str(budget.monthly_usd),
        "spent_usd": str(round(budget.spent_usd, 6)),
        "reserved_usd": str(round(budget.reserved_usd, 6)),
        "remaining_usd": str(round(budget.remaining_usd, 6)),
    }


def parse_usd(field: str, value: object) -> Decimal:
    """An amount the budget column holds exactly: never rounded when stored (0.0000004
    would be kept as 0, a budget that denies every job)."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidRequest(field, f"must be an amount in USD, not {value!r}") from None
    if not amount.is_finite() or not 0 <= amount < _MAX_USD:
        raise InvalidRequest(field, f"must be an amount from 0 to {_MAX_USD:,}, not {value!r}")
    stored = amount.quantize(Decimal(1).scaleb(-USD_SCALE))
    if stored != amount:
        raise InvalidRequest(
            field,
            f"{value!r} has more than the {USD_SCALE} decimals a budget keeps (it would be"
            f" stored as {stored}); give at most {USD_SCALE} decimals",
        )
    return amount


def set_budget(
    *, tenant: str, model: str | None, monthly_usd: object, names: Names | None = None
) -> dict[str, Any]:
    """Create or replace a budget. ``names``: as in ``set_limit``."""
    tenant = _name(_called(names, "tenant"), tenant)
    model = _name(_called(names, "model"), model)
    if tenant == ANY:
        raise InvalidRequest(_called(names, "tenant"), "a budget needs a tenant")
    _new_tenant(tenant, names)
    amount = parse_usd(_called(names, "monthly_usd"), monthly_usd)
    with transaction() as session:
        flow_db.set_budget(session, tenant=tenant, model=model, monthly_usd=amount)
        found = flow_db.list_budgets(session, tenant=tenant)
    return next(budget_record(b) for b in found if b.model == model)


def list_budgets(tenant: str | None = None) -> list[dict[str, Any]]:
    with transaction() as session:
        return [budget_record(b) for b in flow_db.list_budgets(session, tenant=tenant)]


def delete_budget(*, tenant: str, model: str | None, names: Names | None = None) -> bool:
    tenant = _name(_called(names, "tenant"), tenant)
    model = _name(_called(names, "model"), model)
    with transaction() as session:
        return flow_db.delete_budget(session, tenant=tenant, model=model)
