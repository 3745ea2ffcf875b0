"""One ``--format table|json|csv`` for every listing command, and the shared table style.

Tables fit the terminal (80 columns when output is not a terminal): ids never wrap, the
other cells shorten with an ellipsis. JSON and CSV carry every value exactly: ids and times
as strings, amounts as decimal strings, absent values as null / an empty cell.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import IO, Any

import click

FORMATS = ("table", "json", "csv")


def formats(*choices: str, help: str) -> Callable[[Any], Any]:
    """A ``--format`` option offering ``choices`` (the first is the default)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help=help,
    )


format_option = formats(*FORMATS, help="A table for people, or exact machine output.")


def machine(value: Any) -> Any:
    """``value`` as JSON and CSV carry it."""
    if isinstance(value, Decimal):
        from service.usage.money import plain

        return plain(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def records(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: machine(value) for key, value in row.items()} for row in rows]


def write_json(out: IO[str], value: Any) -> None:
    out.write(json.dumps(value, indent=2, ensure_ascii=False, default=machine) + "\n")


def write_csv(out: IO[str], columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """A header and one line per row; None is an empty cell, dicts and lists are JSON.

    Tenants, models, metadata and error text come from callers, so no cell is left that a
    spreadsheet would run as a formula (see ``service.usage.render.csv_cell``).
    """
    from service.usage import render

    cells = [
        {
            key: json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
            for key, value in row.items()
            if key in columns
        }
        for row in records(rows)
    ]
    render.write_csv(out, columns, cells)


def console(out: IO[str] | None = None) -> Any:
    """A rich console on ``out``: the terminal's width, or 80 columns when piped.

    Every string it prints, table cells and titles included, is shown as written: tenants,
    models, metadata, error text and receivers' answers come from callers, and with rich's
    markup a ``[/x]`` in them raised MarkupError and ``[args]`` vanished (``:smile:`` became
    an emoji). Our own styling goes in ``rich.text.Text`` or column and header styles.
    """
    from rich.console import Console

    return Console(file=out or sys.stdout, highlight=False, markup=False, emoji=False)


def table(*headings: str | tuple[str, dict[str, Any]]) -> Any:
    """A borderless table; a heading may carry rich column options (``no_wrap`` etc.)."""
    from rich.table import Table

    # No borders: at 80 columns every character goes to the cells.
    result = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for heading in headings:
        name, options = heading if isinstance(heading, tuple) else (heading, {})
        result.add_column(name, **{"overflow": "ellipsis", "no_wrap": True, **options})
    return result


ID = {"no_wrap": True, "width": 36, "overflow": "fold"}
GAP = 2  # between columns


def share(total: int, fixed: Sequence[int], weights: Sequence[int]) -> list[int]:
    """Widths for flexible columns: what ``fixed`` columns and the gaps leave, by weight.

    Rich shrinks columns by dropping whole ones when space is short; sharing it out here
    keeps every column visible (each at least 4 wide) and the ids whole.
    """
    gaps = GAP * (len(fixed) + len(weights) - 1)
    free = max(4 * len(weights), total - sum(fixed) - gaps)
    widths = [max(4, free * w // sum(weights)) for w in weights]
    widths[-1] = max(4, free - sum(widths[:-1]))
    return widths


def emit(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    fmt: str,
    as_table: Callable[[Sequence[dict[str, Any]]], Any],
    *,
    empty: str,
) -> None:
    """Print ``rows`` in ``fmt``; an empty table prints ``empty`` on stderr instead."""
    if fmt == "json":
        write_json(sys.stdout, records([{c: row.get(c) for c in columns} for row in rows]))
    elif fmt == "csv":
        write_csv(sys.stdout, columns, rows)
    elif rows:
        console().print(as_table(rows))
    else:
        click.echo(empty, err=True)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 job``, ``2 jobs``: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in the largest whole unit: 42s, 5m, 3h, 12d."""
    if moment is None:
        return ""
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
