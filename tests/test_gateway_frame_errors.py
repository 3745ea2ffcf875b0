"""A garbled gateway frame is described by what is wrong with it (its number, its size,
where its JSON breaks, which field has which type), never by its text: these messages
reach the worker's log, job_attempts.error, the job's error and its webhook, and a frame
carries the reply."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from service.completion import Completion
from service.db.migrate import throwaway_database
from service.errors import BrokenStream, GatewayError, GatewayServerError, ReplyDefect
from service.gateway.anthropic_stream import AnthropicAssembler
from service.gateway.checks import check_reply
from service.gateway.stream import StreamAssembler
from service.gateway.translate import translate
from tests.conftest import ADMIN_DSN, places_holding, run_ezq, sql

SECRET = "SECRET-TEXT"
ROLE = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}'


def fed(assembler: StreamAssembler | AnthropicAssembler, *lines: bytes) -> GatewayError:
    """The error feeding ``lines`` raises."""
    with pytest.raises(GatewayError) as caught:
        for line in lines:
            assembler.feed(line)
    return caught.value


def assert_no_text(error: GatewayError, *expected: str) -> None:
    """Nothing of the frame's text in any form of the error; ``expected`` in its message."""
    for shown in (str(error), error.message, error.describe(), repr(error.args)):
        assert SECRET not in shown, shown
    for part in expected:
        assert part in error.message, error.message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            b'data: {"choices":[{"delta":{"content":"SECRET-TEXT"}}]',
            ["malformed SSE frame 2 (48 bytes)", "Expecting ',' delimiter at character 48"],
        ),
        (b'data: {"choices": [{"delta": {"content": "SECRET-TEXT', ["Unterminated string"]),
        (b'data: "SECRET-TEXT"', ["SSE frame 2 (13 bytes) is a string, not an object"]),
        (b'data: ["SECRET-TEXT"]', ["SSE frame 2 (15 bytes) is an array, not an object"]),
        (b'data: {"usage": "SECRET-TEXT"}', ["frame 2: usage is a string, not an object"]),
        (b'data: {"choices": "SECRET-TEXT"}', ["frame 2", "choices is a string, not an array"]),
        (b'data: {"choices": ["SECRET-TEXT"]}', ["choices[0] is a string, not an object"]),
        (
            b'data: {"choices": [{"delta": "SECRET-TEXT"}]}',
            ["unexpected shape of SSE frame 2 (39 bytes)", "choices[0].delta is a string"],
        ),
        (
            b'data: {"choices": [{"delta": {"content": ["SECRET-TEXT"]}}]}',
            ["choices[0].delta.content is an array, not a string"],
        ),
        (
            b'data: {"choices": [{"delta": {"tool_calls": ["SECRET-TEXT"]}}]}',
            ["choices[0].delta.tool_calls[0] is a string, not an object"],
        ),
        (
            b'data: {"choices": [{"delta": {"tool_calls": [{"function": "SECRET-TEXT"}]}}]}',
            ["choices[0].delta.tool_calls[0].function is a string, not an object"],
        ),
        (
            b'data: {"choices": [{"delta": {"tool_calls": [{"function": '
            b'{"name": ["SECRET-TEXT"]}}]}}]}',
            ["choices[0].delta.tool_calls[0].function.name is an array, not a string"],
        ),
        (b'data: {"error": "SECRET-TEXT"}', ["no message (error is a string)"]),
        (b'data: {"error": {"detail": "SECRET-TEXT"}}', ["no message (error.message is null)"]),
        (b"data: \xff\xfeSECRET-TEXT", ["malformed SSE frame 2", "not valid"]),
    ],
    ids=[
        "unclosed-object",
        "unterminated-string",
        "string-frame",
        "array-frame",
        "usage",
        "choices",
        "choice",
        "delta",
        "content",
        "tool-call",
        "function",
        "function-name",
        "error-string",
        "error-without-message",
        "not-utf8",
    ],
)
def test_openai_frame_errors_name_the_fault_not_the_text(line: bytes, expected: list[str]) -> None:
    """Each way a chunk can be garbled gives an error naming the frame and what is wrong
    with it, and none of its text."""
    error = fed(StreamAssembler(), ROLE, line)
    assert isinstance(error, BrokenStream | GatewayServerError)
    assert_no_text(error, *expected)


