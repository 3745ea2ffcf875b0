"""Prices: reading what people type, versioned rows, price files, and repricing old usage."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from service.db.session import transaction
from service.errors import InvalidPriceFile, InvalidRequest, PriceConflict
from service.usage.costs import price_unpriced_usage
from service.usage.money import parse_price, plain, usd, usd_shown
from service.usage.periods import parse_instant, parse_since
from service.usage.price_file import import_prices, read_price_file
from service.usage.prices import PriceInput, add_price, list_prices
from service.usage.synthetic import SeedPlan, seed_usage
from tests.conftest import sql

HEADER = "model,input_per_mtok,cached_input_per_mtok,output_per_mtok,effective_from\n"


def unique_model(name: str = "m") -> str:
    return f"test-{name}-{secrets.token_hex(3)}"


@pytest.mark.parametrize(
    ("typed", "price"),
    [
        ("3", Decimal("3")),
        ("0", Decimal("0")),
        ("-0", Decimal("0")),
        ("0.30", Decimal("0.3")),
        (" 15.5 ", Decimal("15.5")),
        ("0.0000000001", Decimal("1E-10")),
        ("1.50000000000000", Decimal("1.5")),
        ("9999999999.9999999999", Decimal("9999999999.9999999999")),
        ("1e2", Decimal("100")),
    ],
)
def test_parse_price_accepts(typed: str, price: Decimal) -> None:
    """A non-negative decimal the price columns hold exactly is accepted as typed."""
    assert parse_price(typed, "--input") == price


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("abc", "must be a decimal number"),
        ("", "must be a decimal number"),
        ("1,5", "must be a decimal number"),
        ("-1", "must not be negative"),
        ("NaN", "must be a finite number"),
        ("inf", "must be a finite number"),
        ("0.00000000001", "at most 10 decimal places"),
        ("10000000000", "must be below 10^10"),
    ],
)
def test_parse_price_refuses(typed: str, reason: str) -> None:
    """Anything else is refused with the option's name, never rounded or clamped."""
    with pytest.raises(InvalidRequest) as caught:
        parse_price(typed, "--output")
    assert caught.value.field == "--output"
    assert reason in caught.value.reason


def test_amounts_print_exactly_for_machines_and_rounded_for_people() -> None:
    """plain() keeps every digit without trailing zeros; usd() rounds for a table."""
    assert plain(Decimal("0.0123400000000000")) == "0.01234"
    assert plain(Decimal("12.0000")) == "12"
    assert plain(Decimal("0E-16")) == "0"
    assert plain(Decimal("1E+3")) == "1000"
    assert usd(Decimal("1234.56785")) == "$1,234.5678"


def test_table_amounts_never_show_a_nonzero_amount_as_zero() -> None:
    """usd_shown() keeps up to 6 decimals, at least 2, and marks what rounds away."""
    assert usd_shown(Decimal("0.000035")) == "$0.000035"
    assert usd_shown(Decimal("0.0000349999")) == "$0.000035"
    assert usd_shown(Decimal("12.500000")) == "$12.50"
    assert usd_shown(Decimal("1234567.1")) == "$1,234,567.10"
    assert usd_shown(Decimal("0E-16")) == "$0.00"
    assert usd_shown(Decimal("0.0000004")) == "<$0.000001"
    assert usd_shown(Decimal("-0.25")) == "-$0.25"
    assert usd_shown(Decimal("-0.0000004")) == ">-$0.000001"


def test_periods() -> None:
    """Nd counts UTC days with today included; dates and times read as UTC unless offset."""
    today = date(2026, 3, 10)
    assert parse_since("1d", "--since", today=today) == today
    assert parse_since("7d", "--since", today=today) == date(2026, 3, 4)
    assert parse_since("2026-01-31", "--since") == date(2026, 1, 31)
    assert parse_instant("2026-01-31", "--from") == datetime(2026, 1, 31, tzinfo=UTC)
    assert parse_instant("2026-01-31T10:00", "--from") == datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert parse_instant("2026-01-31T10:00+02:00", "--from") == datetime(2026, 1, 31, 8, tzinfo=UTC)
    for bad in ("0d", "7w", "yesterday"):
        with pytest.raises(InvalidRequest):
            parse_since(bad, "--since", today=today)


