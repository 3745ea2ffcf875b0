"""The gateway key never reaches logs, task messages or the database."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from service.logsetup import RedactSecrets
from tests.conftest import API_KEY, places_holding, request_for, wait_for_job


def test_redaction_filter_hides_known_and_key_shaped_secrets() -> None:
    """Configured secrets, sk- keys, whsec_ secrets and bearer tokens are replaced."""
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "key %s, other sk-abcdef123456, whsec_c2VjcmV0, Authorization: Bearer tok.en-1",
        ("my-very-own-secret",),
        None,
    )
    RedactSecrets(["my-very-own-secret"]).filter(record)
    text = record.getMessage()
    for secret in ("my-very-own-secret", "sk-abcdef123456", "whsec_c2VjcmV0", "tok.en-1"):
        assert secret not in text
    assert text.count("[redacted]") == 4


@pytest.mark.usefixtures("worker")
def test_api_key_is_used_but_never_stored_or_logged(worker: Any, fake_gateway: Any) -> None:
    """The key authenticates the calls but appears in no log line, task message or row."""
    from service import enqueue_completion

    job = wait_for_job(
        enqueue_completion("claude-haiku-4-5", [{"role": "user", "content": "secret test"}])
    )
    assert job["status"] == "succeeded"
    assert request_for(fake_gateway, "secret test").headers["authorization"] == f"Bearer {API_KEY}"

    log = worker.log()
    assert "calling claude-haiku-4-5" in log, "the worker log is being captured"
    assert API_KEY not in log

    assert places_holding(API_KEY) == []


def test_redaction_keeps_the_shape_of_log_arguments() -> None:
    """Arguments keep their types (uvicorn's access log unpacks them); secrets in them go."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/jobs?token=sk-abcdef123456", "1.1", 200),
        None,
    )
    RedactSecrets().filter(record)
    assert record.args == ("127.0.0.1:5000", "GET", "/v1/jobs?token=[redacted]", "1.1", 200)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /v1/jobs?token=[redacted] HTTP/1.1" 200'


def test_a_key_that_holds_another_key_shape_is_redacted_whole() -> None:
    """Scanned for every shape at once: an ezq key with ``-sk-`` inside it is one secret,
    not an ``sk-`` key whose redaction leaves the ezq key's first characters printed."""
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "token ezq_live-sk-0123456789abcdef end", None, None
    )
    RedactSecrets().filter(record)
    assert record.getMessage() == "token [redacted] end"
