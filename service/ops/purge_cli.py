"""``ezq purge``: delete the content of old (or one tenant's, or one conversation's) jobs."""

from __future__ import annotations

import click

from service.ops.when import HELP


@click.command("purge")
@click.option("--before", metavar="DATE|90d", help=f"Jobs that ended before: {HELP}")
@click.option("--tenant", help="Only this tenant's conversations (erasure: all of them).")
@click.option("--conversation", help="Only this conversation (id).")
@click.option("--dry-run", is_flag=True, help="Only count what would be purged.")
def purge(before: str | None, tenant: str | None, conversation: str | None, dry_run: bool) -> None:
    """Delete message content, request bodies and webhook payloads of ended jobs.

    Jobs keep their rows (status, model, tenant, metadata, timings, errors) and usage and
    cost rows are untouched, so usage totals stay exact. A conversation is purged whole,
    once all its jobs have ended. --before is needed unless --tenant or --conversation is
    given (then everything of theirs that has ended: erasure on request).
    """
    from service.db.purge import Selection
    from service.errors import InvalidRequest
    from service.ops.filters import job_ids
    from service.ops.output import counted
    from service.ops.purge import purge as run_purge
    from service.ops.when import parse_moment

    if before is None and tenant is None and conversation is None:
        raise click.UsageError("give --before DATE|90d, or --tenant or --conversation")
    cutoff = parse_moment(before or "now", "--before")
    if tenant is not None and not tenant.strip():
        raise InvalidRequest("--tenant", "must not be empty")
    selection = Selection(
        before=cutoff,
        tenant=tenant,
        conversation_id=job_ids([conversation], "--conversation", "conversation id")[0]
        if conversation
        else None,
    )
    result = run_purge(selection, dry_run=dry_run)
    counts = result.counts
    verb = "would purge" if dry_run else "purged"
    click.echo(
        f"{verb} {counted(counts.conversations, 'conversation')}: "
        f"{counted(counts.jobs, 'job')}, {counted(counts.messages, 'message')}, "
        f"{counted(counts.webhook_payloads, 'webhook payload')}, "
        f"{counted(counts.files, 'batch file')}"
    )
    if result.blocked:
        one = result.blocked == 1
        left = ("would be" if dry_run else "was" if one else "were") + " left alone"
        click.echo(
            f"{counted(result.blocked, 'selected conversation')} still "
            f"{'has' if one else 'have'} unfinished jobs or pending webhooks and "
            f"{left}; run again once they have ended",
            err=True,
        )
    if result.held_files:
        one = result.held_files == 1
        kept = "would be kept" if dry_run else "was kept" if one else "were kept"
        click.echo(
            f"{counted(result.held_files, 'batch file')} of the selection still "
            f"{'holds' if one else 'hold'} requests of jobs not purged (a batch still"
            f" running, or lines outside the selection) and {kept}; purge those lines"
            " to erase it",
            err=True,
        )
