"""Money as ``Decimal``: parsing prices people type and printing amounts exactly."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from service.db.models import PRICE
from service.errors import InvalidRequest

# What the price columns hold: NUMERIC(precision, scale).
PRICE_SCALE: int = PRICE.scale or 0
PRICE_INTEGER_DIGITS: int = (PRICE.precision or 0) - PRICE_SCALE


def parse_price(value: str, field: str) -> Decimal:
    """A USD price per million tokens: a non-negative decimal the price columns hold exactly.

    Too many decimal places is an error rather than a silent rounding.
    """
    text = value.strip()
    try:
        price = Decimal(text)
    except InvalidOperation:
        raise InvalidRequest(field, f"must be a decimal number of USD, got {value!r}") from None
    if not price.is_finite():
        raise InvalidRequest(field, f"must be a finite number, got {value!r}")
    if price < 0:
        raise InvalidRequest(field, f"must not be negative, got {value!r}")
    exponent = price.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # finite, checked above
    if -exponent > PRICE_SCALE:
        raise InvalidRequest(field, f"at most {PRICE_SCALE} decimal places, got {value!r}")
    if price >= Decimal(10) ** PRICE_INTEGER_DIGITS:
        raise InvalidRequest(field, f"must be below 10^{PRICE_INTEGER_DIGITS}, got {value!r}")
    return price + 0  # "-0" becomes 0


def plain(amount: Decimal) -> str:
    """The exact value in positional notation without trailing zeros: 0.0123, 12, 0."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def usd(amount: Decimal, places: int = 4) -> str:
    """For people: $1,234.5678, rounded to ``places`` decimals (half to even)."""
    rounded = amount.quantize(Decimal(1).scaleb(-places))
    return f"${rounded:,.{places}f}"


def usd_shown(amount: Decimal, places: int = 6) -> str:
    """For tables of small amounts (a job's cost is a fraction of a cent): up to ``places``
    decimals, trailing zeros trimmed to 2 ($12.50, $0.000035), and a nonzero amount never
    shown as zero: one too small for ``places`` reads <$0.000001."""
    quantum = Decimal(1).scaleb(-places)
    rounded = amount.quantize(quantum)
    if rounded == 0 and amount != 0:
        return f"<${quantum}" if amount > 0 else f">-${quantum}"
    whole, _, decimals = f"{abs(rounded):,.{places}f}".partition(".")
    sign = "-" if rounded < 0 else ""
    return f"{sign}${whole}.{decimals.rstrip('0').ljust(2, '0')}"
