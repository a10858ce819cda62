"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import valkey

from tests.conftest import Stack


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
