"""Signing, the event body and the webhook settings, without any service running."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.config import get_settings
from service.errors import ConfigError
from service.webhooks.events import event_type_for, serialise_event
from service.webhooks.signing import signed_headers


def new_secret(size: int = 32) -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(size)).decode()


BODY = serialise_event(
    "job.succeeded",
    {"job_id": "j1", "content": "héllo ✓", "usage": {"total_tokens": 3}},
    datetime(2026, 11, 25, 12, 0, 1, 234567, tzinfo=UTC),
)


def test_event_body_has_the_standard_webhooks_shape() -> None:
    """The body is {type, timestamp, data}, compact, with a UTC timestamp ending in Z."""
    assert BODY.startswith('{"type":"job.succeeded","timestamp":"2026-11-25T12:00:01.234567Z"')
    event = json.loads(BODY)
    assert list(event) == ["type", "timestamp", "data"]
    assert event["data"]["content"] == "héllo ✓"
    assert "héllo ✓" in BODY, "non-ASCII text is sent as UTF-8, not escaped"


@pytest.mark.parametrize(
    ("status", "event_type"),
    [("succeeded", "job.succeeded"), ("failed", "job.failed"), ("cancelled", "job.cancelled")],
)
def test_event_type_follows_the_final_status(status: str, event_type: str) -> None:
    """Each final job status has its event type."""
    assert event_type_for(status) == event_type


@pytest.mark.parametrize("status", ["queued", "running", "retrying"])
def test_unfinished_job_has_no_event(status: str) -> None:
    """Only final statuses produce events."""
    with pytest.raises(ValueError, match="has not ended"):
        event_type_for(status)


def test_signature_verifies_with_the_library_over_the_exact_bytes() -> None:
    """standardwebhooks verifies the headers against the UTF-8 body; a changed byte fails."""
    secret = new_secret()
    headers = signed_headers([secret], "msg_1", BODY)
    assert headers["webhook-id"] == "msg_1"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY.encode(), headers)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("✓", "x").encode(), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY.encode(), headers)


def test_rotation_puts_one_signature_per_secret() -> None:
    """With several secrets, the header holds one v1 signature each, and each verifies."""
    old, new = new_secret(), new_secret()
    headers = signed_headers([old, new], "msg_2", BODY)
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    for secret in (old, new):
        Webhook(secret).verify(BODY.encode(), headers)


def test_the_same_event_resent_keeps_its_id_and_gets_a_fresh_timestamp() -> None:
    """A later attempt signs the same id and body with its own timestamp."""
    secret = new_secret()
    first = signed_headers([secret], "msg_3", BODY, now=time.time() - 60)
    again = signed_headers([secret], "msg_3", BODY)
    assert first["webhook-id"] == again["webhook-id"]
    assert first["webhook-timestamp"] != again["webhook-timestamp"]
    Webhook(secret).verify(BODY.encode(), again)


def test_no_secret_means_no_signature_and_no_delivery() -> None:
    """Signing without a secret is a configuration error, never an unsigned request."""
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        signed_headers([], "msg_4", BODY)


# --- settings ------------------------------------------------------------------------


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings read anew from a patched environment, and again afterwards."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


SECRET_OK = new_secret()

BAD_SETTINGS = [
    (
        "WEBHOOK_SECRET",
        "not-a-whsec",
        "WEBHOOK_SECRET: Value error, secret 1 of 1 must start with 'whsec_'",
    ),
    ("WEBHOOK_SECRET", "whsec_***", "WEBHOOK_SECRET: Value error, secret 1 of 1 is not base64"),
    (
        "WEBHOOK_SECRET",
        "whsec_" + base64.b64encode(b"short").decode(),
        "decodes to 5 bytes; at least 24",
    ),
    (
        "WEBHOOK_SECRET",
        f"{SECRET_OK},nope",
        "WEBHOOK_SECRET: Value error, secret 2 of 2 must start",
    ),
    (
        "WEBHOOK_ALLOWED_NETWORKS",
        "10.0.0.0/8,300.1.0.0/16",
        "WEBHOOK_ALLOWED_NETWORKS: Value error",
    ),
    ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.1/8", "has host bits set"),
    (
        "EZQ_WEBHOOK_RETRY_SCHEDULE",
        "5,soon",
        "EZQ_WEBHOOK_RETRY_SCHEDULE: Value error, must be comma-separated seconds",
    ),
    (
        "EZQ_WEBHOOK_RETRY_SCHEDULE",
        "5,-1",
        "EZQ_WEBHOOK_RETRY_SCHEDULE: Value error, delays must be finite",
    ),
    (
        "EZQ_WEBHOOK_RETRY_SCHEDULE",
        ",",
        "EZQ_WEBHOOK_RETRY_SCHEDULE: Value error, must hold at least one",
    ),
    ("EZQ_WEBHOOK_TIMEOUT", "0", "EZQ_WEBHOOK_TIMEOUT:"),
    ("EZQ_WEBHOOK_MAX_ATTEMPTS", "0", "EZQ_WEBHOOK_MAX_ATTEMPTS:"),
    ("EZQ_WEBHOOK_MAX_RESPONSE_BYTES", "-1", "EZQ_WEBHOOK_MAX_RESPONSE_BYTES:"),
]


@pytest.mark.parametrize(
    ("name", "value", "message"), BAD_SETTINGS, ids=[f"{n}={v[:12]}" for n, v, _ in BAD_SETTINGS]
)
def test_malformed_webhook_setting_is_one_clear_line(
    fresh_settings: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    """A malformed webhook variable is one ConfigError naming it; a secret is never echoed."""
    fresh_settings.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        get_settings()
    text = str(caught.value)
    assert text.startswith(f"{name}:")
    assert message in text
    assert "\n" not in text
    if name == "WEBHOOK_SECRET":
        assert SECRET_OK not in text and "got" not in text


def test_webhook_settings_parse_lists(fresh_settings: pytest.MonkeyPatch) -> None:
    """Secrets, networks and the schedule are comma-separated lists; spaces are ignored."""
    other = new_secret(64)
    fresh_settings.setenv("WEBHOOK_SECRET", f" {SECRET_OK} , {other} ")
    fresh_settings.setenv("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, fd00::/8")
    fresh_settings.setenv("EZQ_WEBHOOK_RETRY_SCHEDULE", "0.5, 2,10")
    settings = get_settings()
    assert settings.webhook_signing_secrets() == (SECRET_OK, other)
    assert [str(n) for n in settings.webhook_allowed_networks] == ["127.0.0.0/8", "fd00::/8"]
    assert settings.ezq_webhook_retry_schedule == (0.5, 2.0, 10.0)
    assert SECRET_OK not in repr(settings) and SECRET_OK not in str(settings.model_dump())


def test_empty_secret_means_webhooks_off(fresh_settings: pytest.MonkeyPatch) -> None:
    """WEBHOOK_SECRET set to an empty string (as docker compose does) is the same as unset."""
    fresh_settings.setenv("WEBHOOK_SECRET", "")
    assert get_settings().webhook_signing_secrets() == ()
    assert get_settings().webhook_allowed_networks == ()
