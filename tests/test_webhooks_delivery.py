"""Webhooks end to end: real workers, a real receiver verifying every delivery, Postgres."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from service import constants as c
from service import enqueue_completion
from service.config import get_settings
from service.fake_gateway import Fault
from service.webhooks.testing import Answer, Receiver
from service.worker.app import app
from tests.conftest import (
    WorkerProcess,
    drop_queue,
    places_holding,
    run_ezq,
    sql,
    sweep_paused,
    wait_for_job,
)
from tests.test_faults import wait_until

MODEL = "claude-sonnet-4-6"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


SECRET = new_secret()
QUEUE = f"ezq-webhooks-{secrets.token_hex(4)}"

# Fast retries, a short timeout and a small answer cap, so every path runs in seconds.
WEBHOOK_ENV = {
    "EZQ_QUEUE": QUEUE,
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "EZQ_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2",
    "EZQ_WEBHOOK_MAX_ATTEMPTS": "4",
    "EZQ_WEBHOOK_TIMEOUT": "1",
    "EZQ_WEBHOOK_MAX_RESPONSE_BYTES": "256",
}


@pytest.fixture(scope="module")
def webhook_worker(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker for this module: webhooks on, loopback allowed, its own queue."""
    drop_queue(QUEUE)
    log = tmp_path_factory.mktemp("webhooks") / "worker.log"
    process = WorkerProcess({**service_env, **WEBHOOK_ENV}, log, [])
    yield process
    process.stop()
    drop_queue(QUEUE)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver([SECRET]) as running:
        yield running


def use_producer_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Point this process's producer at another queue or secret for one test."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def producer(monkeypatch: pytest.MonkeyPatch, service_env: dict[str, str]) -> Iterator[None]:
    """Enqueue to this module's queue with webhooks on; restored afterwards."""
    use_producer_env(monkeypatch, EZQ_QUEUE=QUEUE, WEBHOOK_SECRET=SECRET)
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


ezq = run_ezq


def path() -> str:
    return f"/hook/{uuid.uuid4().hex}"


def ask(prompt: str, url: str) -> uuid.UUID:
    return enqueue_completion(MODEL, [{"role": "user", "content": prompt}], callback_url=url)


def delivery_of(job_id: object) -> dict[str, Any]:
    rows = sql(
        "SELECT id, status, attempts, last_status_code, last_error, event_type, url"
        " FROM webhook_deliveries WHERE job_id = :j",
        j=str(job_id),
    )
    assert len(rows) == 1, rows
    keys = ("id", "status", "attempts", "last_status_code", "last_error", "event_type", "url")
    return dict(zip(keys, rows[0], strict=True))


def wait_for_delivery(job_id: object, timeout: float = 15.0) -> dict[str, Any]:
    """Poll until the job's delivery is delivered or failed."""
    deadline = time.monotonic() + timeout
    while True:
        rows = sql("SELECT status FROM webhook_deliveries WHERE job_id = :j", j=str(job_id))
        if rows and rows[0][0] != "pending":
            return delivery_of(job_id)
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery of job {job_id} still pending: {rows}")
        time.sleep(0.05)


def stored_job(prompt: str, url: str) -> uuid.UUID:
    """A job written straight to the database, for a test to run in this process."""
    from service.db import queries
    from service.db.session import transaction
    from service.validation import validate_request

    request = validate_request(
        model=MODEL, messages=[{"role": "user", "content": prompt}], callback_url=url
    )
    with transaction() as session:
        job_id, _ = queries.create_job(session, request)
    return job_id


def attempts_of(delivery_id: object) -> list[tuple[Any, ...]]:
    return sql(
        "SELECT attempt, status_code, error, duration_ms, finished_at IS NOT NULL"
        " FROM webhook_attempts WHERE delivery_id = :d ORDER BY attempt",
        d=str(delivery_id),
    )


pytestmark = pytest.mark.usefixtures("webhook_worker")


# --- the event -----------------------------------------------------------------------


