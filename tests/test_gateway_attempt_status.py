"""A stream that breaks after the gateway answered 200 is recorded with that 200, as it is
with the gateway's request id: job_attempts.http_status says what the gateway answered,
error_type what went wrong after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from service import enqueue_completion
from service.config import get_settings
from service.errors import GatewayError
from service.fake_gateway import Fault
from service.gateway import GatewayClient
from tests.conftest import sql, wait_for_job

MODEL = "claude-sonnet-4-6"

# Every fault that answers 200 and then fails, with the error type it is recorded as.
AFTER_A_200 = {
    "drop_mid_stream": "broken_stream",
    "truncate": "broken_stream",
    "error_frame": "server_error",
    "malformed": "broken_stream",
    "empty": "broken_stream",
    "no_finish": "broken_stream",
    "non_sse": "broken_stream",
}


def fault(kind: str, marker: str, times: int = 1) -> Fault:
    after = 2 if kind in ("drop_mid_stream", "truncate", "error_frame", "malformed") else 0
    return Fault(kind=kind, after_chunks=after, match=marker, times=times)


@pytest.fixture
def client(service_env: dict[str, str]) -> Iterator[GatewayClient]:
    gateway_client = GatewayClient(get_settings())
    yield gateway_client
    gateway_client.close()


@pytest.mark.parametrize("surface", ["openai", "anthropic"])
@pytest.mark.parametrize("kind", sorted(AFTER_A_200))
def test_an_error_after_a_200_carries_the_200_and_the_request_id(
    client: GatewayClient, fake_gateway: Any, kind: str, surface: str
) -> None:
    """Whatever breaks after the gateway answered 200 carries status 200, and the request
    id of that answer, on both surfaces."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(fault(kind, marker))
    with pytest.raises(GatewayError) as caught:
        client.complete(MODEL, [{"role": "user", "content": marker}], {}, surface)
    error = caught.value
    (sent,) = [r for r in fake_gateway.requests if marker in r.raw.decode()]
    assert (error.error_type, error.status) == (AFTER_A_200[kind], 200), error
    assert error.request_id == sent.request_id


@pytest.mark.parametrize("surface", ["openai", "anthropic"])
def test_no_answer_has_no_status_and_an_error_status_keeps_its_own(
    client: GatewayClient, fake_gateway: Any, surface: str
) -> None:
    """A connection reset before any answer has no status; a 503 keeps its 503."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(Fault(kind="drop", match=marker), Fault(status=503, match=marker))
    messages = [{"role": "user", "content": marker}]
    with pytest.raises(GatewayError) as dropped:
        client.complete(MODEL, messages, {}, surface)
    assert (dropped.value.error_type, dropped.value.status) == ("connection_error", None)
    with pytest.raises(GatewayError) as refused:
        client.complete(MODEL, messages, {}, surface)
    assert (refused.value.error_type, refused.value.status) == ("server_error", 503)


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(
    ("kind", "surface"),
    [
        *((kind, "openai") for kind in sorted(AFTER_A_200)),
        ("drop_mid_stream", "anthropic"),
        ("malformed", "anthropic"),
    ],
)
def test_attempts_broken_after_a_200_record_http_status_200(
    fake_gateway: Any, kind: str, surface: str
) -> None:
    """A job whose first two attempts break after a 200 succeeds on the third, and every
    attempt row holds http_status 200 with the request id of its call."""
    marker = uuid.uuid4().hex
    fake_gateway.add_faults(fault(kind, marker, times=2))
    job = wait_for_job(
        enqueue_completion(MODEL, [{"role": "user", "content": marker}], surface=surface)
    )
    assert job["status"] == "succeeded", job
    rows = sql(
        "SELECT attempt, http_status, error_type, gateway_request_id, surface"
        " FROM job_attempts WHERE job_id = :j ORDER BY attempt",
        j=job["job_id"],
    )
    sent = [r.request_id for r in fake_gateway.requests if marker in r.raw.decode()]
    assert [(a, s, e, w) for a, s, e, _, w in rows] == [
        (1, 200, AFTER_A_200[kind], surface),
        (2, 200, AFTER_A_200[kind], surface),
        (3, 200, None, surface),
    ]
    assert [rid for _, _, _, rid, _ in rows] == sent
