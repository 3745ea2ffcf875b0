"""One webhook POST on a kept connection against one on a connection of its own.

Baseline: ``post_event`` as each attempt made it before connections were kept
(``keepalive_s=0``): resolve the host, check the address, connect, (for https) the TLS
handshake, POST, read the answer, close. Ours: the same POST on a connection kept from the
attempt before (``EZQ_WEBHOOK_KEEPALIVE_S``, 1 s by default). Both sign nothing and touch
no database: this is the HTTP part of an attempt only, to a receiver in a process of its
own answering 204 over HTTP/1.1, plain and over TLS (a self-signed certificate for
127.0.0.1, trusted through ``SSL_CERT_FILE``). Alternating rounds; printed: the medians
over rounds of this process's CPU and the wall time per attempt, and their ratios.

    python -m benchmarks.webhook_connections [--attempts 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from ipaddress import ip_network
from pathlib import Path

from benchmarks.webhook_delivery import receiver


def certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("openssl is needed for the TLS receiver's certificate")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def run_round(url: str, attempts: int, keepalive_s: float) -> tuple[float, float]:
    """CPU and wall microseconds per attempt."""
    from service.webhooks.sender import post_event
    from service.webhooks.ssrf import AddressPolicy

    policy = AddressPolicy([ip_network("127.0.0.0/8")])
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(attempts):
        result = post_event(
            url, '{"type":"job.succeeded"}', {}, policy=policy, timeout=5.0,
            max_response_bytes=4096, keepalive_s=keepalive_s,
        )  # fmt: skip
        assert result.status_code == 204, result
    return (
        (time.process_time() - cpu) / attempts * 1e6,
        (time.perf_counter() - wall) / attempts * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from service import constants as c

    print(f"\nOne webhook POST, {args.attempts} attempts x {args.rounds} rounds, per attempt")
    print(f"  {'':8} {'':26} {'cpu us':>6} {'wall us':>8}")
    with tempfile.TemporaryDirectory() as folder:
        tls = certificate(Path(folder))
        os.environ["SSL_CERT_FILE"] = str(tls[0])
        for scheme, served in (("http", None), ("https", tls)):
            with receiver(served) as url:
                rounds: dict[float, list[tuple[float, float]]] = {
                    0.0: [],
                    c.WEBHOOK_KEEPALIVE_S: [],
                }
                for keepalive_s in rounds:
                    run_round(url, 20, keepalive_s)  # imports, contexts, the first connection
                for _ in range(args.rounds):
                    for keepalive_s, runs in rounds.items():
                        runs.append(run_round(url, args.attempts, keepalive_s))
            medians = {
                k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
                for k, v in rounds.items()
            }
            for keepalive_s, (cpu, wall) in medians.items():
                name = "a connection each (before)" if keepalive_s == 0 else "a kept connection"
                print(f"  {scheme:8} {name:26} {cpu:6.0f} {wall:8.0f}")
            (cpu0, wall0), (cpu1, wall1) = medians.values()
            print(
                f"  {scheme:8} ratio (kept / each): cpu {cpu1 / cpu0:.2f}, wall {wall1 / wall0:.2f}"
            )


if __name__ == "__main__":
    main()
