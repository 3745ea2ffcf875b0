"""``ezq dead-letters``: list and purge the broker messages no worker could run."""

from __future__ import annotations

import csv
import json
import re
import sys
from datetime import UTC, datetime, timedelta

import click

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_moment(value: str, option: str) -> datetime:
    """``7d``, ``12h``, ``30m`` (ago) or an ISO date/time (UTC when no zone is given)."""
    relative = _RELATIVE.match(value.strip())
    if relative:
        amount, unit = relative.groups()
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration like 7d/12h nor an ISO date", param_hint=option
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _preview(raw: bytes, width: int = 60) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages on the broker that no worker could run, kept aside with the reason."""


@dead_letters.command("list")
@click.option("--since", help="Only those received since 7d, 12h, or an ISO date.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option("--raw", is_flag=True, help="With --format json: the whole raw message.")
def list_dead_letters(since: str | None, limit: int, fmt: str, raw: bool) -> None:
    """The newest dead letters first: id, when, queue, task, reason, size."""
    from service.db import recovery
    from service.db.session import transaction

    with transaction() as session:
        rows = recovery.dead_letters(
            session, since=parse_moment(since, "--since") if since else None, limit=limit
        )
    if fmt == "json":
        for row in rows:
            data = row.pop("raw")
            row["raw"] = data.decode("utf-8", "backslashreplace") if raw else _preview(data)
        click.echo(json.dumps(rows, indent=2))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["id", "received_at", "queue", "task_name", "reason", "raw_bytes"])
        for row in rows:
            writer.writerow(
                [row[k] for k in ("id", "received_at", "queue", "task_name", "reason", "raw_bytes")]
            )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for name in ("id", "received", "task", "reason", "bytes"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["received_at"][:19].replace("T", " "),
            row["task_name"] or "-",
            row["reason"],
            str(row["raw_bytes"]),
        )
    Console(width=100).print(table)
    if not rows:
        click.echo("no dead letters", err=True)


@dead_letters.command("purge")
@click.option("--before", help="Delete those received before 7d, 12h (ago) or an ISO date.")
@click.option("--id", "ids", multiple=True, type=int, help="Delete this one (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter.")
def purge_dead_letters(before: str | None, ids: tuple[int, ...], everything: bool) -> None:
    """Delete dead letters; say which with --before, --id or --all."""
    from service.db import recovery
    from service.db.session import transaction

    if not (before or ids or everything):
        raise click.UsageError("say which: --before 7d|DATE, --id N, or --all")
    with transaction() as session:
        count = recovery.purge_dead_letters(
            session,
            before=parse_moment(before, "--before") if before else None,
            ids=list(ids) or None,
        )
    click.echo(f"deleted {count} dead letter{'' if count == 1 else 's'}")
