"""Showing reports and price lists: a rich table for people, exact CSV and JSON for programs.

Machine formats carry every digit: amounts are decimal strings (JSON numbers would go
through binary floats in most readers) and an unpriced cost is null / empty, never 0.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from service.usage.money import plain, usd_shown
from service.usage.prices import PriceRow
from service.usage.report import TOTAL_FIELDS, Report, Totals

_HEADINGS = {
    "jobs": "Jobs",
    "prompt_tokens": "Prompt",
    "cached_tokens": "Cached",
    "uncached_prompt_tokens": "Uncached",
    "cache_write_tokens": "Cache writes",
    "completion_tokens": "Completion",
    "total_tokens": "Total tokens",
    "cost_usd": "Cost (USD)",
    "unpriced_jobs": "Unpriced jobs",
}


def _machine(value: Any) -> Any:
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _totals_record(totals: Totals) -> dict[str, Any]:
    return {name: _machine(getattr(totals, name)) for name in TOTAL_FIELDS}


def report_records(report: Report) -> list[dict[str, Any]]:
    """One dict per row: the grouping keys, then the totals, all JSON-ready."""
    return [
        {**dict(zip(report.columns, row.keys, strict=True)), **_totals_record(row.totals)}
        for row in report.rows
    ]


def write_report_json(
    out: IO[str], report: Report, *, budgets: list[dict[str, Any]] | None = None
) -> None:
    query = report.query
    document = {
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "timezone": "UTC",
        "by": list(query.by),
        "tenants": list(query.tenants) or None,
        "models": list(query.models) or None,
        "rows": report_records(report),
        "totals": _totals_record(report.totals),
    }
    if budgets:
        document["budgets"] = budgets
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


# A cell starting with one of these is run as a formula by spreadsheets (CSV injection);
# tenant names, tags and model ids come from callers, so such cells are neutralised.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell that a spreadsheet shows as text, never runs as a formula.

    Text starting with ``= + - @``, a tab or a carriage return gets a leading ``'`` (OWASP's
    advice); numbers and everything else are left as they are.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(out: IO[str], columns: Sequence[str], records: list[dict[str, Any]]) -> None:
    """A header and one line per record; None is an empty cell, no cell is a formula."""
    writer = csv.DictWriter(out, fieldnames=[csv_cell(c) for c in columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{csv_cell(k): csv_cell(v) for k, v in record.items()} for record in records])


def write_report_csv(out: IO[str], report: Report) -> None:
    """Rows only, no totals line, so that summing a column gives the total."""
    write_csv(out, [*report.columns, *TOTAL_FIELDS], report_records(report))


def _cost_cell(totals: Totals) -> str | Text:
    if totals.cost_usd is None:
        return Text("unpriced", style="yellow") if totals.unpriced_jobs else "-"
    # A day of a few cheap calls costs a fraction of a cent: never shown as $0.
    return usd_shown(totals.cost_usd)


# The table's columns: cache writes beside the uncached prompt tokens they are part of.
TABLE_FIELDS = (
    "jobs",
    "prompt_tokens",
    "cached_tokens",
    "uncached_prompt_tokens",
    "cache_write_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_jobs",
)


def _count_cells(totals: Totals) -> list[str | Text]:
    unpriced = Text(f"{totals.unpriced_jobs:,}", style="yellow") if totals.unpriced_jobs else "0"
    counted = [f"{getattr(totals, name):,}" for name in TABLE_FIELDS[:-2]]
    return [*counted, _cost_cell(totals), unpriced]


def report_table(report: Report) -> Table:
    query = report.query
    title = f"Usage {query.since} to {query.until} (UTC days, both included)"
    table = Table(title=title, title_justify="left")
    for name in report.columns:
        table.add_column(name if name.startswith("tag:") else name.capitalize())
    for name in TABLE_FIELDS:
        table.add_column(_HEADINGS[name], justify="right")
    for row in report.rows:
        keys = [key if key is not None else Text("(none)", style="dim") for key in row.keys]
        table.add_row(*keys, *_count_cells(row.totals))
    label = (
        [Text("Total", style="bold")] + [""] * (len(report.columns) - 1) if report.columns else []
    )
    table.add_section()
    table.add_row(*label, *_count_cells(report.totals), style="bold")
    if report.totals.unpriced_jobs:
        table.caption = "Unpriced jobs are not in the cost: ezq prices set, then recompute."
    return table


def price_records(prices: list[PriceRow]) -> list[dict[str, Any]]:
    return [
        {
            "id": price.id,
            "model": price.model,
            "effective_from": _machine(price.effective_from),
            "input_per_mtok": _machine(price.input_per_mtok),
            "cached_input_per_mtok": _machine(price.cached_input_per_mtok),
            "output_per_mtok": _machine(price.output_per_mtok),
            "currency": price.currency,
            "in_effect": price.in_effect,
            "cache_write_input_per_mtok": (
                _machine(price.cache_write_input_per_mtok)
                if price.cache_write_input_per_mtok is not None
                else None
            ),
        }
        for price in prices
    ]


PRICE_COLUMNS = (
    "id",
    "model",
    "effective_from",
    "input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
    "currency",
    "in_effect",
    "cache_write_input_per_mtok",
)


def prices_table(prices: list[PriceRow], width: int = 80) -> Table:
    """Every price within ``width`` columns: a long model name shortens, nothing else does."""
    from service.ops.output import GAP, table

    headings = ["Id", "Model", "From (UTC)", "Input", "Cached", "Output", "Write", "Now"]
    rows = [
        [
            str(price.id),
            price.model,
            f"{price.effective_from.astimezone(UTC):%Y-%m-%d %H:%M}",
            plain(price.input_per_mtok),
            plain(price.cached_input_per_mtok),
            plain(price.output_per_mtok),
            plain(price.cache_write_input_per_mtok)
            if price.cache_write_input_per_mtok is not None
            else "=input",
            "yes" if price.in_effect else "",
        ]
        for price in prices
    ]
    widths = [max(len(cell) for cell in column) for column in zip(headings, *rows, strict=True)]
    others = sum(widths) - widths[1] + GAP * (len(headings) - 1)
    widths[1] = max(8, min(widths[1], width - others))
    result: Table = table(
        *(
            (heading, {"width": w, "justify": "left" if i in (1, 2, 7) else "right"})
            for i, (heading, w) in enumerate(zip(headings, widths, strict=True))
        )
    )
    result.title = "Prices in USD per million tokens"
    result.title_justify = "left"
    result.caption = "Cached: cache reads; Write: cache writes; Now: in effect"
    result.caption_justify = "left"
    for row in rows:
        result.add_row(*row)
    return result


def console_for(out: IO[str]) -> Console:
    """A console on ``out``; when that is not a terminal, wide enough never to cut a cell.

    Strings are shown as written, never read as markup or emoji codes: tenants, models and
    tag values come from callers (see ``service.ops.output.console``).
    """
    console = Console(file=out, markup=False, emoji=False)
    if not console.is_terminal:
        console = Console(file=out, width=1000, no_color=True, markup=False, emoji=False)
    return console


def budget_table(budgets: list[dict[str, Any]]) -> Table:
    """This UTC month's budgets: cap, spent, reserved by running calls, remaining."""
    table = Table(title="Budgets this month (UTC)", title_justify="left")
    columns = ("tenant", "model", "monthly_usd", "spent_usd", "reserved_usd", "remaining_usd")
    for column in columns:
        table.add_column(column, justify="left" if column in ("tenant", "model") else "right")
    for budget in budgets:
        table.add_row(*(str(budget[c]) for c in columns))
    return table