def test_a_garbled_frame_still_fails_the_stream_as_before() -> None:
    """The error classes are unchanged: garbled frames break the stream (retried), an error
    frame with a message is a server error that shows the gateway's message."""
    assert isinstance(fed(StreamAssembler(), b'data: {"choices": ['), BrokenStream)
    error = fed(StreamAssembler(), b'data: {"error": {"message": "overloaded"}}')
    assert isinstance(error, GatewayServerError)
    assert error.message == "error inside the stream: overloaded"


def anthropic_line(frame: Any) -> bytes:
    return b"data: " + json.dumps(frame).encode()


START = anthropic_line({"type": "message_start", "message": {"id": "m", "usage": {}}})
TEXT_BLOCK = anthropic_line(
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            [b'data: {"type": "content_block_delta", "index": 0, "delta": {"text": "SECRET-TEXT'],
            ["malformed SSE frame 3 (", "bytes): Unterminated string"],
        ),
        ([b'data: "SECRET-TEXT"'], ["SSE frame 3", "is a string, not an object"]),
        (
            [anthropic_line({"type": "content_block_delta", "index": SECRET, "delta": {}})],
            ["a content_block_delta event: index is a string, not an integer"],
        ),
        (
            [anthropic_line({"type": "content_block_delta", "index": 0, "delta": SECRET})],
            ["unexpected shape of SSE frame 3", "delta is a string, not an object"],
        ),
        (
            [
                anthropic_line(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": [SECRET]},
                    }
                )
            ],
            ["delta.text is an array, not a string"],
        ),
        (
            [anthropic_line({"type": "content_block_start", "index": 1, "content_block": SECRET})],
            ["content_block is a string, not an object"],
        ),
        (
            [anthropic_line({"type": "message_delta", "delta": {}, "usage": SECRET})],
            ["a message_delta event: usage is a string, not an object"],
        ),
        ([anthropic_line({"type": "error", "error": SECRET})], ["no message (error is a string)"]),
    ],
    ids=[
        "malformed",
        "string-frame",
        "index",
        "delta",
        "text",
        "content-block",
        "usage",
        "error-string",
    ],
)
def test_anthropic_frame_errors_name_the_fault_not_the_text(
    lines: list[bytes], expected: list[str]
) -> None:
    """The Anthropic surface's garbled events are described the same way."""
    error = fed(AnthropicAssembler(), START, TEXT_BLOCK, *lines)
    assert isinstance(error, BrokenStream | GatewayServerError)
    assert_no_text(error, *expected)


@pytest.mark.parametrize(
    "cause",
    [
        httpx.RemoteProtocolError(f"illegal chunk header: b'data: {SECRET}'"),
        httpx.RemoteProtocolError(f'malformed chunk footer: b"{SECRET}" (expected b"\\r\\n")'),
    ],
    ids=["chunk-header", "chunk-footer"],
)
def test_transport_errors_mid_stream_leave_quoted_bytes_out(cause: Exception) -> None:
    """h11 quotes what it read when the chunked framing breaks; past a wrong chunk size
    that is the body: the quoted bytes are left out, the error's kind kept."""
    error = translate(cause, request_id="r")
    assert isinstance(error, BrokenStream)
    assert_no_text(error, "connection lost mid-stream: RemoteProtocolError", "<bytes not shown>")


def completion(**fields: Any) -> Completion:
    base: dict[str, Any] = {
        "content": None,
        "finish_reason": "stop",
        "tool_calls": None,
        "reasoning_content": None,
        "usage": None,
        "first_token_at": None,
        "request_id": "r",
    }
    return Completion(**(base | fields))


