"""``ezq limits`` and ``ezq budgets``: flow control's tables from the command line.

Only click is imported at module level, so ``ezq --help`` stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from service.ops.output import format_option

LIMIT_COLUMNS = (
    "tenant",
    "model",
    "max_concurrent",
    "current_concurrency",
    "requests_per_window",
    "tokens_per_window",
    "adaptive_ttft_ms",
)
BUDGET_COLUMNS = ("tenant", "model", "monthly_usd", "spent_usd", "reserved_usd", "remaining_usd")
# The settings store's errors name what was typed here: flags, not the HTTP body's fields.
LIMIT_FLAGS = {
    "tenant": "--tenant",
    "model": "--model",
    "max_concurrent": "--concurrency",
    "requests_per_window": "--rpm",
    "tokens_per_window": "--tpm",
    "adaptive_ttft_ms": "--adaptive-ttft-ms",
}
BUDGET_FLAGS = {"tenant": "--tenant", "model": "--model", "monthly_usd": "--monthly-usd"}


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _scoped_table(headings: Sequence[str], rows: Sequence[tuple[str, str, list[str]]]) -> Any:
    """TENANT and MODEL as wide as their cells, cut (the longer first) to what the numbers
    leave of the terminal's width; numbers are never cut."""
    from service.ops import output
    from service.ops.output import Col

    return output.fitted(
        [
            Col("TENANT", [tenant for tenant, _, _ in rows], floor=4),
            Col("MODEL", [model for _, model, _ in rows], floor=4),
            *(
                Col(heading, [cells[i] for _, _, cells in rows], justify="right")
                for i, heading in enumerate(headings)
            ),
        ]
    )


def _limits_table(rows: Sequence[dict[str, Any]]) -> Any:
    """Scope (``*`` is any), then each limit."""
    headings = ("CONC", "IN FORCE", "REQ/WIN", "TOKENS/WIN", "TTFT MS")
    cells = [(r["tenant"], r["model"], [_count(r[c]) for c in LIMIT_COLUMNS[2:]]) for r in rows]
    return _scoped_table(headings, cells)


def _budgets_table(rows: Sequence[dict[str, Any]]) -> Any:
    """Scope (``*`` is every model), the cap and this UTC month's spend, in USD: to the
    micro-dollar the budget keeps, so that a few cheap calls never read as $0."""
    from decimal import Decimal

    from service.usage.money import usd_shown

    headings = ("MONTHLY", "SPENT", "RESERVED", "REMAINING")
    cells = [
        (r["tenant"], r["model"], [usd_shown(Decimal(r[c])) for c in BUDGET_COLUMNS[2:]])
        for r in rows
    ]
    return _scoped_table(headings, cells)


@click.group("limits")
def limits() -> None:
    """Limits on gateway calls per model, tenant or tenant x model, shared by all workers."""


@limits.command("set")
@click.option("--tenant", help="The tenant (default: any tenant).")
@click.option("--model", help="The model (default: any model).")
@click.option("--concurrency", type=int, help="Calls in flight at most.")
@click.option("--rpm", type=int, help="Requests per window (EZQ_FLOW_WINDOW, a minute).")
@click.option("--tpm", type=int, help="Tokens per window (estimate reserved, settled to usage).")
@click.option(
    "--adaptive-ttft-ms",
    type=int,
    help="Adapt the concurrency (up to --concurrency) to keep time to first token under this.",
)
def limits_set(
    tenant: str | None,
    model: str | None,
    concurrency: int | None,
    rpm: int | None,
    tpm: int | None,
    adaptive_ttft_ms: int | None,
) -> None:
    """Create or replace the limit of a scope; in force from the next claim."""
    from service.flow import settings_store

    record = settings_store.set_limit(
        tenant=tenant,
        model=model,
        max_concurrent=concurrency,
        requests_per_window=rpm,
        tokens_per_window=tpm,
        adaptive_ttft_ms=adaptive_ttft_ms,
        names=LIMIT_FLAGS,
    )
    click.echo(json.dumps(record, ensure_ascii=False))


