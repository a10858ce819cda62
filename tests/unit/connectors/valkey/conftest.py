"""Fixtures for the Valkey connector tests: a `Shard`, a raw client and a writer on the
real valkey-b server of the stack (flushed before and after by `valkey_clients`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import valkey

from connectors.valkey.shard import Shard
from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack

SHARD = "valkey-b"  # the stack server these tests use (valkey-a is left to the others)
FENCE_TTL_MS = 60_000  # fence TTL the tests' shard writes


@pytest.fixture
def url(stack: Stack) -> str:
    return stack.valkey[SHARD]


@pytest.fixture
def client(valkey_clients: dict[str, Any]) -> valkey.Valkey:
    """A raw client (bytes) on the test server, to arrange and inspect entries."""
    raw: valkey.Valkey = valkey_clients[SHARD]
    return raw


@pytest.fixture
def shard(url: str, valkey_clients: dict[str, Any]) -> Iterator[Shard]:
    with Shard(SHARD, url, fence_ttl_ms=FENCE_TTL_MS) as opened:
        opened.ensure_functions()
        yield opened


@pytest.fixture
def writer(url: str, valkey_clients: dict[str, Any]) -> Iterator[CacheWriter]:
    opened = CacheWriter(url, name=SHARD)
    yield opened
    opened.close()


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (a down shard)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
