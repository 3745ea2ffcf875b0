"""``ezq status``: one screen of what the service is doing now, from Postgres."""

from __future__ import annotations

import sys
from typing import Any

import click

from service import constants as c
from service.ops.output import formats

MAX_ROWS = 20  # tenant x model lines on the screen; JSON has them all
# A sweep this many intervals old is reported as stopped.
STALE_SWEEP_INTERVALS = 3


def _document(snap: Any) -> dict[str, Any]:
    return {
        "at": snap.now,
        "queued": snap.total("queued"),
        "in_flight": snap.total("running"),
        "retrying": snap.total("retrying"),
        "throttled": snap.total("throttled"),
        "oldest_queued_age_seconds": (
            round((snap.now - snap.oldest_queued_at).total_seconds(), 3)
            if snap.oldest_queued_at
            else None
        ),
        "failures_last_hour": snap.failures_last_hour,
        "webhook_backlog": snap.webhook_backlog,
        "last_sweep_at": snap.last_sweep_at,
        "by_tenant_model": [
            {
                "tenant": row.tenant,
                "model": row.model,
                "queued": row.queued,
                "in_flight": row.running,
                "retrying": row.retrying,
                "throttled": row.throttled,
                "oldest_queued_at": row.oldest_queued_at,
            }
            for row in snap.backlog
        ],
    }


def _screen(snap: Any) -> None:
    from rich.text import Text

    from service.ops import output
    from service.ops.output import Col

    console = output.console()
    oldest = output.age(snap.oldest_queued_at, snap.now) or "-"
    console.print(Text.assemble(("ezq status", "bold"), f" at {snap.now:%Y-%m-%d %H:%M:%S} UTC"))
    console.print(
        f"jobs      queued {snap.total('queued')} (oldest {oldest})  "
        f"in flight {snap.total('running')}  retrying {snap.total('retrying')}  "
        f"throttled {snap.total('throttled')}"
    )
    webhook_age = output.age(snap.oldest_webhook_at, snap.now) or "-"
    console.print(f"webhooks  backlog {snap.webhook_backlog} (oldest {webhook_age})")
    failures = ", ".join(f"{kind} {n}" for kind, n in snap.failures_last_hour.items())
    console.print(f"failed    in the last hour: {failures or 'none'}")
    console.print(f"sweep     {_sweep_line(snap)}")
    if not snap.backlog:
        console.print("nothing queued or running")
        return

    shown = snap.backlog[:MAX_ROWS]
    # TENANT and MODEL as wide as their cells, cut (the longer first) to what the counts
    # leave; counts are never cut.
    fitted = output.fitted(
        [
            Col("TENANT", [row.tenant or "-" for row in shown], floor=4),
            Col("MODEL", [row.model for row in shown], floor=4),
            *(
                Col(heading, cells, justify="right")
                for heading, cells in (
                    ("QUEUED", [str(row.queued) for row in shown]),
                    ("IN FLIGHT", [str(row.running) for row in shown]),
                    ("RETRYING", [str(row.retrying) for row in shown]),
                    ("THROTTLED", [str(row.throttled) for row in shown]),
                    (
                        "OLDEST",
                        [output.age(row.oldest_queued_at, snap.now) or "-" for row in shown],
                    ),
                )
            ),
        ],
        console.width,
    )
    console.print(fitted.table, crop=False)
    if len(snap.backlog) > MAX_ROWS:
        console.print(f"… and {len(snap.backlog) - MAX_ROWS} more (--format json lists all)")


def _sweep_line(snap: Any) -> str:
    """When the sweep last ran, and a warning when no worker seems to run it."""
    from service.config import get_settings
    from service.ops import output

    # Short enough for 80 columns after the label: wrapped, the words people grep for split.
    if snap.last_sweep_at is None:
        return "never ran (EZQ_SWEEP_INTERVAL=0 everywhere?)"
    ago = f"last ran {output.age(snap.last_sweep_at, snap.now)} ago"
    interval = get_settings().ezq_sweep_interval or c.SWEEP_INTERVAL_S
    if (snap.now - snap.last_sweep_at).total_seconds() > STALE_SWEEP_INTERVALS * interval:
        return f"{ago}: stopped? no worker sweeps now"
    return ago


BACKLOG_COLUMNS = (
    "tenant",
    "model",
    "queued",
    "in_flight",
    "retrying",
    "throttled",
    "oldest_queued_at",
)


@click.command("status")
@formats(
    "table",
    "json",
    "csv",
    help="One screen for people, JSON, or the lines per tenant and model as CSV.",
)
def status(fmt: str) -> None:
    """Queue depth, in flight, retrying, throttled, oldest queued job, failures in the last
    hour by error type and the webhook backlog, per tenant and model.

    CSV has one line per tenant and model (all of them; the screen shows 20), the columns
    of ``by_tenant_model`` in JSON.
    """
    from service.db.session import transaction
    from service.db.status import snapshot
    from service.ops.output import write_csv, write_json

    with transaction() as session:
        snap = snapshot(session)
    if fmt == "json":
        write_json(sys.stdout, _document(snap))
    elif fmt == "csv":
        write_csv(sys.stdout, BACKLOG_COLUMNS, _document(snap)["by_tenant_model"])
    else:
        _screen(snap)
