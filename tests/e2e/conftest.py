"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey

from tests.conftest import Stack
from tests.e2e.support import PrivateValkey


@pytest.fixture
def shards(stack: Stack, prefix: str) -> Iterator[dict[str, valkey.Valkey]]:
    """A client per shard; afterwards, every key under the test module's `prefix`
    fixture is deleted (never a flush: other tests share the servers)."""
    clients = {"a": valkey.Valkey.from_url(stack.valkey["valkey-a"]),
               "b": valkey.Valkey.from_url(stack.valkey["valkey-b"])}
    yield clients
    for client in clients.values():
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateValkey]:
    """A Valkey of the test's own (restartable, freezable), on a free loopback port."""
    server = PrivateValkey.on_free_port(tmp_path / "valkey")
    yield server
    server.thaw_if_frozen()
    server.stop()

