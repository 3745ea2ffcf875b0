"""``ezq purge`` reaches batches: the input files of purged lines, files uploaded and never
used, and the content routes of what was erased."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.batches.files import store_input_file
from service.batches.submit import create_batch, publish_lines
from service.db.purge import Selection
from service.ops.purge import purge
from tests.conftest import REDIS_URL, places_holding, run_ezq, sql, sweep_paused
from tests.test_batches import jsonl, line, wait_until

ADMIN_TOKEN = "purge-batch-admin-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHUNKS = "SELECT count(*), coalesce(sum(length(data)), 0) FROM batch_file_chunks WHERE file_id = :f"
FILE_ROW = "SELECT tenant, purpose, filename, bytes, line_count FROM batch_files WHERE id = :f"
# ``places_holding`` reads rows as text, where bytea is hex: file slices are searched here.
SLICES_HOLDING = (
    "SELECT count(*) FROM batch_file_chunks WHERE position(convert_to(:m, 'UTF8') IN data) > 0"
)


@pytest.fixture(scope="module")
def server(api_server_factory: Any, worker: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN)


def submit(path: Path, tenant: str, prompts: list[str]) -> dict[str, Any]:
    """``ezq batch submit`` of one line per prompt; the batch once it has completed."""
    path.write_bytes(jsonl([line(f"line-{i}", prompt) for i, prompt in enumerate(prompts)]))
    done = run_ezq("batch", "submit", str(path), "--tenant", tenant)
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.strip()

    def completed() -> dict[str, Any] | None:
        shown = run_ezq("batch", "status", batch_id)
        assert shown.returncode == 0, shown.stderr
        view: dict[str, Any] = json.loads(shown.stdout)
        return view if view["status"] == "completed" else None

    batch: dict[str, Any] = wait_until(completed, f"batch {batch_id} to complete")
    finals_written(batch_id)
    return batch


def finals_written(batch_id: str) -> None:
    """Wait until each line's live stream holds its final event (written just after the
    line's end is committed): a purge deletes the stream, and a final event written after
    it would make it again."""
    client = redis.Redis.from_url(REDIS_URL)
    jobs = [j for (j,) in sql("SELECT id FROM jobs WHERE batch_id = :b", b=batch_id)]

    def written() -> bool:
        last = [client.xrevrange(f"ezq:live:{job}", count=1) for job in jobs]
        return all(entry and entry[0][1][b"t"].startswith(b"job.") for entry in last)

    wait_until(written, f"the final events of batch {batch_id}", 10)


def upload(server: Any, tenant: str, name: str, prompt: str) -> str:
    """A file uploaded over HTTP for ``tenant`` and never used by a batch."""
    answer = httpx.post(
        f"{server.url}/v1/files",
        headers=ADMIN,
        files={"file": (name, jsonl([line("only", prompt)]))},
        data={"purpose": "batch", "tenant": tenant},
    )
    assert answer.status_code == 200, answer.text
    file_id: str = answer.json()["id"]
    return file_id


def content(server: Any, file_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/files/{file_id}/content", headers=ADMIN)


def now() -> datetime:
    return datetime.now(UTC)


def test_tenant_purge_erases_its_batch_files_and_no_other(server: Any, tmp_path: Path) -> None:
    """After a tenant's batch has ended, ``ezq purge --tenant`` leaves none of its prompts
    or replies anywhere: its input file's content and the content of a file it uploaded and
    never used are deleted (the rows stay, for their id, name and size); the content
    routes say the content was purged; another tenant's files are untouched. Purging one
    line's conversation keeps the file, whose other lines are not purged."""
    tenant, other = f"pb-{uuid.uuid4().hex[:8]}", f"pb-{uuid.uuid4().hex[:8]}"
    mark, other_mark = f"erase-{uuid.uuid4().hex}", f"keep-{uuid.uuid4().hex}"
    batch = submit(tmp_path / "b1.jsonl", tenant, [f"{mark} {i}" for i in range(3)])
    kept = submit(tmp_path / "b2.jsonl", other, [f"{other_mark} {i}" for i in range(2)])
    unused = upload(server, tenant, "unused.jsonl", f"{mark} unused")
    other_unused = upload(server, other, "other.jsonl", f"{other_mark} unused")
    files = (batch["input_file_id"], unused)
    other_files = (kept["input_file_id"], other_unused)
    rows_before = {f: sql(FILE_ROW, f=f) for f in (*files, *other_files)}
    other_chunks = {f: sql(CHUNKS, f=f) for f in other_files}
    assert content(server, batch["input_file_id"]).status_code == 200
    conversations = [
        c for (c,) in sql("SELECT conversation_id FROM jobs WHERE batch_id = :b", b=batch["id"])
    ]

    # One line's conversation: the file still holds the other two lines, so it is kept
    # (and counted as held back).
    one = purge(Selection(before=now(), conversation_id=conversations[0]))
    assert (one.counts.conversations, one.counts.files, one.held_files) == (1, 0, 1)
    assert sql(CHUNKS, f=batch["input_file_id"])[0][0] >= 1

    dry = purge(Selection(before=now(), tenant=tenant), dry_run=True)
    assert (dry.counts.conversations, dry.counts.files, dry.held_files, dry.blocked) == (
        2,
        2,
        0,
        0,
    )
    assert sql(CHUNKS, f=unused)[0][0] == 1, "a dry run erased a file"

    done = run_ezq("purge", "--tenant", tenant)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("purged 2 conversations: 2 jobs"), done.stdout
    assert done.stderr == ""
    for file_id in files:
        assert sql(CHUNKS, f=file_id) == [(0, 0)]
    # The rows stay, as they were: id, name, size and line count are not content.
    assert {f: sql(FILE_ROW, f=f) for f in (*files, *other_files)} == rows_before
    assert {f: sql(CHUNKS, f=f) for f in other_files} == other_chunks
    assert places_holding(mark) == [] and sql(SLICES_HOLDING, m=mark) == [(0,)]
    assert {"table messages", "table jobs"} <= set(places_holding(other_mark))
    assert sql(SLICES_HOLDING, m=other_mark) == [(2,)]

    # The content routes: a clear 404 saying the content was purged, for the input file,
    # the unused file and the batch's output file; the file itself is still described.
    for file_id in (*files, batch["output_file_id"]):
        gone = content(server, file_id)
        assert gone.status_code == 404, gone.text
        error = gone.json()["error"]
        assert error["type"] == "file_not_found"
        assert f"{file_id}: its content was purged (ezq purge)" in error["message"]
    shown = httpx.get(f"{server.url}/v1/files/{batch['input_file_id']}", headers=ADMIN)
    assert shown.status_code == 200
    assert shown.json()["bytes"] == rows_before[batch["input_file_id"]][0][3]
    assert "purged" in (shown.json()["status_details"] or "")
    assert other_mark.encode() in content(server, kept["input_file_id"]).content
    assert other_mark.encode() in content(server, kept["output_file_id"]).content
    # A purged file cannot make a new batch; nothing is written.
    again = httpx.post(
        f"{server.url}/v1/batches",
        headers=ADMIN,
        json={
            "input_file_id": unused,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert again.status_code == 404 and "content was purged" in again.text
    assert sql("SELECT count(*) FROM batches WHERE input_file_id = :f", f=unused) == [(0,)]
    # Nothing left: a second run erases nothing more.
    assert purge(Selection(before=now(), tenant=tenant)).counts.files == 0


def test_a_file_is_kept_while_its_batch_runs(server: Any) -> None:
    """A file whose batch has lines not yet ended is held back (its conversations too, in a
    dry run and a real one), and erased by the purge after the batch has ended."""
    tenant, mark = f"pb-{uuid.uuid4().hex[:8]}", f"running-{uuid.uuid4().hex}"
    stream = io.BytesIO(jsonl([line(f"r{i}", f"{mark} {i}") for i in range(2)]))
    uploaded = store_input_file(
        stream, filename="running.jsonl", purpose="batch", tenant=tenant, created_by=None
    )
    # Not published yet, the lines are queued without messages: the suite's worker, which
    # sweeps this database every second, would publish and run them before the purge looks.
    with sweep_paused():
        created = create_batch(
            input_file_id=uploaded["id"], endpoint="/v1/chat/completions", completion_window="24h"
        )
        selection = Selection(before=now(), tenant=tenant)
        dry = purge(selection, dry_run=True)
        assert (dry.counts.files, dry.held_files, dry.blocked) == (0, 1, 2)
        said = run_ezq("purge", "--tenant", tenant, "--dry-run")
        assert said.returncode == 0, said.stderr
        assert said.stdout.strip().endswith(", 0 batch files")
        assert "2 selected conversations still have unfinished jobs" in said.stderr
        assert "would be left alone" in said.stderr
        assert "1 batch file of the selection still holds requests" in said.stderr
        assert "would be kept" in said.stderr
        held = purge(selection)
        assert (held.counts.files, held.held_files, held.blocked) == (0, 1, 2)
        assert sql(CHUNKS, f=uploaded["id"])[0][0] == 1

    publish_lines(created.job_ids)
    batch_id = created.view["id"]
    wait_until(
        lambda: sql("SELECT status FROM batches WHERE id = :b", b=batch_id) == [("completed",)],
        "the batch to complete",
    )
    finals_written(batch_id)
    done = purge(Selection(before=now(), tenant=tenant))
    assert (done.counts.conversations, done.counts.files, done.held_files) == (2, 1, 0)
    assert sql(CHUNKS, f=uploaded["id"]) == [(0, 0)]
    assert places_holding(mark) == [] and sql(SLICES_HOLDING, m=mark) == [(0,)]


def test_a_dry_run_by_age_alone_counts_no_kept_files(server: Any) -> None:
    """By age alone no file is counted as kept (the dry run subtracted the files it would
    erase from a count that is 0 by age, and printed "-1 batch files … would be kept")."""
    store_input_file(
        io.BytesIO(jsonl([line("u1", f"unused-{uuid.uuid4().hex}")])),
        filename="unused.jsonl",
        purpose="batch",
        tenant=None,
        created_by=None,
    )
    dry = purge(Selection(before=now()), dry_run=True)
    assert dry.counts.files >= 1 and dry.held_files == 0
    said = run_ezq("purge", "--before", "2099-01-01", "--dry-run")
    assert said.returncode == 0, said.stderr
    assert "batch file" not in said.stderr, said.stderr
