"""A TCP proxy in front of a database server (PostgreSQL, MariaDB), to cut a worker off its database.

Stopping the real server would disturb every other test; the proxy cuts only
the connections that go through it.  ``down()`` closes the listening socket
and every open connection (as a crashed server would: connections are
refused); ``up()`` listens on the same port again.  ``hang()`` is a firewall
that drops packets: connections are accepted but nothing is forwarded, on new
connections or open ones, until ``resume()`` lets the open ones flow again.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432), parse: bool = False) -> None:
        """``parse`` (PostgreSQL only): read the server's messages (clients must use sslmode=disable),
        so that setting ``drop_notifications`` silently drops NOTIFY deliveries on live connections."""
        self.target = target
        self.parse = parse
        self.drop_notifications = False
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        #: cleared while hanging: the pipes hold what they read
        self._flowing = threading.Event()
        self._flowing.set()
        #: connections accepted while hanging, never forwarded
        self._held: list[socket.socket] = []
        #: connections accepted so far: more than the first few means clients reconnected
        self.accepted = 0
        self.up()

    def url(self, base: str) -> str:
        """``base`` (a URL naming the target's host:port) pointed at the proxy instead."""
        host, port = self.target
        return base.replace(f"{host}:{port}", f"127.0.0.1:{self.port}")

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            # wakes the thread blocked in accept(): until it returns, the kernel keeps the
            # socket listening and up() could not bind the port again
            try:
                server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            server.close()
        self.cut()
        self.resume()  # the pipes of cut connections end instead of waiting

    def hang(self) -> None:
        """Forward nothing: a client's connect gets no answer, an open connection's query neither."""
        self._flowing.clear()

    def resume(self) -> None:
        """Open connections flow again; those accepted while hanging are closed (their clients gave up)."""
        with self._lock:
            held, self._held = self._held, []
        for conn in held:
            conn.close()
        self._flowing.set()

    def cut(self) -> int:
        """Drop every open connection but keep accepting new ones; how many client connections it dropped."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        return len(conns) // 2  # a client's socket and its upstream's

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if not self._flowing.is_set():
                with self._lock:
                    self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is not server:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
                self.accepted += 1
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            from_server = self._filter if self.parse else self._pipe
            threading.Thread(target=from_server, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(src, dst)

    def _filter(self, src: socket.socket, dst: socket.socket) -> None:
        """Like _pipe for server messages (type byte, int32 length), leaving out
        NotificationResponse ('A') while ``drop_notifications`` is set."""
        buffer = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buffer += data
                out = []
                while len(buffer) >= 5:
                    size = 1 + int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < size:
                        break
                    message, buffer = buffer[:size], buffer[size:]
                    if not (message[:1] == b"A" and self.drop_notifications):
                        out.append(message)
                if out:
                    self._flowing.wait()
                    dst.sendall(b"".join(out))
        except OSError:
            pass
        finally:
            _shutdown(src, dst)

    def close(self) -> None:
        self.down()


def _shutdown(*socks: socket.socket) -> None:
    """End both directions of a piped pair: the other pipe thread then stops too."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


#: the name the PostgreSQL-only tests know it by
PgProxy = TcpProxy
