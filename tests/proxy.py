"""A loopback TCP proxy for fault tests: it sits between the workers and a database server and can
cut every connection through it, refuse all of them for a while, or hold every byte (a server that
hangs); the server itself is never touched."""

from __future__ import annotations

import selectors
import socket
import threading
from contextlib import suppress


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; :meth:`cut` and :meth:`down` are the faults.

    Args:
        upstream: ``(host, port)`` of the real server.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._refusing = threading.Event()
        self._closed = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self.accepted = 0  # connections forwarded so far
        self.cuts = 0  # connections cut by cut() or down()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, base: str) -> str:
        """``base`` (an SQLAlchemy URL to the upstream server) with this proxy as its host."""
        from sqlalchemy.engine import make_url

        return make_url(base).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def cut(self) -> int:
        """Closes every open connection at once, as a server restart or a firewall would.

        Returns:
            The number of connections cut.
        """
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.cuts += len(pairs)
        return len(pairs)

    def down(self) -> None:
        """Cuts every connection and refuses new ones until :meth:`up`."""
        self._refusing.set()
        self.cut()

    def up(self) -> None:
        """Accepts connections again."""
        self._refusing.clear()

    def stall(self) -> None:
        """Holds every byte, both ways, until :meth:`flow`: the server seems to hang."""
        self._flowing.clear()

    def flow(self) -> None:
        """Forwards again what :meth:`stall` held, and what follows."""
        self._flowing.set()

    def close(self) -> None:
        """Stops the proxy and cuts what is open."""
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._refusing.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        """Copies bytes both ways until either side closes (or the pair is cut)."""
        peer = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select():
                        sock: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = sock.recv(65536)
                        if not data:
                            raise OSError("closed")
                        while not self._flowing.wait(0.2):
                            if self._closed.is_set():
                                raise OSError("closed")
                        peer[sock].sendall(data)
            except (OSError, ValueError):  # closed by a peer or by cut()
                pass
        with self._lock:
            if (client, server) in self._pairs:
                self._pairs.remove((client, server))
        for sock in peer:
            sock.close()
