"""A fault-injecting TCP proxy for HTTP endpoints (tests only): passes requests, or drops their connections.

It sits on 127.0.0.1 in front of a real server (moto_server in the tests) and sees one request per connection: it
adds ``Connection: close`` to each request head, so the server closes after its response and the client opens a
new connection for the next request. That makes requests countable without parsing bodies:

- ``fail_after(n)``: pass ``n`` more requests, then drop every connection (a server that dies, a network cut),
- ``drop(after=n, count=k)``: pass ``n`` more requests, drop the ``k`` after them, then pass again (a transient
  drop),
- ``restore()``: pass everything again.

A dropped connection is closed after its request head arrived, before any response byte: the client sees the
server disconnect (aiohttp ``ServerDisconnectedError``, botocore ``ConnectionClosedError``).
"""

from __future__ import annotations

import socket
import threading
from typing import Iterator

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._pass_first: int | None = None  # None: pass everything; n: pass n more, then drop _drops of them
        self._drops: float = 0
        self.passed = 0
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    # ------------------------------------------------------------------------------------------ fault control

    def fail_after(self, requests: int) -> None:
        self.drop(after=requests, count=float("inf"))

    def drop(self, after: int, count: float) -> None:
        with self._lock:
            self._pass_first, self._drops = after, count

    def restore(self) -> None:
        with self._lock:
            self._pass_first, self._drops = None, 0

    def _decide(self) -> bool:
        """True: pass this request; False: drop it."""
        with self._lock:
            if self._pass_first is not None and self._pass_first <= 0 and self._drops > 0:
                self._drops -= 1
                self.dropped += 1
                return False
            if self._pass_first is not None and self._pass_first > 0:
                self._pass_first -= 1
            self.passed += 1
            return True

    # ------------------------------------------------------------------------------------------------- relay

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = _read_head(client)
            if head is None:
                return
            head, rest = head
            if not self._decide():
                return  # closing without a response: the server "died" after the request arrived
            try:
                upstream = socket.create_connection(self.target, timeout=30)
            except OSError:
                return
            with upstream:
                upstream.sendall(_close_after_response(head) + rest)
                pump = threading.Thread(target=_copy, args=(client, upstream), daemon=True)
                pump.start()
                _copy(upstream, client)
                pump.join(timeout=30)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """(request head up to and including the blank line, bytes already read after it), or None on EOF."""
    data = b""
    sock.settimeout(30)
    while _HEAD_END not in data:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
        if len(data) > _MAX_HEAD:
            return None
    end = data.index(_HEAD_END) + len(_HEAD_END)
    return data[:end], data[end:]


def _close_after_response(head: bytes) -> bytes:
    lines = head[:-len(_HEAD_END)].split(b"\r\n")
    kept = [line for line in lines[1:] if not line.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + _HEAD_END


def _copy(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes until ``source`` closes, then half-close ``target`` (its reader sees the end)."""
    for chunk in _chunks(source):
        try:
            target.sendall(chunk)
        except OSError:
            return
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        yield chunk
