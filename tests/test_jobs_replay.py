"""``ezq jobs replay``: new jobs linked to their originals, in conversation order, or skipped."""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from service import enqueue_completion, get_conversation, get_job
from service.db.session import transaction
from service.fake_gateway import Fault
from tests.conftest import run_ezq, sql, wait_for_job
from tests.seeding import seed_job

MODEL = "glm-5.1"


def failing_turn(gateway: Any, prompt: str, **fields: Any) -> dict[str, Any]:
    """Enqueue a turn that the gateway refuses once (HTTP 400), and wait for it to fail."""
    gateway.add_faults(Fault(status=400, match=prompt))
    job = wait_for_job(enqueue_completion(MODEL, [{"role": "user", "content": prompt}], **fields))
    assert job["status"] == "failed"
    return job


def replay(*args: str, status: int = 0) -> dict[str, Any]:
    """The JSON result; ``status`` 1 when a job id given is skipped (the command fails)."""
    done = run_ezq("jobs", "replay", "--format", "json", *args)
    assert done.returncode == status, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.usefixtures("worker")
def test_replay_copies_the_request_and_links_the_original(fake_gateway: Any) -> None:
    """A replayed failed job is a new job with the original's request, tenant and metadata."""
    marker = uuid.uuid4().hex
    original = failing_turn(
        fake_gateway, f"replay me {marker}", tenant="acme", metadata={"feature": marker}
    )

    done = run_ezq("jobs", "replay", original["job_id"])
    assert done.returncode == 0, done.stderr
    new_id = done.stdout.strip()
    assert "replayed 1 job" in done.stderr

    replayed = wait_for_job(new_id)
    assert replayed["status"] == "succeeded"
    assert replayed["replay_of"] == original["job_id"]
    assert replayed["tenant"] == "acme" and replayed["metadata"] == {"feature": marker}
    assert sql(
        "SELECT r.model = o.model AND r.input_messages = o.input_messages"
        " AND r.params = o.params FROM jobs r JOIN jobs o ON o.id = r.replay_of WHERE r.id = :r",
        r=new_id,
    ) == [(True,)]
    # The original is untouched, and replaying it twice is refused.
    assert get_job(original["job_id"])["status"] == "failed"
    again = replay(original["job_id"], status=1)
    assert again["count"] == 0 and again["skipped"][0]["reason"] == "already_replayed"


@pytest.mark.usefixtures("worker")
def test_failed_turns_replay_in_order_in_their_conversation(fake_gateway: Any) -> None:
    """Two failed turns after a good one replay into the same conversation, in order."""
    marker = uuid.uuid4().hex
    first = wait_for_job(enqueue_completion(MODEL, [{"role": "user", "content": "one"}]))
    conversation = first["conversation_id"]
    second = failing_turn(fake_gateway, f"two {marker}", conversation_id=conversation)
    third = failing_turn(fake_gateway, f"three {marker}", conversation_id=conversation)

    result = replay("--meta", "nothing=here", "--since", "1d")  # matches nothing
    assert result["count"] == 0
    result = replay(third["job_id"], second["job_id"])
    assert [r["original_id"] for r in result["replays"]] == [second["job_id"], third["job_id"]]
    assert {r["conversation"] for r in result["replays"]} == {"same"}
    for r in result["replays"]:
        assert wait_for_job(r["job_id"])["status"] == "succeeded"

    users = [
        m["content"] for m in get_conversation(conversation)["messages"] if m["role"] == "user"
    ]
    assert users == ["one", f"two {marker}", f"three {marker}"]
    # The second replay was sent the whole history, the first replay's reply included.
    sent = [r.body for r in fake_gateway.requests if f"three {marker}" in json.dumps(r.body)]
    assert len(sent[-1]["messages"]) == 5


@pytest.mark.usefixtures("worker")
def test_turn_whose_history_moved_on_is_skipped(fake_gateway: Any) -> None:
    """A failed middle turn whose later turn succeeded is skipped; a failed first turn
    replays in a new conversation."""
    marker = uuid.uuid4().hex
    first = failing_turn(fake_gateway, f"first {marker}")
    conversation = first["conversation_id"]
    second = wait_for_job(
        enqueue_completion(
            MODEL, [{"role": "user", "content": "second"}], conversation_id=conversation
        )
    )
    middle = failing_turn(fake_gateway, f"middle {marker}", conversation_id=conversation)
    wait_for_job(
        enqueue_completion(
            MODEL, [{"role": "user", "content": "last"}], conversation_id=conversation
        )
    )
    assert second["status"] == "succeeded"

    result = replay(first["job_id"], middle["job_id"], status=1)
    assert [s["reason"] for s in result["skipped"]] == ["history_moved_on"]
    assert result["skipped"][0]["job_id"] == middle["job_id"]
    [made] = result["replays"]
    assert made["original_id"] == first["job_id"] and made["conversation"] == "new"
    assert wait_for_job(made["job_id"])["conversation_id"] != conversation