@limits.command("list")
@format_option
def limits_list(fmt: str) -> None:
    """Every limit, with the concurrency in force now (an adaptive limit's current value).

    In the table ``*`` is any tenant or model; CONC is the concurrency limit, IN FORCE the
    current one, REQ/WIN and TOKENS/WIN the per-window limits.
    """
    from service.flow import settings_store
    from service.ops.output import emit

    emit(settings_store.list_limits(), LIMIT_COLUMNS, fmt, _limits_table, empty="no limits")


@limits.command("delete")
@click.option("--tenant", help="The tenant (default: any tenant).")
@click.option("--model", help="The model (default: any model).")
def limits_delete(tenant: str | None, model: str | None) -> None:
    """Delete the limit of a scope."""
    from service.errors import EzqError
    from service.flow import settings_store

    if not settings_store.delete_limit(tenant=tenant, model=model, names=LIMIT_FLAGS):
        raise EzqError(f"no limit for tenant={tenant or '*'} model={model or '*'}")
    click.echo(f"deleted the limit for tenant={tenant or '*'} model={model or '*'}", err=True)


@click.group("budgets")
def budgets() -> None:
    """Monthly spending caps per tenant (or tenant x model), checked at every claim."""


@budgets.command("set")
@click.option("--tenant", required=True, help="The tenant.")
@click.option("--model", help="Only this model (default: all the tenant's models).")
@click.option("--monthly-usd", required=True, help="The cap for each UTC month, in USD.")
def budgets_set(tenant: str, model: str | None, monthly_usd: str) -> None:
    """Create or replace a budget; in force from the next claim."""
    from service.flow import settings_store

    record = settings_store.set_budget(
        tenant=tenant, model=model, monthly_usd=monthly_usd, names=BUDGET_FLAGS
    )
    click.echo(json.dumps(record, ensure_ascii=False))


@budgets.command("list")
@click.option("--tenant", help="Only this tenant.")
@format_option
def budgets_list(tenant: str | None, fmt: str) -> None:
    """Every budget with this month's spend, the reserved worst case of running calls, and
    what remains.

    The table shows up to 6 decimals (a nonzero amount never reads $0); JSON and CSV carry
    the exact amounts.
    """
    from service.ops.output import emit

    emit(_budget_rows(tenant), BUDGET_COLUMNS, fmt, _budgets_table, empty="no budgets")


def _budget_rows(tenant: str | None) -> list[dict[str, Any]]:
    """Budgets with the exact amounts, as decimal strings (``settings_store.budget_record``
    rounds what is spent, reserved and left to 6 decimals, which JSON and CSV must not)."""
    from service.db import flow as flow_db
    from service.db.session import transaction

    with transaction() as session:
        budgets = flow_db.list_budgets(session, tenant=tenant)
    return [
        {
            "tenant": b.tenant,
            "model": b.model,
            **{
                key: format(amount, "f")
                for key, amount in (
                    ("monthly_usd", b.monthly_usd),
                    ("spent_usd", b.spent_usd),
                    ("reserved_usd", b.reserved_usd),
                    ("remaining_usd", b.remaining_usd),
                )
            },
        }
        for b in budgets
    ]


@budgets.command("delete")
@click.option("--tenant", required=True, help="The tenant.")
@click.option("--model", help="The model (default: the tenant-wide budget).")
def budgets_delete(tenant: str, model: str | None) -> None:
    """Delete a budget."""
    from service.errors import EzqError
    from service.flow import settings_store

    if not settings_store.delete_budget(tenant=tenant, model=model, names=BUDGET_FLAGS):
        raise EzqError(f"no budget for tenant={tenant} model={model or '*'}")
    click.echo(f"deleted the budget for tenant={tenant} model={model or '*'}", err=True)
