"""Apicurio Registry 2.6 (in-memory) and the Avro connector that writes through it.

- ``apicurio``: the registry (``io.apicurio:apicurio-registry-app``, Quarkus, its
  ``all`` tarball unpacked under ``.stack/lib/apicurio-app``), ``java -jar`` on
  loopback at `APICURIO_PORT`, in-memory storage: ready in about five seconds. Its
  Confluent-compatible API, which the reconciler's ``SchemaRegistryClient`` reads, is
  `CCOMPAT_URL`; Apicurio's own, which the converter writes, is `REGISTRY_URL`.
- ``nd-avro``: a second Debezium connector, `connector_config()`: the stack's connector
  with Apicurio's ``AvroConverter`` for key and value, topic prefix ``ndavro``, its own
  replication slot on the same publication, no initial snapshot. Connect finds the
  converter on its plugin path (`stack.connect` links it there at every start).

Schema ids belong to one registry: an in-memory registry starts empty, and the ids in
the records written under the last one would name other schemas, or none. So every
start deletes the Avro topics and registers the connector afresh (offsets reset, so a
new slot position): the topics begin with the registry. ``down`` removes the
connector and drops its slot (a slot nobody reads retains WAL without end).

The converter's settings: ``as-confluent`` writes the Confluent wire format (byte 0, a
4-byte id, the Avro body), ``headers.enabled=false`` puts the id in the body, not in
headers, and ``use-id=contentId`` makes that id the one the Confluent API serves at
``/schemas/ids/<id>``: the converter's default, a global id, is looked up there as
another schema.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import time
from typing import Any

from stack import connect, kafka, postgres
from stack.process import (
    HOST,
    LIB_DIR,
    LOG_DIR,
    Service,
    StackError,
    daemon,
    http_json,
    log,
    wait_for,
)

APICURIO_PORT = int(os.environ.get("CR_STACK_APICURIO_PORT", "28085"))  # the registry's HTTP API
APICURIO_HEAP = os.environ.get("CR_STACK_APICURIO_HEAP", "-Xms64m -Xmx384m")
APP_DIR = LIB_DIR / "apicurio-app"  # the unpacked tarball: the runner jar and lib/
CONVERTER = "io.apicurio.registry.utils.converter.AvroConverter"
CONNECTOR_NAME = "nd-avro"
TOPIC_PREFIX = "ndavro"  # the Avro connector's topic.prefix
SLOT = "ndavro_debezium"  # its replication slot (the publication is the stack's)
PLAIN_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*")  # not a pattern


def url(path: str = "") -> str:
    return f"http://{HOST}:{APICURIO_PORT}{path}"


REGISTRY_URL = url("/apis/registry/v2")  # Apicurio's own API: the converter's
CCOMPAT_URL = url("/apis/ccompat/v7")  # the Confluent-compatible API: the reconciler's


def command() -> list[str]:
    """The registry's command line, its tarball resolved and unpacked first."""
    folder = kafka.maven_jars("apicurio")
    tarballs = sorted(folder.glob("*.tar.gz"))
    if not tarballs:
        raise StackError(f"apicurio: no tarball in {folder} (stack/maven/apicurio/pom.xml)")
    stamp = APP_DIR / ".tarball"
    if not stamp.exists() or stamp.read_text() != tarballs[0].name:
        log(f"unpacking {tarballs[0].name}")
        shutil.rmtree(APP_DIR, ignore_errors=True)
        APP_DIR.mkdir(parents=True)
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(APP_DIR, filter="data")
        stamp.write_text(tarballs[0].name)
    runners = sorted(APP_DIR.glob("*-runner.jar"))
    if not runners:
        raise StackError(f"apicurio: no *-runner.jar in {APP_DIR}")
    return [kafka.java(), *APICURIO_HEAP.split(), f"-Dquarkus.http.port={APICURIO_PORT}",
            f"-Dquarkus.http.host={HOST}", "-Djava.awt.headless=true", "-jar", str(runners[0])]


def ready() -> bool:
    return http_json("GET", url("/apis/ccompat/v7/subjects")) is not None


# --------------------------------------------------------------------------- the connector


def converter_config(prefix: str) -> dict[str, str]:
    """Apicurio's AvroConverter as `prefix` (key.converter, value.converter)."""
    base = f"{prefix}.apicurio.registry"
    return {
        prefix: CONVERTER,
        f"{base}.url": REGISTRY_URL,
        f"{base}.auto-register": "true",
        f"{base}.find-latest": "true",
        f"{base}.as-confluent": "true",
        f"{base}.use-id": "contentId",
        f"{base}.headers.enabled": "false",
    }


def connector_config() -> dict[str, str]:
    """The stack's Debezium connector, writing Avro through the registry."""
    config = connect.connector_config()
    for name in [name for name in config if name.startswith(("key.converter",
                                                             "value.converter"))]:
        del config[name]
    config.update({
        "topic.prefix": TOPIC_PREFIX,
        "slot.name": SLOT,
        # The topics begin with the registry: nothing before it is read again.
        "snapshot.mode": "no_data",
        **converter_config("key.converter"),
        **converter_config("value.converter"),
    })
    return config


