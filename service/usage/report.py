"""The ``ezq usage`` report: token and cost totals over whole UTC days, grouped as asked.

It sums the trigger-kept rollup ``usage_rollup_daily`` (a few hundred rows a day, whatever
the traffic) in one grouping, as the view ``usage_daily`` does in two. A grouping by one tag
key sums ``usage_rollup_tags`` (per day, tenant and tag value: no model) when that key is
rolled up (``usage_rollup_tag_keys``) and the report neither groups nor filters by model;
otherwise it reads the ``token_usage`` rows of its days.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnClause,
    ColumnElement,
    Date,
    FromClause,
    Numeric,
    Select,
    Text,
    case,
    cast,
    column,
    func,
    literal_column,
    select,
    table,
    type_coerce,
)
from sqlalchemy.orm import Session

from service.db.models import TokenUsage
from service.errors import InvalidRequest
from service.usage.costs import usage_table

# Written exactly as in the index and the views (see migrations/versions/0003_usage.py).
UTC_DAY: ColumnElement[date] = type_coerce(
    literal_column("(token_usage.created_at AT TIME ZONE 'UTC')::date"), Date
)
UTC_MONTH: ColumnElement[date] = type_coerce(
    literal_column("date_trunc('month', token_usage.created_at AT TIME ZONE 'UTC')::date"), Date
)
_USAGE = usage_table()
_COUNTS = (
    "jobs",
    "prompt_tokens",
    "cached_tokens",
    "uncached_prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_write_tokens",
)
# The rollup (migrations/versions/0012_rollups.py): a key may have several rows, and its
# cost_usd is 0, not NULL, without priced usage.
ROLLUP = table(
    "usage_rollup_daily",
    column("day", Date()),
    column("tenant", Text()),
    column("model", Text()),
    *(column(name, BigInteger()) for name in _COUNTS),
    column("cost_usd", Numeric()),
    column("unpriced_jobs", BigInteger()),
)
# The tag rollup (migrations/versions/0016_tag_rollup.py): the same sums per day, tenant,
# tag key and value (not per model), for the keys of usage_rollup_tag_keys.
TAG_ROLLUP = table(
    "usage_rollup_tags",
    column("day", Date()),
    column("tenant", Text()),
    column("tag_key", Text()),
    column("tag_value", Text()),
    *(column(name, BigInteger()) for name in _COUNTS),
    column("cost_usd", Numeric()),
    column("unpriced_jobs", BigInteger()),
)
TAG_KEYS = table("usage_rollup_tag_keys", column("key", Text()))
# ``rows``: every token_usage row (what the report read before the rollups; a grouping by a
# tag key that is not rolled up still needs it); ``daily``: the daily rollup; ``tags``: the
# tag rollup, for a grouping by one rolled-up tag key.
Source = Literal["rows", "daily", "tags"]
DIMENSIONS = ("day", "month", "model", "tenant")
_TAG = re.compile(r"tag:(\S+)")


def parse_dimensions(values: Sequence[str]) -> tuple[str, ...]:
    """``--by`` values (repeated or comma-separated): day, month, model, tenant, tag:KEY."""
    found: list[str] = []
    for value in values:
        for item in (part.strip() for part in value.split(",")):
            if item in DIMENSIONS or _TAG.fullmatch(item):
                if item not in found:
                    found.append(item)
                continue
            raise InvalidRequest(
                "--by", f"{item!r} is not one of day, month, model, tenant, tag:KEY"
            )
    if "day" in found and "month" in found:
        raise InvalidRequest("--by", "day and month together make no sense; pick one")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """Whole UTC days from ``since`` to ``until``, both included."""

    since: date
    until: date
    by: tuple[str, ...] = ("day",)
    tenants: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.since > self.until:
            raise InvalidRequest("--since", f"{self.since} is after --until {self.until}")


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over usage rows. ``cost_usd`` covers priced rows only; None when there are none."""

    jobs: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    uncached_prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal | None = None
    unpriced_jobs: int = 0
    # Prompt tokens written to the prompt cache, within the uncached ones (last, as in the
    # usage views, so that the machine formats' earlier columns keep their places).
    cache_write_tokens: int = 0

    def __add__(self, other: Totals) -> Totals:
        costs = [cost for cost in (self.cost_usd, other.cost_usd) if cost is not None]
        return Totals(
            jobs=self.jobs + other.jobs,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            uncached_prompt_tokens=self.uncached_prompt_tokens + other.uncached_prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            cost_usd=sum(costs, Decimal(0)) if costs else None,
            unpriced_jobs=self.unpriced_jobs + other.unpriced_jobs,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )


TOTAL_FIELDS = tuple(field.name for field in fields(Totals))


@dataclass(frozen=True, slots=True)
class ReportRow:
    keys: tuple[str | None, ...]
    totals: Totals


@dataclass(frozen=True, slots=True)
class Report:
    query: ReportQuery
    rows: list[ReportRow]
    totals: Totals

    @property
    def columns(self) -> tuple[str, ...]:
        return self.query.by


def tag_keys(query: ReportQuery) -> list[str]:
    return [name.removeprefix("tag:") for name in query.by if name.startswith("tag:")]


def source_for(query: ReportQuery, rolled_up: frozenset[str] = frozenset()) -> Source:
    """Where the report reads: the daily rollup unless a grouping needs the jobs' tags; the
    tag rollup for one tag key in ``rolled_up`` without models (it has none); else the rows."""
    keys = tag_keys(query)
    if not keys:
        return "daily"
    by_model = "model" in query.by or bool(query.models)
    return "tags" if len(keys) == 1 and keys[0] in rolled_up and not by_model else "rows"


def rolled_up_tags(session: Session, query: ReportQuery) -> frozenset[str]:
    """Which of the query's tag keys the tag rollup sums."""
    keys = tag_keys(query)
    if not keys:
        return frozenset()
    found = session.execute(select(TAG_KEYS.c.key).where(TAG_KEYS.c.key.in_(keys))).scalars()
    return frozenset(found)


def _dimension(name: str, source: Source) -> ColumnElement[Any]:
    if source in ("daily", "tags"):
        rollup = _from(source)
        day: ColumnElement[date] = rollup.c.day
        if name == "day":
            return day
        if name == "month":
            return cast(func.date_trunc("month", day), Date)
        if name.startswith("tag:"):
            return rollup.c.tag_value
        return rollup.c[name]
    if name == "day":
        return UTC_DAY
    if name == "month":
        return UTC_MONTH
    if name in ("model", "tenant"):
        return _USAGE.c[name]
    tag: ColumnElement[Any] = _USAGE.c.metadata[name.removeprefix("tag:")].astext
    return tag


def _sums(source: Source) -> list[ColumnElement[Any]]:
    if source in ("daily", "tags"):
        rollup = _from(source).c
        # NULL without priced usage, as the sum over token_usage is.
        priced = func.sum(rollup.jobs) - func.sum(rollup.unpriced_jobs) > 0
        return [
            *(func.sum(rollup[name]).label(name) for name in _COUNTS),
            case((priced, func.sum(rollup.cost_usd))).label("cost_usd"),
            func.sum(rollup.unpriced_jobs).label("unpriced_jobs"),
        ]
    unpriced = func.count().filter(TokenUsage.cost_usd.is_(None))
    return [
        func.count().label("jobs"),
        *(func.sum(_USAGE.c[name]).label(name) for name in _COUNTS[1:]),
        func.sum(TokenUsage.cost_usd).label("cost_usd"),
        unpriced.label("unpriced_jobs"),
    ]


def _from(source: Source) -> FromClause:
    return {"daily": ROLLUP, "tags": TAG_ROLLUP, "rows": _USAGE}[source]


