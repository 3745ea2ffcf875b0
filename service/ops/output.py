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
from dataclasses import dataclass, field
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


# An id column for tables laid out by ``share``: rich may shrink a column of fixed width
# when the others leave it too little, but never a flexible one below its min_width.
ID = {"no_wrap": True, "min_width": 36, "overflow": "fold"}
GAP = 2  # between columns


def share(total: int, fixed: Sequence[int], weights: Sequence[int]) -> list[int]:
    """Widths for flexible columns: what ``fixed`` columns and the gaps leave, by weight.

    Each is at least 4 wide, so in a narrow terminal the table may be wider than ``total``.
    The weights ignore what the cells hold: ``Col`` and ``fitted`` size columns by their
    content instead.
    """
    gaps = GAP * (len(fixed) + len(weights) - 1)
    free = max(4 * len(weights), total - sum(fixed) - gaps)
    widths = [max(4, free * w // sum(weights)) for w in weights]
    widths[-1] = max(4, free - sum(widths[:-1]))
    return widths


@dataclass(frozen=True, slots=True)
class Col:
    """A table column sized by what its cells hold.

    ``floor``: the narrowest it is cut to (with an ellipsis); None: never cut (ids, counts,
    statuses). ``stage``: columns of a lower stage are cut first (down to their floor)
    before a higher one is. ``drop``: when even the floors do not fit, the column with the
    lowest ``drop`` is left out first; None: never left out (the table is then printed wider
    than the terminal rather than cut, so an id is always whole).
    """

    heading: str
    cells: Sequence[str]
    floor: int | None = None
    stage: int = 1
    drop: int | None = None
    justify: str = "left"

    @property
    def natural(self) -> int:
        from rich.cells import cell_len

        return max(cell_len(self.heading), *(cell_len(cell) for cell in self.cells))

    def narrowest(self) -> int:
        return self.natural if self.floor is None else min(self.floor, self.natural)


def text_floor(heading: str, least: int = 0) -> int:
    """A floor for a text column: its heading whole, and at least ``least`` characters."""
    from rich.cells import cell_len

    return max(cell_len(heading), least)


def fit(total: int, columns: Sequence[Col]) -> list[int | None]:
    """Each column's width in ``total`` characters, None for one left out.

    Columns get what their cells hold; when that is too wide, the widest cells of the
    lowest stage are cut first (so short values, such as error types, stay whole while
    there is room), then columns are left out by ``drop``.
    """
    shown = list(range(len(columns)))
    floors = [column.narrowest() for column in columns]
    dropped: list[int] = []

    def needed(indexes: Sequence[int], widths: Sequence[int]) -> int:
        return sum(widths[i] for i in indexes) + GAP * (len(indexes) - 1)

    while needed(shown, floors) > total:
        droppable = [i for i in shown if columns[i].drop is not None]
        if not droppable:
            break
        dropped.append(min(droppable, key=lambda i: columns[i].drop or 0))
        shown.remove(dropped[-1])
    # Leaving a wide column out may have made room for a narrow one left out before it.
    for i in reversed(dropped[:-1]):
        if needed(sorted([*shown, i]), floors) <= total:
            shown = sorted([*shown, i])
    widths = [column.natural for column in columns]
    excess = needed(shown, widths) - total
    for stage in sorted({columns[i].stage for i in shown}):
        cuttable = [i for i in shown if columns[i].stage == stage]
        while excess > 0:
            # The widest column that can still give a character gives it.
            candidates = [i for i in cuttable if widths[i] > floors[i]]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
    return [widths[i] if i in shown else None for i in range(len(columns))]


@dataclass(slots=True)
class Fitted:
    """A table laid out by ``fitted``, with the headings it left out for want of room."""

    table: Any
    hidden: list[str] = field(default_factory=list)


def fitted(columns: Sequence[Col], total: int | None = None) -> Fitted:
    """A table of ``columns`` (whose cells are its rows) in the terminal's width.

    Column widths follow the cells (see ``fit``); a column whose cells are longer than its
    width shortens them with an ellipsis.
    """
    width = console().width if total is None else total
    widths = fit(width, columns)
    shown = [(c, w) for c, w in zip(columns, widths, strict=True) if w is not None]
    result = table(
        *((c.heading, {"width": w, "justify": c.justify, "no_wrap": True}) for c, w in shown)
    )
    used = sum(w for _, w in shown) + GAP * (len(shown) - 1)
    if used > width:
        # Only never-cut columns are left and they need more: print them whole, wider.
        result.width = used
    for cells in zip(*(c.cells for c, _ in shown), strict=True):
        result.add_row(*cells)
    return Fitted(result, [c.heading for c, w in zip(columns, widths, strict=True) if w is None])


def one_line(text: str | None) -> str:
    """``text`` on one line (a receiver's answer or an error may hold newlines)."""
    return " ".join((text or "").split())


def emit(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    fmt: str,
    as_table: Callable[[Sequence[dict[str, Any]]], Any],
    *,
    empty: str,
    more: str | None = None,
) -> None:
    """Print ``rows`` in ``fmt``; an empty table prints ``empty`` on stderr instead.

    ``more``, when given, is printed on stderr after the rows in every format (stdout stays
    pure JSON or CSV): that the listing was cut, for example. A table that ``fitted`` left
    columns out of says so on stderr too.
    """
    if fmt == "json":
        write_json(sys.stdout, records([{c: row.get(c) for c in columns} for row in rows]))
    elif fmt == "csv":
        write_csv(sys.stdout, columns, rows)
    elif rows:
        shown = as_table(rows)
        out = console()
        if isinstance(shown, Fitted):
            out.print(shown.table, crop=False)
            if shown.hidden:
                click.echo(
                    f"not shown at {out.width} columns: {', '.join(shown.hidden)}"
                    " (a wider terminal or --format json shows them)",
                    err=True,
                )
        else:
            out.print(shown)
    else:
        click.echo(empty, err=True)
    if more and rows:
        click.echo(more, err=True)


def limited(
    rows: Sequence[dict[str, Any]], limit: int, noun: str, plural: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """``rows`` fetched with ``limit + 1``: the first ``limit``, and a note for stderr when
    there were more (``--limit`` cut the listing)."""
    if len(rows) <= limit:
        return list(rows), None
    shown = counted(limit, noun, plural)
    return list(rows[:limit]), f"showing the newest {shown}; more match (--limit N to see more)"


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