def test_dry_run_counts_and_estimates_without_writing(service_env: dict[str, str]) -> None:
    """--dry-run prints how many jobs would run and their cost at today's price; writes nothing."""
    model = f"priced-{uuid.uuid4().hex[:6]}"
    done = run_ezq("prices", "set", model, "--input", "1", "--cached-input", "0.5", "--output", "2")
    assert done.returncode == 0, done.stderr
    prompt = "x" * 4000  # about 1000 tokens at 4 characters a token
    ids = [
        seed_job(prompt, model=model, status="failed", error_type="server_error") for _ in range(3)
    ]
    before = sql("SELECT count(*) FROM jobs")

    done = run_ezq("jobs", "replay", "--model", model, "--dry-run")
    assert done.returncode == 0, done.stderr
    # 3 jobs x 1000 prompt tokens x $1 per million; no usage history, so no completion guess.
    assert done.stdout.strip() == "would replay 3 jobs; estimated cost $0.0030"
    assert sql("SELECT count(*) FROM jobs") == before

    result = replay("--model", model, "--dry-run")
    assert result["dry_run"] is True and result["count"] == 3
    assert result["estimated_cost_usd"] == "0.003"
    assert {r["original_id"] for r in result["replays"]} == {str(i) for i in ids}


def test_replay_refuses_no_selection_and_unended_jobs(service_env: dict[str, str]) -> None:
    """Without ids or filters replay refuses to run; a queued job is skipped, not copied."""
    done = run_ezq("jobs", "replay")
    assert done.returncode != 0 and "at least one filter" in done.stderr

    queued = seed_job(status="queued")
    result = replay(str(queued), status=1)
    assert result["count"] == 0 and result["skipped"][0]["reason"] == "not_ended"

    done = run_ezq("jobs", "replay", "not-a-uuid")
    assert done.returncode != 0 and "JOB_ID" in done.stderr and "Traceback" not in done.stderr

    # An id no job has is named, not passed over in silence ("replayed 0 jobs").
    unknown = uuid.uuid4()
    result = replay(str(unknown), status=1)
    assert result["count"] == 0
    assert [(s["job_id"], s["reason"]) for s in result["skipped"]] == [(str(unknown), "not_found")]
    done = run_ezq("jobs", "replay", str(unknown))  # the table for people fails alike
    assert done.returncode == 1 and f"skipped {unknown}: not_found" in done.stderr


def test_dry_run_skips_what_the_run_would_refuse(service_env: dict[str, str]) -> None:
    """A job whose request no longer passes today's checks (a callback URL and no
    WEBHOOK_SECRET) is skipped as invalid by the dry run too, not counted."""
    env = {"WEBHOOK_SECRET": ""}
    job = seed_job(status="failed", error_type="server_error")
    with transaction() as session:
        session.execute(
            text("UPDATE jobs SET callback_url = 'https://hooks.example.com/x' WHERE id = :j"),
            {"j": job},
        )
    for args in (["--dry-run"], []):
        done = run_ezq("jobs", "replay", str(job), "--format", "json", *args, env=env)
        assert done.returncode == 1, done.stderr  # the job named is not replayed
        result = json.loads(done.stdout)
        assert result["count"] == 0, result
        assert [s["reason"] for s in result["skipped"]] == ["invalid"]


@pytest.mark.usefixtures("worker")
def test_replay_keeps_the_surface(fake_gateway: Any) -> None:
    """A replay runs on the surface its original asked for."""
    marker = uuid.uuid4().hex
    original = failing_turn(fake_gateway, f"surface {marker}", surface="anthropic")
    done = run_ezq("jobs", "replay", original["job_id"])
    assert done.returncode == 0, done.stderr
    replayed = wait_for_job(done.stdout.strip())
    assert (replayed["status"], replayed["surface"]) == ("succeeded", "anthropic")
    paths = [r.path for r in fake_gateway.requests if marker in r.raw.decode()]
    assert paths == ["/anthropic/v1/messages", "/anthropic/v1/messages"]


def test_the_same_job_replayed_at_once_is_replayed_once(service_env: dict[str, str]) -> None:
    """Concurrent replays of one job (single and bulk alike) make one replay; the others
    are told it was replayed already."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from service.db.joblist import JobFilter
    from service.errors import JobNotReplayable
    from service.ops.replay import replay_job, replay_jobs

    def one(original: uuid.UUID, start: Barrier, i: int) -> str:
        start.wait()
        if i % 2:
            result = replay_jobs(JobFilter(job_ids=(original,)), limit=10)
            return "replayed" if result.replays else result.skipped[0].reason
        try:
            replay_job(original)
        except JobNotReplayable as exc:
            return exc.reason
        return "replayed"

    for round_ in range(3):
        original = seed_job(f"replay race {round_}", status="failed", error_type="server_error")
        start = Barrier(8)
        with ThreadPoolExecutor(8) as pool:
            outcomes = sorted(pool.map(functools.partial(one, original, start), range(8)))
        assert outcomes == ["already_replayed"] * 7 + ["replayed"], outcomes
        assert sql("SELECT count(*) FROM jobs WHERE replay_of = :o", o=original) == [(1,)]
