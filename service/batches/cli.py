"""``ezq batch``: submit a JSONL file as a batch, follow it, read its results, cancel it.

The same functions as the HTTP routes, run directly against the database (an operator's
view: every tenant).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO

import click

from service import constants as c
from service.errors import EzqError


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
    from service.batches.submit import check_metadata, create_batch, publish_lines
    from service.validation import checked_callback_url, checked_tenant

    metadata = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    # What create_batch refuses is checked before the file is stored: a refused submit
    # writes nothing (it used to leave the prompts in an unused file, one per retry).
    check_metadata(metadata or None)
    checked_callback_url(callback_url)
    tenant = checked_tenant(tenant)
    with open(path, "rb") as stream:
        uploaded = store_input_file(
            stream,
            filename=os.path.basename(path),
            purpose="batch",
            tenant=tenant,
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

    view = get_batch(batch_id)
    if output is None:
        _write_results(batch_id, sys.stdout.buffer)
    else:
        try:
            with open(output, "wb") as target:
                _write_results(batch_id, target)
        except OSError as exc:
            # A missing folder, no permission, a full disk: one line naming the file.
            raise EzqError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
    counts = view["request_counts"]
    click.echo(
        f"{view['status']}: {counts['completed']} completed, {counts['failed']} failed"
        f" of {counts['total']}",
        err=True,
    )


def _write_results(batch_id: str, target: BinaryIO) -> None:
    from service.batches.results import result_chunks

    for chunk in result_chunks(batch_id, "all"):
        target.write(chunk)
    target.flush()


@batch.command("cancel")
@click.argument("batch_id")
def cancel(batch_id: str) -> None:
    """Cancel the batch: lines not started never run; finished ones are kept."""
    from service.batches.lifecycle import cancel_batch

    _print_json(cancel_batch(batch_id))
