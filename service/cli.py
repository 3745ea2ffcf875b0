"""The ``ezq`` command line. Errors print one line and exit non-zero."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from service import constants as c
from service.batches.cli import batch as batch_group
from service.errors import ConfigError, EzqError
from service.flow.cli import budgets as budgets_group
from service.flow.cli import limits as limits_group
from service.keys.cli import keys as keys_group
from service.ops.jobs_cli import jobs as jobs_group
from service.ops.purge_cli import purge as purge_command
from service.ops.status_cli import status as status_command
from service.usage.cli import grant_readonly, prices, tag_rollup, usage
from service.webhooks.cli import webhooks as webhooks_group
from service.worker.cli import dead_letters

TERMINAL = ("succeeded", "failed", "cancelled")
# `ezq enqueue --wait`'s exit status when --timeout passed before the job ended.
WAIT_TIMED_OUT = 124


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a UUID", param_hint=what) from None


def _pairs(values: tuple[str, ...], option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# click's ParamType is generic in its type stubs from click 8.4 only; 8.1 takes no index.
if TYPE_CHECKING:
    _ParamType = click.ParamType[int | str]
else:
    _ParamType = click.ParamType


class CpuParam(_ParamType):
    """A CPU number (0 or more) or ``auto``."""

    name = "cpu"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | str:
        from service.config import worker_cpu_choice

        try:
            choice = worker_cpu_choice(value)
        except ValueError:
            choice = None
        if choice is None:
            self.fail(f"{value!r} is neither a CPU number (0 or more) nor 'auto'", param, ctx)
        return choice


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """ezq: LLM chat completions as background jobs."""
    from service.logsetup import configure_logging

    configure_logging()


# --- database ------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Create and migrate the database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create the database if it is missing, then migrate it to REVISION."""
    import psycopg.errors

    from service.db import migrate

    try:
        created = migrate.create_database_if_missing()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise EzqError(
            f"cannot create the database: {str(exc).strip().splitlines()[0]}; create it first"
            " (CREATE DATABASE), or give this role CREATEDB"
        ) from None
    if created:
        click.echo("created the database", err=True)
    migrate.upgrade(revision)
    click.echo(f"database at {revision}", err=True)


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (``base`` drops everything)."""
    from service.db import migrate

    migrate.downgrade(revision)


@db.command("current")
def db_current() -> None:
    """Print the database's migration revision."""
    from service.db import migrate

    migrate.current()


# --- running -------------------------------------------------------------------------


class _WorkerCommand(click.Command):
    """``ezq worker``: its own options are parsed by click, every other argument goes to
    Celery as it was written. Parsed by click, an argument it did not know was split into
    short options (``-nworker1@%h``, ``-Qhigh``), and an ``h`` among them was ``-h``: the
    worker printed its help and exited 0. The options the worker sets itself are refused
    first."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own, celery = _split_worker_arguments(args)
        _refuse_fixed_options(celery)
        return super().parse_args(ctx, [*own, "--", *celery] if celery else own)


# ``ezq worker``'s own options that take a value, and its help.
_WORKER_VALUE_OPTIONS = ("--metrics-port", "--metrics-host", "--cpu")
_WORKER_HELP = ("-h", "--help")


def _split_worker_arguments(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` as the worker's own options (with their values) and Celery's arguments."""
    own: list[str] = []
    celery: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            celery += args[i + 1 :]
            break
        if arg in _WORKER_VALUE_OPTIONS:
            own += args[i : i + 2]
            i += 2
            continue
        if arg.split("=", 1)[0] in _WORKER_VALUE_OPTIONS or arg in _WORKER_HELP:
            own.append(arg)
        else:
            celery.append(arg)
        i += 1
    return own, celery


