"""The gateway key never reaches logs, task messages or the database."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from service.logsetup import _KEY_SHAPES, REDACTED, RedactSecrets, _redact_key_shapes
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


@pytest.mark.parametrize(
    ("line", "secrets"),
    [
        ("token ezq_live-sk-0123456789abcdef end", ["ezq_live", "0123456789abcdef"]),
        ("token whsec_Ab/sk-live.0123456789 end", ["whsec_Ab", "live.0123456789"]),
        ("token sk-abcdef.Bearer tok3n end", ["sk-abcdef", "tok3n"]),
        ("token ezq_0123456789abcdefgh-Bearer tok3n end", ["ezq_0123", "tok3n"]),
    ],
)
def test_keys_written_next_to_each_other_are_redacted_whole(line: str, secrets: list[str]) -> None:
    """Every shape is looked for on the line as it is and what they match is merged: a key
    of one shape that holds or touches another leaves no part of either printed."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, line, None, None)
    RedactSecrets().filter(record)
    text = record.getMessage()
    assert text.startswith("token [redacted]") and text.endswith(" end")
    for secret in secrets:
        assert secret not in text


def test_every_line_a_key_shape_matches_is_looked_at() -> None:
    """Lines are only searched for key shapes when they hold one of the shapes' literal
    starts: for random lines made of key pieces, case changes and separators, each line a
    shape matches is redacted, whatever case the word "bearer" is written in."""
    rng = random.Random(7)
    pieces = ["sk-", "whsec_", "ezq_", "bearer", "Bearer", "BEARER", "bEaReR", "BeAr", "er"]
    pieces += [" ", "\t", "-", ".", "_", "/", "=", "abcdef0123", "ABCDEFGHIJKLMNOP", "İ", "K"]
    for _ in range(20_000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        if any(shape.search(line) for shape in _KEY_SHAPES):
            assert REDACTED in _redact_key_shapes(line), line
