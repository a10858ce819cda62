"""The metrics port's routes, on a real socket."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from reconciler.observe.health import HealthServer, Status
from reconciler.observe.metrics import Metrics


def broken() -> dict[str, Any]:
    raise RuntimeError("boom")


@pytest.fixture
def server() -> Iterator[HealthServer]:
    registry = CollectorRegistry()
    Metrics.create(registry).lag.labels("t", "0").set(3)
    http = HealthServer(
        "127.0.0.1", 0, registry,
        live=lambda: Status(True, {"loop_stalled_seconds": 0.1}),
        ready=lambda: Status(False, {"shards": {"a": "up", "b": "unreachable"}}),
        freshness=broken)
    http.start()
    yield http
    http.stop()


def get(server: HealthServer, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}") as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_routes(server: HealthServer) -> None:
    status, kind, body = get(server, "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert b'reconciler_consumer_lag_messages{partition="0",topic="t"} 3.0' in body
    status, _, body = get(server, "/healthz")
    assert status == 200 and json.loads(body) == {"ok": True, "loop_stalled_seconds": 0.1}
    status, kind, body = get(server, "/readyz?verbose=1")
    assert status == 503 and kind == "application/json"
    assert json.loads(body)["shards"]["b"] == "unreachable"
    assert get(server, "/nope")[0] == 404
    assert get(server, "/freshness")[0] == 500  # a failing route answers, never hangs


# --------------------------------------------------------------------------- slow clients
# Issue 16, item 5: a slow client must hold neither a thread nor anyone else's request.
# The bounds below are generous (the machine is shared): what is asserted is that the
# normal request is answered while the slow ones hang, that no thread is added per
# connection, and that the slow ones are closed after the timeout.

SHORT = 1.0  # the request and write timeouts of the servers below, in seconds


def slow_server(**options: Any) -> HealthServer:
    http = HealthServer(
        "127.0.0.1", 0, CollectorRegistry(),
        live=lambda: Status(True, {}), ready=lambda: Status(True, {}),
        freshness=options.pop("freshness", dict), request_timeout=SHORT, write_timeout=SHORT,
        **options)
    http.start()
    return http


def connect(http: HealthServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", http.port), timeout=10)
    return sock


def closed_by_server(sock: socket.socket, within: float = 10.0) -> bool:
    """True once the server closed `sock` (EOF, or a reset); False if it is still open
    after `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def healthz(http: HealthServer) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http.port}/healthz", timeout=10) as reply:
        return int(reply.status)


def test_slow_clients_hold_no_thread_and_no_one_elses_request() -> None:
    http = slow_server()
    threads = threading.active_count()
    silent = [connect(http) for _ in range(20)]  # connect and say nothing
    dribbling = [connect(http) for _ in range(20)]  # one byte at a time
    try:
        for sock in dribbling:
            sock.sendall(b"G")
        assert healthz(http) == 200  # answered while 40 connections hang
        assert threading.active_count() == threads  # not a thread more
        for sock in dribbling:
            sock.sendall(b"E")
        assert healthz(http) == 200
        for sock in silent + dribbling:  # the server ends them after the timeout
            assert closed_by_server(sock), "a slow connection was left open"
        assert http.open_connections == 0
    finally:
        for sock in silent + dribbling:
            sock.close()
        http.stop()


def test_a_client_dribbling_forever_is_cut_off_at_the_request_timeout() -> None:
    http = slow_server()
    sock = connect(http)
    try:
        started = time.monotonic()
        sent = 0
        with pytest.raises(OSError):  # broken pipe or reset, once the server closed it
            while time.monotonic() - started < 30:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: "[sent % 32:sent % 32 + 1])
                sent += 1
                time.sleep(0.1)
        assert time.monotonic() - started < 30
    finally:
        sock.close()
        http.stop()


def test_past_the_connection_cap_the_oldest_unanswered_is_closed() -> None:
    http = slow_server(max_connections=8)
    idle = [connect(http) for _ in range(12)]
    try:
        assert healthz(http) == 200  # a new request always gets in
        assert all(closed_by_server(sock, 5) for sock in idle[:5])
        assert http.open_connections <= 8
    finally:
        for sock in idle:
            sock.close()
        http.stop()


def test_a_client_that_does_not_read_its_answer_is_dropped_after_the_write_timeout() -> None:
    big = {"x": "y" * (32 * 1024 * 1024)}  # more than the socket buffers hold
    http = slow_server(freshness=lambda: big)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", http.port))
    try:
        sock.sendall(b"GET /freshness HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        assert healthz(http) == 200  # the stuck answer holds no one up
        wait = time.monotonic() + 15
        while http.open_connections and time.monotonic() < wait:
            time.sleep(0.1)
        assert http.open_connections == 0
    finally:
        sock.close()
        http.stop()


def raw(http: HealthServer, request: bytes) -> bytes:
    sock = connect(http)
    try:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply
    finally:
        sock.close()


def test_requests_the_port_does_not_serve_are_refused() -> None:
    http = slow_server()
    try:
        assert raw(http, b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nab").startswith(
            b"HTTP/1.1 405 ")
        assert raw(http, b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
                   ).startswith(b"HTTP/1.1 431 ")
        assert raw(http, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        head = raw(http, b"HEAD /healthz HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    finally:
        http.stop()