@pytest.mark.usefixtures("service_env")
def test_prices_are_versioned_never_edited() -> None:
    """A new start adds a version; the same price again is a no-op; a different one conflicts."""
    model = unique_model()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    first = PriceInput(model, Decimal("3"), Decimal("0.3"), Decimal("15"), start)
    with transaction() as session:
        row = add_price(session, first)
        assert row is not None
        assert add_price(session, first) is None
    with pytest.raises(PriceConflict) as caught, transaction() as session:
        add_price(session, PriceInput(model, Decimal("4"), Decimal("0.3"), Decimal("15"), start))
    assert caught.value.price_id == row.id
    with transaction() as session:
        later = add_price(
            session,
            PriceInput(model, Decimal("4"), Decimal("0.4"), Decimal("20"), start + timedelta(1)),
        )
        future = add_price(
            session,
            PriceInput(
                model, Decimal("5"), Decimal("0.5"), Decimal("25"), datetime(2999, 1, 1, tzinfo=UTC)
            ),
        )
        listed = list_prices(session, model)
    assert later is not None and future is not None
    assert [(p.id, p.in_effect) for p in listed] == [
        (row.id, False),
        (later.id, True),
        (future.id, False),
    ]
    assert listed[1].output_per_mtok == Decimal("20")


@pytest.mark.usefixtures("service_env")
def test_set_without_start_applies_from_now_and_skips_the_current_price() -> None:
    """Without a start the price applies from the database's now; repeating it adds nothing."""
    model = unique_model()
    price = PriceInput(model, Decimal("1"), Decimal("0.1"), Decimal("2"))
    with transaction() as session:
        row = add_price(session, price)
        now = session.execute(text("SELECT now()")).scalar_one()
    assert row is not None and row.effective_from == now
    with transaction() as session:
        assert add_price(session, price) is None
    assert sql("SELECT count(*) FROM model_prices WHERE model = :m", m=model) == [(1,)]


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.usefixtures("service_env")
def test_import_reads_every_line_and_is_idempotent(tmp_path: Path) -> None:
    """A price file is imported whole; importing it again changes nothing."""
    a, b = unique_model("a"), unique_model("b")
    path = write(
        tmp_path,
        HEADER
        + f"{a},3,0.3,15,2026-01-01\n"
        + f"{a},3.5,0.35,17.5,2026-02-01T00:00:00+00:00\n"
        + f"{b},0.27,0.07,1.1,\n",
    )
    lines = read_price_file(path)
    assert [entry.line for entry in lines] == [2, 3, 4]
    with transaction() as session:
        first = import_prices(session, path, lines)
    with transaction() as session:
        again = import_prices(session, path, read_price_file(path))
    assert (first.added, first.unchanged) == (3, 0)
    assert (again.added, again.unchanged) == (0, 3)
    rows = sql(
        "SELECT model, input_per_mtok, effective_from FROM model_prices"
        " WHERE model IN (:a, :b) ORDER BY model, effective_from",
        a=a,
        b=b,
    )
    assert [(m, p) for m, p, _ in rows] == [
        (a, Decimal("3")),
        (a, Decimal("3.5")),
        (b, Decimal("0.27")),
    ]
    assert rows[1][2] == datetime(2026, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "line", "column", "reason"),
    [
        ("model,input_per_mtok\nx,1\n", 1, "header", "missing cached_input_per_mtok"),
        (HEADER.replace("model,", "modle,"), 1, "header", "missing model"),
        (HEADER, 2, "-", "no prices after the header"),
        (HEADER + "x,1,0.1,2,\n,1,0.1,2,\n", 3, "model", "must not be empty"),
        (HEADER + "x,1,0.1,two,\n", 2, "output_per_mtok", "must be a decimal number"),
        (HEADER + "x,1,-0.1,2,\n", 2, "cached_input_per_mtok", "must not be negative"),
        (HEADER + "x,1,0.1,2,tomorrow\n", 2, "effective_from", "must be YYYY-MM-DD"),
        (HEADER + "x,1,0.1\n", 2, "output_per_mtok", "missing"),
        (HEADER + "x,1,0.1,2,,extra\n", 2, "-", "more cells than the header"),
        (
            HEADER + "x,1,0.1,2,2026-01-01\ny,1,1,1,\nx,2,0.2,3,2026-01-01\n",
            4,
            "effective_from",
            "line 2 already prices x",
        ),
    ],
)
def test_price_file_errors_name_line_and_column(
    tmp_path: Path, body: str, line: int, column: str, reason: str
) -> None:
    """Each problem in a price file is reported with its line and column."""
    path = write(tmp_path, body)
    with pytest.raises(InvalidPriceFile) as caught:
        read_price_file(path)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert reason in caught.value.reason
    assert f"line {line}, column {column}" in str(caught.value)


@pytest.mark.usefixtures("service_env")
def test_import_conflict_imports_nothing(tmp_path: Path) -> None:
    """A line that would edit an existing price fails the file, and no line is written."""
    model, other = unique_model(), unique_model()
    with transaction() as session:
        add_price(
            session,
            PriceInput(model, Decimal(1), Decimal(1), Decimal(1), datetime(2026, 1, 1, tzinfo=UTC)),
        )
    path = write(tmp_path, HEADER + f"{other},1,0.1,2,\n{model},2,0.2,3,2026-01-01\n")
    with pytest.raises(InvalidPriceFile) as caught, transaction() as session:
        import_prices(session, path, read_price_file(path))
    assert (caught.value.line, caught.value.column) == (3, "effective_from")
    assert sql("SELECT count(*) FROM model_prices WHERE model = :m", m=other) == [(0,)]


def _costs(models: list[str]) -> dict[int, tuple[Decimal | None, int | None]]:
    rows = sql(
        "SELECT id, cost_usd, price_id FROM token_usage WHERE model = ANY(:models)",
        models=models,
    )
    return {row_id: (cost, price_id) for row_id, cost, price_id in rows}


@pytest.mark.usefixtures("service_env")
def test_recompute_prices_only_rows_without_a_cost() -> None:
    """recompute fills NULL costs (from the first price for older rows) and leaves costs."""
    tag = secrets.token_hex(3)
    new, priced, never = f"rc-{tag}-new", f"rc-{tag}-priced", f"rc-{tag}-never"
    plan = SeedPlan(
        rows=300,
        days=10,
        tenants=3,
        models=(new, priced, never),
        unpriced_models=(new, never),
        stuck_jobs=0,
        tenant_prefix=f"rc-{tag}",
        tag=tag,
    )
    with transaction() as session:
        end = seed_usage(session, plan)
    before = _costs([priced])
    assert before and all(cost is not None for cost, _ in before.values())
    assert all(cost is None for cost, _ in _costs([new, never]).values())
    since = end - timedelta(days=5)
    with transaction() as session:
        # A price for the new model, set today: older usage takes it as its first price.
        price = add_price(session, PriceInput(new, Decimal("2"), Decimal("0.5"), Decimal("8")))
        # A backdated change for the priced model must not touch its existing costs.
        add_price(
            session,
            PriceInput(priced, Decimal(99), Decimal(99), Decimal(99), end - timedelta(days=3)),
        )
        done = price_unpriced_usage(session, since=since, model=new)
        untouched = price_unpriced_usage(session, since=since, model=priced)
        without = price_unpriced_usage(session, since=since, model=never)
    assert price is not None
    assert (untouched.priced, untouched.still_unpriced) == (0, 0)
    assert (without.priced, without.models_without_price) == (0, [never])
    expected = sql(
        "SELECT count(*) FROM token_usage WHERE model = :m AND created_at >= :s", m=new, s=since
    )[0][0]
    assert done.priced == expected > 0
    assert (done.still_unpriced, done.models_without_price) == (0, [])
    assert _costs([priced]) == before
    rows = sql(
        "SELECT created_at >= :s, cost_usd, price_id, uncached_prompt_tokens, cached_tokens,"
        " completion_tokens FROM token_usage WHERE model = :m",
        s=since,
        m=new,
    )
    for recent, cost, price_id, uncached, cached, completion in rows:
        if not recent:
            assert (cost, price_id) == (None, None)
            continue
        assert price_id == price.id
        assert cost == (uncached * 2 + cached * Decimal("0.5") + completion * 8) / 10**6
    with transaction() as session:
        assert price_unpriced_usage(session, since=since, model=new).priced == 0