@cli.command(
    "worker",
    cls=_WorkerCommand,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    envvar="EZQ_METRICS_PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (env EZQ_METRICS_PORT).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address for --metrics-port (0.0.0.0 to be scraped from other hosts).",
)
@click.option(
    "--cpu",
    type=CpuParam(),
    metavar="N|auto",
    help="Pin the process to this CPU, or 'auto': one no other worker of this host took."
    " One worker process per CPU, each on its own (env EZQ_WORKER_CPU).",
)
@click.pass_context
def worker(
    ctx: click.Context, metrics_port: int | None, metrics_host: str, cpu: int | str | None
) -> None:
    """Run a Celery worker (extra arguments go to ``celery worker``, e.g. -c 64)."""
    from service.config import get_settings
    from service.worker.affinity import AUTO, claim_free_cpu, pin_to_cpu
    from service.worker.app import app

    _take_concurrency(ctx)
    settings = get_settings()
    # First, before anything starts a thread: threads inherit their creator's CPUs.
    choice, setting = (
        (cpu, "--cpu") if cpu is not None else (settings.ezq_worker_cpu, "EZQ_WORKER_CPU")
    )
    if choice == AUTO:
        pin_to_cpu(claim_free_cpu(setting=setting), setting=setting)
    elif isinstance(choice, int):
        pin_to_cpu(choice, setting=setting)
    settings.require_api_key()
    _check_schema()
    extra = [a for a in ctx.args if a not in ("-B", "--beat")]
    if len(extra) != len(ctx.args):
        # The sweep runs inside every worker now; an embedded beat process could outlive
        # the worker that started it.
        click.echo("ezq worker: -B is not needed (every worker sweeps); ignored", err=True)
    if metrics_port is not None:
        from service.metrics.exposition import serve

        try:
            serve(metrics_port, metrics_host)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port: cannot listen on {metrics_port}: {exc.strerror}"
            ) from None
    argv = [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(settings.ezq_worker_concurrency),
        "--queues",
        settings.ezq_queue,
        "--loglevel",
        settings.ezq_log_level,
        *extra,
    ]
    app.worker_main(argv=argv)


# Celery options the worker sets itself, and the setting to use instead. Passed on, the
# later one won: under ``--pool prefork`` jobs ran in child processes while the heartbeat
# renewed the (empty) leases of the parent, so every call longer than a lease was taken
# over and made again; under ``-Q`` the worker's recorded queue was not the one it read.
_FIXED_OPTIONS = {
    "-P": "the worker runs Celery's threads pool (size it with -c or EZQ_WORKER_CONCURRENCY)",
    "--pool": "the worker runs Celery's threads pool (size it with -c or EZQ_WORKER_CONCURRENCY)",
    "-Q": "set EZQ_QUEUE to the queue the worker consumes",
    "--queues": "set EZQ_QUEUE to the queue the worker consumes",
}


# Celery worker's short options that take no value: in a group (``-EQ high``) the letter
# after one of them is another option, after any other the option's value.
_CELERY_SHORT_FLAGS = "BES"


def _short_options(arg: str) -> list[str]:
    """The short options a single-dash argument names, as Celery reads it: ``-EQ`` is
    ``-E -Q``, ``-Qhigh`` is ``-Q`` with the value ``high``."""
    if arg[:1] != "-" or arg[:2] == "--" or len(arg) < 2:
        return []
    names = []
    for letter in arg[1:]:
        names.append(f"-{letter}")
        if letter not in _CELERY_SHORT_FLAGS:
            break
    return names


def _refuse_fixed_options(args: list[str]) -> None:
    """A ConfigError naming the first option among ``args`` that the worker sets itself."""
    for arg in args:
        for name in (arg.split("=", 1)[0], *_short_options(arg)):
            if name in _FIXED_OPTIONS:
                raise ConfigError(f"{name}: ezq worker sets it itself; {_FIXED_OPTIONS[name]}")


def _take_concurrency(ctx: click.Context) -> None:
    """Celery's ``-c N`` / ``--concurrency N`` among the extra arguments becomes
    ``EZQ_WORKER_CONCURRENCY`` (and leaves them): what else is sized by the concurrency (the
    database pool: never more connections than threads) follows the threads Celery runs."""
    args, value = list(ctx.args), None
    for i, arg in enumerate(args):
        if arg in ("-c", "--concurrency") and i + 1 < len(args):
            value, del_from, del_to = args[i + 1], i, i + 2
            break
        if arg.startswith("--concurrency="):
            value, del_from, del_to = arg.split("=", 1)[1], i, i + 1
            break
        if arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            value, del_from, del_to = arg[2:], i, i + 1
            break
    if value is None:
        return
    from service.config import get_settings

    os.environ["EZQ_WORKER_CONCURRENCY"] = value
    get_settings.cache_clear()  # validated there: a bad value is a configuration error
    del args[del_from:del_to]
    ctx.args = args


