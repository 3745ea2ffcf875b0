"""HTTP routes for flow control, for admin keys: ``/v1/limits`` and ``/v1/budgets``.

Included by ``service.api.app`` with one line. ``PUT`` creates or replaces the row of a
scope, ``GET`` lists them (with what is in force, spent and left), ``DELETE`` removes the
scope named by the query. A change applies to the next claim of every worker.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from service.api.auth import Caller
from service.api.body import OBJECT_BODY, JsonObject
from service.api.errors import ApiError
from service.errors import InvalidRequest
from service.keys.principal import Principal
from service.validation import checked_tenant

router = APIRouter()

LIMIT_FIELDS = (
    "tenant",
    "model",
    "max_concurrent",
    "requests_per_window",
    "tokens_per_window",
    "adaptive_ttft_ms",
)
BUDGET_FIELDS = ("tenant", "model", "monthly_usd")


def _admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "forbidden", "limits and budgets need an admin key")


def _object(payload: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidRequest("body", f"must be a JSON object, not {type(payload).__name__}")
    unknown = sorted(set(payload) - set(fields))
    if unknown:
        raise InvalidRequest(unknown[0], "is not a known field")
    for name in ("tenant", "model"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            raise InvalidRequest(name, "must be a string")
    if payload.get("tenant"):  # "" and null: any tenant, as before
        checked_tenant(payload["tenant"])
    return payload


def _not_found(what: str, tenant: str | None, model: str | None) -> ApiError:
    return ApiError(404, "not_found", f"no {what} for tenant={tenant or '*'} model={model or '*'}")


@router.get("/v1/limits")
def list_limits(principal: Caller) -> list[dict[str, Any]]:
    """Every limit, with the concurrency in force now (an adaptive limit's current value)."""
    from service.flow import settings_store

    _admin(principal)
    return settings_store.list_limits()


@router.put("/v1/limits", openapi_extra={"requestBody": OBJECT_BODY})
def set_limit(principal: Caller, payload: JsonObject) -> dict[str, Any]:
    """Create or replace the limit of a scope: `tenant`, `model` (either may be omitted:
    any), and any of `max_concurrent`, `requests_per_window`, `tokens_per_window`,
    `adaptive_ttft_ms`."""
    from service.flow import settings_store

    _admin(principal)
    body = _object(payload, LIMIT_FIELDS)
    return settings_store.set_limit(**{k: body.get(k) for k in LIMIT_FIELDS})


@router.delete("/v1/limits", status_code=204)
def delete_limit(
    principal: Caller,
    tenant: Annotated[str | None, Query(description="The scope's tenant (omit: any).")] = None,
    model: Annotated[str | None, Query(description="The scope's model (omit: any).")] = None,
) -> None:
    """Delete the limit of a scope."""
    from service.flow import settings_store

    _admin(principal)
    if not settings_store.delete_limit(tenant=tenant, model=model):
        raise _not_found("limit", tenant, model)


@router.get("/v1/budgets")
def list_budgets(principal: Caller) -> list[dict[str, Any]]:
    """Every budget with this UTC month's spend, the reserved worst case of running calls,
    and what remains."""
    from service.flow import settings_store

    _admin(principal)
    return settings_store.list_budgets()


@router.put("/v1/budgets", openapi_extra={"requestBody": OBJECT_BODY})
def set_budget(principal: Caller, payload: JsonObject) -> dict[str, Any]:
    """Create or replace a budget: `tenant`, `model` (omit: all the tenant's models) and
    `monthly_usd`."""
    from service.flow import settings_store

    _admin(principal)
    body = _object(payload, BUDGET_FIELDS)
    tenant = body.get("tenant")
    if not tenant:
        raise InvalidRequest("tenant", "is required")
    if body.get("monthly_usd") is None:
        raise InvalidRequest("monthly_usd", "is required")
    return settings_store.set_budget(
        tenant=tenant, model=body.get("model"), monthly_usd=body["monthly_usd"]
    )


@router.delete("/v1/budgets", status_code=204)
def delete_budget(
    principal: Caller,
    tenant: Annotated[str, Query(description="The budget's tenant.")],
    model: Annotated[str | None, Query(description="Its model (omit: tenant-wide).")] = None,
) -> None:
    """Delete a budget."""
    from service.flow import settings_store

    _admin(principal)
    if not settings_store.delete_budget(tenant=tenant, model=model):
        raise _not_found("budget", tenant, model)
