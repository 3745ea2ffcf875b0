"""callback_url at enqueue: checked, stored, refused without a secret; nothing written on error."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from service import InvalidRequest, enqueue_completion
from service.config import get_settings
from service.db.session import transaction
from service.webhooks.urls import check_callback_url
from tests.conftest import drop_queue, run_ezq, sql

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
# Nobody consumes this queue: these tests only look at what enqueue writes.
IDLE_QUEUE = f"ezq-webhooks-idle-{secrets.token_hex(4)}"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch, service_env: dict[str, str]) -> Iterator[None]:
    """Webhooks on for this process's producer, publishing to an idle queue."""
    monkeypatch.setenv("EZQ_QUEUE", IDLE_QUEUE)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    drop_queue(IDLE_QUEUE)


def counts() -> tuple[Any, ...]:
    return sql(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM conversations),"
        " (SELECT count(*) FROM webhook_deliveries)"
    )[0]


BAD_URLS = [
    (42, "must be a string"),
    ("", "must not be empty"),
    ("ftp://example.com/hook", "must be an http:// or https:// URL"),
    ("javascript:alert(1)", "must be an http:// or https:// URL"),
    ("file:///etc/passwd", "must be an http:// or https:// URL"),
    ("example.com/hook", "must be an http:// or https:// URL"),
    ("//example.com/hook", "must be an http:// or https:// URL"),
    ("https://", "must name a host"),
    ("https:///path", "must name a host"),
    ("https://user:pw@example.com/hook", "must not carry a user name or password"),
    ("https://user@example.com/hook", "must not carry a user name or password"),
    ("https://example.com:99999/hook", "is not a valid URL"),
    ("https://example.com:0/hook", "port 0"),
    ("https://example.com/hook#frag", "must not have a #fragment"),
    ("https://example.com/ hook", "must not contain spaces or control characters"),
    ("https://example.com/\nhook", "must not contain spaces or control characters"),
    ("https://example.com/" + "a" * 2100, "is 2120 characters; the limit is 2048"),
    # Hosts the sender could never use: refused now, not retried to the end of the schedule.
    ("http://0177.0.0.1:18343/x", "is not a URL the webhook sender can use"),
    ("http://01.2.3.4/x", "is not a URL the webhook sender can use"),
    ("http://[fe80::1%25lo]:18343/x", "must not give an IPv6 zone id"),
    ("http://[fe80::1%lo]/x", "must not give an IPv6 zone id"),
    ("http://[not-v6]/x", "is not"),
]


@pytest.mark.parametrize(("url", "reason"), BAD_URLS, ids=[str(u)[:30] for u, _ in BAD_URLS])
def test_bad_callback_url_is_refused_and_nothing_written(
    producer: None, url: object, reason: str
) -> None:
    """A bad callback_url raises InvalidRequest naming the field, and nothing is written."""
    before = counts()
    with pytest.raises(InvalidRequest) as caught:
        enqueue_completion("m", USER, callback_url=url)  # type: ignore[arg-type]
    assert caught.value.field == "callback_url"
    assert reason in caught.value.reason
    assert counts() == before


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://example.com:8080/a/b?token=x&y=1",
        "HTTPS://Example.COM/hook",
        "http://127.0.0.1:9/hook",  # addresses are judged at delivery, not here
        "http://[2001:db8::1]/hook",
        "https://bücher.example/hook",
    ],
)
def test_good_callback_urls_pass(url: str) -> None:
    """Plain http(s) URLs with a host pass the enqueue check unchanged."""
    assert check_callback_url(url) == url


def test_callback_url_is_stored_on_the_job(producer: None) -> None:
    """The URL is stored with the job, to be used when it ends."""
    job_id = enqueue_completion("m", USER, callback_url="https://example.com/hook?x=1")
    assert sql("SELECT callback_url FROM jobs WHERE id = :j", j=str(job_id)) == [
        ("https://example.com/hook?x=1",)
    ]
    # Nobody runs this job; remove it so that no later sweep picks it up.
    with transaction() as session:
        session.execute(
            text(
                "DELETE FROM conversations"
                " WHERE id = (SELECT conversation_id FROM jobs WHERE id = :j)"
            ),
            {"j": str(job_id)},
        )


def test_callback_without_a_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, service_env: dict[str, str]
) -> None:
    """With no WEBHOOK_SECRET a callback is refused at enqueue: never an unsigned webhook."""
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    get_settings.cache_clear()
    try:
        before = counts()
        with pytest.raises(InvalidRequest) as caught:
            enqueue_completion("m", USER, callback_url="https://example.com/hook")
        assert caught.value.field == "callback_url"
        assert "WEBHOOK_SECRET is not set" in str(caught.value)
        assert counts() == before
    finally:
        get_settings.cache_clear()


ezq = run_ezq


def test_cli_enqueue_refuses_a_bad_callback_url(service_env: dict[str, str]) -> None:
    """ezq enqueue --callback-url with a bad URL prints one error line and exits 1."""
    env = {**service_env, "EZQ_QUEUE": IDLE_QUEUE, "WEBHOOK_SECRET": SECRET}
    before = counts()
    done = ezq("enqueue", "-m", "m", "--callback-url", "ftp://example.com/x", "hi", env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == ("ezq: error: callback_url: must be an http:// or https:// URL")
    no_secret = ezq(
        "enqueue",
        "-m",
        "m",
        "--callback-url",
        "https://example.com/x",
        "hi",
        env={**env, "WEBHOOK_SECRET": ""},
    )
    assert no_secret.returncode == 1
    assert "WEBHOOK_SECRET is not set" in no_secret.stderr
    assert counts() == before
