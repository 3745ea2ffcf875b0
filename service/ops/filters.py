"""The job filters shared by ``ezq jobs list``, ``ezq jobs replay`` and the HTTP replay route."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from service.db.joblist import JobFilter
from service.db.models import JOB_STATUSES
from service.errors import InvalidRequest
from service.ops.when import HELP, parse_moment, parse_until

F = TypeVar("F", bound=Callable[..., Any])


def filter_options(func: F) -> F:
    """Adds --status --tenant --model --error-type --since --until --meta (all repeatable
    but the times)."""
    options = [
        click.option(
            "--status",
            "statuses",
            multiple=True,
            type=click.Choice(JOB_STATUSES),
            help="Only jobs in this status (repeatable).",
        ),
        click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable)."),
        click.option("--model", "models", multiple=True, help="Only this model (repeatable)."),
        click.option(
            "--error-type",
            "error_types",
            multiple=True,
            metavar="TYPE",
            help="Only jobs whose last error is TYPE, e.g. server_error (repeatable).",
        ),
        click.option("--since", metavar="7d|DATE", help=f"Created at or after: {HELP}"),
        click.option(
            "--until", metavar="DATE", help="Created before (a bare day is included whole)."
        ),
        click.option(
            "--meta",
            multiple=True,
            metavar="KEY=VALUE",
            help="Only jobs whose metadata has KEY equal to VALUE (repeatable).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def meta_pairs(values: Iterable[str], field: str = "--meta") -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(field, f"{item!r} is not KEY=VALUE")
        pairs.append((key, raw))
    return tuple(pairs)


def job_ids(values: Iterable[str], field: str, what: str = "job id") -> tuple[uuid.UUID, ...]:
    ids = []
    for value in values:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:
            raise InvalidRequest(field, f"{value!r} is not a {what} (a UUID)") from None
    return tuple(ids)


def build_filter(
    *,
    statuses: Iterable[str] = (),
    tenants: Iterable[str] = (),
    models: Iterable[str] = (),
    error_types: Iterable[str] = (),
    since: str | None = None,
    until: str | None = None,
    meta: Iterable[str] = (),
    ids: Iterable[str] = (),
    names: dict[str, str] | None = None,
) -> JobFilter:
    """A JobFilter from the options as typed; errors name the option (or ``names[key]``)."""
    name = {"since": "--since", "until": "--until", "meta": "--meta", "ids": "JOB_ID"}
    name.update(names or {})
    statuses = tuple(statuses)
    for status in statuses:
        if status not in JOB_STATUSES:
            raise InvalidRequest(
                name.get("status", "--status"), f"must be one of {', '.join(JOB_STATUSES)}"
            )
    start = parse_moment(since, name["since"]) if since else None
    end = parse_until(until, name["until"]) if until else None
    if start is not None and end is not None and end <= start:
        raise InvalidRequest(name["until"], "must be later than the start of the window")
    return JobFilter(
        statuses=statuses,
        tenants=tuple(tenants),
        models=tuple(models),
        error_types=tuple(error_types),
        since=start,
        until=end,
        meta=meta_pairs(meta, name["meta"]),
        job_ids=job_ids(ids, name["ids"]),
    )