def test_succeeded_job_sends_one_verified_event(receiver: Receiver, fake_gateway: Any) -> None:
    """A succeeded job produces exactly one job.succeeded event that verifies."""
    hook = path()
    job_id = ask("hello hook", receiver.url(hook))
    job = wait_for_job(job_id)

    (got,) = receiver.wait_for(1, hook)
    assert got.verified_by == (0,)
    event = got.event
    assert set(event) == {"type", "timestamp", "data"}
    assert event["type"] == "job.succeeded"
    assert event["timestamp"].endswith("Z")
    data = event["data"]
    assert data["job_id"] == str(job_id)
    assert data["conversation_id"] == job["conversation_id"]
    assert data["status"] == "succeeded"
    assert data["model"] == MODEL
    assert data["content"] == job["content"] == "echo[1]: hello hook"
    assert data["finish_reason"] == "stop"
    assert data["usage"] == job["usage"]
    assert set(data["usage"]) >= {
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "total_tokens",
    }
    assert data["error"] is None
    assert data["attempts"] == 1
    assert data["finished_at"] == job["finished_at"]
    assert got.headers["content-type"] == "application/json"
    assert got.webhook_id == str(delivery_of(job_id)["id"])

    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "delivered",
        1,
        200,
    )
    time.sleep(0.5)
    assert len(receiver.received(hook)) == 1, "one event per finished job"