def _check_schema() -> None:
    from sqlalchemy import text

    from service.db.session import get_engine

    with get_engine().connect() as conn:
        found = conn.execute(
            text("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        ).scalar()
    if not found:
        raise ConfigError("DATABASE_URL: the database has no ezq schema; run `ezq db upgrade`")


@cli.command("enqueue")
@click.option("--model", "-m", required=True, help="Model id, e.g. claude-sonnet-4-6.")
@click.option("--system", help="A system prompt to send first.")
@click.option("--conversation", help="Continue this conversation (id).")
@click.option("--tenant", help="Tenant to attribute the job to.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata tag (repeatable).")
@click.option(
    "--param", multiple=True, metavar="KEY=VALUE", help="Gateway parameter, e.g. temperature=0.2."
)
@click.option("--idempotency-key", help="Same key and request returns the first job.")
@click.option("--callback-url", help="POST a signed webhook here when the job ends.")
@click.option(
    "--surface",
    type=click.Choice(["openai", "anthropic", "auto"]),
    help="ezrouter surface; default: EZQ_SURFACE_DEFAULTS' match for the model, else auto.",
)
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    help="0-9, higher starts first under a backlog (default 5).",
)
@click.option("--wait", is_flag=True, help="Wait for the job to end and print it as JSON.")
@click.option(
    "--follow",
    is_flag=True,
    help="Print the reply as it arrives, then the final status (exit 1 unless it succeeded).",
)
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    help=f"Seconds to --wait at most (then exit {WAIT_TIMED_OUT}, the job still going).",
)
@click.argument("prompt")
def enqueue(
    model: str,
    system: str | None,
    conversation: str | None,
    tenant: str | None,
    meta: tuple[str, ...],
    param: tuple[str, ...],
    idempotency_key: str | None,
    callback_url: str | None,
    surface: str | None,
    priority: int | None,
    wait: bool,
    follow: bool,
    timeout: float,
    prompt: str,
) -> None:
    """Enqueue PROMPT as a chat completion; print the job id (or the job, with --wait)."""
    from service.producer import enqueue_completion, get_job

    if wait and follow:
        # Refused before anything is enqueued: --follow used to win and --wait (its JSON
        # and its --timeout) was silently ignored.
        raise click.UsageError("--wait and --follow cannot go together: choose one")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    job_id = enqueue_completion(
        model,
        messages,
        conversation_id=_uuid(conversation, "--conversation") if conversation else None,
        params=_pairs(param, "--param") or None,
        tenant=tenant,
        metadata=_pairs(meta, "--meta") or None,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
        surface=surface,
        priority=priority,
    )
    if follow:
        _follow(job_id)
        return
    if not wait:
        click.echo(str(job_id))
        return
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(job_id)
        if job["status"] in TERMINAL:
            _print_json(job)
            if job["status"] != "succeeded":
                sys.exit(1)
            return
        if time.monotonic() > deadline:
            # Its own exit status (as timeout(1) uses): the job has not failed, it is still
            # going, and a script must be able to tell the two apart.
            _print_json(job)
            click.echo(
                f"ezq: error: job {job_id} still {job['status']} after {timeout:g}s", err=True
            )
            sys.exit(WAIT_TIMED_OUT)
        time.sleep(0.2)


def _follow(job_id: uuid.UUID) -> None:
    """The reply on stdout as it arrives; the job id, restarts and the end on stderr."""
    from service.live.follow import stream_job

    click.echo(f"job {job_id}", err=True)
    printed = False
    for event in stream_job(job_id):
        if event.type == "delta" and event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()
            printed = True
        elif event.type == "attempt_restarted":
            attempt = event.payload["attempt"]
            click.echo(f"\n[attempt {attempt} starts over; the text above is void]", err=True)
        elif event.final:
            job = event.payload["data"]
            if not printed and job.get("content"):
                # The job ended before its stream was opened: an ended job's stream is
                # its final event alone, which holds the reply.
                sys.stdout.write(job["content"])
                printed = True
            if printed:
                click.echo()
            error = job.get("error") or {}
            detail = f": {error.get('type')}: {error.get('message')}" if error else ""
            click.echo(f"{job['status']}{detail}", err=True)
            if job["status"] != "succeeded":
                sys.exit(1)


@cli.command("show")
@click.argument("job_id")
def show(job_id: str) -> None:
    """Print a job as JSON: status, attempts, content, finish reason, usage, error."""
    from service.producer import get_job

    _print_json(get_job(_uuid(job_id, "JOB_ID")))


