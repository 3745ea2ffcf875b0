"""``ezq dead-letters``: list and purge the broker messages no worker could run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from service.ops.output import format_option
from service.ops.when import HELP

COLUMNS = (
    "id",
    "received_at",
    "queue",
    "task_name",
    "message_id",
    "reason",
    "worker",
    "raw_bytes",
    "raw",
)


def _preview(raw: bytes, width: int = 60) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: Sequence[dict[str, Any]]) -> Any:
    """Id and time (never cut), task, reason and size, in the terminal's width."""
    from service.ops import output

    id_width = max(2, *(len(str(row["id"])) for row in rows))
    task, reason = output.share(output.console().width, (id_width, 16, 7), (2, 3))
    table = output.table(
        ("ID", {"justify": "right", "width": id_width}),
        ("RECEIVED (UTC)", {"width": 16}),
        ("TASK", {"width": task}),
        ("REASON", {"width": reason}),
        ("BYTES", {"justify": "right", "width": 7}),
    )
    for row in rows:
        table.add_row(
            str(row["id"]),
            f"{datetime.fromisoformat(row['received_at']).astimezone(UTC):%Y-%m-%d %H:%M}",
            row["task_name"] or "-",
            row["reason"],
            str(row["raw_bytes"]),
        )
    return table


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages on the broker that no worker could run, kept aside with the reason."""


@dead_letters.command("list")
@click.option("--since", metavar="7d|DATE", help=f"Received at or after: {HELP}")
@click.option("--until", metavar="DATE", help="Received before (a bare day is included whole).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@format_option
@click.option("--raw", is_flag=True, help="JSON and CSV hold the whole raw message, not 60 chars.")
def list_dead_letters(
    since: str | None, until: str | None, limit: int, fmt: str, raw: bool
) -> None:
    """The newest dead letters first: id, when, task, reason, size.

    The table shows id, time, task, reason and size; JSON and CSV every column.
    """
    from service.db import recovery
    from service.db.session import transaction
    from service.ops.output import emit
    from service.ops.when import parse_moment, parse_until

    start = parse_moment(since, "--since") if since else None
    end = parse_until(until, "--until") if until else None
    with transaction() as session:
        rows = recovery.dead_letters(session, since=start, until=end, limit=limit)
    for row in rows:
        data = row.pop("raw")
        row["raw"] = data.decode("utf-8", "backslashreplace") if raw else _preview(data)
    emit(rows, COLUMNS, fmt, _table, empty="no dead letters")


@dead_letters.command("purge")
@click.option("--before", metavar="7d|DATE", help=f"Those received before: {HELP}")
@click.option("--id", "ids", multiple=True, type=int, help="This one (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every dead letter.")
def purge_dead_letters(before: str | None, ids: tuple[int, ...], everything: bool) -> None:
    """Delete dead letters; say which with --before, --id (both: those that match both) or
    --all."""
    from service.db import recovery
    from service.db.session import transaction
    from service.ops.output import counted
    from service.ops.when import parse_moment

    if not (before or ids or everything):
        raise click.UsageError("say which: --before 7d|DATE, --id N, or --all")
    if everything and (before or ids):
        raise click.UsageError("--all deletes every dead letter: give it alone")
    cutoff = parse_moment(before, "--before") if before else None
    with transaction() as session:
        count = recovery.purge_dead_letters(session, before=cutoff, ids=list(ids) or None)
    click.echo(f"deleted {counted(count, 'dead letter')}")
