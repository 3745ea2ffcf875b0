"""The connections a worker process keeps to webhook receivers between attempts.

One httpx client per address policy and keep-alive (a worker has one of each), made on
first use: its pool keeps up to ``KEPT_CONNECTIONS`` idle connections, each to an address
the policy checked when it was opened (``PinnedTransport``), reused for the same scheme,
host and port only.
"""

from __future__ import annotations

import os
import threading
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from service.webhooks.ssrf import AddressPolicy
from service.webhooks.transport import PinnedTransport

# Idle connections a worker process keeps to receivers, all receivers together.
KEPT_CONNECTIONS = 32


class KeptClients:
    """This process's clients that keep connections to receivers, one per address policy
    and keep-alive, made on first use; ``close`` closes them (the worker, at shutdown)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[object, ...], httpx.Client] = {}

    def get(self, policy: AddressPolicy, keepalive_s: float) -> httpx.Client:
        # The process id too: a client made before a fork is its parent's sockets.
        key = (os.getpid(), policy.allowed, keepalive_s)
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    transport = PinnedTransport(
                        policy, keepalive_s=keepalive_s, kept=KEPT_CONNECTIONS
                    )
                    client = new_client(transport)
                    self._clients[key] = client
        return client

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()


kept_clients = KeptClients()


def new_client(transport: PinnedTransport) -> httpx.Client:
    """A client that follows no redirect, reads nothing from the environment and keeps no
    cookie: a kept client serves every tenant's receivers, and a cookie one receiver set
    must not go to another."""
    return httpx.Client(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )
