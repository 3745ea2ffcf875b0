"""How a usage row is priced, in SQL and NUMERIC end to end: the price in effect for a
model at a moment, and the cost of a row's tokens at a price. The one definition the
worker's record statement, the usage module (``ezq prices recompute``), the synthetic data
and the replay estimate (``ezq jobs replay --dry-run``) all price with."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnClause,
    ColumnElement,
    FromClause,
    Numeric,
    Select,
    func,
    literal,
    literal_column,
    select,
)

from service.db.models import ModelPrice

# Multiplying by this literal keeps every digit (scale 10 + 6); dividing by 1e6 would round
# to PostgreSQL's division scale.
PER_TOKEN: ColumnClause[Decimal] = literal_column("0.000001", Numeric())

PRICE_COLUMNS = (
    ModelPrice.id,
    ModelPrice.input_per_mtok,
    ModelPrice.cached_input_per_mtok,
    ModelPrice.output_per_mtok,
    ModelPrice.cache_write_input_per_mtok,
)


def cost_of(usage: FromClause, price: FromClause) -> ColumnElement[Any]:
    """Cost in USD of a usage row at a price row: cached tokens at the cached-input rate,
    cache writes at the cache-write rate (the input rate when the price has none).

    Cached and uncached prompt tokens partition ``prompt_tokens``, and cache writes are a
    part of the uncached ones, so nothing is billed twice; reasoning tokens are part of
    ``completion_tokens`` and billed as output.
    """
    cache_write_price = func.coalesce(price.c.cache_write_input_per_mtok, price.c.input_per_mtok)
    return (
        (usage.c.uncached_prompt_tokens - usage.c.cache_write_tokens) * price.c.input_per_mtok
        + usage.c.cache_write_tokens * cache_write_price
        + usage.c.cached_tokens * price.c.cached_input_per_mtok
        + usage.c.completion_tokens * price.c.output_per_mtok
    ) * PER_TOKEN


def price_in_effect(
    model: ColumnElement[str], at: ColumnElement[datetime]
) -> Select[int, Decimal, Decimal, Decimal, Decimal | None]:
    """The model's price in effect at ``at`` (the newest that started by then): one row,
    none when the model had no price yet."""
    return (
        select(*PRICE_COLUMNS)
        .where(ModelPrice.model == model, ModelPrice.effective_from <= at)
        .order_by(ModelPrice.effective_from.desc())
        .limit(1)
    )


def price_at(model: ColumnElement[str], at: ColumnElement[datetime]) -> FromClause:
    """``price_in_effect`` as a lateral subquery named ``price``."""
    return price_in_effect(model, at).lateral("price")


def token_counts(
    *,
    uncached_prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    cache_write_tokens: int = 0,
) -> FromClause:
    """Token counts as a one-row usage subquery named ``usage``, for ``cost_of``: what some
    tokens would cost, priced exactly as a usage row of them is."""
    counts = {
        "uncached_prompt_tokens": uncached_prompt_tokens,
        "cached_tokens": cached_tokens,
        "completion_tokens": completion_tokens,
        "cache_write_tokens": cache_write_tokens,
    }
    return select(
        *(literal(int(value), BigInteger()).label(name) for name, value in counts.items())
    ).subquery("usage")