def has_converter() -> bool:
    plugins = http_json("GET", connect.connect_url("/connector-plugins?connectorsOnly=false"))
    return any(plugin.get("class") == CONVERTER for plugin in plugins)


def _connector(path: str = "", method: str = "GET", body: object | None = None) -> Any:
    return http_json(method, connect.connect_url(f"/connectors/{CONNECTOR_NAME}{path}"), body)


def remove_connector() -> None:
    """Stop the connector, reset its offsets, delete it and drop its slot."""
    if connect.SERVICE.running() and connect.connector_exists(CONNECTOR_NAME):
        log(f"removing connector {CONNECTOR_NAME}")
        _connector("/stop", "PUT")
        deadline = time.monotonic() + 60
        while _connector("/status")["connector"]["state"] != "STOPPED":
            if time.monotonic() > deadline:
                raise StackError(f"connector {CONNECTOR_NAME} did not stop within 60s")
            time.sleep(0.5)
        _connector("/offsets", "DELETE")
        _connector("", "DELETE")
    if postgres.SERVICE.running():
        where = f"FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        deadline = time.monotonic() + 30
        while postgres.psql(f"SELECT count(*) {where} AND active") != "0":
            if time.monotonic() > deadline:
                postgres.psql(f"SELECT pg_terminate_backend(active_pid) {where}")
            time.sleep(0.5)
        if postgres.psql(f"SELECT count(*) {where}") != "0":
            log(f"dropping replication slot {SLOT}")
            postgres.psql(f"SELECT pg_drop_replication_slot(slot_name) {where}")


def delete_topics() -> None:
    """The Avro connector's topics (their records carry another registry's ids)."""
    client = kafka.admin()
    owned = [topic for topic in client.list_topics(timeout=10).topics
             if topic.startswith(TOPIC_PREFIX + ".")
             or topic == f"__debezium-heartbeat.{TOPIC_PREFIX}"]
    if not owned:
        return
    log(f"deleting the topics of the last registry's ids: {', '.join(sorted(owned))}")
    for future in client.delete_topics(owned, operation_timeout=30).values():
        future.result(timeout=60)
    deadline = time.monotonic() + 60
    while set(owned) & set(client.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise StackError(f"topics {owned} still exist 60s after their deletion")
        time.sleep(0.5)


def register() -> None:
    """After every start of the registry: the Avro connector afresh on empty topics."""
    if not connect.SERVICE.running():
        raise StackError("apicurio: Kafka Connect is not running (python -m stack up)")
    if not has_converter():
        raise StackError(
            f"Kafka Connect on port {connect.CONNECT_PORT} was started without Apicurio's "
            f"converter ({CONVERTER}) on its plugin path: `python -m stack restart connect` "
            "installs it")
    remove_connector()
    delete_topics()
    config = connector_config()
    http_json("PUT", connect.connect_url(f"/connectors/{CONNECTOR_NAME}/config"), config)
    wait_for(f"debezium connector {CONNECTOR_NAME}", _running, LOG_DIR / "connect.log")
    create_topics(config)


def _running() -> bool:
    status = _connector("/status")
    tasks = status.get("tasks") or []
    for task in tasks:
        if task.get("state") == "FAILED":
            raise StackError(f"connector {CONNECTOR_NAME}: task failed:\n"
                             f"{task.get('trace', '')[:3000]}")
    return bool(status["connector"]["state"] == "RUNNING" and tasks
                and all(task.get("state") == "RUNNING" for task in tasks))


def create_topics(config: dict[str, str]) -> None:
    """The captured tables' topics, before their first change (consumers start at the
    end of a topic that must exist), as `stack.connect` does for its connector."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    client = kafka.admin()
    existing = client.list_topics(timeout=10).topics
    partitions = int(config.get("topic.creation.default.partitions", "1"))
    wanted = [f"{TOPIC_PREFIX}.{table.strip()}"
              for table in config["table.include.list"].split(",")
              if PLAIN_TABLE.fullmatch(table.strip())]  # patterns: created on first change
    missing = [NewTopic(topic, partitions, 1) for topic in wanted if topic not in existing]
    for future in (client.create_topics(missing, operation_timeout=30).values()
                   if missing else ()):
        try:
            future.result(timeout=60)
        except Exception as exc:  # created meanwhile by Debezium: fine
            if "already exists" not in str(exc).lower():
                raise StackError(f"creating the Avro topics: {exc}") from exc


def _stop() -> None:
    remove_connector()
    REGISTRY.stop()


REGISTRY = daemon("apicurio", APICURIO_PORT, "CR_STACK_APICURIO_PORT", command, ready,
                  label="apicurio registry", then=register)
SERVICE = Service(REGISTRY.name, REGISTRY.start, _stop, REGISTRY.running)


def endpoints() -> dict[str, object]:
    return {"schema_registry_url": CCOMPAT_URL, "avro_topic_prefix": TOPIC_PREFIX,
            "avro_connector": CONNECTOR_NAME}
