"""Price files: CSV with the header ``model,input_per_mtok,cached_input_per_mtok,
output_per_mtok,effective_from`` and optionally ``cache_write_input_per_mtok``, imported
all or nothing.

Every line is checked before anything is written, and every error names the line and the
column. An empty ``effective_from`` means from the moment of the import.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from service import constants as c
from service.errors import InvalidPriceFile, InvalidRequest, PriceConflict
from service.usage.money import parse_price
from service.usage.periods import parse_instant
from service.usage.prices import PriceInput, add_price

COLUMNS = (
    "model",
    "input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
    "effective_from",
)
_PRICES = ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok")
# May be absent from the header, or empty on a line: cache writes then cost the input price.
OPTIONAL_COLUMNS = ("cache_write_input_per_mtok",)


@dataclass(frozen=True, slots=True)
class PriceLine:
    line: int
    price: PriceInput


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: int
    unchanged: int


def _check_header(path: str, header: Sequence[str] | None) -> None:
    names = [name.strip() for name in header or []]
    missing = [name for name in COLUMNS if name not in names]
    unknown = [name for name in names if name not in COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown or len(names) != len(set(names)):
        problem = (
            f"missing {', '.join(missing)}"
            if missing
            else f"unknown {', '.join(unknown)}"
            if unknown
            else "a column appears twice"
        )
        raise InvalidPriceFile(path, 1, "header", f"{problem}; expected {','.join(COLUMNS)}")


def _parse_line(path: str, line: int, record: dict[str, str | None]) -> PriceInput:
    def cell(column: str) -> str:
        value = record.get(column)
        if value is None:
            raise InvalidPriceFile(path, line, column, "missing (the line is too short)")
        return value.strip()

    if None in record:  # DictReader files surplus cells under the key None
        raise InvalidPriceFile(path, line, "-", "more cells than the header has columns")
    model = cell("model")
    if not model:
        raise InvalidPriceFile(path, line, "model", "must not be empty")
    if len(model) > c.MAX_MODEL_LENGTH:
        raise InvalidPriceFile(path, line, "model", f"longer than {c.MAX_MODEL_LENGTH}")
    amounts = {}
    for column in _PRICES:
        try:
            amounts[column] = parse_price(cell(column), column)
        except InvalidRequest as exc:
            raise InvalidPriceFile(path, line, column, exc.reason) from None
    for column in OPTIONAL_COLUMNS:
        if (record.get(column) or "").strip():
            try:
                amounts[column] = parse_price(cell(column), column)
            except InvalidRequest as exc:
                raise InvalidPriceFile(path, line, column, exc.reason) from None
    start: datetime | None = None
    if cell("effective_from"):
        try:
            start = parse_instant(cell("effective_from"), "effective_from")
        except InvalidRequest as exc:
            raise InvalidPriceFile(path, line, "effective_from", exc.reason) from None
    return PriceInput(model=model, effective_from=start, **amounts)


def read_price_file(path: Path) -> list[PriceLine]:
    """Parse and check the whole file; raise InvalidPriceFile at the first bad line."""
    shown = str(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            _check_header(shown, reader.fieldnames)
            reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
            lines: list[PriceLine] = []
            seen: dict[tuple[str, datetime | None], int] = {}
            for record in reader:
                price = _parse_line(shown, reader.line_num, record)
                key = (price.model, price.effective_from)
                if key in seen:
                    raise InvalidPriceFile(
                        shown,
                        reader.line_num,
                        "effective_from",
                        f"line {seen[key]} already prices {price.model} from the same instant",
                    )
                seen[key] = reader.line_num
                lines.append(PriceLine(reader.line_num, price))
    except UnicodeDecodeError as exc:
        raise InvalidPriceFile(shown, 1, "-", f"not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise InvalidPriceFile(shown, 1, "-", f"not readable as CSV ({exc})") from None
    if not lines:
        raise InvalidPriceFile(shown, 2, "-", "no prices after the header")
    return lines


def import_prices(session: Session, path: Path, lines: list[PriceLine]) -> ImportResult:
    """Write the checked lines in the caller's transaction; a conflict names its line."""
    added = unchanged = 0
    for entry in lines:
        try:
            row = add_price(session, entry.price)
        except PriceConflict as exc:
            raise InvalidPriceFile(str(path), entry.line, "effective_from", str(exc)) from None
        if row is None:
            unchanged += 1
        else:
            added += 1
    return ImportResult(added=added, unchanged=unchanged)
