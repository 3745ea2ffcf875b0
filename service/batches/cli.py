"""``ezq batch``: submit a JSONL file as a batch, follow it, read its results, cancel it.

The same functions as the HTTP routes, run directly against the database (an operator's
view: every tenant).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from service import constants as c


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group("batch")
def batch() -> None:
    """Batches: OpenAI-shaped JSONL files whose lines run as ezq jobs."""


@batch.command("submit")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--tenant", help="Tenant of every line.")
@click.option("--priority", type=click.IntRange(0, 9), help="0-9; default 1, below interactive.")
@click.option("--callback-url", help="POST one signed webhook here when the batch ends.")
@click.option("--meta", "meta", multiple=True, help="KEY=VALUE tag of the batch and its jobs.")
@click.option("--format", "fmt", type=click.Choice(["id", "json"]), default="id")
def submit(
    path: str,
    tenant: str | None,
    priority: int | None,
    callback_url: str | None,
    meta: tuple[str, ...],
    fmt: str,
) -> None:
    """Check FILE.jsonl (every line, before anything is stored), store it and run each
    line as a job; print the batch id (or the batch, with --format json)."""
    from service.batches.files import store_input_file
    from service.batches.submit import create_batch, publish_lines
    from service.validation import checked_tenant

    metadata = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    with open(path, "rb") as stream:
        uploaded = store_input_file(
            stream,
            filename=os.path.basename(path),
            purpose="batch",
            tenant=checked_tenant(tenant),
            created_by=None,
        )
    created = create_batch(
        input_file_id=uploaded["id"],
        endpoint=c.BATCH_ENDPOINT,
        completion_window=c.BATCH_COMPLETION_WINDOW,
        metadata=metadata or None,
        callback_url=callback_url,
        priority=priority,
    )
    publish_lines(created.job_ids)
    view = created.view
    if fmt == "json":
        _print_json(view)
        return
    click.echo(view["id"])
    if view["status"] == "failed":
        bad = len((view["errors"] or {}).get("data") or [])
        click.echo(f"failed: {bad} bad lines in {uploaded['id']} (ezq batch status)", err=True)
    else:
        lines = view["request_counts"]["total"]
        click.echo(f"{view['status']}: {lines} lines from {uploaded['id']}", err=True)


@batch.command("status")
@click.argument("batch_id")
def status(batch_id: str) -> None:
    """The batch as JSON: status, request_counts, usage, file ids, timestamps."""
    from service.batches.lifecycle import get_batch

    _print_json(get_batch(batch_id))


@batch.command("results")
@click.argument("batch_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here, not stdout.")
def results(batch_id: str, output: str | None) -> None:
    """Every ended line in file order: output lines and error lines, as JSONL."""
    from service.batches.lifecycle import get_batch
    from service.batches.results import result_chunks

    view = get_batch(batch_id)
    target = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        for chunk in result_chunks(batch_id, "all"):
            target.write(chunk)
    finally:
        if output:
            target.close()
        else:
            target.flush()
    counts = view["request_counts"]
    click.echo(
        f"{view['status']}: {counts['completed']} completed, {counts['failed']} failed"
        f" of {counts['total']}",
        err=True,
    )


@batch.command("cancel")
@click.argument("batch_id")
def cancel(batch_id: str) -> None:
    """Cancel the batch: lines not started never run; finished ones are kept."""
    from service.batches.lifecycle import cancel_batch

    _print_json(cancel_batch(batch_id))
