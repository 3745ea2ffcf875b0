"""A real webhook receiver for tests and local trials: verifies, records and answers.

Each request is checked with ``standardwebhooks`` against every secret given, and its
answer is taken from a per-path script (default 200), so a test can say "500 twice, then
200" or "sleep past the timeout" and then read exactly what arrived.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True, slots=True)
class Answer:
    """How the receiver answers one request."""

    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Received:
    """One request as it arrived, and which secrets (by index) verified it."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified_by: tuple[int, ...]
    event: Any
    at: float
    # The sender's port: one per connection, so requests on one kept connection share it.
    peer_port: int = 0

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class Receiver:
    """A threaded HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(self, secrets: Sequence[str], host: str = "127.0.0.1", port: int = 0) -> None:
        self._hooks = [Webhook(s) for s in secrets]
        self._lock = threading.Condition()
        self._scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self._received: list[Received] = []
        self._connections: set[socket.socket] = set()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with ``answers`` in order, then 200."""
        with self._lock:
            self._scripts[path].extend(answers)

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 15.0
    ) -> list[Received]:
        """Block until ``count`` requests reached ``path``; return them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self._received if path is None or r.path == path]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(found)} of {count} webhooks reached {path}")
                self._lock.wait(left)

    def _verify(self, body: bytes, headers: dict[str, str]) -> tuple[tuple[int, ...], Any]:
        verified: list[int] = []
        event: Any = None
        for index, hook in enumerate(self._hooks):
            with contextlib.suppress(WebhookVerificationError, ValueError):
                event = hook.verify(body, headers)
                verified.append(index)
        return tuple(verified), event

    def _record(self, path: str, headers: dict[str, str], body: bytes, peer_port: int) -> Answer:
        verified, event = self._verify(body, headers)
        with self._lock:
            self._received.append(
                Received(path, headers, body, verified, event, time.monotonic(), peer_port)
            )
            self._lock.notify_all()
            script = self._scripts[path]
            return script.popleft() if script else Answer()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # Keeps a connection open for the next request, as receivers do.
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = receiver._record(self.path, headers, body, self.client_address[1])
                time.sleep(answer.delay)
                with contextlib.suppress(OSError):  # the client may have timed out
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close the connections kept open, as a server that goes away
        does (a sender's kept connection then sees it closed)."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
