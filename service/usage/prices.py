"""All SQL for ``model_prices``. Prices are versioned, never edited. Callers own the transaction.

A price applies from its ``effective_from`` until the model's next price. Editing a row in
place would break the costs already computed from it, so a different price for the same
model and start is refused; writing the same price again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, aliased

from service.db.models import ModelPrice
from service.errors import PriceConflict


@dataclass(frozen=True, slots=True)
class PriceInput:
    """A price to record; ``effective_from`` None means from now (the database's clock)."""

    model: str
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    output_per_mtok: Decimal
    effective_from: datetime | None = None
    # Writing prompt tokens to the cache; None bills them at ``input_per_mtok``.
    cache_write_input_per_mtok: Decimal | None = None

    def same_price(self, row: ModelPrice) -> bool:
        return (
            row.input_per_mtok == self.input_per_mtok
            and row.cached_input_per_mtok == self.cached_input_per_mtok
            and row.output_per_mtok == self.output_per_mtok
            and row.cache_write_input_per_mtok == self.cache_write_input_per_mtok
        )


@dataclass(frozen=True, slots=True)
class PriceRow:
    """A stored price, and whether it is the one new usage of its model gets now."""

    id: int
    model: str
    effective_from: datetime
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    output_per_mtok: Decimal
    currency: str
    in_effect: bool
    cache_write_input_per_mtok: Decimal | None = None


def _at(session: Session, model: str, effective_from: datetime) -> ModelPrice | None:
    stmt = select(ModelPrice).where(
        ModelPrice.model == model, ModelPrice.effective_from == effective_from
    )
    return session.scalars(stmt).one_or_none()


def _in_effect_now(session: Session, model: str) -> ModelPrice | None:
    stmt = (
        select(ModelPrice)
        .where(ModelPrice.model == model, ModelPrice.effective_from <= func.now())
        .order_by(ModelPrice.effective_from.desc())
        .limit(1)
    )
    return session.scalars(stmt).one_or_none()


def add_price(session: Session, price: PriceInput) -> ModelPrice | None:
    """Record ``price``; None when it changes nothing (that exact price already applies).

    Raises PriceConflict when the model has a different price from the same instant.
    """
    existing = (
        _in_effect_now(session, price.model)
        if price.effective_from is None
        else _at(session, price.model, price.effective_from)
    )
    if existing is not None and price.same_price(existing):
        return None
    if existing is not None and price.effective_from is not None:
        raise PriceConflict(price.model, price.effective_from, existing.id)
    values = {
        "model": price.model,
        "input_per_mtok": price.input_per_mtok,
        "cached_input_per_mtok": price.cached_input_per_mtok,
        "output_per_mtok": price.output_per_mtok,
        "cache_write_input_per_mtok": price.cache_write_input_per_mtok,
    }
    if price.effective_from is not None:
        values["effective_from"] = price.effective_from
    stmt = (
        insert(ModelPrice)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["model", "effective_from"])
        .returning(ModelPrice)
    )
    row = session.scalars(stmt).one_or_none()
    if row is None:  # a concurrent writer took this model and instant first
        raise PriceConflict(price.model, price.effective_from or "now", None)
    return row


def list_prices(session: Session, model: str | None = None) -> list[PriceRow]:
    """Every price, by model and start; ``in_effect`` marks the one that applies now."""
    later = aliased(ModelPrice)
    current = (
        select(later.id)
        .where(later.model == ModelPrice.model, later.effective_from <= func.now())
        .order_by(later.effective_from.desc())
        .limit(1)
        .scalar_subquery()
    )
    stmt = select(ModelPrice, (ModelPrice.id == current).label("in_effect")).order_by(
        ModelPrice.model, ModelPrice.effective_from
    )
    if model is not None:
        stmt = stmt.where(ModelPrice.model == model)
    return [
        PriceRow(
            id=row.id,
            model=row.model,
            effective_from=row.effective_from,
            input_per_mtok=row.input_per_mtok,
            cached_input_per_mtok=row.cached_input_per_mtok,
            output_per_mtok=row.output_per_mtok,
            currency=row.currency,
            in_effect=bool(in_effect),
            cache_write_input_per_mtok=row.cache_write_input_per_mtok,
        )
        for row, in_effect in session.execute(stmt)
    ]
