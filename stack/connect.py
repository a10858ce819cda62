"""Kafka Connect (distributed mode, one worker) with the Debezium PostgreSQL
connector, registered from ``stack/connect/nd-postgres.json`` as `CONNECTOR_NAME`:
the table topics ``nd.public.<table>`` (the partitioned ``events`` per leaf:
``nd.public.events_<leaf>``), heartbeats on.

``connect-nd2`` (on demand, `SECOND`): a second source, the ``nd2`` database (the same
schema, its publication via the partition root, its ids from 10^12) with a connector of
its own (`SECOND_NAME`, topic prefix ``nd2``, its own slot): ``nd2.public.<table>``,
and the partitioned ``events`` as ``nd2.public.events``. Stopping it deletes the
connector and drops its slot (a slot left behind retains WAL forever).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
from pathlib import Path
from typing import Any

from stack import kafka, postgres
from stack.postgres import PG_DB2, PG_DB2_IDS, PG_PORT, PG_ROLES
from stack.process import (
    HOST,
    LIB_DIR,
    LOG_DIR,
    ROOT,
    STACK_DIR,
    Service,
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
SECOND_NAME = "nd2-postgres"  # the second source's connector (connect-nd2)
SECOND_PREFIX = "nd2"  # its topic.prefix
# The second connector: nd-postgres.json but for these (the partitioned table by its root).
SECOND = {"database.dbname": PG_DB2, "topic.prefix": SECOND_PREFIX,
          "slot.name": "nd2_debezium",
          "table.include.list": "public.posts,public.comments,public.profiles,"
                                "public.debezium_heartbeat,public.events"}
_PLAIN_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*")  # schema.table


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


def second_config() -> dict[str, str]:
    return {**connector_config(), **SECOND}


def connector_status(name: str = CONNECTOR_NAME) -> dict[str, Any]:
    status = http_json("GET", connect_url(f"/connectors/{name}/status"))
    assert isinstance(status, dict)
    return status


def connector_running(name: str = CONNECTOR_NAME) -> bool:
    try:
        status = connector_status(name)
    except urllib.error.HTTPError:
        return False
    tasks = status.get("tasks") or []
    return (status.get("connector", {}).get("state") == "RUNNING"
            and bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks))


def register_connector(name: str = CONNECTOR_NAME,
                       config: dict[str, str] | None = None) -> None:
    config = connector_config() if config is None else config
    http_json("PUT", connect_url(f"/connectors/{name}/config"), config)

    def running() -> bool:
        if connector_running(name):
            return True
        for task in connector_status(name).get("tasks") or []:
            if task.get("state") == "FAILED":
                raise StackError(f"debezium connector task failed:\n{task.get('trace', '')[:3000]}")
        return False

    wait_for(f"debezium connector {name}", running, LOG_DIR / "connect.log")
    ensure_table_topics(config)


def captured_tables(config: dict[str, str]) -> list[str]:
    """`schema.table` of what the connector's table.include.list captures: its plain
    names, and the tables of its database a pattern matches (Debezium reads each entry
    as a regular expression over `schema.table`), such as the leaves of a partitioned
    table (`public.events_.*`)."""
    entries = [entry.strip() for entry in config["table.include.list"].split(",")
               if entry.strip()]
    names = [entry for entry in entries if _PLAIN_TABLE.fullmatch(entry)]
    patterns = [re.compile(entry) for entry in entries if entry not in names]
    if patterns:
        tables = postgres.psql("SELECT schemaname || '.' || tablename FROM pg_tables "
                               "ORDER BY 1", db=config["database.dbname"]).splitlines()
        names += [t for t in tables if any(p.fullmatch(t) for p in patterns)]
    return names


def ensure_table_topics(config: dict[str, str] | None = None) -> None:
    """Create the captured tables' topics when Debezium has not yet: it creates a topic
    with a table's first change, and the tests and the demo start consumers at a topic's
    end before changing anything (on a fresh stack those topics did not exist)."""
    try:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        admin = kafka.admin()
    except ImportError:
        return
    config = connector_config() if config is None else config
    partitions = int(config.get("topic.creation.default.partitions", "1"))
    replication = int(config.get("topic.creation.default.replication.factor", "1"))
    wanted = [f"{config['topic.prefix']}.{table}" for table in captured_tables(config)]
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


# --------------------------------------------------------------------------- connect-nd2


def start_second() -> None:
    """The nd2 database (idempotent, as `provision` is) and its connector."""
    if not SERVICE.running():
        raise StackError("connect-nd2 needs kafka connect: python -m stack up connect-nd2 "
                         "(after, or with, the default services)")
    postgres.provision(PG_DB2, via_root=True, ids_from=PG_DB2_IDS)
    register_connector(SECOND_NAME, second_config())


def stop_second() -> None:
    """Stop the connector, reset its offsets and delete it (Connect would restart it
    with the default services otherwise, and a connector created again must snapshot
    again), then drop its slot (a slot left behind retains WAL forever)."""
    if SERVICE.running() and connector_exists(SECOND_NAME):
        log(f"removing connector {SECOND_NAME}")
        http_json("PUT", connect_url(f"/connectors/{SECOND_NAME}/stop"))
        wait_for(f"connector {SECOND_NAME} to stop", lambda: connector_status(SECOND_NAME)
                 .get("connector", {}).get("state") == "STOPPED", LOG_DIR / "connect.log")
        http_json("DELETE", connect_url(f"/connectors/{SECOND_NAME}/offsets"))
        http_json("DELETE", connect_url(f"/connectors/{SECOND_NAME}"))
    if postgres.running():
        where = f"FROM pg_replication_slots WHERE slot_name = '{SECOND['slot.name']}'"
        wait_for(f"slot {SECOND['slot.name']} to be released",
                 lambda: not postgres.psql(f"SELECT 1 {where} AND active"), LOG_DIR / "connect.log")
        postgres.psql(f"SELECT pg_drop_replication_slot(slot_name) {where}")


def connector_exists(name: str) -> bool:
    try:
        http_json("GET", connect_url(f"/connectors/{name}"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise
    return True


def second_running() -> bool:
    return SERVICE.running() and connector_running(SECOND_NAME)


SECOND_SERVICE = Service("connect-nd2", start_second, stop_second, second_running)
