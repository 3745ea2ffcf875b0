"""``ezq webhooks``: see deliveries and their attempts, and send events again.

Only click and light helpers are imported at module level, so that ``ezq --help`` stays fast.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import click

from service.errors import EzqError
from service.ops.output import format_option
from service.ops.when import HELP

STATUSES = ("pending", "delivered", "failed")


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a UUID", param_hint=what) from None


COLUMNS = (
    "id",
    "job_id",
    "batch_id",
    "event_type",
    "url",
    "status",
    "attempts",
    "next_attempt_at",
    "last_status_code",
    "last_error",
    "created_at",
    "delivered_at",
)


def deliveries_phrase(count: int) -> str:
    return f"{count} webhook {'delivery' if count == 1 else 'deliveries'}"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _table(rows: Sequence[dict[str, Any]]) -> Any:
    """Delivery id (whole), status, tries, event and last answer, in the terminal's width;
    the job id is in --format json/csv and selectable with --job."""
    from service.db.models import BATCH_EVENT_TYPES, JOB_EVENT_TYPES
    from service.ops import output

    # The event whole (`job.succeeded` and `job.failed` cut to `job.su…` read alike):
    # as wide as the longest event type; the receiver's answer takes what is left.
    event = max(len(kind) for kind in (*JOB_EVENT_TYPES, *BATCH_EVENT_TYPES))
    (answer,) = output.share(output.console().width, (36, 9, 5, event), (1,))
    table = output.table(
        ("DELIVERY ID", output.ID),
        ("STATUS", {"width": 9}),
        ("TRIES", {"justify": "right", "width": 5}),
        ("EVENT", {"width": event, "no_wrap": True}),
        ("LAST ANSWER", {"width": answer}),
    )
    for row in rows:
        last = row["last_error"] or (
            f"HTTP {row['last_status_code']}" if row["last_status_code"] else ""
        )
        table.add_row(row["id"], row["status"], str(row["attempts"]), row["event_type"], last)
    return table


def _no_delivery(delivery_id: uuid.UUID) -> EzqError:
    return EzqError(f"DELIVERY_ID: no webhook delivery {delivery_id}")


def _not_sendable(purged: bool | None, delivery_id: uuid.UUID) -> EzqError:
    """Why a delivery cannot be sent again: it does not exist, or ``ezq purge`` emptied its
    payload (``list`` and ``show`` still show it, so "no delivery" would be wrong)."""
    if not purged:
        return _no_delivery(delivery_id)
    return EzqError(
        f"DELIVERY_ID: webhook delivery {delivery_id} exists but its payload was purged"
        " (ezq purge), so its event cannot be sent again"
    )


@click.group("webhooks")
def webhooks() -> None:
    """See webhook deliveries and their attempts; redeliver events."""


@webhooks.command("list")
@click.option("--job", "job", help="Only this job's deliveries (job id).")
@click.option("--status", type=click.Choice(STATUSES), help="Only deliveries in this status.")
@click.option("--since", metavar="7d|DATE", help=f"Only events created at or after: {HELP}")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@format_option
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
def list_deliveries(
    job: str | None, status: str | None, since: str | None, limit: int, fmt: str, as_json: bool
) -> None:
    """List deliveries, newest first."""
    from service.db.session import transaction
    from service.ops.output import emit
    from service.ops.when import parse_moment
    from service.webhooks import outbox

    job_id = _uuid(job, "--job") if job else None
    start = parse_moment(since, "--since") if since else None
    with transaction() as session:
        rows = outbox.list_deliveries(
            session, job_id=job_id, status=status, since=start, limit=limit
        )
    emit(rows, COLUMNS, "json" if as_json else fmt, _table, empty="no webhook deliveries")


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
        raise _no_delivery(the_id)
    _echo_json(found)


@webhooks.command("redeliver")
@click.argument("delivery_id", required=False)
@click.option("--failed", is_flag=True, help="Redeliver every failed delivery (needs --since).")
@click.option("--since", metavar="7d|DATE", help=f"With --failed: events created since: {HELP}")
def redeliver(delivery_id: str | None, failed: bool, since: str | None) -> None:
    """Send DELIVERY_ID's event again (same webhook-id), or all failed ones since a date.

    Each redelivered event gets a fresh round of attempts on the retry schedule.
    """
    if (delivery_id is None) == (not failed):
        raise click.UsageError("give either DELIVERY_ID or --failed --since DATE")
    if failed and since is None:
        raise click.UsageError("--failed needs --since DATE")
    from service.db.session import transaction
    from service.ops.when import parse_moment
    from service.webhooks import outbox
    from service.webhooks.tasks import publish_deliveries

    with transaction() as session:
        if delivery_id is not None:
            wanted = [_uuid(delivery_id, "DELIVERY_ID")]
        else:
            assert since is not None
            wanted = outbox.failed_since(session, parse_moment(since, "--since"))
        found = outbox.redeliver(session, wanted)
        if delivery_id is not None and not found:
            raise _not_sendable(outbox.payload_purged(session, wanted[0]), wanted[0])
    publish_deliveries(found)
    click.echo(f"redelivering {deliveries_phrase(len(found))}", err=True)
    if len(found) < len(wanted):  # only --failed: a single id that cannot go raised above
        click.echo(
            f"skipped {deliveries_phrase(len(wanted) - len(found))} whose payload was purged"
            " (ezq purge): their events cannot be sent again",
            err=True,
        )
    for the_id in found:
        click.echo(str(the_id))
