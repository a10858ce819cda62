"""The stack's ``valkey-sentinel`` service (stack/sentinel.py) for the tests: the
`sentinels` fixture settles it (a primary, its replica, three Sentinels agreeing)
before and after each test, and `retry` calls a shard as the invalidator does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import valkey

from connectors.errors import ValkeyUnavailable
from reconciler.pipeline.invalidator import BACKOFF_MAX, BACKOFF_START
from stack import security, sentinel
from stack.process import port_open
from tests.conftest import Stack

T = TypeVar("T")


@dataclass(frozen=True)
class Sentinels:
    """The service's Sentinel URLs and name, and clients of its nodes."""

    urls: list[str]
    service: str

    def node(self, port: int) -> valkey.Valkey:
        """A client (bytes) of the node on `port`, as its default user."""
        return valkey.Valkey(port=port, socket_timeout=5)

    def primary(self) -> valkey.Valkey:
        return self.node(sentinel.primary())

    def with_credentials(self, *, user: str = sentinel.SENTINEL_USER,
                         password: str | None = None) -> list[str]:
        """The Sentinel URLs with `user` and `password` (default: the right one) in them."""
        secret = password or security.secret(sentinel.SENTINEL_SECRET)
        quoted = quote(secret, safe="")
        return [url.replace("valkey://", f"valkey://{user}:{quoted}@") for url in self.urls]


@pytest.fixture
def sentinels(stack: Stack) -> Iterator[Sentinels]:
    """valkey-sentinel, healthy before and after the test (holds released, killed nodes
    restarted as replicas)."""
    down = [port for port in sentinel.NODE_PORTS + sentinel.SENTINEL_PORTS
            if not port_open(port)]
    if len(down) == len(sentinel.NODE_PORTS + sentinel.SENTINEL_PORTS):
        pytest.fail("valkey-sentinel is not running: start it with `python -m stack up "
                    "valkey-sentinel` (scripts/test does)", pytrace=False)
    sentinel.settle()
    yield Sentinels(sentinel.sentinel_urls(), sentinel.SERVICE_NAME)
    sentinel.settle()


def retry(call: Callable[[], T], budget: float = 60.0) -> tuple[T, float, int]:
    """`call()` until it stops raising ValkeyUnavailable, with the invalidator's
    backoff: its result, the seconds it took and the attempts that failed."""
    started = time.monotonic()
    delay, failures = BACKOFF_START, 0
    while True:
        try:
            return call(), time.monotonic() - started, failures
        except ValkeyUnavailable:
            failures += 1
            if time.monotonic() - started + delay > budget:
                raise
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


def fields(client: valkey.Valkey, key: str) -> dict[bytes, Any]:
    entry: dict[bytes, Any] = client.hgetall(key)  # type: ignore[assignment]
    return entry
