"""Tests for the fake ezrouter gateway, driven through the real openai SDK and raw HTTP."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from service.fake_gateway import DEFAULT_MODELS, FakeGateway, Fault

MODEL = "glm-5.1"
USER: list[Any] = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"
RATE_LIMIT_HEADER = re.compile(r"^(x-ratelimit-|ratelimit-|retry-after$)", re.IGNORECASE)
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def shared_gateway() -> Iterator[FakeGateway]:
    """One server for the module; starting one per test would dominate the run time."""
    with FakeGateway().start() as gateway:
        yield gateway


@pytest.fixture
def gw(shared_gateway: FakeGateway) -> FakeGateway:
    """The shared gateway with faults, recorded requests and prompt cache cleared."""
    shared_gateway.reset()
    return shared_gateway


@pytest.fixture(scope="module")
def shared_client(shared_gateway: FakeGateway) -> Iterator[openai.OpenAI]:
    """An SDK client without its own retries, so every fault is visible."""
    sdk = openai.OpenAI(base_url=shared_gateway.url, api_key="sk-test", max_retries=0, timeout=5)
    yield sdk
    sdk.close()


@pytest.fixture
def client(gw: FakeGateway, shared_client: openai.OpenAI) -> openai.OpenAI:
    """The shared SDK client, pointed at a freshly reset gateway."""
    return shared_client


@pytest.fixture(scope="module")
def shared_http(shared_gateway: FakeGateway) -> Iterator[httpx.Client]:
    """A raw HTTP client rooted at the gateway origin."""
    headers = {"Authorization": "Bearer sk-test"}
    with httpx.Client(base_url=shared_gateway.origin, headers=headers, timeout=5) as raw:
        yield raw


@pytest.fixture
def http(gw: FakeGateway, shared_http: httpx.Client) -> httpx.Client:
    """The shared raw HTTP client, pointed at a freshly reset gateway."""
    return shared_http


def stream(sdk: openai.OpenAI, **kwargs: Any) -> list[ChatCompletionChunk]:
    """Collect all chunks of a streamed SDK call."""
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", USER)
    return list(sdk.chat.completions.create(stream=True, **kwargs))


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    """Concatenate delta.content the way the Celery client does."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def data_lines(body: str) -> list[str]:
    """Payloads of the `data:` lines of an SSE body."""
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


def chat_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    """A minimal valid chat request body."""
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def assert_no_rate_limit_headers(response: httpx.Response) -> None:
    """Fail if any rate-limit style header is present."""
    assert not [name for name in response.headers if RATE_LIMIT_HEADER.match(name)]


# -- the always-SSE divergence and the happy path ---------------------------------------


@pytest.mark.parametrize("stream_flag", [None, False])
def test_non_stream_sdk_call_returns_raw_sse_string(
    client: openai.OpenAI, stream_flag: bool | None
) -> None:
    """Without stream=True the SDK cannot parse the SSE body and hands back a str."""
    kwargs: dict[str, Any] = {} if stream_flag is None else {"stream": stream_flag}
    result: Any = client.chat.completions.create(model=MODEL, messages=USER, **kwargs)
    assert isinstance(result, str)
    assert result.startswith("data: {")
    assert result.rstrip().endswith("data: [DONE]")
    assert not hasattr(result, "choices")


def test_stream_assembles_echo_and_sends_usage_on_separate_chunk(client: openai.OpenAI) -> None:
    """The reply echoes the history length and last user turn; usage trails on `choices: []`."""
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "echo[2]: first"},
        {"role": "user", "content": "second question"},
    ]
    chunks = stream(client, messages=messages)
    assert text_of(chunks) == "echo[4]: second question"
    assert chunks[0].choices[0].delta.role == "assistant"
    finish, trailer = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "stop"
    assert finish.usage is None
    assert trailer.choices == []
    assert trailer.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    assert re.fullmatch(r"msg_01[0-9A-Za-z]{22}", ids.pop())
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {MODEL}


def test_usage_on_finish_chunk_when_configured() -> None:
    """With usage_placement="finish" the finish_reason chunk carries usage and is last."""
    with FakeGateway(usage_placement="finish").start() as gateway:
        sdk = openai.OpenAI(base_url=gateway.url, api_key="sk-test", max_retries=0)
        chunks = stream(sdk)
        sdk.close()
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert all(c.choices for c in chunks)


