"""``ezq webhooks``: see deliveries and their attempts, and send events again.

Only click is imported at module level, so that ``ezq --help`` stays fast.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import click

STATUSES = ("pending", "delivered", "failed")


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a UUID", param_hint=what) from None


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or time, e.g. 2026-11-25 or 2026-11-25T14:00+01:00",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for name in ("id", "job", "event", "status", "tries", "last answer", "next / delivered"):
        table.add_column(name, overflow="fold")
    for row in rows:
        last = row["last_error"] or (
            f"HTTP {row['last_status_code']}" if row["last_status_code"] else ""
        )
        when = row["delivered_at"] if row["status"] == "delivered" else row["next_attempt_at"]
        table.add_row(
            row["id"],
            row["job_id"],
            row["event_type"],
            row["status"],
            str(row["attempts"]),
            last[:120],
            when or "",
        )
    Console().print(table)


@click.group("webhooks")
def webhooks() -> None:
    """See webhook deliveries and their attempts; redeliver events."""


@webhooks.command("list")
@click.option("--job", "job", help="Only this job's deliveries (job id).")
@click.option("--status", type=click.Choice(STATUSES), help="Only deliveries in this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_deliveries(job: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List deliveries, newest first."""
    from service.db.session import transaction
    from service.webhooks import outbox

    job_id = _uuid(job, "--job") if job else None
    with transaction() as session:
        rows = outbox.list_deliveries(session, job_id=job_id, status=status, limit=limit)
    if as_json:
        _echo_json(rows)
    elif rows:
        _table(rows)
    else:
        click.echo("no webhook deliveries", err=True)


@webhooks.command("show")
@click.argument("delivery_id")
def show(delivery_id: str) -> None:
    """Print one delivery as JSON: its event payload and every attempt."""
    from service.db.session import transaction
    from service.webhooks import outbox

    the_id = _uuid(delivery_id, "DELIVERY_ID")
    with transaction() as session:
        found = outbox.get_delivery(session, the_id)
    if found is None:
        raise click.ClickException(f"no webhook delivery {the_id}")
    _echo_json(found)


@webhooks.command("redeliver")
@click.argument("delivery_id", required=False)
@click.option("--failed", is_flag=True, help="Redeliver every failed delivery (needs --since).")
@click.option("--since", help="With --failed: only events created at or after this ISO date.")
def redeliver(delivery_id: str | None, failed: bool, since: str | None) -> None:
    """Send DELIVERY_ID's event again (same webhook-id), or all failed ones since a date.

    Each redelivered event gets a fresh round of attempts on the retry schedule.
    """
    if (delivery_id is None) == (not failed):
        raise click.UsageError("give either DELIVERY_ID or --failed --since DATE")
    if failed and since is None:
        raise click.UsageError("--failed needs --since DATE")
    from service.db.session import transaction
    from service.webhooks import outbox
    from service.webhooks.tasks import publish_deliveries

    with transaction() as session:
        if delivery_id is not None:
            wanted = [_uuid(delivery_id, "DELIVERY_ID")]
        else:
            assert since is not None
            wanted = outbox.failed_since(session, _moment(since))
        found = outbox.redeliver(session, wanted)
    if delivery_id is not None and not found:
        raise click.ClickException(f"no webhook delivery {delivery_id}")
    publish_deliveries(found)
    click.echo(f"redelivering {len(found)} webhook deliveries", err=True)
    for the_id in found:
        click.echo(str(the_id))
