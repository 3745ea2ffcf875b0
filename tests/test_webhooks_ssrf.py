"""The address policy and the pinned transport that enforces it on the real connection."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from pathlib import Path

import httpx
import pytest

from service.webhooks.retry import AttemptResult
from service.webhooks.sender import post_event
from service.webhooks.ssrf import AddressPolicy
from service.webhooks.testing import Answer, Receiver
from service.webhooks.transport import PinnedTransport
from tests.cyclic_garbage import left_in_cycles

LOOPBACK_ALLOWED = AddressPolicy([ip_network("127.0.0.0/8")])

POLICY_TABLE = [
    # public unicast
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None),
    # IPv4
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("10.1.2.3", "a private (RFC 1918) address"),
    ("172.16.0.1", "a private (RFC 1918) address"),
    ("172.31.255.255", "a private (RFC 1918) address"),
    ("192.168.1.1", "a private (RFC 1918) address"),
    ("169.254.169.254", "the cloud metadata address"),
    ("169.254.1.1", "a link-local address"),
    ("100.64.0.1", "a shared (CGNAT) address"),
    ("100.127.255.255", "a shared (CGNAT) address"),
    ("0.0.0.0", "an unspecified address"),  # noqa: S104 - an address under test, not a bind
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("192.0.0.8", "a reserved address"),
    ("192.0.2.1", "a reserved address"),  # documentation
    ("198.18.0.1", "a reserved address"),  # benchmarking
    # IPv6
    ("::1", "a loopback address"),
    ("::", "an unspecified address"),
    ("fc00::1", "a unique-local address"),
    ("fd12:3456::1", "a unique-local address"),
    ("fd00:ec2::254", "the cloud metadata address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("fec0::1", "a site-local address"),
    ("ff02::1", "a multicast address"),
    ("2001:db8::1", "a reserved address"),
    # IPv4 inside IPv6
    ("::ffff:127.0.0.1", "an IPv6 form of 127.0.0.1, a loopback address"),
    ("::ffff:10.0.0.1", "an IPv6 form of 10.0.0.1, a private (RFC 1918) address"),
    ("::ffff:169.254.169.254", "an IPv6 form of 169.254.169.254, the cloud metadata address"),
    ("::ffff:100.64.0.1", "an IPv6 form of 100.64.0.1, a shared (CGNAT) address"),
    ("::127.0.0.1", "an IPv6 form of 127.0.0.1, a loopback address"),  # IPv4-compatible
    ("64:ff9b::a9fe:a9fe", "an IPv6 form of 169.254.169.254, the cloud metadata address"),  # NAT64
    ("2002:c0a8:0101::1", "an IPv6 form of 192.168.1.1, a private (RFC 1918) address"),  # 6to4
]


@pytest.mark.parametrize(("address", "reason"), POLICY_TABLE, ids=[a for a, _ in POLICY_TABLE])
def test_default_policy(address: str, reason: str | None) -> None:
    """Only public unicast addresses pass the default policy; the reason names the range."""
    assert AddressPolicy().refusal(address) == reason


ALLOWED_TABLE = [
    ("127.0.0.1", ["127.0.0.0/8"], None),
    ("::ffff:127.0.0.1", ["127.0.0.0/8"], None),
    ("::1", ["127.0.0.0/8"], "a loopback address"),
    ("::1", ["::1/128"], None),
    ("10.0.0.7", ["10.0.0.0/24"], None),
    ("10.0.1.7", ["10.0.0.0/24"], "a private (RFC 1918) address"),
    ("169.254.169.254", ["127.0.0.0/8", "10.0.0.0/8"], "the cloud metadata address"),
    ("fd00::5", ["fd00::/8"], None),
]


@pytest.mark.parametrize(("address", "networks", "reason"), ALLOWED_TABLE)
def test_allowed_networks_open_exactly_their_ranges(
    address: str, networks: list[str], reason: str | None
) -> None:
    """WEBHOOK_ALLOWED_NETWORKS lets its ranges (and their mapped forms) through, no more."""
    policy = AddressPolicy([ip_network(n) for n in networks])
    assert policy.refusal(address) == reason


# --- the transport -------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver([]) as running:
        yield running


class Resolver:
    """A scripted DNS: each call returns the next answer; calls are counted."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def send(url: str, policy: AddressPolicy, resolve: Resolver, timeout: float = 2.0) -> AttemptResult:
    return post_event(
        url, "{}", {}, policy=policy, timeout=timeout, max_response_bytes=64, resolve=resolve
    )


def test_name_resolving_to_loopback_is_refused_without_connecting(receiver: Receiver) -> None:
    """A host name whose address is loopback is refused before any connection."""
    resolve = Resolver(["127.0.0.1"])
    result = send(f"http://hooks.example.com:{receiver.port}/x1", AddressPolicy(), resolve)
    assert result.refused
    assert result.error == ("refused: hooks.example.com resolves to 127.0.0.1, a loopback address")
    assert receiver.received("/x1") == []


