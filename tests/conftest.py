"""Fixtures that connect the tests to the real stack.

Endpoints come from environment variables (`python -m stack env` prints them), or
from `.stack/endpoints.json`, written by `python -m stack up`. When neither names a
running stack and a Docker engine answers, the testcontainers path in
`tests/containers.py` starts one. A missing service fails the run, naming the
service and how to start it: nothing is ever skipped for want of a service.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS_FILE = ROOT / os.environ.get("CR_STACK_DIR", ".stack") / "endpoints.json"


@dataclass(frozen=True)
class Stack:
    kafka_bootstrap: str
    connect_url: str
    connector: str
    topic_prefix: str
    postgres_dsn: str
    postgres_reconciler_dsn: str
    valkey: dict[str, str]  # shard name ("valkey-a", "valkey-b") -> URL
    source: str  # "local" or "testcontainers"

    @property
    def valkey_urls(self) -> list[str]:
        return [self.valkey[name] for name in sorted(self.valkey)]


def _reachable(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _from_environment() -> Stack | None:
    env = os.environ
    if "CR_KAFKA_BOOTSTRAP" in env:
        return Stack(
            kafka_bootstrap=env["CR_KAFKA_BOOTSTRAP"],
            connect_url=env.get("CR_CONNECT_URL", ""),
            connector=env.get("CR_CONNECTOR", "nd-postgres"),
            topic_prefix=env.get("CR_TOPIC_PREFIX", "nd"),
            postgres_dsn=env["CR_POSTGRES_DSN"],
            postgres_reconciler_dsn=env.get("CR_POSTGRES_RECONCILER_DSN", env["CR_POSTGRES_DSN"]),
            valkey={"valkey-a": env["CR_VALKEY_A_URL"], "valkey-b": env["CR_VALKEY_B_URL"]},
            source="local",
        )
    if ENDPOINTS_FILE.exists():
        data = json.loads(ENDPOINTS_FILE.read_text())
        return Stack(
            kafka_bootstrap=data["kafka_bootstrap"],
            connect_url=data["connect_url"],
            connector=data["connector"],
            topic_prefix=data["topic_prefix"],
            postgres_dsn=data["postgres_dsn"],
            postgres_reconciler_dsn=data["postgres_reconciler_dsn"],
            valkey=data["valkey"],
            source="local",
        )
    return None


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


def _check(stack: Stack) -> None:
    missing = []
    if not _reachable(stack.kafka_bootstrap):
        missing.append(f"kafka at {stack.kafka_bootstrap}")
    pg = urlparse(stack.postgres_dsn)
    if not _reachable(f"{pg.hostname}:{pg.port}"):
        missing.append(f"postgres at {pg.hostname}:{pg.port}")
    for name, url in stack.valkey.items():
        parsed = urlparse(url)
        if not _reachable(f"{parsed.hostname}:{parsed.port}"):
            missing.append(f"{name} at {parsed.hostname}:{parsed.port}")
    connect = urlparse(stack.connect_url)
    if stack.connect_url and not _reachable(f"{connect.hostname}:{connect.port}"):
        missing.append(f"kafka connect at {connect.hostname}:{connect.port}")
    if missing:
        pytest.fail(
            "the test stack is not running: " + "; ".join(missing) +
            ". Start it with `python -m stack up` (scripts/test does), see .stack/logs/.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    found = _from_environment()
    if found is not None and _reachable(found.kafka_bootstrap):
        _check(found)
        yield found
        return
    if _docker_answers():
        from tests.containers import container_stack

        with container_stack() as started:
            yield started
        return
    if found is not None:
        _check(found)
    pytest.fail(
        "no test stack: run `python -m stack up` (or scripts/test, which does), "
        "or start a Docker engine for the testcontainers path",
        pytrace=False,
    )


@pytest.fixture
def uid() -> str:
    """A short unique id for this test: topic names, group ids, key prefixes."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def valkey_clients(stack: Stack) -> Iterator[dict[str, object]]:
    """One `valkey.Valkey` per shard, flushed before and after the test."""
    import valkey

    clients = {name: valkey.Valkey.from_url(url) for name, url in stack.valkey.items()}
    for client in clients.values():
        client.flushall()
    yield clients  # type: ignore[misc]
    for client in clients.values():
        client.flushall()
        client.close()