def test_gw001_errors_show_only_tool_names_the_request_offered() -> None:
    """A tool call's function name is shown when the request offered it; a name the model
    made up is reply text, and so are its arguments."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    made_up = [
        {"id": "c1", "type": "function", "function": {"name": SECRET, "arguments": "{SECRET"}}
    ]
    with pytest.raises(ReplyDefect) as caught:
        check_reply(completion(finish_reason="tool_calls", tool_calls=made_up), {"tools": tools})
    assert_no_text(caught.value, "tool call 0 has arguments that are not JSON: Expecting")

    offered = [{"id": "c1", "function": {"name": "get_weather", "arguments": f'["{SECRET}"]'}}]
    with pytest.raises(ReplyDefect) as caught:
        check_reply(completion(finish_reason="tool_calls", tool_calls=offered), {"tools": tools})
    assert_no_text(caught.value, "tool call 0 (get_weather) has arguments that are not an object")


def test_schema_mismatch_paths_show_only_keys_the_schema_names() -> None:
    """A strict schema's error names the path, but a reply's own key only when the schema
    names it."""
    schema = {
        "type": "object",
        "properties": {"cities": {"type": "object", "additionalProperties": {"type": "number"}}},
        "required": ["cities"],
    }
    params = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "c", "strict": True, "schema": schema},
        }
    }
    reply = json.dumps({"cities": {SECRET: "x"}})
    with pytest.raises(ReplyDefect) as caught:
        check_reply(completion(content=reply), params)
    assert_no_text(caught.value, "$.cities.<key>: fails 'type'")


# -- end to end: a gateway whose frames carry reply text in every garbled way ------------

# One garbled frame per attempt, each carrying the secret: broken JSON, a frame that is
# not an object, a chunk of an unexpected shape.
GARBLED = [
    b'data: {"choices":[{"delta":{"content":"%s"}}]',
    b'data: "%s"',
    b'data: {"choices": [{"delta": "%s"}]}',
]


class _GarblingUpstream(BaseHTTPRequestHandler):
    """An upstream that answers 200 SSE, a role chunk, then the next garbled frame."""

    secret = ""
    calls = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.lock:
            kind = GARBLED[type(self).calls % len(GARBLED)]
            type(self).calls += 1
        frames = [ROLE, kind % self.secret.encode(), b"data: [DONE]"]
        body = b"".join(f + b"\n\n" for f in frames)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("x-oneapi-request-id", f"garbled-{type(self).calls}")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def garbling_upstream() -> Iterator[tuple[str, str]]:
    secret = "SECRET-" + secrets.token_hex(8)
    handler = type("Garbling", (_GarblingUpstream,), {"secret": secret, "calls": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", secret
    server.shutdown()
    server.server_close()


def test_garbled_frames_leave_no_reply_text_in_errors_rows_or_logs(
    garbling_upstream: tuple[str, str],
    worker_factory: Callable[..., Any],
    test_ids: dict[str, str],
) -> None:
    """A job whose three attempts each meet a garbled frame carrying reply text fails as a
    broken stream; the text is in no attempt's error, not in the job's error, in no table or
    Redis key, and not in the worker's log. Each attempt keeps the 200 and request id."""
    upstream, secret = garbling_upstream
    # A database of its own, so that only this worker, with its upstream, runs the job.
    with throwaway_database(ADMIN_DSN, prefix="ezq_test_garbled") as database:
        env = {
            "DATABASE_URL": database,
            "EZROUTER_BASE_URL": upstream,
            "EZQ_QUEUE": test_ids["queue"] + "-garbled",
        }
        worker = worker_factory(env=env)
        done = run_ezq("enqueue", "--model", "m", "--wait", "--timeout", "30", "hi", env=env)
        job = json.loads(done.stdout)
        assert job["status"] == "failed", done.stderr
        assert job["error"]["type"] == "broken_stream"
        assert secret not in json.dumps(job)
        attempts = sql(
            "SELECT attempt, http_status, gateway_request_id, error FROM job_attempts"
            " WHERE job_id = :j ORDER BY attempt",
            database=database,
            j=job["job_id"],
        )
        assert [(a, s) for a, s, _, _ in attempts] == [(1, 200), (2, 200), (3, 200)]
        assert all(rid and rid.startswith("garbled-") for _, _, rid, _ in attempts)
        errors = [e for _, _, _, e in attempts]
        assert "malformed SSE frame 2" in errors[0]
        assert "SSE frame 2 (" in errors[1] and "is a string, not an object" in errors[1]
        assert "choices[0].delta is a string, not an object" in errors[2]
        assert all(secret not in e for e in errors)
        assert places_holding(secret, database) == []
        assert secret not in worker.log()
