"""Helpers shared by the Valkey connector tests."""

from __future__ import annotations

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