def test_usage_on_finish_fault_overrides_instance_setting(
    gw: FakeGateway, client: openai.OpenAI
) -> None:
    """The usage_on_finish kind moves usage onto the finish chunk for one request only."""
    gw.add_faults(Fault(kind="usage_on_finish"))
    first, second = stream(client), stream(client)
    assert first[-1].choices[0].finish_reason == "stop" and first[-1].usage is not None
    assert second[-1].choices == [] and second[-1].usage is not None


def test_output_tokens_zero_while_completion_tokens_positive(client: openai.OpenAI) -> None:
    """Usage carries the ezrouter extensions, with output_tokens stuck at 0."""
    usage = stream(client)[-1].usage
    assert usage is not None
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = usage.model_extra or {}
    assert extra["output_tokens"] == 0
    assert extra["input_tokens"] == usage.prompt_tokens
    assert extra["usage_semantic"] == "openai"
    dumped = usage.model_dump(exclude_none=True)
    assert dumped["prompt_tokens_details"] == {
        "cached_tokens": 0,
        "text_tokens": 0,
        "audio_tokens": 0,
        "image_tokens": 0,
    }
    assert dumped["completion_tokens_details"]["reasoning_tokens"] == 0


def test_output_tokens_real_when_switched_off_and_claude_semantic() -> None:
    """output_tokens_zero=False mirrors completion_tokens; claude models report anthropic."""
    with FakeGateway(output_tokens_zero=False).start() as gateway:
        sdk = openai.OpenAI(base_url=gateway.url, api_key="sk-test", max_retries=0)
        usage = stream(sdk, model="claude-sonnet-4-6")[-1].usage
        sdk.close()
    assert usage is not None
    extra = usage.model_extra or {}
    assert extra["output_tokens"] == usage.completion_tokens > 0
    assert extra["usage_semantic"] == "anthropic"


@pytest.mark.parametrize(("model", "expect_hit"), [(MODEL, True), ("claude-opus-4-7", False)])
def test_extended_history_hits_prompt_cache_except_opus(
    client: openai.OpenAI, model: str, expect_hit: bool
) -> None:
    """Turn 2 of a conversation reports cached prefix tokens, except on claude-opus-4-7 (GW-005)."""
    turn1 = [{"role": "system", "content": "You are terse. " * 20}, USER[0]]
    first = stream(client, model=model, messages=turn1)[-1].usage
    reply = {"role": "assistant", "content": "echo[2]: hello"}
    turn2 = [*turn1, reply, {"role": "user", "content": "and again"}]
    second = stream(client, model=model, messages=turn2)[-1].usage
    assert first is not None and second is not None
    assert first.prompt_tokens_details is not None and second.prompt_tokens_details is not None
    assert first.prompt_tokens_details.cached_tokens == 0
    cached = second.prompt_tokens_details.cached_tokens or 0
    assert (cached > 0) is expect_hit
    assert cached <= second.prompt_tokens


def test_cache_granularity_rounds_cached_tokens_down() -> None:
    """cached_tokens is a multiple of cache_granularity and short prefixes do not cache."""
    with FakeGateway(cache_granularity=2048).start() as gateway:
        sdk = openai.OpenAI(base_url=gateway.url, api_key="sk-test", max_retries=0)
        short = [{"role": "user", "content": "short"}]
        long = [{"role": "system", "content": "x" * 10_000}, *short]
        usages = [stream(sdk, messages=m)[-1].usage for m in (short, short, long, long)]
        sdk.close()
    cached = [
        u.prompt_tokens_details.cached_tokens for u in usages if u and u.prompt_tokens_details
    ]
    assert cached == [0, 0, 0, 2048]


# -- auth, validation and scripted statuses --------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Basic sk-test", "Bearer", "Bearer nope"])
def test_bad_credentials_get_chinese_401(http: httpx.Client, authorization: str | None) -> None:
    """Missing, malformed or unknown keys get 401 invalid_api_key with a Chinese message."""
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=http.base_url, headers=headers) as raw:
        response = raw.post(CHAT, json=chat_body())
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "authentication_error"
    assert CJK.search(error["message"])
    request_id = response.headers["x-oneapi-request-id"]
    assert error["message"].endswith(f"(request id: {request_id})")


def test_sdk_sees_authentication_error(gw: FakeGateway) -> None:
    """The SDK maps the 401 envelope to AuthenticationError with the envelope as body."""
    sdk = openai.OpenAI(base_url=gw.url, api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        stream(sdk)
    sdk.close()
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "invalid_api_key"


def test_api_keys_restricts_accepted_tokens() -> None:
    """With api_keys given, only those exact keys are accepted."""
    with FakeGateway(api_keys={"sk-good"}).start() as gateway:
        good = httpx.post(
            gateway.url + "/chat/completions",
            json=chat_body(),
            headers={"Authorization": "Bearer sk-good"},
        )
        other = httpx.post(
            gateway.url + "/chat/completions",
            json=chat_body(),
            headers={"Authorization": "Bearer sk-other"},
        )
    assert good.status_code == 200
    assert other.status_code == 401


def test_unknown_model_is_403_access_denied(client: openai.OpenAI) -> None:
    """A model outside the catalog is rejected with 403 access_denied / new_api_error."""
    with pytest.raises(openai.PermissionDeniedError) as info:
        stream(client, model="gpt-4o")
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "access_denied"
    assert body["type"] == "new_api_error"
    assert "(request id: " in body["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": USER},
        {"model": MODEL, "messages": []},
        {"model": MODEL},
        {"model": MODEL, "messages": USER, "max_tokens": "ten"},
        "not json",
    ],
)
def test_invalid_body_is_400(http: httpx.Client, body: Any) -> None:
    """Bodies without a model or non-empty messages get the 400 envelope."""
    content = body if isinstance(body, str) else json.dumps(body)
    response = http.post(CHAT, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["type"] == "new_api_error"


STATUS_TABLE = [
    (400, "invalid_request", "new_api_error"),
    (401, "invalid_api_key", "authentication_error"),
    (403, "access_denied", "new_api_error"),
    (404, "model_not_found", "new_api_error"),
    (413, "request_too_large", "new_api_error"),
    (422, "invalid_request", "new_api_error"),
    (429, "", "new_api_error"),
    (500, "", "upstream_error"),
    (502, "", "upstream_error"),
    (503, "", "upstream_error"),
    (504, "", "upstream_error"),
]


@pytest.mark.parametrize(("status", "code", "error_type"), STATUS_TABLE)
def test_scripted_status_round_trips_envelope(
    gw: FakeGateway, http: httpx.Client, status: int, code: str, error_type: str
) -> None:
    """A status fault yields the §6.1 envelope, the request-id header and no rate-limit headers."""
    gw.add_faults(Fault(status=status))
    response = http.post(CHAT, json=chat_body())
    assert response.status_code == status
    error = response.json()["error"]
    request_id = response.headers["x-oneapi-request-id"]
    expected_keys = {"code", "message", "type"} | ({"param"} if status >= 500 else set())
    assert set(error) == expected_keys
    assert (error["code"], error["type"]) == (code, error_type)
    assert error.get("param", "") == ""
    assert error["message"].endswith(f"(request id: {request_id})")
    assert response.headers["x-new-api-version"]
    assert_no_rate_limit_headers(response)
    assert http.post(CHAT, json=chat_body()).status_code == 200


def test_success_responses_carry_ids_and_no_rate_limit_headers(http: httpx.Client) -> None:
    """Every response gets a fresh x-oneapi-request-id and never rate-limit headers."""
    first = http.post(CHAT, json=chat_body())
    second = http.get("/v1/models")
    ids = {r.headers["x-oneapi-request-id"] for r in (first, second)}
    assert len(ids) == 2
    assert all(re.fullmatch(r"\d{20,}[0-9A-Za-z]{8}", i) for i in ids)
    for response in (first, second):
        assert_no_rate_limit_headers(response)
        assert response.headers["x-new-api-version"]


# -- transport-level faults ----------------------------------------------------------------


def test_drop_makes_sdk_raise_connection_error(gw: FakeGateway, client: openai.OpenAI) -> None:
    """A reset before any response byte surfaces as openai.APIConnectionError."""
    gw.add_faults(Fault(kind="drop"))
    with pytest.raises(openai.APIConnectionError):
        stream(client)
    assert len(gw.requests) == 1


def test_drop_mid_stream_raises_transport_error_after_partial_content(
    gw: FakeGateway, http: httpx.Client, client: openai.OpenAI
) -> None:
    """A reset mid-body is a transport error, not a silent end."""
    gw.add_faults(Fault(kind="drop_mid_stream", after_chunks=2), Fault(kind="drop_mid_stream"))
    received: list[str] = []
    with pytest.raises(httpx.TransportError), http.stream("POST", CHAT, json=chat_body()) as r:
        assert r.status_code == 200
        received.extend(r.iter_lines())
    assert len(data_lines("\n".join(received))) <= 3
    # openai >= 3 wraps mid-stream transport errors; older versions let httpx errors through.
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        stream(client)


def test_truncate_ends_silently_without_finish_reason(
    gw: FakeGateway, http: httpx.Client, client: openai.OpenAI
) -> None:
    """A clean end of body mid-answer makes SDK iteration stop without finish_reason or usage."""
    gw.add_faults(Fault(kind="truncate", after_chunks=1), Fault(kind="truncate", after_chunks=1))
    chunks = stream(client, messages=[{"role": "user", "content": "a fairly long question"}])
    assert text_of(chunks) == "echo[1]:"
    assert all(c.choices[0].finish_reason is None for c in chunks)
    assert all(c.usage is None for c in chunks)
    raw = http.post(CHAT, json=chat_body())
    assert raw.status_code == 200
    assert "[DONE]" not in raw.text
    assert len(data_lines(raw.text)) == 2


def test_error_frame_makes_sdk_stream_raise_api_error(
    gw: FakeGateway, client: openai.OpenAI
) -> None:
    """An in-stream {"error": ...} frame raises openai.APIError carrying the envelope."""
    gw.add_faults(Fault(kind="error_frame", after_chunks=1))
    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as info:
        received.extend(client.chat.completions.create(model=MODEL, messages=USER, stream=True))
    assert len(received) == 2
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "upstream_error"
    assert body["code"] == "" and body["param"] == ""
    assert "(request id: " in body["message"]


def test_malformed_frame_then_done(gw: FakeGateway, http: httpx.Client) -> None:
    """The malformed kind sends a broken JSON frame followed by [DONE]."""
    gw.add_faults(Fault(kind="malformed", after_chunks=1))
    payloads = data_lines(http.post(CHAT, json=chat_body()).text)
    assert payloads[-2:] == ['{"id": "msg_01x", "choices": [', "[DONE]"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(payloads[-2])


def test_no_finish_sends_done_but_no_finish_reason_or_usage(
    gw: FakeGateway, client: openai.OpenAI
) -> None:
    """no_finish delivers all content and [DONE] but never a finish_reason or usage."""
    gw.add_faults(Fault(kind="no_finish"))
    chunks = stream(client)
    assert text_of(chunks) == "echo[1]: hello"
    assert all(c.choices and c.choices[0].finish_reason is None for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_non_sse_and_empty_bodies(gw: FakeGateway, http: httpx.Client) -> None:
    """non_sse answers JSON {"ok": true}; empty answers SSE with no bytes."""
    gw.add_faults(Fault(kind="non_sse"), Fault(kind="empty"))
    non_sse = http.post(CHAT, json=chat_body())
    assert non_sse.headers["content-type"].startswith("application/json")
    assert non_sse.json() == {"ok": True}
    empty = http.post(CHAT, json=chat_body())
    assert empty.status_code == 200
    assert empty.headers["content-type"] == "text/event-stream"
    assert empty.content == b""


def _raw_exchange(gw: FakeGateway, body: dict[str, Any]) -> tuple[bytes, bool]:
    """POST over a bare socket; return the bytes read and whether the peer reset."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer sk-test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    data = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(head + payload)
        try:
            while not data.endswith(b"\r\n0\r\n\r\n"):
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        except ConnectionResetError:
            return data, True
    return data, False


@pytest.mark.parametrize(
    ("fault", "terminated", "reset"),
    [
        (None, True, False),
        (Fault(kind="truncate", after_chunks=1), True, False),
        (Fault(kind="drop_mid_stream", after_chunks=1), False, True),
    ],
)
def test_wire_distinguishes_clean_end_from_reset(
    gw: FakeGateway, fault: Fault | None, terminated: bool, reset: bool
) -> None:
    """SSE uses chunked encoding: clean ends send the terminator, drops reset the socket."""
    if fault is not None:
        gw.add_faults(fault)
    data, was_reset = _raw_exchange(gw, chat_body())
    head, _, _ = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in head
    assert data.endswith(b"\r\n0\r\n\r\n") is terminated
    assert was_reset is reset


# -- fault scheduling ---------------------------------------------------------------------------


def test_times_applies_to_exactly_that_many_requests(gw: FakeGateway, http: httpx.Client) -> None:
    """Fault(status=503, times=2) fails two requests and then normal service resumes."""
    gw.add_faults(Fault(status=503, times=2))
    statuses = [http.post(CHAT, json=chat_body()).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert gw.pending_faults == []


def test_match_only_hits_matching_requests(gw: FakeGateway, http: httpx.Client) -> None:
    """A fault with `match` skips requests whose raw body lacks the substring."""
    gw.add_faults(Fault(status=500, match="poison"), Fault(status=502))
    first = http.post(CHAT, json=chat_body("harmless"))
    second = http.post(CHAT, json=chat_body("harmless"))
    third = http.post(CHAT, json=chat_body("poison pill"))
    assert [first.status_code, second.status_code, third.status_code] == [502, 200, 500]


def test_latency_delays_first_byte_while_others_are_served(
    gw: FakeGateway, client: openai.OpenAI
) -> None:
    """A slow first byte on one request does not hold up a concurrent one."""
    # The slow one waits 3 s: the other's whole call has that long, on however slow a host.
    gw.add_faults(Fault(latency=3.0, match="slow"))
    slow_elapsed: list[float] = []

    def slow_call() -> None:
        started = time.monotonic()
        with httpx.stream(
            "POST",
            gw.url + "/chat/completions",
            json=chat_body("slow"),
            headers={"Authorization": "Bearer sk-test"},
        ) as response:
            slow_elapsed.append(time.monotonic() - started)
            response.read()

    worker = threading.Thread(target=slow_call)
    worker.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert text_of(stream(client)) == "echo[1]: hello"
    assert time.monotonic() - started < 2.0
    assert slow_elapsed == []
    worker.join(timeout=10)
    assert slow_elapsed and slow_elapsed[0] >= 2.95


def test_chunk_delay_trickles_frames(gw: FakeGateway, client: openai.OpenAI) -> None:
    """chunk_delay spaces frames out over time."""
    gw.add_faults(Fault(chunk_delay=0.05))
    started = time.monotonic()
    chunks = stream(client)
    # role, two content chunks, finish, usage, [DONE]: five gaps.
    assert len(chunks) == 5
    assert time.monotonic() - started >= 0.25


def test_stop_returns_promptly_with_stream_in_flight() -> None:
    """stop() cuts a trickling stream instead of waiting for it."""
    gateway = FakeGateway().start()
    gateway.add_faults(Fault(chunk_delay=30))
    first_frame = threading.Event()
    outcome: list[BaseException] = []

    def consume() -> None:
        try:
            with httpx.stream(
                "POST",
                gateway.url + "/chat/completions",
                json=chat_body(),
                headers={"Authorization": "Bearer sk-test"},
            ) as response:
                for _ in response.iter_lines():
                    first_frame.set()
        except httpx.TransportError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=consume)
    worker.start()
    assert first_frame.wait(3)
    started = time.monotonic()
    gateway.stop()
    assert time.monotonic() - started < 1.0
    worker.join(timeout=2)
    assert not worker.is_alive()
    assert outcome


# -- reply variants ----------------------------------------------------------------------


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    }
]


def test_tool_calls_fault_streams_fragments(gw: FakeGateway, client: openai.OpenAI) -> None:
    """tool_calls emits OpenAI tool-call deltas with arguments split across chunks."""
    gw.add_faults(Fault(kind="tool_calls", reply='{"tz": "Europe/Paris"}'))
    chunks = stream(client, tools=TOOLS)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(calls) > 2
    assert calls[0].id and calls[0].type == "function"
    assert calls[0].function is not None and calls[0].function.name == "get_time"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments) == {"tz": "Europe/Paris"}
    assert {tc.index for tc in calls} == {0}
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "tool_calls"


def test_tool_calls_broken_finishes_without_tool_calls(
    gw: FakeGateway, client: openai.OpenAI
) -> None:
    """GW-001: finish_reason tool_calls but no tool_calls delta at all."""
    gw.add_faults(Fault(kind="tool_calls_broken"))
    chunks = stream(client, tools=TOOLS)
    assert all(not c.choices or c.choices[0].delta.tool_calls is None for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_thinking_emits_reasoning_content_and_tokens(client: openai.OpenAI) -> None:
    """thinking={"type": "enabled"} adds reasoning_content deltas and reasoning_tokens."""
    chunks = stream(client, extra_body={"thinking": {"type": "enabled"}}, reasoning_effort="high")
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert reasoning.startswith("Thinking about")
    assert text_of(chunks) == "echo[1]: hello"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning_tokens = usage.completion_tokens_details.reasoning_tokens or 0
    assert 0 < reasoning_tokens < usage.completion_tokens


def test_max_tokens_cuts_reply_with_length(client: openai.OpenAI) -> None:
    """A reply longer than max_tokens is cut to it and finishes with "length"."""
    chunks = stream(client, max_tokens=2)
    assert text_of(chunks) == "echo[1]:"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_empty_content_fault(gw: FakeGateway, client: openai.OpenAI) -> None:
    """empty_content ends normally with stop and usage but no text."""
    gw.add_faults(Fault(kind="empty_content"))
    chunks = stream(client)
    assert text_of(chunks) == ""
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None


def test_reply_override_and_reply_words(gw: FakeGateway, client: openai.OpenAI) -> None:
    """A fault's reply replaces the echo; reply_words produces long lorem ipsum answers."""
    gw.add_faults(Fault(reply="scripted answer"))
    assert text_of(stream(client)) == "scripted answer"
    with FakeGateway(reply_words=50, chunk_chars=16).start() as gateway:
        sdk = openai.OpenAI(base_url=gateway.url, api_key="sk-test", max_retries=0)
        text = text_of(stream(sdk))
        sdk.close()
    assert len(text.split()) == 50
    assert text.startswith("lorem ipsum")


def test_extra_request_fields_are_accepted_and_recorded(
    gw: FakeGateway, client: openai.OpenAI
) -> None:
    """Non-OpenAI and optional fields pass without complaint and show up in the record."""
    stream(
        client,
        stream_options={"include_usage": True},
        response_format={"type": "json_object"},
        extra_body={"user_id": "u-42", "thinking": {"type": "disabled"}},
    )
    body = gw.requests[-1].body
    assert body["user_id"] == "u-42"
    assert body["stream_options"] == {"include_usage": True}
    assert body["stream"] is True


# -- recording, admin endpoints and the catalog -------------------------------------------------


def test_requests_are_recorded_including_rejected_ones(gw: FakeGateway) -> None:
    """Every chat request is recorded, with lower-case headers and the response's request id."""
    good = httpx.post(
        gw.url + "/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sk-a"}
    )
    bad = httpx.post(gw.url + "/chat/completions", json=chat_body())
    recorded = gw.requests
    assert [r.request_id for r in recorded] == [
        good.headers["x-oneapi-request-id"],
        bad.headers["x-oneapi-request-id"],
    ]
    assert recorded[0].path == CHAT
    assert recorded[0].headers["authorization"] == "Bearer sk-a"
    assert recorded[0].body == chat_body()
    assert recorded[0].received_at <= recorded[1].received_at
    gw.add_faults(Fault(status=500))
    gw.reset()
    assert gw.requests == [] and gw.pending_faults == []


def test_admin_endpoints(gw: FakeGateway) -> None:
    """Faults and recorded requests can be scripted and inspected over HTTP."""
    with httpx.Client(base_url=gw.origin) as admin:
        assert admin.get("/_fake/health").status_code == 200
        faults = [{"status": 503, "times": 2}, {"kind": "drop", "match": "never"}]
        assert admin.post("/_fake/faults", json=faults).status_code == 204
        assert [f["kind"] for f in admin.get("/_fake/faults").json()] == ["status", "drop"]
        assert admin.post("/_fake/faults", json=[{"kind": "bogus"}]).status_code == 400
        assert admin.post("/_fake/faults", json=[{"nope": 1}]).status_code == 400
        auth = {"Authorization": "Bearer sk-test"}
        assert admin.post(CHAT, json=chat_body(), headers=auth).status_code == 503
        requests = admin.get("/_fake/requests").json()
        assert len(requests) == 1
        assert set(requests[0]) == {
            "path",
            "headers",
            "body",
            "received_at",
            "request_id",
            "in_flight",
        }
        assert requests[0]["in_flight"] == 1
        assert requests[0]["body"] == chat_body()
        assert admin.delete("/_fake/requests").status_code == 204
        assert admin.get("/_fake/requests").json() == []
        assert admin.delete("/_fake/faults").status_code == 204
        assert admin.get("/_fake/faults").json() == []
        assert admin.post(CHAT, json=chat_body(), headers=auth).status_code == 200


def test_models_listing_shape_and_auth(http: httpx.Client) -> None:
    """GET /v1/models matches §7 and needs a key."""
    listing = http.get("/v1/models").json()
    assert listing["object"] == "list" and listing["success"] is True
    ids = [m["id"] for m in listing["data"]]
    assert ids == list(DEFAULT_MODELS)
    assert "claude-opus-4-7" in ids and "gpt-5.1" in ids
    for model in listing["data"]:
        assert set(model) == {"id", "object", "created", "owned_by", "supported_endpoint_types"}
        assert model["object"] == "model" and model["created"] == 1626777600
    by_id = {m["id"]: m for m in listing["data"]}
    assert by_id["claude-sonnet-4-6"]["owned_by"] == "vertex-ai"
    assert by_id["claude-sonnet-4-6"]["supported_endpoint_types"] == ["anthropic", "openai"]
    assert by_id["deepseek-v4-flash"]["owned_by"] == "custom"
    assert by_id["deepseek-v4-flash"]["supported_endpoint_types"] == ["openai"]
    with httpx.Client(base_url=http.base_url) as anonymous:
        assert anonymous.get("/v1/models").status_code == 401


def test_sdk_models_list_and_unknown_path(client: openai.OpenAI, http: httpx.Client) -> None:
    """The SDK reads the catalog; unknown paths get a 404 envelope."""
    assert {m.id for m in client.models.list()} == set(DEFAULT_MODELS)
    missing = http.post("/v1/embeddings", json={})
    assert missing.status_code == 404
    assert "request id: " in missing.json()["error"]["message"]
    unsupported = http.request("OPTIONS", CHAT)
    assert unsupported.status_code == 501
    assert unsupported.headers["x-oneapi-request-id"] in unsupported.json()["error"]["message"]


def test_fault_defaults_and_validation() -> None:
    """Fault infers its kind from status and rejects nonsense."""
    assert Fault().kind == "normal"
    assert Fault(status=503).kind == "status"
    assert Fault.from_dict({"kind": "truncate", "after_chunks": 2}).after_chunks == 2
    for bad in (
        {"kind": "bogus"},
        {"status": 200},
        {"kind": "drop", "status": 503},
        {"times": 0},
        {"latency": -1},
    ):
        with pytest.raises(ValueError):
            Fault(**bad)


def test_serve_entry_point_runs_and_stops_on_sigterm() -> None:
    """`python -m service.fake_gateway` prints its URL, serves, and exits cleanly on SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service.fake_gateway", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        match = re.fullmatch(r"fake ezrouter listening on (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        base = match.group(1).removesuffix("/v1")
        assert httpx.get(base + "/_fake/health").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=3) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- GW-001 per model, on the OpenAI surface ------------------------------------------------

GW001_TABLE = [
    ("claude-sonnet-4-6", "broken"),
    ("claude-haiku-4-5", "broken"),
    ("deepseek-v4-pro", "broken"),
    ("deepseek-v4-flash", "broken"),
    ("glm-5.1", "broken"),
    ("kimi-k2.6", "text"),
    ("claude-opus-4-7", "tool_call"),
]


@pytest.mark.parametrize(("model", "expected"), GW001_TABLE)
def test_tool_requests_reproduce_gw001_per_model(
    client: openai.OpenAI, model: str, expected: str
) -> None:
    """Offered a tool, the affected models finish "tool_calls" with no call, kimi answers in
    text and opus sends a real call, as ezrouter's probe found (GW-001)."""
    chunks = stream(client, model=model, tools=TOOLS)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    if expected == "broken":
        assert (finish, calls) == ("tool_calls", [])
    elif expected == "text":
        assert finish == "stop" and not calls and text_of(chunks)
    else:
        assert finish == "tool_calls" and calls[0].function is not None
        assert calls[0].function.name == TOOLS[0]["function"]["name"]


def test_tool_choice_none_and_tool_results_get_text(client: openai.OpenAI) -> None:
    """No tool call when tool_choice is "none" or when the last turn is a tool result."""
    refused = stream(client, model="claude-opus-4-7", tools=TOOLS, tool_choice="none")
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answered = stream(client, model="claude-opus-4-7", tools=TOOLS, messages=history)
    for chunks in (refused, answered):
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
