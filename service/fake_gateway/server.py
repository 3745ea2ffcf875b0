"""Threaded stdlib HTTP server that impersonates ezrouter for tests, the demo and benchmarks."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

from service.fake_gateway.anthropic import (
    MESSAGES_PATH,
    AnthropicCache,
    build_events,
    error_event,
    reply_mode,
    validate_messages_body,
)
from service.fake_gateway.faults import MID_STREAM_KINDS, Fault, FaultQueue
from service.fake_gateway.replies import (
    DEFAULT_MODELS,
    NEW_API_VERSION,
    NO_CACHE_MODELS,
    ModelInfo,
    ModelsArg,
    PromptCache,
    ReplyMode,
    ReplyPlan,
    UsagePlacement,
    build_plan,
    new_request_id,
    normalize_models,
    openai_tool_mode,
    wants_tool,
)

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

_DONE_FRAME = b"data: [DONE]\n\n"
_MALFORMED_FRAME = b'data: {"id": "msg_01x", "choices": [\n\n'
_REPLY_MODES: frozenset[str] = frozenset({"tool_calls", "tool_calls_broken", "empty_content"})

# (code, type, message) per scripted status; 5xx is handled separately (§6.1).
_STATUS_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request", "new_api_error", "invalid request"),
    401: ("invalid_api_key", "authentication_error", "无效的令牌"),
    403: ("access_denied", "new_api_error", "该令牌无权访问此模型"),
    404: ("model_not_found", "new_api_error", "model not found"),
    413: ("request_too_large", "new_api_error", "request body too large"),
    422: ("invalid_request", "new_api_error", "unprocessable request"),
    429: ("", "new_api_error", "当前分组上游负载已饱和，请稍后再试"),  # noqa: RUF001 - verbatim new-api text
}


def status_error(status: int) -> tuple[str, str, str]:
    """Return the (code, type, default message) that ezrouter pairs with an HTTP status."""
    if status >= 500:
        return "", "upstream_error", f"upstream error: status code {status}"
    return _STATUS_ERRORS.get(status, ("", "new_api_error", f"request failed with status {status}"))


def error_envelope(
    status: int, request_id: str, *, message: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The §6.1 error body, with the request id embedded in the message."""
    default_code, error_type, default_message = status_error(status)
    error: dict[str, Any] = {
        "code": default_code if code is None else code,
        "message": f"{message or default_message} (request id: {request_id})",
        "type": error_type,
    }
    if error_type == "upstream_error":
        error["param"] = ""
    return {"error": error}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _sse(value: Any) -> bytes:
    return b"data: " + _json_bytes(value) + b"\n\n"


@dataclass(frozen=True)
class ReceivedRequest:
    """A chat-completion request as the fake saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float  # when its first line arrived (``time.time()``)
    request_id: str
    raw: bytes = field(default=b"", repr=False)
    # Completion calls being served when this one arrived, this one included.
    in_flight: int = 1

    def to_json(self) -> dict[str, Any]:
        """The form served by `GET /_fake/requests`."""
        return {
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "received_at": self.received_at,
            "request_id": self.request_id,
            "in_flight": self.in_flight,
        }


def validate_chat_body(body: dict[str, Any]) -> str | None:
    """Return why a chat request body is unacceptable, or None when it is fine."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "field model is required and must be a string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "field messages is required and must be a non-empty array"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}] must be an object"
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"field {key} must be a positive integer"
    return None


