"""``ezq jobs list`` and ``ezq jobs replay``: find failed and stuck jobs, run them again."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from service.ops.filters import filter_options
from service.ops.output import format_option, formats

LIMIT_MAX = 100_000


@click.group("jobs")
def jobs() -> None:
    """List jobs by status, tenant, model, error or time; replay failed ones."""


def _jobs_table(rows: Sequence[dict[str, Any]]) -> Any:
    """Job id (always whole), status, age, model, tenant and error type, sized by what the
    cells hold: the model and tenant are cut first (to 8 characters), the error type is
    kept whole; when that does not fit, the tenant, model, age, error and status columns
    are left out in that order."""
    from service.ops import output
    from service.ops.output import Col, text_floor

    def cells(key: str, default: str = "") -> list[str]:
        return [str(row[key]) if row[key] else default for row in rows]

    return output.fitted(
        [
            Col("JOB ID", cells("job_id")),
            Col("STATUS", cells("status"), drop=5),
            Col("AGE", [output.age(row["created_at"]) for row in rows], drop=3, justify="right"),
            Col("MODEL", cells("model"), floor=text_floor("MODEL", 8), drop=2),
            Col("TENANT", cells("tenant", "-"), floor=text_floor("TENANT", 8), drop=1),
            # Error types are names: whole, or left out (one from another producer may be
            # longer than any of ours: cut to 30).
            Col("ERROR", cells("error_type"), floor=30, stage=2, drop=4),
        ]
    )


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
    from service.ops.output import emit, limited

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
        # One more than asked, to tell whether --limit cut the listing.
        found = joblist.list_jobs(session, wanted, limit=limit + 1)
    rows, more = limited(found, limit, "job")
    emit(rows, joblist.LIST_COLUMNS, fmt, _jobs_table, empty="no jobs match", more=more)


@jobs.command("replay")
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@filter_options
@click.option(
    "--limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1, LIMIT_MAX),
    help="Replay at most this many jobs (oldest first).",
)
@click.option("--dry-run", is_flag=True, help="Only say how many jobs and what they would cost.")
@formats("table", "json", help="Replay ids and skips for people, or the whole result as JSON.")
def replay(
    job_ids: tuple[str, ...],
    statuses: tuple[str, ...],
    tenants: tuple[str, ...],
    models: tuple[str, ...],
    error_types: tuple[str, ...],
    since: str | None,
    until: str | None,
    meta: tuple[str, ...],
    limit: int,
    dry_run: bool,
    fmt: str,
) -> None:
    """Run JOB_IDs, or the jobs the filters select, again as new jobs linked by replay_of.

    With filters but no --status, only failed jobs are replayed. Conversation turns replay
    in order, and only where the history still allows it (see the README).
    """
    from service.ops.filters import build_filter
    from service.ops.output import write_json
    from service.ops.replay import replay_jobs

    if not job_ids and not (statuses or tenants or models or error_types or since or until or meta):
        raise click.UsageError("give JOB_IDs or at least one filter (e.g. --since 1d)")
    if not job_ids and not statuses:
        statuses = ("failed",)
    wanted = build_filter(
        statuses=statuses,
        tenants=tenants,
        models=models,
        error_types=error_types,
        since=since,
        until=until,
        meta=meta,
        ids=job_ids,
    )
    result = replay_jobs(wanted, limit=limit, dry_run=dry_run)
    if fmt == "json":
        write_json(sys.stdout, result.as_dict())
    else:
        _report(result)
    # A job named on the command line that is not replayed fails the command, so that a
    # script notices; jobs the filters chose may be skipped (e.g. history_moved_on) as a
    # matter of course, and are reported only.
    if job_ids and result.skipped:
        sys.exit(1)


def _report(result: Any) -> None:
    from service.ops.output import counted
    from service.usage.money import usd

    replays = counted(len(result.replays), "job")
    cost = usd(result.estimated_cost_usd)
    if result.unpriced_jobs:
        cost += f" ({result.unpriced_jobs} unpriced, not included)"
    if result.dry_run:
        click.echo(f"would replay {replays}; estimated cost {cost}")
    else:
        for replay in result.replays:
            click.echo(str(replay.job_id))
        click.echo(f"replayed {replays}; estimated cost {cost}", err=True)
    for skip in result.skipped:
        click.echo(f"skipped {skip.original_id}: {skip.reason}: {skip.message}", err=True)
