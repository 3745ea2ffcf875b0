"""What usage costs, in SQL and NUMERIC end to end. Callers own the transaction.

A usage row is priced once, in the statement that writes it, from the model's price in
effect at that moment, and keeps the id of that price row; later prices never touch it.
A model without a price gives a NULL cost (never 0) until ``price_unpriced_usage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Table,
    Update,
    bindparam,
    extract,
    func,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from service.db.models import ModelPrice, TokenUsage
from service.db.pricing import PRICE_COLUMNS, cost_of, price_at


def usage_table() -> Table:
    table = TokenUsage.__table__
    assert isinstance(table, Table)
    return table


def _parameter(key: str) -> BindParameter[Any]:
    # The column's own type, so that e.g. a None usage_issues binds as SQL NULL.
    return bindparam(key, type_=TokenUsage.__mapper__.c[key].type)


@lru_cache(maxsize=8)
def _priced_insert(keys: tuple[str, ...]) -> ReturningInsert[Any]:
    # Built once per set of keys: making the statement costs more than running it.
    columns = [_parameter(key).label(key) for key in keys]
    if "cache_write_tokens" not in keys:
        # Callers that predate cache writes: none were written.
        columns.append(literal_column("0", Integer()).label("cache_write_tokens"))
    usage = select(*columns).subquery("usage")
    price = price_at(usage.c.model, func.now())
    priced = select(
        *usage.c, price.c.id.label("price_id"), cost_of(usage, price).label("cost_usd")
    ).select_from(usage.outerjoin(price, true()))
    table = usage_table()
    targets = [TokenUsage.__mapper__.c[c.name] for c in columns]
    return (
        insert(table)
        .from_select([*targets, table.c.price_id, table.c.cost_usd], priced)
        .on_conflict_do_nothing(index_elements=[table.c.job_id])
        .returning(table.c.cost_usd)
    )


def insert_priced_usage(session: Session, **values: Any) -> Decimal | None:
    """INSERT one ``token_usage`` row (keys are ``TokenUsage`` attributes), priced within.

    One statement and no extra round trip on the worker's hot path: the price in effect is
    picked by a lateral subquery on ``model_prices`` (newest ``effective_from`` not after
    ``now()``, the row's own ``created_at``). A second insert for the same job does nothing.
    Returns the cost written (None when unpriced, or when nothing was inserted).
    """
    cost: Decimal | None = session.execute(_priced_insert(tuple(values)), values).scalar()
    return cost


@dataclass(frozen=True, slots=True)
class Repricing:
    """What ``price_unpriced_usage`` did."""

    priced: int
    still_unpriced: int
    models_without_price: list[str]


def _unpriced_since(since: datetime, model: str | None) -> list[ColumnElement[bool]]:
    conditions = [TokenUsage.cost_usd.is_(None), TokenUsage.created_at >= since]
    if model is not None:
        conditions.append(TokenUsage.model == model)
    return conditions


def _recompute_statement(since: datetime, model: str | None) -> Update:
    usage = usage_table().alias("u")
    # The price in effect when the row was written; a row older than its model's first
    # price (the case this exists for) takes that first price. A price not in effect yet
    # is never applied: today's rows would take it now and tomorrow's not.
    price = (
        select(*PRICE_COLUMNS)
        .where(ModelPrice.model == usage.c.model, ModelPrice.effective_from <= func.now())
        .order_by(
            (ModelPrice.effective_from <= usage.c.created_at).desc(),
            func.abs(extract("epoch", ModelPrice.effective_from - usage.c.created_at)),
        )
        .limit(1)
        .lateral("price")
    )
    conditions = [usage.c.cost_usd.is_(None), usage.c.created_at >= since]
    if model is not None:
        conditions.append(usage.c.model == model)
    priced = (
        select(
            usage.c.id,
            price.c.id.label("price_id"),
            cost_of(usage, price).label("cost_usd"),
        )
        .select_from(usage.join(price, true()))
        .where(*conditions)
        .cte("priced")
    )
    table = usage_table()
    return (
        update(table)
        # Re-checked here so that a concurrent recompute cannot overwrite a cost.
        .where(table.c.id == priced.c.id, table.c.cost_usd.is_(None))
        .values(cost_usd=priced.c.cost_usd, price_id=priced.c.price_id)
    )


def price_unpriced_usage(
    session: Session, *, since: datetime, model: str | None = None
) -> Repricing:
    """Price the usage rows written since ``since`` that have no cost; priced rows stay."""
    result = session.execute(_recompute_statement(since, model))
    priced = int(getattr(result, "rowcount", 0))
    remaining = (
        select(TokenUsage.model, func.count())
        .where(*_unpriced_since(since, model))
        .group_by(TokenUsage.model)
        .order_by(TokenUsage.model)
    )
    left = session.execute(remaining).all()
    return Repricing(
        priced=priced,
        still_unpriced=sum(count for _, count in left),
        models_without_price=[name for name, _ in left],
    )
