"""`ezq demo`: the main job end to end, with everything it starts stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from service.config import get_settings
from service.errors import EzqError

# Replies, errors, URLs and paths are shown as written: markup in a model's reply
# (``[/x]``) would raise MarkupError. Our own styling is given as ``style``.
console = Console(markup=False, emoji=False)
MODEL = "claude-sonnet-4-6"
TERMINAL = ("succeeded", "failed", "cancelled")


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EzqError(f"the worker exited at start-up:\n{log.read_text(errors='replace')}")
        if " ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise EzqError(f"the worker was not ready after {timeout:g}s; see {log}")


def _wait_job(job_id: uuid.UUID, timeout: float = 300) -> dict[str, Any]:
    from service.producer import get_job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise EzqError(f"job {job_id} did not finish within {timeout:g}s")


def run_demo() -> None:
    from service.db import migrate
    from service.producer import enqueue_completion

    settings = get_settings()
    with ExitStack() as stack:
        worker_env = dict(os.environ)
        if settings.ezrouter_api_key is None:
            from service.fake_gateway import FakeGateway

            gateway = stack.enter_context(FakeGateway().start())
            console.print(
                f"EZROUTER_API_KEY is not set: using the built-in fake gateway at "
                f"{gateway.url} (no real model is called).",
                style="yellow",
            )
            worker_env.update(EZROUTER_API_KEY="sk-fake-demo", EZROUTER_BASE_URL=gateway.url)
        else:
            console.print(f"Talking to the real ezrouter at {settings.ezrouter_base_url}.")
        # A queue of its own, so the demo neither takes nor leaves work for other workers.
        queue = f"ezq-demo-{uuid.uuid4().hex[:8]}"
        worker_env["EZQ_QUEUE"] = queue
        os.environ["EZQ_QUEUE"] = queue
        get_settings.cache_clear()

        if migrate.create_database_if_missing():
            console.print("Created the database.")
        migrate.upgrade("head")
        console.print("Database migrated.")

        # Removed when the demo ends, like the queue and the results (no leftovers).
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ezq-demo-"))
        log_path = Path(folder) / "worker.log"
        log_file = stack.enter_context(log_path.open("wb"))
        job_ids: list[uuid.UUID] = []
        stack.callback(_forget, queue, job_ids)
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "--concurrency", "4"],
            env=worker_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, worker)
        _wait_ready(worker, log_path)
        console.print(f"Worker started (log: {log_path}).")

        first_id = enqueue_completion(
            MODEL,
            [
                {"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": "What is a background job queue?"},
            ],
            tenant="demo",
            metadata={"feature": "demo"},
        )
        job_ids.append(first_id)
        first_job = _wait_job(first_id)
        # Turn 2 continues the conversation: the worker sends turn 1's history with it.
        second_id = enqueue_completion(
            MODEL,
            [{"role": "user", "content": "And why would I retry only on 5xx?"}],
            conversation_id=first_job["conversation_id"],
            tenant="demo",
            metadata={"feature": "demo"},
        )
        job_ids.append(second_id)
        second_job = _wait_job(second_id)
        _report([first_job, second_job])
        if any(job["status"] != "succeeded" for job in (first_job, second_job)):
            raise EzqError("a demo job failed; see the table above")
    console.print("Stopped everything the demo started.")


def _forget(queue: str, job_ids: list[uuid.UUID]) -> None:
    """Delete what the demo put in Redis: its queue, kombu's keys for it, the jobs' results
    and their live token streams."""
    import redis

    from service.ops.purge import forget_job_keys

    settings = get_settings()
    keys = [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    try:
        if settings.broker_is_redis:
            redis.Redis.from_url(settings.celery_broker_url, socket_timeout=5).delete(*keys)
    except redis.RedisError:
        console.print("Could not remove the demo's keys from Redis.", style="yellow")
    forget_job_keys(job_ids)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _report(jobs: list[dict[str, Any]]) -> None:
    console.print(f"\nConversation {jobs[0]['conversation_id']}\n")
    for turn, job in enumerate(jobs, start=1):
        console.print(
            Text.assemble(
                (f"Turn {turn}", "bold"),
                f" job {job['job_id']} ({job['status']}, {job['attempts']} attempt(s))",
            )
        )
        console.print(job["content"] if job["content"] is not None else job["error"])
        console.print()
    table = Table(title="Token usage")
    for column in ("turn", "model", "prompt", "cached", "completion", "total"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for turn, job in enumerate(jobs, start=1):
        usage = job["usage"] or {}
        table.add_row(
            str(turn),
            job["model"],
            *(
                str(usage.get(k, "-"))
                for k in ("prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens")
            ),
        )
    console.print(table)
