"""The metrics port's routes, on a real socket."""

from __future__ import annotations

import json
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