class _Server(ThreadingHTTPServer):
    # Daemon handler threads let stop() return while a slow stream is still being served.
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops SYNs when benchmarks open dozens of connections at once.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], gateway: FakeGateway) -> None:
        self.gateway = gateway
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-stream, and sockets cut by stop(), are routine here.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | ValueError) or self.gateway.stopping:
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-ezrouter"

    # When the request's first line arrived: its ``received_at``, the moment the gateway
    # got its first byte. Stamped after the headers, the body and its JSON are parsed,
    # it would add this server's own parsing (0.3 ms at the median) to the latency the
    # load benchmark measures up to the gateway.
    _line_at: float = 0.0

    def parse_request(self) -> bool:
        self._line_at = time.time()
        return super().parse_request()

    def version_string(self) -> str:
        return self.server_version

    @property
    def gateway(self) -> FakeGateway:
        return cast(_Server, self.server).gateway

    def setup(self) -> None:
        super().setup()
        # Frames are small separate writes; Nagle plus delayed ACK would add ~40 ms stalls.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gateway._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the socket may already be reset by a drop fault or by stop()
        finally:
            self.gateway._untrack(self.connection)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Protocol-level rejections (bad request line, unsupported method) still get the
        # envelope and the request-id header, like every other response.
        request_id = new_request_id()
        self.close_connection = True
        envelope = error_envelope(code, request_id, message=message, code="")
        with contextlib.suppress(OSError):
            self._send_json(code, envelope, request_id)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and benchmarks would drown in access logs

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    # -- routing -----------------------------------------------------------------

    def _route(self, method: str) -> None:
        request_id = new_request_id()
        path = urlsplit(self.path).path
        routes: dict[tuple[str, str], Callable[[str, bytes], None]] = {
            ("POST", CHAT_PATH): self._chat,
            ("POST", MESSAGES_PATH): self._messages,
            ("GET", MODELS_PATH): self._models,
            ("GET", "/_fake/health"): self._health,
            ("GET", "/_fake/faults"): self._get_faults,
            ("POST", "/_fake/faults"): self._post_faults,
            ("DELETE", "/_fake/faults"): self._delete_faults,
            ("GET", "/_fake/requests"): self._get_requests,
            ("DELETE", "/_fake/requests"): self._delete_requests,
            ("POST", "/_fake/reset"): self._reset_all,
        }
        try:
            # The body is always drained so that keep-alive framing stays intact.
            raw = self._read_body()
            handler = routes.get((method, path))
            if handler is None:
                message = f"Invalid URL ({method} {path})"
                self._send_json(
                    404, error_envelope(404, request_id, message=message, code=""), request_id
                )
                return
            handler(request_id, raw)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Skip optional trailers up to the blank line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length > 0 else b""

    # -- plain responses -----------------------------------------------------------

    def _common_headers(self, request_id: str) -> None:
        self.send_header("X-Oneapi-Request-Id", request_id)
        self.send_header("X-New-Api-Version", NEW_API_VERSION)

    def _send_json(self, status: int, value: Any, request_id: str) -> None:
        data = _json_bytes(value)
        self.send_response(status)
        self._common_headers(request_id)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, request_id: str, message: str | None = None) -> None:
        self._send_json(status, error_envelope(status, request_id, message=message), request_id)

    def _send_no_content(self, request_id: str) -> None:
        self.send_response(204)
        self._common_headers(request_id)
        self.end_headers()

    def _reset_connection(self) -> None:
        """Abort the TCP connection with an RST instead of an orderly FIN."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a reference to the socket; the fd only closes once both are released.
        self.rfile.close()
        sock.close()

    # -- SSE -------------------------------------------------------------------------

    def _start_sse(self, request_id: str) -> None:
        self.send_response(200)
        self._common_headers(request_id)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        # wfile is unbuffered, so each frame reaches the socket immediately.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _stream(self, frames: list[bytes], delay: float) -> bool:
        """Write frames `delay` seconds apart; False if the gateway stopped meanwhile."""
        for index, frame in enumerate(frames):
            if index and delay > 0 and not self.gateway._pause(delay):
                return False
            self._write_chunk(frame)
        return True

    # -- endpoints -----------------------------------------------------------------------

    def _auth_problem(self, *, api_key_header: bool = False) -> str | None:
        # The Anthropic surface also takes the key as x-api-key (§1).
        api_key = self.headers.get("x-api-key") if api_key_header else None
        header = self.headers.get("Authorization")
        if api_key is not None:
            token = api_key.strip()
        elif header is None:
            return "未提供令牌"
        else:
            scheme, _, token = header.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer":
                return "无效的令牌"
        if not token:
            return "无效的令牌"
        keys = self.gateway.api_keys
        valid = token.startswith("sk-") if keys is None else token in keys
        return None if valid else "无效的令牌"

    def _models(self, request_id: str, raw: bytes) -> None:
        problem = self._auth_problem()
        if problem is not None:
            self._send_error(401, request_id, problem)
            return
        data = [m.to_json() for m in self.gateway.models.values()]
        self._send_json(200, {"object": "list", "success": True, "data": data}, request_id)

    def _accept(
        self, request_id: str, raw: bytes, *, anthropic: bool
    ) -> tuple[dict[str, Any], Fault] | None:
        """Record, authenticate and check a completion request; pick its fault (latency
        served). None when an error or a reset has been sent instead."""
        gateway = self.gateway
        raw_text = raw.decode("utf-8", errors="replace")
        try:
            parsed: Any = json.loads(raw_text) if raw_text.strip() else None
        except ValueError:
            parsed = None
        body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        gateway._record(
            ReceivedRequest(
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                received_at=self._line_at,
                request_id=request_id,
                raw=raw,
                in_flight=self._in_flight,
            )
        )
        problem = self._auth_problem(api_key_header=anthropic)
        if problem is not None:
            self._send_error(401, request_id, problem)
            return None
        if not isinstance(parsed, dict):
            self._send_error(400, request_id, "request body must be a JSON object")
            return None
        invalid = validate_messages_body(body) if anthropic else validate_chat_body(body)
        if invalid is not None:
            self._send_error(400, request_id, invalid)
            return None
        model: str = body["model"]
        if model not in gateway.models:
            self._send_error(403, request_id, f"该令牌无权访问模型 {model}")
            return None
        fault = gateway._faults.take(raw_text) or Fault()
        if fault.latency > 0 and not gateway._pause(fault.latency):
            self._reset_connection()
            return None
        return body, fault

    _in_flight = 0

    def _chat(self, request_id: str, raw: bytes) -> None:
        self._in_flight = self.gateway._call_started()
        try:
            accepted = self._accept(request_id, raw, anthropic=False)
            if accepted is not None:
                self._respond(request_id, *accepted)
        finally:
            self.gateway._call_ended(request_id)

    def _messages(self, request_id: str, raw: bytes) -> None:
        self._in_flight = self.gateway._call_started()
        try:
            accepted = self._accept(request_id, raw, anthropic=True)
            if accepted is not None:
                self._respond_anthropic(request_id, *accepted)
        finally:
            self.gateway._call_ended(request_id)

    def _respond_anthropic(self, request_id: str, body: dict[str, Any], fault: Fault) -> None:
        kind = fault.kind
        if kind in ("status", "drop", "non_sse"):
            self._respond(request_id, body, fault)
            return
        self._start_sse(request_id)
        if kind == "empty":
            self._end_chunked()
            return
        gateway = self.gateway
        opening, content, closing = build_events(
            body,
            mode=reply_mode(body, kind),
            reply_override=fault.reply,
            reply_words=gateway.reply_words,
            chunk_chars=gateway.chunk_chars,
            usage=gateway._anthropic_cache.account(body),
        )
        if kind in MID_STREAM_KINDS:
            # after_chunks counts content events here (block starts, deltas and stops).
            frames = [] if fault.after_chunks <= 0 else opening + content[: fault.after_chunks]
            if kind == "error_frame":
                frames.append(error_event(f"Overloaded (request id: {request_id})"))
            elif kind == "malformed":
                frames.append(_MALFORMED_FRAME)
        elif kind == "no_finish":
            frames = [*opening, *content, closing[-1]]
        else:
            frames = [*opening, *content, *closing]
        if not self._stream(frames, fault.chunk_delay) or kind == "drop_mid_stream":
            self._reset_connection()
            return
        self._end_chunked()

    def _respond(self, request_id: str, body: dict[str, Any], fault: Fault) -> None:
        kind = fault.kind
        if kind == "status":
            self._send_error(cast(int, fault.status), request_id)
            return
        if kind == "drop":
            self._reset_connection()
            return
        if kind == "non_sse":
            self._send_json(200, {"ok": True}, request_id)
            return
        self._start_sse(request_id)
        if kind == "empty":
            self._end_chunked()
            return

        plan = self._plan(body, fault)
        opening = [_sse(plan.opening)]
        content = [_sse(chunk) for chunk in plan.body]
        if kind in MID_STREAM_KINDS:
            frames = [] if fault.after_chunks <= 0 else opening + content[: fault.after_chunks]
            if kind == "error_frame":
                message = f"upstream error (request id: {request_id})"
                error = {"code": "", "message": message, "type": "upstream_error", "param": ""}
                frames.append(_sse({"error": error}))
            elif kind == "malformed":
                frames += [_MALFORMED_FRAME, _DONE_FRAME]
        elif kind == "no_finish":
            frames = [*opening, *content, _DONE_FRAME]
        else:
            tail = [_sse(plan.finish)]
            if plan.trailer is not None:
                tail.append(_sse(plan.trailer))
            frames = [*opening, *content, *tail, _DONE_FRAME]

        if not self._stream(frames, fault.chunk_delay) or kind == "drop_mid_stream":
            self._reset_connection()
            return
        self._end_chunked()

    def _plan(self, body: dict[str, Any], fault: Fault) -> ReplyPlan:
        gateway = self.gateway
        model: str = body["model"]
        prompt_tokens, seen = gateway._cache.account(model, body.get("tools"), body["messages"])
        granularity = gateway.cache_granularity
        cached = 0 if model in NO_CACHE_MODELS else seen // granularity * granularity
        mode = cast(ReplyMode, fault.kind if fault.kind in _REPLY_MODES else "text")
        if fault.kind in ("normal", "usage_on_finish") and wants_tool(body):
            mode = openai_tool_mode(model)
        placement: UsagePlacement = (
            "finish" if fault.kind == "usage_on_finish" else gateway.usage_placement
        )
        return build_plan(
            body,
            mode=mode,
            reply_override=fault.reply,
            reply_words=gateway.reply_words,
            chunk_chars=gateway.chunk_chars,
            usage_placement=placement,
            output_tokens_zero=gateway.output_tokens_zero,
            prompt_tokens=prompt_tokens,
            cached_tokens=min(cached, prompt_tokens),
            usage_override=fault.usage,
        )

    # -- admin endpoints (no auth: they exist for a fake started as a subprocess) -------------

    def _health(self, request_id: str, raw: bytes) -> None:
        self._send_json(200, {"ok": True}, request_id)

    def _get_faults(self, request_id: str, raw: bytes) -> None:
        faults = [f.to_dict() for f in self.gateway.pending_faults]
        self._send_json(200, faults, request_id)

    def _post_faults(self, request_id: str, raw: bytes) -> None:
        try:
            data = json.loads(raw or b"null")
            items = data if isinstance(data, list) else [data]
            faults = [Fault.from_dict(item) for item in items]
        except (ValueError, TypeError) as exc:
            self._send_error(400, request_id, f"invalid fault list: {exc}")
            return
        self.gateway.add_faults(*faults)
        self._send_no_content(request_id)

    def _delete_faults(self, request_id: str, raw: bytes) -> None:
        self.gateway._faults.clear()
        self._send_no_content(request_id)

    def _get_requests(self, request_id: str, raw: bytes) -> None:
        self._send_json(200, [r.to_json() for r in self.gateway.requests], request_id)

    def _delete_requests(self, request_id: str, raw: bytes) -> None:
        self.gateway._clear_requests()
        self._send_no_content(request_id)

    def _reset_all(self, request_id: str, raw: bytes) -> None:
        self.gateway.reset()
        self._send_no_content(request_id)


class FakeGateway:
    """An in-process ezrouter stand-in serving the OpenAI surface over real HTTP."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_keys: Iterable[str] | None = None,
        models: ModelsArg = DEFAULT_MODELS,
        chunk_chars: int = 8,
        usage_placement: UsagePlacement = "separate",
        output_tokens_zero: bool = True,
        cache_granularity: int = 1,
        reply_words: int | None = None,
    ) -> None:
        if usage_placement not in ("separate", "finish"):
            raise ValueError("usage_placement must be 'separate' or 'finish'")
        if chunk_chars < 1:
            raise ValueError("chunk_chars must be >= 1")
        if cache_granularity < 1:
            raise ValueError("cache_granularity must be >= 1")
        if reply_words is not None and reply_words < 0:
            raise ValueError("reply_words must be >= 0")
        self.host = host
        self.api_keys: frozenset[str] | None = None if api_keys is None else frozenset(api_keys)
        self.models: dict[str, ModelInfo] = normalize_models(models)
        self.chunk_chars = chunk_chars
        self.usage_placement: UsagePlacement = usage_placement
        self.output_tokens_zero = output_tokens_zero
        self.cache_granularity = cache_granularity
        self.reply_words = reply_words
        self._requested_port = port
        self._faults = FaultQueue()
        self._cache = PromptCache()
        self._anthropic_cache = AnthropicCache()
        self._lock = threading.Lock()
        # Notified at each request recorded: tests wait on it (``wait_for_request``).
        self._recorded = threading.Condition(self._lock)
        self._requests: list[ReceivedRequest] = []
        self._calls_in_flight = 0
        self._ended_at: dict[str, float] = {}
        self._connections: set[socket.socket] = set()
        self.connections_accepted = 0  # TCP connections ever opened to it (keep-alive checks)
        self._stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("fake gateway already started")
        self._stop_event.clear()
        server = _Server((self.host, self._requested_port), self)
        self._server = server
        # A short poll interval keeps stop() prompt.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-ezrouter:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut in-flight connections and release the port."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stop_event.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        """True once stop() has begun."""
        return self._stop_event.is_set()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._server is None:
            raise RuntimeError("fake gateway not started")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        """Scheme, host and port, e.g. for the `/_fake/...` admin endpoints."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-surface base URL to hand to the openai SDK."""
        return f"{self.origin}/v1"

    @property
    def anthropic_url(self) -> str:
        """The Anthropic-surface root to hand to the anthropic SDK (it appends /v1/messages)."""
        return f"{self.origin}/anthropic"

    # -- scripting and inspection -------------------------------------------------------

    def add_faults(self, *faults: Fault) -> None:
        """Queue faults (FIFO) for upcoming chat requests."""
        self._faults.add(*faults)

    @property
    def pending_faults(self) -> list[Fault]:
        """Copies of the faults not yet used up."""
        return self._faults.pending()

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A snapshot of the chat-completion requests received so far."""
        with self._lock:
            return list(self._requests)

    def wait_for_request(self, text: str, timeout: float = 15.0) -> ReceivedRequest:
        """The first chat request received whose body holds ``text``, waiting up to
        ``timeout`` seconds for it; ``TimeoutError`` if none came."""

        def found() -> ReceivedRequest | None:
            return next((r for r in self._requests if text in str(r.body)), None)

        with self._recorded:
            request = self._recorded.wait_for(found, timeout)
        if request is None:
            raise TimeoutError(f"no request holding {text!r} within {timeout}s")
        return request

    def ended_at(self, request_id: str) -> float | None:
        """When the fake finished serving a completion call (None: not yet)."""
        with self._lock:
            return self._ended_at.get(request_id)

    def reset(self) -> None:
        """Clear pending faults, recorded requests and the simulated prompt cache."""
        self._faults.clear()
        self._clear_requests()
        self._cache.clear()
        self._anthropic_cache.clear()

    # -- internals used by the handler ------------------------------------------------------

    def _record(self, request: ReceivedRequest) -> None:
        with self._recorded:
            self._requests.append(request)
            self._recorded.notify_all()

    def _clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._ended_at.clear()

    def _call_started(self) -> int:
        with self._lock:
            self._calls_in_flight += 1
            return self._calls_in_flight

    def _call_ended(self, request_id: str) -> None:
        with self._lock:
            self._calls_in_flight -= 1
            self._ended_at[request_id] = time.time()

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
            self.connections_accepted += 1

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless stop() interrupts; True if the full pause elapsed."""
        return not self._stop_event.wait(seconds)


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    api_keys: Iterable[str] | None = None,
    models: ModelsArg = DEFAULT_MODELS,
    chunk_chars: int = 8,
    usage_placement: UsagePlacement = "separate",
    output_tokens_zero: bool = True,
    cache_granularity: int = 1,
    reply_words: int | None = None,
) -> None:
    """Run a fake gateway in the foreground until Ctrl-C or SIGTERM."""
    gateway = FakeGateway(
        host,
        port,
        api_keys=api_keys,
        models=models,
        chunk_chars=chunk_chars,
        usage_placement=usage_placement,
        output_tokens_zero=output_tokens_zero,
        cache_granularity=cache_granularity,
        reply_words=reply_words,
    ).start()
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous: dict[int, Any] = {}
    # signal.signal() is only allowed from the main thread.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    print(f"fake ezrouter listening on {gateway.url}", flush=True)
    try:
        # A bounded wait keeps the loop responsive to signals on every platform.
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
        for restored, handler in previous.items():
            signal.signal(restored, handler)
