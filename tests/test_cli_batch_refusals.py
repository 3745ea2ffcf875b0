"""`ezq batch submit` refused writes nothing (no unused copy of the prompts per retry), the
HTTP batch create refused writes nothing either, and `ezq batch results -o` to a path that
cannot be written is one line naming it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_ezq, sql

pytestmark = pytest.mark.usefixtures("service_env")

ADMIN_TOKEN = "batch-refusals-admin-" + uuid.uuid4().hex
SECRET = "whsec_" + "a" * 32


def batch_file(folder: Path, marker: str) -> Path:
    """A valid two-line batch file with a name and prompts of its own."""
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "glm-5.1", "messages": [{"role": "user", "content": marker}]},
        }
        for i in range(2)
    ]
    path = folder / f"refused-{marker}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def stored(path: Path) -> list[tuple[Any, ...]]:
    """What Postgres holds of ``path``: file rows, their slices, batches made from them."""
    return sql(
        "SELECT (SELECT count(*) FROM batch_files WHERE filename = :n),"
        " (SELECT count(*) FROM batch_file_chunks k JOIN batch_files f ON f.id = k.file_id"
        "   WHERE f.filename = :n),"
        " (SELECT count(*) FROM batches b JOIN batch_files f ON f.id = b.input_file_id"
        "   WHERE f.filename = :n)",
        n=path.name,
    )


@pytest.mark.parametrize(
    ("extra", "secret", "reason"),
    [
        (["--callback-url", "notaurl"], SECRET, "callback_url"),
        ([arg for i in range(17) for arg in ("--meta", f"k{i}=v")], SECRET, "metadata"),
        (["--callback-url", "https://example.com/hook"], None, "WEBHOOK_SECRET is not set"),
    ],
    ids=["bad-callback-url", "17-meta-pairs", "no-webhook-secret"],
)
def test_refused_submit_stores_nothing(
    extra: list[str],
    secret: str | None,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submit refused for its options is one line, and no file, slice or batch is
    stored, however often it is retried."""
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    env = {"WEBHOOK_SECRET": secret} if secret else {}
    path = batch_file(tmp_path, uuid.uuid4().hex)

    for _ in range(2):
        done = run_ezq("batch", "submit", str(path), *extra, env=env)
        assert done.returncode == 1, (done.stdout, done.stderr)
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("ezq: error: ") and reason in line, line

    assert stored(path) == [(0, 0, 0)]


@pytest.fixture(scope="module")
def api(api_server_factory: Any) -> Any:
    return api_server_factory(EZQ_API_TOKENS=ADMIN_TOKEN, WEBHOOK_SECRET=SECRET)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"callback_url": "notaurl"}, "callback_url"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"priority": 10}, "priority"),
    ],
    ids=["bad-callback-url", "17-metadata-keys", "bad-priority"],
)
def test_refused_http_batch_create_writes_no_batch(
    api: Any, fields: dict[str, Any], param: str, tmp_path: Path
) -> None:
    """POST /v1/batches refused for its fields writes no batch and no job; the file,
    uploaded on its own by /v1/files, stays usable."""
    marker = uuid.uuid4().hex
    path = batch_file(tmp_path, marker)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    upload = httpx.post(
        f"{api.url}/v1/files",
        headers=auth,
        files={"file": (path.name, path.read_bytes())},
        data={"purpose": "batch"},
    )
    assert upload.status_code == 200, upload.text
    body = {
        "input_file_id": upload.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **fields,
    }

    refused = httpx.post(f"{api.url}/v1/batches", headers=auth, json=body)

    assert refused.status_code in (400, 422), refused.text
    assert param in refused.text
    assert stored(path) == [(1, 1, 0)]
    assert sql("SELECT count(*) FROM jobs WHERE input_messages::text LIKE :m",
               m=f"%{marker}%") == [(0,)]  # fmt: skip


def test_results_to_an_unwritable_path_is_one_line(own_queue: str, tmp_path: Path) -> None:
    """`ezq batch results ID -o /no/such/dir/x.jsonl` says which path and why, in one line
    on stderr, and exits 1."""
    path = batch_file(tmp_path, uuid.uuid4().hex)
    submitted = run_ezq("batch", "submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    target = tmp_path / "no-such-dir" / "x.jsonl"

    done = run_ezq("batch", "results", batch_id, "-o", str(target))

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == f"ezq: error: --output: cannot write {target}: No such file or directory"


def test_a_file_failing_its_checks_names_its_bad_lines_and_its_encoding(tmp_path: Path) -> None:
    """The refusal names the first bad line's fault and the numbers of the others; a line
    in UTF-16 is "not UTF-8", not a codec's message; a UTF-8 BOM is accepted."""
    good = json.loads(batch_file(tmp_path, "x").read_text().splitlines()[0])
    rows = [json.dumps({**good, "custom_id": f"c{i}"}) for i in range(6)]
    rows[1] = rows[3] = rows[4] = "{not json"
    bad = tmp_path / "bad-lines.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    done = run_ezq("batch", "submit", str(bad))
    assert done.returncode != 0
    assert "line 2: line: is not valid JSON" in done.stderr
    assert "(and 2 more: lines 4, 5)" in done.stderr, done.stderr

    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes(rows[0].encode("utf-16") + b"\n")
    done = run_ezq("batch", "submit", str(utf16))
    assert done.returncode != 0
    assert "line 1: line: is not UTF-8 text" in done.stderr, done.stderr
    assert "codec" not in done.stderr

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + rows[0].encode() + b"\n" + rows[2].encode() + b"\n")
    done = run_ezq("batch", "submit", str(bom))
    assert done.returncode == 0, done.stderr
