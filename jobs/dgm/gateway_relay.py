"""A Unix socket on the worker's node that forwards to the gateway's TCP address.

Sandboxes have no network; their one way out is a Unix socket bind-mounted read-only at
/run/evoray/. Unix sockets are node-local, so every attempt worker opens its own relay next to its
sandboxes, wherever Ray placed it, and the relay carries the bytes to the one gateway (which does the
accounting and holds the keys). The relay reads nothing and adds nothing: the gateway still checks
each request's token.
"""
from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


class SocketRelay:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.dir = tempfile.mkdtemp(prefix="evoray-relay-")
        os.chmod(self.dir, 0o755)   # the sandbox's user must reach the socket inside
        self.path = str(Path(self.dir) / "gateway.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        os.chmod(self.path, 0o666)
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return   # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        t = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        t.start()
        _pump(client, upstream)
        t.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self.server.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass
