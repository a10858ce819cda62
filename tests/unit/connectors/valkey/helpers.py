"""Helpers shared by the Valkey connector tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import valkey


def entry(client: valkey.Valkey, key: str) -> tuple[str, Any]:
    """What `key` holds on the server: ("none", None), ("hash", {...}) or (type, value)."""
    kind = client.type(key).decode()
    if kind == "hash":
        return kind, client.hgetall(key)
    if kind == "string":
        return kind, client.get(key)
    return kind, None


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds.

    For a server-side effect a test must see before going on: the test then never
    depends on how fast the server is, only on the effect happening at all.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout:g} s: {what}")
        time.sleep(0.005)


def age(client: valkey.Valkey, key: str, ms: int) -> None:
    """What `ms` milliseconds of time do to `key`, done at once: its TTL lowered by `ms`,
    the key gone if nothing is left (one without a TTL is untouched). Tests simulate
    time with it instead of sleeping, so none races an expiry."""
    left = int(client.pttl(key))
    if left == -1 or left == -2:
        return
    if left <= ms:
        client.delete(key)
    else:
        client.pexpire(key, left - ms)
