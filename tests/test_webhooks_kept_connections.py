"""Connections kept to receivers between attempts: reused within their keep-alive, each
still to an address the policy checked, each attempt within its own deadline, and a
connection the receiver closed under a reuse replaced within the attempt."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_network

import pytest

from service.webhooks.retry import AttemptResult
from service.webhooks.sender import post_event
from service.webhooks.ssrf import AddressPolicy
from service.webhooks.testing import Answer, Receiver
from service.webhooks.transport import resolve_host
from tests.cyclic_garbage import left_in_cycles

LOOPBACK_ALLOWED = AddressPolicy([ip_network("127.0.0.0/8")])


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver([]) as running:
        yield running


def send(
    url: str,
    *,
    # Kept well past any stall of a slow host between two sends (the idle test gives less).
    keepalive_s: float = 30.0,
    timeout: float = 5.0,
    policy: AddressPolicy = LOOPBACK_ALLOWED,
) -> AttemptResult:
    return post_event(
        url,
        "{}",
        {},
        policy=policy,
        timeout=timeout,
        max_response_bytes=64,
        resolve=resolve_host,
        keepalive_s=keepalive_s,
    )


def test_attempts_to_one_receiver_share_a_kept_connection(receiver: Receiver) -> None:
    """Attempts in a row to one receiver go on one connection; without keep-alive each
    opens its own."""
    for _ in range(3):
        assert send(receiver.url("/kept")).status_code == 200
    kept = {r.peer_port for r in receiver.received("/kept")}
    assert len(kept) == 1, kept
    for _ in range(3):
        assert send(receiver.url("/one-each"), keepalive_s=0).status_code == 200
    each = {r.peer_port for r in receiver.received("/one-each")}
    assert len(each) == 3 and not each & kept


def test_a_connection_idle_past_its_keepalive_is_not_reused(receiver: Receiver) -> None:
    assert send(receiver.url("/idle"), keepalive_s=0.1).status_code == 200
    time.sleep(0.3)  # the keep-alive itself is the behaviour under test: let it pass
    assert send(receiver.url("/idle"), keepalive_s=0.1).status_code == 200
    first, second = receiver.received("/idle")
    assert first.peer_port != second.peer_port


def test_a_kept_connection_does_not_carry_an_attempt_past_another_policy(
    receiver: Receiver,
) -> None:
    """A connection kept for attempts allowed to reach loopback is not one an attempt
    under the default policy may use: that attempt is refused before any connection."""
    assert send(receiver.url("/policy")).status_code == 200
    refused = send(receiver.url("/policy"), policy=AddressPolicy())
    assert refused.refused and "loopback" in (refused.error or "")
    assert len(receiver.received("/policy")) == 1


class ScriptedServer:
    """A raw HTTP/1.1 server: ``answer(connection_number, request_number)`` says what each
    request on each connection gets: True a 200 that keeps the connection, False the
    connection closed without an answer, bytes those bytes and then the connection
    closed, a float seconds between header lines sent without end (a receiver that
    trickles)."""

    def __init__(self, answer: Callable[[int, int], bool | bytes | float]) -> None:
        self._answer = answer
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self.port = self._server.getsockname()[1]
        self.requests: list[tuple[int, int]] = []
        self._connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._connections += 1
            number = self._connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            served = 0
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                buffer = rest[length:]
                served += 1
                self.requests.append((number, served))
                answer = self._answer(number, served)
                if answer is True:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                elif answer is False:
                    return
                elif isinstance(answer, bytes):
                    conn.sendall(answer)
                    return
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    for _ in range(30):
                        time.sleep(float(answer))
                        try:
                            conn.sendall(b"x-slow: 1\r\n")
                        except OSError:
                            return
                    return

    def close(self) -> None:
        self._server.close()


def test_a_kept_connection_closed_under_its_reuse_is_replaced_within_the_attempt() -> None:
    """The receiver drops the kept connection as the second attempt's request arrives:
    that attempt sends it again on a new connection and is delivered, one attempt."""
    server = ScriptedServer(lambda connection, request: not (connection == 1 and request == 2))
    try:
        url = f"http://127.0.0.1:{server.port}/dropped"
        assert send(url).status_code == 200
        second = send(url)
        assert (second.status_code, second.error) == (200, None)
        assert server.requests == [(1, 1), (1, 2), (2, 1)]
    finally:
        server.close()


def test_a_kept_connection_closed_once_the_answer_began_is_not_sent_again() -> None:
    """The receiver began to answer on the kept connection (it had the request), then
    closed it: the attempt fails as it is, the request is not sent a second time."""
    server = ScriptedServer(
        lambda connection, request: True if request == 1 else b"HTTP/1.1 500 Internal Ser"
    )
    try:
        url = f"http://127.0.0.1:{server.port}/half"
        assert send(url).status_code == 200
        second = send(url)
        assert second.status_code is None
        assert (second.error or "").startswith("RemoteProtocolError"), second.error
        assert server.requests == [(1, 1), (1, 2)]
    finally:
        server.close()


def test_a_cookie_one_receiver_sets_goes_to_no_later_attempt(receiver: Receiver) -> None:
    """A kept client serves every tenant's receivers: it keeps no cookie."""
    receiver.script("/tenant-a", Answer(200, headers={"set-cookie": "sid=a-secret; Path=/"}))
    assert send(receiver.url("/tenant-a")).status_code == 200
    assert send(receiver.url("/tenant-b")).status_code == 200
    (later,) = receiver.received("/tenant-b")
    assert later.peer_port == receiver.received("/tenant-a")[0].peer_port
    assert "cookie" not in later.headers


def test_a_new_connection_closed_without_an_answer_is_not_sent_again() -> None:
    """Only a kept connection is replaced: a receiver that drops the connection an attempt
    opened gets the request once, and the attempt fails (to be retried on schedule)."""
    server = ScriptedServer(lambda connection, request: False)
    try:
        result = send(f"http://127.0.0.1:{server.port}/drops")
        assert result.status_code is None
        assert (result.error or "").startswith("RemoteProtocolError")
        assert server.requests == [(1, 1)]
    finally:
        server.close()


def test_a_kept_connection_takes_the_deadline_of_the_attempt_using_it() -> None:
    """The connection was opened by an attempt with a long deadline; the attempt that
    reuses it, against a receiver trickling its answer, still ends at its own."""
    server = ScriptedServer(lambda connection, request: True if request == 1 else 0.2)
    try:
        url = f"http://127.0.0.1:{server.port}/trickle"
        assert send(url, timeout=30).status_code == 200
        started = time.monotonic()
        result = send(url, timeout=1.0)
        elapsed = time.monotonic() - started
        assert server.requests == [(1, 1), (1, 2)], "the second attempt reused the connection"
        assert result.status_code is None and (result.error or "").startswith("timeout")
        assert 0.9 <= elapsed < 3.0, "cut at its 1 s deadline, long before the 6 s trickle"
    finally:
        server.close()


def test_a_receiver_answer_on_a_kept_connection_is_read_as_on_a_new_one(
    receiver: Receiver,
) -> None:
    receiver.script(
        "/answers", Answer(200), Answer(503, headers={"retry-after": "7"}, body=b"busy")
    )
    assert send(receiver.url("/answers")).status_code == 200
    second = send(receiver.url("/answers"))
    assert (second.status_code, second.error, second.retry_after) == (503, "HTTP 503: busy", 7.0)
    first, again = receiver.received("/answers")
    assert first.peer_port == again.peer_port


@pytest.mark.parametrize(
    "answer", [Answer(204), Answer(500, body=b"receiver broke")], ids=["delivered", "error_answer"]
)
def test_an_attempt_on_a_kept_connection_leaves_nothing_for_the_cyclic_collector(
    receiver: Receiver, answer: Answer
) -> None:
    """As an attempt on a connection of its own (tests/test_webhooks_ssrf.py): its
    response is freed when it ends, and the kept connection is the pool's, not garbage."""
    path = f"/kept-cycles-{answer.status}"
    receiver.script(path, answer, answer)
    send(receiver.url(path))  # opens the connection; imports and caches settle
    result, left = left_in_cycles(lambda: send(receiver.url(path)))
    assert result.status_code == answer.status
    first, second = receiver.received(path)
    assert first.peer_port == second.peer_port, "the second attempt reused the connection"
    assert left == []


def test_a_receiver_gone_away_is_not_reached_through_a_kept_connection() -> None:
    """A kept connection to a receiver that has stopped is not used: the attempt after it
    finds nobody listening, as it would without keep-alive."""
    with Receiver([]) as gone:
        url = gone.url("/gone")
        assert send(url).status_code == 200
    result = send(url)
    assert result.status_code is None
    assert (result.error or "").startswith("ConnectError"), result.error
    assert len(gone.received("/gone")) == 1
