"""Kafka Connect (distributed mode, one worker) with the Debezium PostgreSQL
connector, registered from ``stack/connect/nd-postgres.json`` as `CONNECTOR_NAME`:
the table topics ``nd.public.<table>``, heartbeats on.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
from pathlib import Path
from typing import Any

from stack import kafka
from stack.postgres import PG_PORT, PG_ROLES
from stack.process import (
    HOST,
    LIB_DIR,
    LOG_DIR,
    ROOT,
    STACK_DIR,
    StackError,
    daemon,
    http_json,
    log,
    wait_for,
)

CONNECT_PORT = int(os.environ.get("CR_STACK_CONNECT_PORT", "28083"))  # the REST API
CONNECT_HEAP = os.environ.get("CR_STACK_CONNECT_HEAP", "-Xms256m -Xmx768m")  # as Kafka's
CONNECT_DIR = STACK_DIR / "connect"  # connect-distributed.properties
CONNECTOR_NAME = "nd-postgres"
CONNECTOR_CONFIG = ROOT / "stack" / "connect" / "nd-postgres.json"  # ${…} filled in below
TOPIC_PREFIX = "nd"  # the connector's topic.prefix
# Connect's plugins: folder under .stack/lib/plugins -> stack/maven/<name>/pom.xml
PLUGINS = {"debezium-connector-postgres": "debezium", "apicurio-converter": "apicurio-converter"}


def properties() -> Path:
    CONNECT_DIR.mkdir(parents=True, exist_ok=True)
    path = CONNECT_DIR / "connect-distributed.properties"
    plugins = LIB_DIR / "plugins"
    path.write_text(
        f"bootstrap.servers={kafka.bootstrap()}\n"
        "group.id=cr-connect\n"
        "config.storage.topic=_connect_configs\n"
        "offset.storage.topic=_connect_offsets\n"
        "status.storage.topic=_connect_status\n"
        "config.storage.replication.factor=1\n"
        "offset.storage.replication.factor=1\n"
        "status.storage.replication.factor=1\n"
        "offset.storage.partitions=1\n"
        "status.storage.partitions=1\n"
        "key.converter=org.apache.kafka.connect.json.JsonConverter\n"
        "value.converter=org.apache.kafka.connect.json.JsonConverter\n"
        "offset.flush.interval.ms=1000\n"
        f"listeners=http://{HOST}:{CONNECT_PORT}\n"
        f"rest.advertised.host.name={HOST}\n"
        f"rest.advertised.port={CONNECT_PORT}\n"
        f"plugin.path={plugins}\n"
        "plugin.discovery=hybrid_warn\n"
        "producer.linger.ms=5\n"
        "scheduled.rebalance.max.delay.ms=0\n"
    )
    return path


def connect_url(path: str = "") -> str:
    return f"http://{HOST}:{CONNECT_PORT}{path}"


def ready() -> bool:
    plugins = http_json("GET", connect_url("/connector-plugins"))
    return any("PostgresConnector" in p.get("class", "") for p in plugins)


def command() -> list[str]:
    """The worker's command line, with its plugins linked into its plugin folder:
    Debezium, and Apicurio's Avro converter (for the connector of `stack.apicurio`,
    which needs it on the plugin path from Connect's start)."""
    lib = kafka.maven_jars("kafka")
    for plugin, jars in PLUGINS.items():
        plugin_dir = LIB_DIR / "plugins" / plugin
        if plugin_dir.is_symlink() or plugin_dir.exists():
            plugin_dir.unlink() if plugin_dir.is_symlink() else shutil.rmtree(plugin_dir)
        plugin_dir.parent.mkdir(parents=True, exist_ok=True)
        plugin_dir.symlink_to(kafka.maven_jars(jars), target_is_directory=True)
    return kafka.java_argv(lib, "org.apache.kafka.connect.cli.ConnectDistributed",
                           CONNECT_HEAP, str(properties()))


# --------------------------------------------------------------------------- the connector


def connector_config() -> dict[str, str]:
    raw = CONNECTOR_CONFIG.read_text()
    raw = raw.replace("${PG_PORT}", str(PG_PORT))
    raw = raw.replace("${DEBEZIUM_PASSWORD}", PG_ROLES["debezium"])
    config: dict[str, str] = json.loads(raw)
    return config


def connector_status() -> dict[str, Any]:
    status = http_json("GET", connect_url(f"/connectors/{CONNECTOR_NAME}/status"))
    assert isinstance(status, dict)
    return status


def connector_running() -> bool:
    try:
        status = connector_status()
    except urllib.error.HTTPError:
        return False
    tasks = status.get("tasks") or []
    return (status.get("connector", {}).get("state") == "RUNNING"
            and bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks))


def register_connector() -> None:
    http_json("PUT", connect_url(f"/connectors/{CONNECTOR_NAME}/config"), connector_config())

    def running() -> bool:
        if connector_running():
            return True
        for task in connector_status().get("tasks") or []:
            if task.get("state") == "FAILED":
                raise StackError(f"debezium connector task failed:\n{task.get('trace', '')[:3000]}")
        return False

    wait_for(f"debezium connector {CONNECTOR_NAME}", running, LOG_DIR / "connect.log")
    ensure_table_topics()


def ensure_table_topics() -> None:
    """Create the captured tables' topics when Debezium has not yet: it creates a topic
    with a table's first change, and the tests and the demo start consumers at a topic's
    end before changing anything (on a fresh stack those topics did not exist)."""
    try:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        admin = kafka.admin()
    except ImportError:
        return
    config = connector_config()
    partitions = int(config.get("topic.creation.default.partitions", "1"))
    replication = int(config.get("topic.creation.default.replication.factor", "1"))
    wanted = [f"{config['topic.prefix']}.{table.strip()}"
              for table in config["table.include.list"].split(",") if table.strip()]
    existing = admin.list_topics(timeout=10).topics
    missing = [NewTopic(topic, partitions, replication) for topic in wanted
               if topic not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=30).items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # Debezium got there first
            raise StackError(f"creating topic {topic}: {exc}") from exc
    log(f"created the captured tables' topics: {', '.join(t.topic for t in missing)}")


SERVICE = daemon("connect", CONNECT_PORT, "CR_STACK_CONNECT_PORT", command, ready,
                 label="kafka connect", then=register_connector)