def _conditions(query: ReportQuery, source: Source) -> list[ColumnElement[bool]]:
    rows = _from(source).c
    day = UTC_DAY if source == "rows" else rows.day
    conditions: list[ColumnElement[bool]] = [day.between(query.since, query.until)]
    if source == "tags":
        conditions.append(rows.tag_key == tag_keys(query)[0])
    if query.tenants:
        conditions.append(rows.tenant.in_(query.tenants))
    if query.models:
        conditions.append(rows.model.in_(query.models))
    return conditions


def report_statement(query: ReportQuery, source: Source | None = None) -> Select[Any]:
    """The report's one SELECT (also what the benchmark EXPLAINs), from ``source``
    (default: ``source_for(query)``)."""
    source = source or source_for(query)
    keys = [_dimension(name, source).label(f"k{i}") for i, name in enumerate(query.by)]
    stmt = select(*keys, *_sums(source)).select_from(_from(source))
    stmt = stmt.where(*_conditions(query, source))
    if keys:
        positions: list[ColumnClause[Any]] = [literal_column(str(i + 1)) for i in range(len(keys))]
        stmt = stmt.group_by(*positions).order_by(
            *(position.asc().nulls_last() for position in positions)
        )
        if source != "rows":  # a key whose usage was all deleted keeps rows of zeros
            stmt = stmt.having(func.sum(_from(source).c.jobs) != 0)
    return stmt


def _key_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name == "month":
        return f"{value:%Y-%m}"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _totals(values: Sequence[Any]) -> Totals:
    jobs, prompt, cached, uncached, completion, total, cache_writes, cost, unpriced = values
    return Totals(
        jobs=int(jobs or 0),
        prompt_tokens=int(prompt or 0),
        cached_tokens=int(cached or 0),
        uncached_prompt_tokens=int(uncached or 0),
        completion_tokens=int(completion or 0),
        total_tokens=int(total or 0),
        cost_usd=cost,
        unpriced_jobs=int(unpriced or 0),
        cache_write_tokens=int(cache_writes or 0),
    )


def run_report(session: Session, query: ReportQuery, source: Source | None = None) -> Report:
    """Rows grouped by ``query.by`` (one row when empty) and their totals, exact."""
    if source is None:
        source = source_for(query, rolled_up_tags(session, query))
    width = len(query.by)
    rows = []
    for record in session.execute(report_statement(query, source)):
        values = tuple(record)
        if not values[width]:  # no grouping and no usage: no row, just zero totals
            continue
        keys = tuple(
            _key_text(name, value) for name, value in zip(query.by, values[:width], strict=True)
        )
        rows.append(ReportRow(keys, _totals(values[width:])))
    totals = sum((row.totals for row in rows), Totals())
    return Report(query=query, rows=rows, totals=totals)


@dataclass(frozen=True, slots=True)
class DayModel:
    """One bar segment of the chart: a model's usage on a day."""

    day: date
    model: str
    total_tokens: int
    cost_usd: Decimal | None
    unpriced_jobs: int


def daily_by_model(session: Session, query: ReportQuery) -> list[DayModel]:
    """Usage per UTC day and model under the query's filters, for the chart."""
    rollup = ROLLUP.c
    priced = func.sum(rollup.jobs) - func.sum(rollup.unpriced_jobs) > 0
    stmt = (
        select(
            rollup.day,
            rollup.model,
            func.sum(rollup.total_tokens),
            case((priced, func.sum(rollup.cost_usd))),
            func.sum(rollup.unpriced_jobs),
        )
        .where(*_conditions(query, "daily"))
        .group_by(rollup.day, rollup.model)
        .having(func.sum(rollup.jobs) != 0)
        .order_by(rollup.day, rollup.model)
    )
    return [
        DayModel(day, model, int(tokens), cost, int(unpriced))
        for day, model, tokens, cost, unpriced in session.execute(stmt)
    ]
