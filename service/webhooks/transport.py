"""An httpx transport that connects only to checked addresses, within one deadline.

The host name is resolved once, every address it resolves to is checked against the
``AddressPolicy``, and the socket is opened to a checked address: nothing is resolved
again after the check, so DNS rebinding cannot slip a refused address in. The URL is
left alone, so the ``Host`` header, TLS SNI and certificate checks still use the name.
Only public httpx and httpcore interfaces are used (a custom httpcore network backend).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpcore
import httpx

from service.errors import WebhookTargetRefused
from service.webhooks.ssrf import AddressPolicy

Resolver = Callable[[str, int], list[str]]

# Most specific first: the first httpcore class an exception is an instance of wins.
_TRANSLATIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for source, target in _TRANSLATIONS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


@dataclass(slots=True)
class AttemptScope:
    """The webhook attempt a thread is making: when it must end, whether it opened a
    connection (else it was sent on one kept from an earlier attempt) and whether the
    receiver answered anything."""

    deadline: float
    opened: bool = False
    # Whether any byte of an answer arrived on a connection in this attempt.
    answered: bool = False


_attempt: contextvars.ContextVar[AttemptScope | None] = contextvars.ContextVar(
    "ezq_webhook_attempt", default=None
)


@contextlib.contextmanager
def attempt_within(timeout: float) -> Iterator[AttemptScope]:
    """Make this thread's next requests one attempt that ends ``timeout`` seconds from now.

    A kept connection outlives the attempt that opened it, so its socket reads and writes
    take the deadline of the attempt using it now, from here."""
    scope = AttemptScope(time.monotonic() + timeout)
    token = _attempt.set(scope)
    try:
        yield scope
    finally:
        _attempt.reset(token)


def _current_deadline() -> float | None:
    scope = _attempt.get()
    return scope.deadline if scope is not None else None


@cache
def _resolver_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="ezq-dns")


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


Deadline = Callable[[], float | None]


class _DeadlineStream(httpcore.NetworkStream):
    """Shortens every socket timeout so that the whole attempt ends by its deadline (that
    of the attempt using the connection now: ``deadline()``; None, no attempt's)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def _timeout(self, timeout: float | None, error: type[Exception]) -> float | None:
        deadline = self._deadline()
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise error("the webhook attempt's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, self._timeout(timeout, httpcore.ReadTimeout))
        if data:
            scope = _attempt.get()
            if scope is not None:
                scope.answered = True
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._timeout(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        limit = self._timeout(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, limit), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks every address, then connects to a checked one.

    Within ``deadline`` when one is given, else within the deadline of the attempt the
    connecting thread is making (``attempt_within``)."""

    def __init__(
        self, policy: AddressPolicy, *, deadline: float | None = None, resolve: Resolver
    ) -> None:
        self._policy = policy
        self._fixed_deadline = deadline
        self._resolve = resolve
        self._sockets = httpcore.SyncBackend()

    def _deadline(self) -> float | None:
        return self._fixed_deadline if self._fixed_deadline is not None else _current_deadline()

    def _left(self) -> float | None:
        deadline = self._deadline()
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("the webhook attempt's deadline passed")
        return left

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._resolve_in_time(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        # One refused address refuses the name: its owner controls which one we would get.
        for address in addresses:
            reason = self._policy.refusal(address)
            if reason is not None:
                raise WebhookTargetRefused(host, address, reason)
        error: Exception = httpcore.ConnectError(f"cannot connect to {host}")
        for address in addresses:
            left = self._left()
            if left is not None:
                timeout = left if timeout is None else min(timeout, left)
            try:
                stream = self._sockets.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            scope = _attempt.get()
            if scope is not None:
                scope.opened = True
            return _DeadlineStream(stream, self._deadline)
        raise error

    def _resolve_in_time(self, host: str, port: int) -> list[str]:
        # getaddrinfo has no timeout of its own; a slow resolver must not stretch the
        # attempt past its deadline (and the delivery's lease), so wait for it in a thread.
        left = self._left()
        future = _resolver_pool().submit(self._resolve, host, port)
        try:
            return future.result(timeout=left)
        except concurrent.futures.TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from None

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over a unix socket")


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        with _translated():
            yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


@cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes milliseconds; a context is safe to share between threads.
    return httpx.create_ssl_context()


class PinnedTransport(httpx.BaseTransport):
    """HTTP/1.1, no retries, connections checked by the policy.

    Each request is one attempt, which ends ``timeout`` seconds after the transport was
    made or, without ``timeout``, at the deadline of the attempt the sending thread is
    making (``attempt_within``). With ``kept``, up to that many idle connections are kept
    for ``keepalive_s`` seconds each for later attempts: a connection stays to the address
    checked when it was opened, and is reused for the same scheme, host and port only."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        timeout: float | None = None,
        resolve: Resolver = resolve_host,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_s: float = 0.0,
        kept: int = 0,
    ) -> None:
        deadline = time.monotonic() + timeout if timeout is not None else None
        backend = GuardedBackend(policy, deadline=deadline, resolve=resolve)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or _ssl_context(),
            network_backend=backend,
            # One connection at a time for an attempt of its own; as many as the threads
            # attempting at once for a kept pool (a limit would queue them).
            max_connections=None if kept else 1,
            max_keepalive_connections=kept,
            keepalive_expiry=keepalive_s if kept else None,
            http1=True,
            http2=False,
            retries=0,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _translated():
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
