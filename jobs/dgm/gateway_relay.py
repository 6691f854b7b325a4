"""A Unix socket on the worker's node that forwards to the gateway's TCP address.

Sandboxes have no network; their one way out is a Unix socket bind-mounted read-only at
/run/evoray/. Unix sockets are node-local, so every attempt worker opens its own relay next to its
sandboxes, wherever Ray placed it, and the relay carries the bytes to the one gateway (which does the
accounting and holds the keys). The relay reads nothing and adds nothing: the gateway still checks
each request's token.

Sandboxed code is hostile, so the relay bounds what it spends on it: at most ``per_peer``
connections at once from one sandbox (the peer's PID namespace; its uid where that cannot be read)
and ``max_connections`` in all, two threads each; a connection past either cap is answered 503 and
closed at once; a connection with no request in flight that stays silent for ``idle_s`` is closed.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")
POLL_S = 0.5


def peer_key(conn: socket.socket) -> str:
    """Which sandbox is calling: its PID namespace (one per sandbox, or per task), else its uid."""
    try:
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    except OSError:
        return "unknown"
    try:
        return f"pidns:{os.stat(f'/proc/{pid}/ns/pid').st_ino}"
    except OSError:   # the peer already exited, or we may not look at it
        return f"uid:{uid}"


class _Link:
    """One relayed connection; ``last`` per direction tells idle from waiting for a reply."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        now = time.monotonic()
        self.last = {"up": now, "down": now}
        self.closed = threading.Event()

    def idle(self, idle_s: float, request_s: float) -> bool:
        quiet = time.monotonic() - max(self.last.values())
        waiting = self.last["up"] > self.last["down"]   # a request went up, no reply yet
        return quiet > (request_s if waiting else idle_s)

    def close(self) -> None:
        self.closed.set()
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)   # wakes a thread blocked in sendall
            except OSError:
                pass

    def pump(self, src: socket.socket, dst: socket.socket, way: str, idle_s: float,
             request_s: float) -> None:
        """Copy ``src`` to ``dst``. The client's EOF is passed on (the reply may still come); the
        gateway's EOF, an error or idleness close both ways."""
        poller = select.poll()
        poller.register(src, select.POLLIN)
        try:
            while not self.closed.is_set():
                if not poller.poll(POLL_S * 1000):
                    if self.idle(idle_s, request_s):
                        break
                    continue
                chunk = src.recv(65536)
                if not chunk and way == "up":   # the request is complete; its reply may follow
                    dst.shutdown(socket.SHUT_WR)
                    return
                if not chunk:   # the gateway is done with this connection: so is the relay
                    break
                self.last[way] = time.monotonic()
                dst.sendall(chunk)
        except OSError:
            pass
        self.close()


class SocketRelay:
    def __init__(self, target: tuple[str, int], per_peer: int = 8, max_connections: int = 64,
                 idle_s: float = 30.0, request_s: float = 900.0):
        self.target, self.per_peer, self.max_connections = target, per_peer, max_connections
        self.idle_s, self.request_s = idle_s, request_s
        self.active: dict[str, int] = {}
        self.lock = threading.Lock()
        self.dir = tempfile.mkdtemp(prefix="evoray-relay-")
        os.chmod(self.dir, 0o755)   # the sandbox's user must reach the socket inside
        self.path = str(Path(self.dir) / "gateway.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        os.chmod(self.path, 0o666)
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()

    def connections(self) -> int:
        with self.lock:
            return sum(self.active.values())

    def _admit(self, key: str) -> bool:
        with self.lock:
            if sum(self.active.values()) >= self.max_connections or \
                    self.active.get(key, 0) >= self.per_peer:
                return False
            self.active[key] = self.active.get(key, 0) + 1
            return True

    def _release(self, key: str) -> None:
        with self.lock:
            self.active[key] -= 1
            if not self.active[key]:
                del self.active[key]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return   # closed
            key = peer_key(client)
            if not self._admit(key):
                _refuse(client, f"too many connections to the gateway relay from this sandbox "
                                f"(at most {self.per_peer}, {self.max_connections} in all)")
                continue
            threading.Thread(target=self._serve, args=(client, key), daemon=True,
                             name="relay-conn").start()

    def _serve(self, client: socket.socket, key: str) -> None:
        try:
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                return
            link = _Link(client, upstream)
            down = threading.Thread(target=link.pump, daemon=True, name="relay-down",
                                    args=(upstream, client, "down", self.idle_s, self.request_s))
            down.start()
            link.pump(client, upstream, "up", self.idle_s, self.request_s)
            down.join()
            client.close()
            upstream.close()
        finally:
            self._release(key)

    def close(self) -> None:
        self.server.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


def _refuse(client: socket.socket, why: str) -> None:
    body = b'{"error": {"type": "relay_busy", "message": "%s"}}' % why.encode()
    try:
        client.setblocking(False)
        client.send(REFUSED % (len(body), body))
    except OSError:
        pass
    client.close()
