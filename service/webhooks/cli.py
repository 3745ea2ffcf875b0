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


def _receiver(url: str) -> str:
    """The receiver's URL without its query string, which may hold the receiver's tokens."""
    from service.webhooks.delivery import loggable_url

    try:
        return loggable_url(url)
    except ValueError:  # a port that is not a number: still never show the query
        bare = url.split("?", 1)[0].split("#", 1)[0]
        scheme, _, rest = bare.partition("://")
        authority, slash, path = rest.partition("/")
        # Credentials are the authority's, before its last "@" (a path may hold one too).
        return f"{scheme}://{authority.rsplit('@', 1)[-1]}{slash}{path}"


def _table(rows: Sequence[dict[str, Any]], *, with_subject: bool = True) -> Any:
    """Delivery id (always whole), the job (or batch) id, status, tries, event, receiver
    and last answer, sized by what the cells hold. When the terminal is too narrow, the
    job id, the receiver, the tries, the event and the answer are left out in that order;
    the receiver is cut before the answer. ``with_subject=False`` (``--job``) leaves the
    job id out: it is the one asked for."""
    from service.ops import output
    from service.ops.output import Col, text_floor

    answers = [
        output.one_line(row["last_error"])
        or (f"HTTP {row['last_status_code']}" if row["last_status_code"] else "")
        for row in rows
    ]
    columns = [
        Col("DELIVERY ID", [str(row["id"]) for row in rows]),
        Col("JOB/BATCH ID", [str(row["job_id"] or row["batch_id"] or "") for row in rows], drop=1),
        Col("STATUS", [row["status"] for row in rows], drop=6),
        Col("TRIES", [str(row["attempts"]) for row in rows], drop=3, justify="right"),
        # Whole: `job.succeeded` and `job.failed` cut to `job.su…` would read alike.
        Col("EVENT", [row["event_type"] for row in rows], drop=4),
        Col("URL", [_receiver(row["url"]) for row in rows], floor=text_floor("URL", 16), drop=2),
        Col("LAST ANSWER", answers, floor=text_floor("LAST ANSWER", 16), stage=2, drop=5),
    ]
    if not with_subject:
        del columns[1]
    return output.fitted(columns)


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
@click.option(
    "--status",
    "statuses",
    type=click.Choice(STATUSES),
    multiple=True,
    help="Only deliveries in this status (repeat for any of several).",
)
@click.option("--since", metavar="7d|DATE", help=f"Only events created at or after: {HELP}")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@format_option
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
def list_deliveries(
    job: str | None,
    statuses: tuple[str, ...],
    since: str | None,
    limit: int,
    fmt: str,
    as_json: bool,
) -> None:
    """List deliveries, newest first."""
    from service.db.session import transaction
    from service.ops.output import emit, limited
    from service.ops.when import parse_moment
    from service.webhooks import outbox

    job_id = _uuid(job, "--job") if job else None
    start = parse_moment(since, "--since") if since else None
    with transaction() as session:
        # One more than asked, to tell whether --limit cut the listing.
        found = outbox.list_deliveries(
            session, job_id=job_id, statuses=statuses, since=start, limit=limit + 1
        )
    rows, more = limited(found, limit, "delivery", "deliveries")
    emit(
        rows,
        COLUMNS,
        "json" if as_json else fmt,
        lambda shown: _table(shown, with_subject=job_id is None),
        empty="no webhook deliveries",
        more=more,
    )


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


@webhooks.command("secret")
@click.option("--tenant", required=True, help="The tenant whose receivers verify with it.")
def secret(tenant: str) -> None:
    """Print the secret that signs TENANT's webhook events, for its receivers to verify.

    One line per WEBHOOK_SECRET, in its order (the current one first; during a rotation,
    the next): each tenant's is its own, derived from WEBHOOK_SECRET, which stays the
    operator's. Treat it as a secret: hand it to that tenant only.
    """
    from service.config import get_settings
    from service.validation import checked_tenant
    from service.webhooks.signing import tenant_secret

    secrets = get_settings().webhook_signing_secrets()
    if not secrets:
        raise EzqError("WEBHOOK_SECRET is not set: webhooks are off, nothing is signed")
    name = checked_tenant(tenant, "--tenant")
    assert name is not None  # a required option
    for configured in secrets:
        click.echo(tenant_secret(configured, name))
