"""``ezq limits`` and ``ezq budgets``: flow control's tables from the command line.

Only click is imported at module level, so ``ezq --help`` stays cheap.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

_FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def _print(records: list[dict[str, Any]], fmt: str, title: str, columns: list[str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
        return
    from rich.table import Table

    from service.usage.render import console_for

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for record in records:
        table.add_row(*("-" if record[c] is None else str(record[c]) for c in columns))
    console_for(sys.stdout).print(table)


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
    )
    click.echo(json.dumps(record, ensure_ascii=False))


@limits.command("list")
@_FORMAT
def limits_list(fmt: str) -> None:
    """Every limit, with the concurrency in force now (an adaptive limit's current value)."""
    from service.flow import settings_store

    columns = ["tenant", "model", "max_concurrent", "current_concurrency"]
    columns += ["requests_per_window", "tokens_per_window", "adaptive_ttft_ms"]
    _print(settings_store.list_limits(), fmt, "Limits", columns)


@limits.command("delete")
@click.option("--tenant", help="The tenant (default: any tenant).")
@click.option("--model", help="The model (default: any model).")
def limits_delete(tenant: str | None, model: str | None) -> None:
    """Delete the limit of a scope."""
    from service.errors import EzqError
    from service.flow import settings_store

    if not settings_store.delete_limit(tenant=tenant, model=model):
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

    record = settings_store.set_budget(tenant=tenant, model=model, monthly_usd=monthly_usd)
    click.echo(json.dumps(record, ensure_ascii=False))


@budgets.command("list")
@click.option("--tenant", help="Only this tenant.")
@_FORMAT
def budgets_list(tenant: str | None, fmt: str) -> None:
    """Every budget with this month's spend, the reserved worst case of running calls, and
    what remains."""
    from service.flow import settings_store

    columns = ["tenant", "model", "monthly_usd", "spent_usd", "reserved_usd", "remaining_usd"]
    _print(settings_store.list_budgets(tenant), fmt, "Budgets", columns)


@budgets.command("delete")
@click.option("--tenant", required=True, help="The tenant.")
@click.option("--model", help="The model (default: the tenant-wide budget).")
def budgets_delete(tenant: str, model: str | None) -> None:
    """Delete a budget."""
    from service.errors import EzqError
    from service.flow import settings_store

    if not settings_store.delete_budget(tenant=tenant, model=model):
        raise EzqError(f"no budget for tenant={tenant} model={model or '*'}")
    click.echo(f"deleted the budget for tenant={tenant} model={model or '*'}", err=True)