def test_failed_job_sends_one_verified_event(receiver: Receiver, fake_gateway: Any) -> None:
    """A failed job produces exactly one job.failed event carrying the error."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(status=400, match=marker, times=5))
    hook = path()
    job_id = ask(f"bad {marker}", receiver.url(hook))
    assert wait_for_job(job_id)["status"] == "failed"

    (got,) = receiver.wait_for(1, hook)
    assert got.verified_by == (0,)
    assert got.event["type"] == "job.failed"
    data = got.event["data"]
    assert data["status"] == "failed"
    assert data["content"] is None
    assert data["error"]["type"] == "client_error"
    assert data["error"]["status"] == 400
    assert wait_for_delivery(job_id)["status"] == "delivered"
    time.sleep(0.5)
    assert len(receiver.received(hook)) == 1


def test_job_without_callback_writes_no_delivery(fake_gateway: Any) -> None:
    """A job with no callback_url has no delivery row."""
    job_id = enqueue_completion(MODEL, [{"role": "user", "content": "no hook"}])
    wait_for_job(job_id)
    assert sql("SELECT count(*) FROM webhook_deliveries WHERE job_id = :j", j=str(job_id)) == [(0,)]


def test_foreign_producer_kwargs_carry_the_callback(receiver: Receiver, fake_gateway: Any) -> None:
    """A job sent as ezq.chat_completion kwargs by another service gets its webhook too."""
    hook = path()
    task_id = str(uuid.uuid4())
    app.send_task(
        c.TASK_CHAT_COMPLETION,
        kwargs={
            "model": MODEL,
            "messages": [{"role": "user", "content": "from afar"}],
            "callback_url": receiver.url(hook),
        },
        task_id=task_id,
        queue=QUEUE,
    )
    (got,) = receiver.wait_for(1, hook)
    assert got.verified_by == (0,)
    assert got.event["data"]["job_id"] == task_id


# --- retries -------------------------------------------------------------------------


def test_500_twice_then_200_is_retried_with_the_same_id(
    receiver: Receiver, fake_gateway: Any
) -> None:
    """A receiver answering 500 twice gets the same webhook-id three times; delivered."""
    hook = path()
    receiver.script(hook, Answer(500, body=b"oops"), Answer(500))
    job_id = ask("retry hook", receiver.url(hook))

    arrivals = receiver.wait_for(3, hook)
    assert len({a.webhook_id for a in arrivals}) == 1
    assert all(a.verified_by == (0,) for a in arrivals)
    assert len({a.body for a in arrivals}) == 1, "every attempt sends the same event"
    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "delivered",
        3,
        200,
    )
    attempts = attempts_of(delivery["id"])
    assert [a[:3] for a in attempts] == [
        (1, 500, "HTTP 500: oops"),
        (2, 500, "HTTP 500"),
        (3, 200, None),
    ]
    assert all(a[3] is not None and a[3] >= 0 and a[4] for a in attempts)


def test_a_receivers_answer_is_stored_not_logged(
    webhook_worker: WorkerProcess, receiver: Receiver, fake_gateway: Any
) -> None:
    """A receiver may answer with what it got (the event, reply text included): its answer
    is kept in webhook_attempts for the operator, and the log says the status only."""
    hook = path()
    marker = f"echoed-{uuid.uuid4().hex}"
    receiver.script(hook, Answer(500, body=marker.encode()), Answer(307, body=marker.encode()))
    job_id = ask(f"answer {marker}", receiver.url(hook))
    receiver.wait_for(3, hook)
    delivery = wait_for_delivery(job_id)
    attempts = attempts_of(delivery["id"])
    assert [a[:2] for a in attempts] == [(1, 500), (2, 307), (3, 200)]
    assert marker in attempts[0][2], "the operator still sees what the receiver answered"
    wait_until(lambda: f"{hook}: HTTP 307; retrying" in webhook_worker.log(), "the 2nd retry")
    log = webhook_worker.log()
    assert f"{hook}: HTTP 500; retrying" in log
    assert marker not in log


def test_410_gone_stops_at_once(receiver: Receiver, fake_gateway: Any) -> None:
    """410 Gone fails the delivery after one attempt."""
    hook = path()
    receiver.script(hook, Answer(410))
    job_id = ask("gone hook", receiver.url(hook))

    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "failed",
        1,
        410,
    )
    time.sleep(0.6)
    assert len(receiver.received(hook)) == 1


def test_timeout_is_retried(receiver: Receiver, fake_gateway: Any) -> None:
    """A receiver slower than EZQ_WEBHOOK_TIMEOUT times out, and the next attempt delivers."""
    hook = path()
    receiver.script(hook, Answer(200, delay=2.5))
    job_id = ask("slow hook", receiver.url(hook))

    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)
    first, second = attempts_of(delivery["id"])
    assert first[1] is None and first[2].startswith("timeout")
    assert 900 <= first[3] < 2400, "the attempt is cut at the 1 s timeout, not the 2.5 s answer"
    assert second[1] == 200
    arrivals = receiver.received(hook)
    assert len({a.webhook_id for a in arrivals}) == 1


def test_retry_after_is_honoured(receiver: Receiver, fake_gateway: Any) -> None:
    """A 503 with Retry-After: 1 delays the next attempt past the 0.2 s schedule."""
    hook = path()
    receiver.script(hook, Answer(503, headers={"retry-after": "1"}))
    ask("busy hook", receiver.url(hook))

    first, second = receiver.wait_for(2, hook)
    assert second.at - first.at >= 0.95


def test_redirects_are_not_followed(receiver: Receiver, fake_gateway: Any) -> None:
    """A 302 is recorded and retried; its Location never gets a request."""
    hook, elsewhere = path(), path()
    receiver.script(hook, Answer(302, headers={"location": receiver.url(elsewhere)}))
    job_id = ask("redirect hook", receiver.url(hook))

    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)
    first = attempts_of(delivery["id"])[0]
    assert first[1] == 302 and "redirects are not followed" in first[2]
    assert receiver.received(elsewhere) == []


def test_a_large_answer_is_read_only_up_to_the_cap(receiver: Receiver, fake_gateway: Any) -> None:
    """Only EZQ_WEBHOOK_MAX_RESPONSE_BYTES of an answer are read and kept."""
    hook = path()
    receiver.script(hook, Answer(500, body=b"x" * 2_000_000))
    job_id = ask("big answer", receiver.url(hook))

    delivery = wait_for_delivery(job_id)
    assert delivery["status"] == "delivered"
    error = attempts_of(delivery["id"])[0][2]
    assert error.startswith("HTTP 500: xxx")
    assert len(error) <= len("HTTP 500: ") + 256


def test_attempts_run_out_and_redeliver_sends_the_same_event(
    receiver: Receiver, fake_gateway: Any, service_env: dict[str, str]
) -> None:
    """After the last attempt the delivery is failed; redeliver sends it again, same id."""
    hook = path()
    receiver.script(hook, *[Answer(500)] * 4)
    job_id = ask("never ok", receiver.url(hook))

    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "failed",
        4,
        500,
    )
    assert len(receiver.received(hook)) == 4

    done = ezq("webhooks", "redeliver", str(delivery["id"]), env={**service_env, **WEBHOOK_ENV})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(delivery["id"])
    arrivals = receiver.wait_for(5, hook)
    assert len({a.webhook_id for a in arrivals}) == 1
    assert len({a.body for a in arrivals}) == 1
    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 5)


def test_concurrent_messages_for_one_delivery_post_once(
    receiver: Receiver, fake_gateway: Any
) -> None:
    """Duplicate task messages for one delivery lead to one POST: the claim is leased."""
    from service.webhooks.tasks import publish_delivery

    hook = path()
    # Answered within the module's 1 s webhook timeout with room to spare on a slow host:
    # a timed-out first attempt would be retried, a second POST of its own.
    receiver.script(hook, Answer(200, delay=0.4))
    job_id = ask("dup hook", receiver.url(hook))
    receiver.wait_for(1, hook)
    delivery_id = delivery_of(job_id)["id"]
    for _ in range(3):
        publish_delivery(delivery_id)

    delivery = wait_for_delivery(job_id)
    time.sleep(0.5)
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    assert len(receiver.received(hook)) == 1


# --- durability ----------------------------------------------------------------------


class WorkerKilled(BaseException):
    """Stands for the process dying: nothing after the raise runs."""


def test_worker_killed_between_commit_and_publish_still_delivers(
    receiver: Receiver, fake_gateway: Any
) -> None:
    """The delivery row commits with the job's final status; the sweep sends it later."""
    from service.db.session import transaction
    from service.gateway import GatewayClient
    from service.worker.runner import run_job

    hook = path()
    job_id = stored_job("killed", receiver.url(hook))

    def die(_: list[uuid.UUID]) -> None:
        raise WorkerKilled

    # No sweep finds the delivery until the test asks for one: the suite's worker, which
    # sweeps this database every second without the secret, would set it 2 minutes back.
    with sweep_paused() as paused:
        client = GatewayClient(get_settings())
        try:
            with pytest.raises(WorkerKilled):
                run_job(
                    job_id,
                    gateway=client,
                    settings=get_settings(),
                    publish=lambda _: None,
                    publish_webhooks=die,
                )
        finally:
            client.close()

        assert sql("SELECT status FROM jobs WHERE id = :j", j=str(job_id)) == [("succeeded",)]
        # Its message was never published and no sweep runs: nothing has attempted it.
        delivery = delivery_of(job_id)
        assert (delivery["status"], delivery["attempts"]) == ("pending", 0)
        assert receiver.received(hook) == []

        # Time passes: the message that should have gone out is now long overdue; the
        # sweep of this module's worker (which signs with the secret) finds it.
        with transaction() as session:
            session.execute(
                text(
                    "UPDATE webhook_deliveries SET dispatched_at = now() - interval '1 hour'"
                    " WHERE job_id = :j"
                ),
                {"j": str(job_id)},
            )
        app.send_task(c.TASK_SWEEP, queue=QUEUE)
        paused.wait_for_forced_sweep()

    (got,) = receiver.wait_for(1, hook)
    assert got.verified_by == (0,)
    assert got.event["data"]["job_id"] == str(job_id)
    assert wait_for_delivery(job_id)["status"] == "delivered"