@cli.command("cancel")
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job that has not ended; print it as JSON."""
    from service.producer import cancel_job

    _print_json(cancel_job(_uuid(job_id, "JOB_ID")))


@cli.command("conversation")
@click.argument("conversation_id")
def conversation(conversation_id: str) -> None:
    """Print a conversation's messages and jobs as JSON."""
    from service.producer import get_conversation

    _print_json(get_conversation(_uuid(conversation_id, "CONVERSATION_ID")))


@cli.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=1, show_default=True, help="Server processes.")
def api(host: str, port: int, workers: int) -> None:
    """Serve the HTTP interface (keys: `ezq keys`; tokens in EZQ_API_TOKENS are admin keys)."""
    import uvicorn

    from service.config import get_settings

    get_settings().api_tokens()
    with _metrics_directory(workers):
        uvicorn.run(
            "service.api.app:create_server_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=get_settings().ezq_log_level.lower(),
            # Open /events streams would hold a shutdown until their jobs end; they are
            # closed after this, and clients resume with Last-Event-ID.
            timeout_graceful_shutdown=int(c.API_GRACEFUL_SHUTDOWN_S),
        )


@contextlib.contextmanager
def _metrics_directory(processes: int) -> Iterator[None]:
    """Several server processes sum their metrics through files in a directory: give them
    one (removed afterwards) unless PROMETHEUS_MULTIPROC_DIR names it already."""
    if processes < 2 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="ezq-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


@cli.command("fake-gateway")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
def fake_gateway(host: str, port: int) -> None:
    """Serve the fake ezrouter (for tests, demos and benchmarks) until interrupted."""
    import socket

    from service.fake_gateway import serve

    try:
        serve(host=host, port=port)
    except OSError as exc:
        # Binding is the only socket call before serving starts: a busy or privileged port,
        # or a host that does not resolve, is one line, not a traceback.
        flag = "--host" if isinstance(exc, socket.gaierror) else "--port"
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{flag}: cannot listen on {host}:{port}: {reason}") from None


@cli.command("demo")
def demo() -> None:
    """Run a two-turn conversation end to end and print the replies and usage."""
    from service.demo import run_demo

    run_demo()


def _database_hint(error: Exception) -> str:
    from sqlalchemy import make_url

    from service.config import get_settings

    url = make_url(get_settings().database_url).render_as_string(hide_password=True)
    lines = str(getattr(error, "orig", error)).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    return f"cannot reach the database at {url}: {first}"


def main() -> None:
    """Entry point: run the CLI, turning expected errors into one line on stderr."""
    import psycopg
    from sqlalchemy.exc import OperationalError, ProgrammingError

    _refuse_undecodable_arguments(sys.argv[1:])
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"ezq: configuration error: {exc}", err=True)
        sys.exit(2)
    except EzqError as exc:
        click.echo(f"ezq: error: {exc}", err=True)
        sys.exit(1)
    except (OperationalError, psycopg.OperationalError) as exc:
        # psycopg's own: `ezq db upgrade` connects without SQLAlchemy to create the database.
        click.echo(f"ezq: error: {_database_hint(exc)}", err=True)
        sys.exit(1)
    except ProgrammingError as exc:
        if not _schema_missing(exc):
            raise
        click.echo(
            "ezq: configuration error: DATABASE_URL: the database has no ezq schema, or an"
            " older one; run `ezq db upgrade`",
            err=True,
        )
        sys.exit(2)


def _refuse_undecodable_arguments(args: list[str]) -> None:
    """An argument that is not UTF-8 (Python keeps its bytes as lone surrogates) can be
    neither stored nor looked up: one line naming it, before any command runs."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            click.echo(f"ezq: error: argument '{shown}' is not valid UTF-8 text", err=True)
            sys.exit(1)


def _schema_missing(error: Exception) -> bool:
    import psycopg.errors

    return isinstance(
        getattr(error, "orig", None), psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn
    )


cli.add_command(keys_group)
cli.add_command(batch_group)
cli.add_command(webhooks_group)
cli.add_command(jobs_group)
cli.add_command(status_command)
cli.add_command(purge_command)
cli.add_command(prices)
cli.add_command(usage)
cli.add_command(dead_letters)
cli.add_command(limits_group)
cli.add_command(budgets_group)
db.add_command(grant_readonly)
db.add_command(tag_rollup)
