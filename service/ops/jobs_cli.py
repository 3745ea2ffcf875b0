"""``ezq jobs list`` and ``ezq jobs replay``: find failed and stuck jobs, run them again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from service.ops.filters import filter_options
from service.ops.output import format_option

LIMIT_MAX = 100_000


@click.group("jobs")
def jobs() -> None:
    """List jobs by status, tenant, model, error or time; replay failed ones."""


def _jobs_table(rows: Sequence[dict[str, Any]]) -> Any:
    from service.ops import output

    model, tenant, error = output.share(output.console().width, (36, 9, 4), (4, 3, 3))
    table = output.table(
        ("JOB ID", output.ID),
        ("STATUS", {"width": 9}),
        ("AGE", {"justify": "right", "width": 4}),
        ("MODEL", {"width": model}),
        ("TENANT", {"width": tenant}),
        ("ERROR", {"width": error}),
    )
    for row in rows:
        table.add_row(
            str(row["job_id"]),
            row["status"],
            output.age(row["created_at"]),
            row["model"],
            row["tenant"] or "-",
            row["error_type"] or "",
        )
    return table


@jobs.command("list")
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, LIMIT_MAX))
@format_option
def list_jobs(
    statuses: tuple[str, ...],
    tenants: tuple[str, ...],
    models: tuple[str, ...],
    error_types: tuple[str, ...],
    since: str | None,
    until: str | None,
    meta: tuple[str, ...],
    limit: int,
    fmt: str,
) -> None:
    """Jobs matching every filter given, newest first."""
    from service.db import joblist
    from service.db.session import transaction
    from service.ops.filters import build_filter
    from service.ops.output import emit

    wanted = build_filter(
        statuses=statuses,
        tenants=tenants,
        models=models,
        error_types=error_types,
        since=since,
        until=until,
        meta=meta,
    )
    with transaction() as session:
        rows = joblist.list_jobs(session, wanted, limit=limit)
    emit(rows, joblist.LIST_COLUMNS, fmt, _jobs_table, empty="no jobs match")
