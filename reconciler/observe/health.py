"""The metrics port: ``/metrics``, ``/healthz``, ``/readyz`` and ``/freshness``.

- ``/healthz``: the process is alive and its consume loop is turning (liveness).
- ``/readyz``: the worker has joined its consumer group (its assignment may be empty
  when there are more replicas than partitions — a spare must not block a rollout)
  and every shard answered its last call or probe. The JSON body says which check
  failed.
- ``/freshness``: the freshness watermarks (see ``reconciler.observe.freshness``).

One thread serves every connection, from a selector: a slow or silent client costs a
socket, never a thread, and cannot hold up anyone else's request. Each connection has
``REQUEST_TIMEOUT`` from its accept to send its whole request (line, headers, body)
and ``WRITE_TIMEOUT`` to take the whole answer, then it is closed; at most
``MAX_CONNECTIONS`` are open, and a new one past that closes the oldest still
unanswered (a probe sends its request at once: only a client that dawdles is dropped).
Every answer closes its connection (``Connection: close``). The routes are in-memory
reads, answered on the serving thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # open at once; a new one past this closes the oldest unanswered
REQUEST_TIMEOUT = 5.0  # seconds from accept to the end of the request (line, headers, body)
WRITE_TIMEOUT = 10.0  # seconds to take the whole answer
MAX_REQUEST_BYTES = 16 * 1024  # a longer request (line, headers, body) is answered 431
RECV_BYTES = 4096  # read per ready socket
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}

Route = Callable[[], tuple[int, str, bytes]]


@dataclass(frozen=True)
class Status:
    ok: bool
    detail: dict[str, Any]


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float  # when it is closed, answered or not
    accepted: float
    request: bytearray = field(default_factory=bytearray)
    answer: memoryview | None = None  # set once the request is read: what is left to send


class HealthServer:
    """The metrics port on one thread; ``start()`` returns once it listens."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, *,
                 live: Callable[[], Status], ready: Callable[[], Status],
                 freshness: Callable[[], dict[str, Any]],
                 max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT) -> None:
        self._routes: dict[str, Route] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _status(live()),
            "/readyz": lambda: _status(ready()),
            "/freshness": lambda: (200, "application/json",
                                   json.dumps(freshness()).encode()),
        }
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        self._write_timeout = write_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._connections: dict[socket.socket, _Connection] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake_write.send(b"x")
        if self._thread.is_alive():
            self._thread.join(5)
        for connection in list(self._connections.values()):
            self._close(connection)
        self._selector.close()
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()

    # ------------------------------------------------------------------ the loop

    def _serve(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            deadlines = [c.deadline for c in self._connections.values()]
            wait = max(0.0, min(deadlines) - now) if deadlines else None
            for key, events in self._selector.select(wait):
                connection: _Connection | None = key.data
                if connection is None:  # the listener, or a wake-up from stop()
                    if key.fileobj is self._listener:
                        self._accept()
                    else:
                        self._wake_read.recv(64)
                elif connection.sock in self._connections:  # not closed meanwhile
                    try:
                        if events & selectors.EVENT_READ:
                            self._read(connection)
                        elif events & selectors.EVENT_WRITE:
                            self._write(connection)
                    except Exception:  # one connection never stops the port
                        log.exception("metrics port: a connection failed")
                        self._close(connection)
            now = time.monotonic()
            for connection in [c for c in self._connections.values() if c.deadline <= now]:
                log.debug("metrics port: closing a connection that took too long")
                self._close(connection)

    def _accept(self) -> None:
        while True:
            try:
                sock, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors …: try again later
                log.warning("metrics port: accept failed: %s", exc)
                return
            if len(self._connections) >= self._max_connections:
                self._close(min(self._connections.values(),
                                key=lambda c: (c.answer is not None, c.accepted)))
            sock.setblocking(False)
            now = time.monotonic()
            connection = _Connection(sock, now + self._request_timeout, now)
            self._connections[sock] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if not data:  # the client went away before finishing its request
            self._close(connection)
            return
        connection.request += data
        answer = _answer(connection.request, self._routes)
        if answer is not None:
            connection.answer = memoryview(answer)
            connection.deadline = time.monotonic() + self._write_timeout
            self._selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
            self._write(connection)

    def _write(self, connection: _Connection) -> None:
        assert connection.answer is not None
        try:
            sent = connection.sock.send(connection.answer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        connection.answer = connection.answer[sent:]
        if not connection.answer:
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if self._connections.pop(connection.sock, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(connection.sock)
        connection.sock.close()


# ------------------------------------------------------------------ HTTP


def _answer(request: bytearray, routes: dict[str, Route]) -> bytes | None:
    """The whole response to `request`, or None while it is incomplete."""
    end = request.find(b"\r\n\r\n")
    if end < 0:
        return _response(431, "text/plain", b"request too large\n") if (
            len(request) > MAX_REQUEST_BYTES) else None
    lines = request[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response(400, "text/plain", b"bad request\n")
    method, target, _version = parts
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "transfer-encoding":
            return _response(400, "text/plain", b"no request body expected\n")
        if name == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return _response(400, "text/plain", b"bad content-length\n")
    if length < 0 or end + 4 + length > MAX_REQUEST_BYTES:
        return _response(431, "text/plain", b"request too large\n")
    if len(request) < end + 4 + length:
        return None  # the body (read and ignored) is still coming
    if method not in ("GET", "HEAD"):
        return _response(405, "text/plain", b"GET or HEAD only\n", allow=True)
    route = routes.get(target.split("?", 1)[0])
    if route is None:
        code, kind, body = 404, "text/plain", b"not found\n"
    else:
        try:
            code, kind, body = route()
        except Exception:  # a failing route answers 500, never hangs
            log.exception("serving %s failed", target[:200])
            code, kind, body = 500, "text/plain", b"internal error\n"
    return _response(code, kind, body, head=method == "HEAD")


def _response(code: int, kind: str, body: bytes, *, head: bool = False,
              allow: bool = False) -> bytes:
    headers = (f"HTTP/1.1 {code} {REASONS.get(code, '')}\r\nContent-Type: {kind}\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    if allow:
        headers += "Allow: GET, HEAD\r\n"
    return (headers + "\r\n").encode("latin-1") + (b"" if head else body)


def _status(status: Status) -> tuple[int, str, bytes]:
    body = json.dumps({"ok": status.ok, **status.detail}).encode()
    return (200 if status.ok else 503), "application/json", body
