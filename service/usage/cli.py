"""``ezq prices ...``, ``ezq usage`` and ``ezq db grant-readonly``.

Only click is imported here; each command imports what it needs when it runs, so that
``ezq --help`` and the worker's start stay cheap.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from service.ops.output import format_option

_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="A table for people, or exact machine output.",
)


@click.group("prices")
def prices() -> None:
    """Model prices in USD per million tokens, versioned by start time."""


@prices.command("set")
@click.argument("model")
@click.option(
    "--input", "input_", required=True, metavar="USD", help="Per million uncached input tokens."
)
@click.option(
    "--cached-input", required=True, metavar="USD", help="Per million cached input tokens."
)
@click.option("--output", required=True, metavar="USD", help="Per million output tokens.")
@click.option(
    "--cache-write",
    metavar="USD",
    help="Per million input tokens written to the prompt cache; default: the --input price.",
)
@click.option(
    "--from",
    "start",
    metavar="WHEN",
    help="YYYY-MM-DD (midnight UTC) or an ISO 8601 time; default: now.",
)
def prices_set(
    model: str,
    input_: str,
    cached_input: str,
    output: str,
    cache_write: str | None,
    start: str | None,
) -> None:
    """Give MODEL a price from --from on. Usage written earlier keeps its cost."""
    from service import constants as c
    from service.db.session import transaction
    from service.errors import InvalidRequest
    from service.usage.money import parse_price
    from service.usage.periods import parse_instant
    from service.usage.prices import PriceInput, add_price

    if not model.strip() or len(model) > c.MAX_MODEL_LENGTH:
        raise InvalidRequest("MODEL", f"must be 1 to {c.MAX_MODEL_LENGTH} characters")
    price = PriceInput(
        model=model,
        input_per_mtok=parse_price(input_, "--input"),
        cached_input_per_mtok=parse_price(cached_input, "--cached-input"),
        output_per_mtok=parse_price(output, "--output"),
        effective_from=parse_instant(start, "--from") if start else None,
        cache_write_input_per_mtok=(
            parse_price(cache_write, "--cache-write") if cache_write is not None else None
        ),
    )
    with transaction() as session:
        row = add_price(session, price)
    if row is None:
        click.echo(f"{model}: unchanged, that price already applies", err=True)
    else:
        click.echo(f"{model}: price {row.id} from {row.effective_from.isoformat()}", err=True)


@prices.command("list")
@click.option("--model", help="Only this model.")
@_FORMAT
def prices_list(model: str | None, fmt: str) -> None:
    """Every price; "in effect" marks the one new usage gets now."""
    import json

    from service.db.session import transaction
    from service.usage import render
    from service.usage.prices import list_prices

    with transaction() as session:
        rows = list_prices(session, model)
    if fmt == "json":
        click.echo(json.dumps(render.price_records(rows), indent=2))
    elif fmt == "csv":
        render.write_csv(sys.stdout, render.PRICE_COLUMNS, render.price_records(rows))
    else:
        from service.ops.output import console

        console().print(render.prices_table(rows))


@prices.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def prices_import(file: Path) -> None:
    """Import prices from a CSV file, all or nothing.

    Header: model,input_per_mtok,cached_input_per_mtok,output_per_mtok,effective_from.
    An empty effective_from means now; a line that repeats a price already there is
    skipped, so importing a file twice is harmless.
    """
    from service.db.session import transaction
    from service.usage.price_file import import_prices, read_price_file

    lines = read_price_file(file)
    with transaction() as session:
        result = import_prices(session, file, lines)
    click.echo(f"imported {result.added} prices, {result.unchanged} unchanged", err=True)


@prices.command("recompute")
@click.option("--since", required=True, metavar="WHEN", help="Nd or YYYY-MM-DD (UTC).")
@click.option("--model", help="Only this model's usage.")
def prices_recompute(since: str, model: str | None) -> None:
    """Price usage rows written since WHEN that have no cost; priced rows never change.

    A row takes the price that was in effect when it was written or, when it predates
    its model's first price, that first price.
    """
    from service.db.session import transaction
    from service.usage.costs import price_unpriced_usage
    from service.usage.periods import parse_since, start_of

    start = start_of(parse_since(since, "--since"))
    with transaction() as session:
        done = price_unpriced_usage(session, since=start, model=model)
    click.echo(f"priced {done.priced} usage rows")
    if done.still_unpriced:
        models = ", ".join(done.models_without_price)
        click.echo(f"{done.still_unpriced} rows still unpriced: no price for {models}", err=True)


@click.command("usage")
@click.option(
    "--since",
    default="7d",
    show_default=True,
    metavar="Nd|DATE",
    help="First UTC day: Nd is the last N days, today included.",
)
@click.option("--until", metavar="DATE", help="Last UTC day, included (default: today).")
@click.option(
    "--by",
    multiple=True,
    metavar="DIM",
    help="day, month, model, tenant or tag:KEY; repeat or comma-separate (default: day).",
)
@click.option("--tenant", multiple=True, help="Only these tenants (repeatable).")
@click.option("--model", multiple=True, help="Only these models (repeatable).")
@_FORMAT
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write daily tokens and cost stacked by model to this PNG (the charts extra).",
)
def usage(
    since: str,
    until: str | None,
    by: tuple[str, ...],
    tenant: tuple[str, ...],
    model: tuple[str, ...],
    fmt: str,
    chart: Path | None,
) -> None:
    """Tokens and cost over whole UTC days, with totals. Unpriced usage is shown as such."""
    from service.db.session import transaction
    from service.usage import render
    from service.usage.periods import parse_day, parse_since, today_utc
    from service.usage.report import (
        ReportQuery,
        daily_by_model,
        parse_dimensions,
        run_report,
    )

    if chart is not None:
        from service.usage.chart import check_chart_path, require_matplotlib, write_chart

        check_chart_path(chart)
        require_matplotlib()

    query = ReportQuery(
        since=parse_since(since, "--since"),
        until=parse_day(until, "--until") if until else today_utc(),
        by=parse_dimensions(by) or ("day",),
        tenants=tenant,
        models=model,
    )
    from service.flow.settings_store import list_budgets

    with transaction() as session:
        report = run_report(session, query)
        cells = daily_by_model(session, query) if chart is not None else []
    # This month's budgets of the tenants shown, with what is spent, reserved and left.
    budgets = [b for b in list_budgets() if not tenant or b["tenant"] in tenant]
    if chart is not None:
        write_chart(chart, query, cells)
        click.echo(f"wrote {chart}", err=True)
    if fmt == "json":
        render.write_report_json(sys.stdout, report, budgets=budgets)
    elif fmt == "csv":
        render.write_report_csv(sys.stdout, report)
    else:
        console = render.console_for(sys.stdout)
        console.print(render.report_table(report))
        if budgets:
            console.print(render.budget_table(budgets))


@contextlib.contextmanager
def _refusals_in_one_line(role: str) -> Iterator[None]:
    """What PostgreSQL refuses (a name it reserves that we do not know, a missing
    privilege) as one line naming ROLE, not a traceback. An unreachable server is left to
    ``ezq``'s own line, which names the database."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    from service.errors import EzqError

    try:
        yield
    except (psycopg.Error, DBAPIError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        if isinstance(cause, psycopg.OperationalError) or not isinstance(cause, psycopg.Error):
            raise
        lines = str(cause).strip().splitlines()
        first = lines[0] if lines else type(cause).__name__
        raise EzqError(f"ROLE: PostgreSQL refused to make {role!r} read-only: {first}") from None


@click.command("grant-readonly")
@click.argument("role")
@click.option("--login", is_flag=True, help="Let ROLE log in (asks for its password).")
@click.option("--password-stdin", is_flag=True, help="With --login: read the password from stdin.")
@click.option(
    "--reset-password", is_flag=True, help="With --login on an existing role: replace its password."
)
def grant_readonly(role: str, login: bool, password_stdin: bool, reset_password: bool) -> None:
    """Give ROLE read-only access: SELECT on ezq's tables and views, nothing else.

    ROLE is created NOLOGIN if missing (grant it to people's login roles), or LOGIN with
    --login. Tables and views added by later migrations are covered too. An existing role
    that can write is refused, and an existing role's password is replaced only with
    --reset-password.
    """
    from service.db.session import transaction
    from service.errors import InvalidRequest
    from service.usage.roles import check_role_name
    from service.usage.roles import grant_readonly as grant

    check_role_name(role)
    password: str | None = None
    if password_stdin and not login:
        raise InvalidRequest("--password-stdin", "only makes sense with --login")
    if reset_password and not login:
        raise InvalidRequest("--reset-password", "only makes sense with --login")
    if login:
        password = (
            sys.stdin.readline().rstrip("\r\n")
            if password_stdin
            else click.prompt("password", hide_input=True, confirmation_prompt=True)
        )
        if not password:
            raise InvalidRequest("password", "must not be empty")
    with _refusals_in_one_line(role), transaction() as session:
        done = grant(session, role, password=password, reset_password=reset_password)
    if done.created:
        what = f"created role {role} ({'LOGIN' if done.login else 'NOLOGIN'})"
    elif done.password_set:
        what = f"role {role} already exists; replaced its password and made it LOGIN"
    else:
        what = f"role {role} already exists; its password and LOGIN are unchanged"
    click.echo(
        f"{what}; it may read every table and view in schema {done.schema}, now and after"
        " later migrations, and it can change nothing there",
        err=True,
    )


@click.group("tag-rollup")
def tag_rollup() -> None:
    """Metadata tag keys whose usage is rolled up per day (usage_rollup_tags)."""


@tag_rollup.command("add")
@click.argument("key")
def tag_rollup_add(key: str) -> None:
    """Roll KEY up: its sums are computed from every usage row now (usage writes wait
    meanwhile), then kept by the triggers; ``ezq usage --by tag:KEY`` reads them."""
    from service.db.session import transaction
    from service.usage.tags import add_tag_key

    with transaction() as session:
        added = add_tag_key(session, key)
    click.echo(f"{key}: {'rolled up' if added else 'already rolled up'}", err=True)


@tag_rollup.command("drop")
@click.argument("key")
def tag_rollup_drop(key: str) -> None:
    """Stop rolling KEY up and delete its rollup rows (usage rows are untouched)."""
    from service.db.session import transaction
    from service.usage.tags import drop_tag_key

    with transaction() as session:
        dropped = drop_tag_key(session, key)
    click.echo(f"{key}: {'dropped' if dropped else 'was not rolled up'}", err=True)


TAG_KEY_COLUMNS = ("key", "added_at", "rows")


def _tag_keys_table(rows: Sequence[dict[str, Any]]) -> Any:
    from service.ops import output

    (key,) = output.share(output.console().width, (25, 10), (1,))
    table = output.table(("KEY", {"width": key}), ("ADDED", {"width": 25}), "ROWS")
    for row in rows:
        table.add_row(row["key"], row["added_at"].isoformat(timespec="seconds"), str(row["rows"]))
    return table


@tag_rollup.command("list")
@format_option
def tag_rollup_list(fmt: str) -> None:
    """The rolled-up keys, when each was added and how many rollup rows it has."""
    from dataclasses import asdict

    from service.db.session import transaction
    from service.ops.output import emit
    from service.usage.tags import list_tag_keys

    with transaction() as session:
        keys = [asdict(item) for item in list_tag_keys(session)]
    emit(keys, TAG_KEY_COLUMNS, fmt, _tag_keys_table, empty="no tag key is rolled up")