def test_a_workers_first_attempt_is_made_in_its_process_without_a_message(
    receiver: Receiver, fake_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the commit that ends the job, its delivery goes to the process's delivery
    threads (``deliver_committed``, what the worker's task passes): delivered, one attempt,
    and no ``ezq.deliver_webhook`` message published."""
    from service.gateway import GatewayClient
    from service.webhooks import tasks as webhook_tasks
    from service.worker.runner import run_job

    use_producer_env(monkeypatch, WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8")
    published: list[uuid.UUID] = []
    monkeypatch.setattr(
        webhook_tasks,
        "publish_delivery",
        lambda delivery_id, countdown=None: published.append(delivery_id),
    )
    hook = path()
    job_id = stored_job("in process", receiver.url(hook))

    client = GatewayClient(get_settings())
    try:
        run_job(
            job_id,
            gateway=client,
            settings=get_settings(),
            publish=lambda _: None,
            publish_webhooks=webhook_tasks.deliver_committed,
        )
    finally:
        client.close()

    (got,) = receiver.wait_for(1, hook)
    assert got.verified_by == (0,)
    assert got.event["data"]["job_id"] == str(job_id)
    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    assert published == []


# --- security ------------------------------------------------------------------------


def test_loopback_is_delivered_when_its_network_is_allowed(
    receiver: Receiver, fake_gateway: Any
) -> None:
    """With WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8, 127.0.0.1 receives the event."""
    hook = path()
    job_id = ask("allowed", receiver.url(hook))
    assert wait_for_delivery(job_id)["status"] == "delivered"
    assert receiver.received(hook)[0].verified_by == (0,)


def test_metadata_address_is_refused_even_with_loopback_allowed(fake_gateway: Any) -> None:
    """169.254.169.254 is refused without a connection, recorded failed and not retried."""
    job_id = ask("metadata", "http://169.254.169.254/latest/meta-data/")
    delivery = wait_for_delivery(job_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "failed",
        1,
        None,
    )
    assert delivery["last_error"] == "refused: 169.254.169.254 is the cloud metadata address"


@pytest.fixture
def strict_worker(
    worker_factory: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> WorkerProcess:
    """A worker with the default address policy (no allowed networks) on its own queue."""
    queue = f"ezq-webhooks-strict-{secrets.token_hex(4)}"
    env = {**WEBHOOK_ENV, "EZQ_QUEUE": queue, "WEBHOOK_ALLOWED_NETWORKS": ""}
    process = worker_factory(env=env)
    use_producer_env(monkeypatch, EZQ_QUEUE=queue)
    return process


def test_default_policy_refuses_loopback_names_and_mapped_forms(
    strict_worker: WorkerProcess, receiver: Receiver, fake_gateway: Any
) -> None:
    """By default 127.0.0.1, localhost, ::ffff:127.0.0.1 and the metadata address are refused."""
    hook = path()
    targets = {
        receiver.url(hook): "refused: 127.0.0.1 is a loopback address",
        receiver.url(hook, host="localhost"): "refused: localhost resolves to ",
        receiver.url(hook, host="[::ffff:127.0.0.1]"): (
            "refused: ::ffff:127.0.0.1 is an IPv6 form of 127.0.0.1, a loopback address"
        ),
        "http://169.254.169.254/latest/meta-data/": (
            "refused: 169.254.169.254 is the cloud metadata address"
        ),
    }
    jobs = {ask("strict", url): reason for url, reason in targets.items()}
    for job_id, reason in jobs.items():
        delivery = wait_for_delivery(job_id)
        assert (delivery["status"], delivery["attempts"]) == ("failed", 1), delivery
        assert delivery["last_error"].startswith(reason)
        assert "loopback" in delivery["last_error"] or "metadata" in delivery["last_error"]
    time.sleep(0.5)
    assert receiver.received(hook) == [], "a refused target never gets a connection"
    assert "failed for good: refused" in strict_worker.log()


def test_rotation_signs_with_every_secret(
    worker_factory: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
    fake_gateway: Any,
) -> None:
    """With two secrets configured, each one alone verifies every delivery."""
    old, new = new_secret(), new_secret()
    queue = f"ezq-webhooks-rotate-{secrets.token_hex(4)}"
    worker_factory(env={**WEBHOOK_ENV, "EZQ_QUEUE": queue, "WEBHOOK_SECRET": f"{old},{new}"})
    use_producer_env(monkeypatch, EZQ_QUEUE=queue)
    hook = path()
    with Receiver([old, new, SECRET]) as rotating:
        rotating.script(hook, Answer(500))
        ask("rotate", rotating.url(hook))
        arrivals = rotating.wait_for(2, hook)
    for got in arrivals:
        assert got.verified_by == (0, 1), "old and new secret verify; an unrelated one does not"
        assert len(got.headers["webhook-signature"].split(" ")) == 2


def tenant_secrets(tenant: str, configured: str) -> list[str]:
    done = ezq("webhooks", "secret", "--tenant", tenant, env={"WEBHOOK_SECRET": configured})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_tenants_events_are_signed_with_its_own_secret(
    worker_factory: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
    fake_gateway: Any,
) -> None:
    """Every tenant's receivers verify with the tenant's own secret (from `ezq webhooks
    secret`), which neither WEBHOOK_SECRET nor another tenant's verifies: a tenant cannot
    forge another's events. With two configured secrets, two tenant signatures (rotation);
    with EZQ_WEBHOOK_SHARED_SIGNATURE, WEBHOOK_SECRET's too, while receivers move over."""
    old, new = new_secret(), new_secret()
    acme, globex = f"acme-{secrets.token_hex(3)}", f"globex-{secrets.token_hex(3)}"
    acme_old, acme_new = tenant_secrets(acme, f"{old},{new}")
    (globex_old,) = tenant_secrets(globex, old)
    assert len({acme_old, acme_new, globex_old, old, new}) == 5
    queue = f"ezq-webhooks-tenant-{secrets.token_hex(4)}"
    env = {**WEBHOOK_ENV, "EZQ_QUEUE": queue, "WEBHOOK_SECRET": f"{old},{new}"}
    worker_factory(env=env)
    use_producer_env(monkeypatch, EZQ_QUEUE=queue, WEBHOOK_SECRET=f"{old},{new}")
    hooks = {"acme": path(), "globex": path(), "none": path()}
    with Receiver([acme_old, acme_new, globex_old, old, new]) as receiver:
        for tenant in (acme, globex, None):
            enqueue_completion(
                MODEL,
                [{"role": "user", "content": f"signed for {tenant}"}],
                tenant=tenant,
                callback_url=receiver.url(hooks[str(tenant).split("-")[0].lower()]),
            )
        [to_acme] = receiver.wait_for(1, hooks["acme"])
        [to_globex] = receiver.wait_for(1, hooks["globex"])
        [to_none] = receiver.wait_for(1, hooks["none"])
    assert to_acme.verified_by == (0, 1), "acme's own secrets only, one per configured"
    assert to_globex.verified_by == (2,), "globex's own, derived from the first secret"
    assert to_none.verified_by == (3, 4), "a job with no tenant: the configured secrets"

    shared_queue = f"{queue}-shared"
    worker_factory(env={**env, "EZQ_QUEUE": shared_queue, "EZQ_WEBHOOK_SHARED_SIGNATURE": "1"})
    use_producer_env(monkeypatch, EZQ_QUEUE=shared_queue)
    hook = path()
    with Receiver([acme_old, acme_new, globex_old, old, new]) as receiver:
        enqueue_completion(
            MODEL,
            [{"role": "user", "content": "shared"}],
            tenant=acme,
            callback_url=receiver.url(hook),
        )
        [moving] = receiver.wait_for(1, hook)
    assert moving.verified_by == (0, 1, 3, 4)


def test_secret_never_reaches_logs_messages_or_the_database(
    webhook_worker: WorkerProcess, receiver: Receiver, fake_gateway: Any
) -> None:
    """The signing secret signs deliveries but is in no log line, broker message or row."""
    hook = path()
    ask("secret check", receiver.url(hook))
    assert receiver.wait_for(1, hook)[0].verified_by == (0,)
    key_part = SECRET.removeprefix("whsec_")

    # The receiver sees the POST before the worker logs its outcome: wait for the line.
    deadline = time.monotonic() + 10
    while "delivered to" not in (log := webhook_worker.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "delivered to" in log, "the worker log is being captured"
    assert SECRET not in log and key_part not in log

    assert places_holding(key_part) == []


# --- operating: the CLI --------------------------------------------------------------


def cli_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, **WEBHOOK_ENV}


def test_cli_enqueue_with_callback_url_delivers(
    receiver: Receiver, fake_gateway: Any, service_env: dict[str, str]
) -> None:
    """ezq enqueue --callback-url passes the URL through; the event arrives verified."""
    hook = path()
    done = ezq(
        "enqueue",
        "-m",
        MODEL,
        "--callback-url",
        receiver.url(hook),
        "--wait",
        "from the cli",
        env=cli_env(service_env),
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    (got,) = receiver.wait_for(1, hook)
    assert got.verified_by == (0,)
    assert got.event["data"]["job_id"] == job["job_id"]
    assert got.event["data"]["content"] == job["content"]


def test_cli_lists_and_shows_deliveries_with_their_attempts(
    receiver: Receiver, fake_gateway: Any, service_env: dict[str, str]
) -> None:
    """webhooks list filters by job and status; show prints the event and every attempt."""
    hook = path()
    receiver.script(hook, Answer(500))
    job_id = ask("listed", receiver.url(hook))
    delivery = wait_for_delivery(job_id)
    env = cli_env(service_env)

    listed = ezq("webhooks", "list", "--job", str(job_id), "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == str(delivery["id"])
    assert (row["status"], row["attempts"], row["event_type"]) == ("delivered", 2, "job.succeeded")
    assert row["url"] == receiver.url(hook)

    delivered = json.loads(
        ezq("webhooks", "list", "--status", "delivered", "--json", env=env).stdout
    )
    assert str(delivery["id"]) in {r["id"] for r in delivered}
    assert all(r["status"] == "delivered" for r in delivered)
    failed = json.loads(ezq("webhooks", "list", "--status", "failed", "--json", env=env).stdout)
    assert str(delivery["id"]) not in {r["id"] for r in failed}

    table = ezq("webhooks", "list", "--job", str(job_id), env={**env, "COLUMNS": "80"})
    assert table.returncode == 0
    assert str(delivery["id"]) in table.stdout and "delivered" in table.stdout
    assert "job.succeeded" in table.stdout, "the event type is shown whole"
    assert max(len(line) for line in table.stdout.splitlines()) <= 80

    shown = json.loads(ezq("webhooks", "show", str(delivery["id"]), env=env).stdout)
    assert json.loads(shown["payload"])["data"]["job_id"] == str(job_id)
    assert [(a["attempt"], a["status_code"]) for a in shown["attempt_log"]] == [(1, 500), (2, 200)]

    missing = ezq("webhooks", "show", str(uuid.uuid4()), env=env)
    assert missing.returncode == 1 and "no webhook delivery" in missing.stderr


def test_cli_redelivers_failed_deliveries_since_a_date(
    receiver: Receiver, fake_gateway: Any, service_env: dict[str, str]
) -> None:
    """redeliver --failed --since sends every failed event since then again, same ids, and
    says how many it skipped because ezq purge emptied their payload."""
    since = sql("SELECT now()")[0][0].isoformat()
    hooks = [path(), path(), path()]
    for hook in hooks:
        receiver.script(hook, Answer(410))
    jobs = [ask("fail then replay", receiver.url(hook)) for hook in hooks]
    *deliveries, purged = [wait_for_delivery(job_id) for job_id in jobs]
    assert all(d["status"] == "failed" for d in [*deliveries, purged])
    ((conversation,),) = sql("SELECT conversation_id FROM jobs WHERE id = :j", j=jobs[-1])
    emptied = ezq("purge", "--conversation", str(conversation), env=cli_env(service_env))
    assert emptied.returncode == 0, emptied.stderr

    done = ezq("webhooks", "redeliver", "--failed", "--since", since, env=cli_env(service_env))
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {str(d["id"]) for d in deliveries}
    assert "redelivering 2 webhook deliveries" in done.stderr
    assert "skipped 1 webhook delivery whose payload was purged" in done.stderr
    for hook, job_id in zip(hooks[:2], jobs[:2], strict=True):
        first, again = receiver.wait_for(2, hook)
        assert first.webhook_id == again.webhook_id and first.body == again.body
        assert again.verified_by == (0,)
        assert wait_for_delivery(job_id)["status"] == "delivered"


@pytest.mark.parametrize(
    "args",
    [("redeliver",), ("redeliver", "--failed"), ("redeliver", str(uuid.uuid4()), "--failed")],
)
def test_cli_redeliver_needs_one_clear_target(
    args: tuple[str, ...], service_env: dict[str, str]
) -> None:
    """redeliver takes either an id or --failed --since DATE, and says so."""
    done = ezq("webhooks", *args, env=cli_env(service_env))
    assert done.returncode == 2
    assert "--since" in done.stderr
