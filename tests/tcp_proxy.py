"""A TCP proxy for tests that must lose a server's answer: it forwards both ways until told
to swallow what the server sends (the client waits for an answer that never comes), and
cuts every connection it carries when told to (new ones are forwarded again)."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._swallowing = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def swallow_replies(self) -> None:
        """From now on, drop what servers send on the connections carried now; clients'
        bytes still reach the server."""
        self._swallowing.set()

    def cut(self) -> None:
        """Close every connection carried now, both ends; forward new ones normally."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self._swallowing = threading.Event()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
                swallowing = self._swallowing
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(server, client, swallowing), daemon=True
            ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, swallowing: threading.Event | None
    ) -> None:
        try:
            while data := src.recv(65536):
                if swallowing is None or not swallowing.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        # One side ended: so does the other, and the proxy lets go of both.
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            for sock in (src, dst):
                if sock in self._sockets:
                    self._sockets.remove(sock)
                    sock.close()