def test_one_refused_address_among_several_refuses_the_name(receiver: Receiver) -> None:
    """A name resolving to a public and a private address is refused outright."""
    resolve = Resolver(["93.184.216.34", "10.0.0.8"])
    result = send("http://mixed.example.com/", AddressPolicy(), resolve)
    assert result.refused
    assert "10.0.0.8, a private (RFC 1918) address" in (result.error or "")


def test_connection_is_pinned_to_the_checked_address(receiver: Receiver) -> None:
    """The name is resolved once and the socket goes to that address; Host keeps the name."""
    # A rebinding DNS would answer with a refused address on a second lookup.
    resolve = Resolver(["127.0.0.1"], ["169.254.169.254"])
    url = f"http://receiver.test:{receiver.port}/pinned"
    result = send(url, LOOPBACK_ALLOWED, resolve)
    assert result.status_code == 200
    assert resolve.calls == ["receiver.test"]
    (got,) = receiver.received("/pinned")
    assert got.headers["host"] == f"receiver.test:{receiver.port}"


def test_literal_address_urls_are_checked_too(receiver: Receiver) -> None:
    """A URL naming an IP literal is checked like a resolved name (no DNS needed)."""
    from service.webhooks.transport import resolve_host

    for url in (f"http://127.0.0.1:{receiver.port}/lit", f"http://[::1]:{receiver.port}/lit"):
        result = post_event(
            url,
            "{}",
            {},
            policy=AddressPolicy(),
            timeout=2,
            max_response_bytes=0,
            resolve=resolve_host,
        )
        assert result.refused and "loopback" in (result.error or "")
    assert receiver.received("/lit") == []


def test_unresolvable_name_is_a_retryable_connection_error() -> None:
    """A name that does not resolve is a connection error, retried like any other."""
    from service.webhooks.transport import resolve_host

    result = post_event(
        "http://no-such-host.invalid/",
        "{}",
        {},
        policy=AddressPolicy(),
        timeout=2,
        max_response_bytes=0,
        resolve=resolve_host,
    )
    assert not result.refused
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("ConnectError: cannot resolve")


def test_a_trickling_answer_is_cut_at_the_attempt_deadline() -> None:
    """An answer dribbling in under the per-read timeout still ends at the total deadline."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(30):
                time.sleep(0.2)
                try:
                    conn.sendall(b"x-slow: 1\r\n")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    result = send(f"http://slow.test:{port}/", LOOPBACK_ALLOWED, Resolver(["127.0.0.1"]), 1.0)
    elapsed = time.monotonic() - started
    server.close()
    assert result.status_code is None
    assert (result.error or "").startswith("timeout")
    assert 0.9 <= elapsed < 3.0, "cut at the 1 s deadline, long before the 6 s trickle ends"


# --- TLS keeps the host name -----------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An HTTPS server whose self-signed certificate names receiver.test only."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=receiver.test",
            "-addext",
            "subjectAltName=DNS:receiver.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert
    server.shutdown()
    server.server_close()


def tls_post(host: str, port: int, cert: Path) -> httpx.Response:
    transport = PinnedTransport(
        LOOPBACK_ALLOWED,
        timeout=3,
        resolve=Resolver(["127.0.0.1"]),
        ssl_context=ssl.create_default_context(cafile=str(cert)),
    )
    with httpx.Client(transport=transport) as client:
        return client.post(f"https://{host}:{port}/", content=b"{}")


def test_tls_checks_the_certificate_against_the_name_not_the_address(
    tls_server: tuple[int, Path],
) -> None:
    """Connecting to the pinned 127.0.0.1 still sends SNI and verifies receiver.test."""
    port, cert = tls_server
    assert tls_post("receiver.test", port, cert).status_code == 204
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        tls_post("impostor.test", port, cert)


def test_a_slow_resolver_cannot_stretch_the_attempt() -> None:
    """Name resolution counts against the attempt's deadline: a stalled resolver times out."""
    import time

    import httpcore

    from service.webhooks.ssrf import AddressPolicy
    from service.webhooks.transport import GuardedBackend

    def stalled(host: str, port: int) -> list[str]:
        time.sleep(3)
        return ["93.184.216.34"]

    backend = GuardedBackend(AddressPolicy(()), deadline=time.monotonic() + 0.3, resolve=stalled)
    start = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout, match="resolving"):
        backend.connect_tcp("slow.example", 443)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    "answer", [Answer(204), Answer(500, body=b"receiver broke")], ids=["delivered", "error_answer"]
)
def test_an_attempt_leaves_nothing_for_the_cyclic_collector(
    receiver: Receiver, answer: Answer
) -> None:
    """A worker collects its young objects after 50,000 of them, and each of those runs
    holds every thread for tens of milliseconds: an attempt's response, its connection
    pool and its socket must be freed when the attempt ends, not left in a reference
    cycle (httpx binds a response and its stream to each other) for that run to find."""
    path = f"/cycles-{answer.status}"
    receiver.script(path, answer, answer)
    url = f"http://hooks.test:{receiver.port}{path}"
    send(url, LOOPBACK_ALLOWED, Resolver(["127.0.0.1"]))  # imports and caches settle first
    result, left = left_in_cycles(lambda: send(url, LOOPBACK_ALLOWED, Resolver(["127.0.0.1"])))
    assert result.status_code == answer.status
    assert left == []
