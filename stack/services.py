"""The local stack as a whole: real Postgres, Kafka (KRaft), Kafka Connect + Debezium
and Valkey as processes on loopback, with data and logs under ``.stack/``.

`SERVICES` in start order, and what ``python -m stack up|down|restart|status|env``
does with them. Each service lives in its own module (postgres, kafka, connect,
valkey; the secured side's configuration in security), all on ``stack.process``.

``up`` with no names starts `DEFAULT`: everything but the services of `ON_DEMAND`,
which start only when named (``python -m stack up valkey-tls``, ``… valkey-cluster``).

Only the standard library and, where installed, ``confluent_kafka`` (the broker
readiness check, the captured tables' topics) are used, so the stack can run before
the project is installed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from stack import (
    apicurio,
    connect,
    flat,
    kafka,
    postgres,
    process,
    security,
    sentinel,
    valkey,
    valkey_cluster,
)
from stack.process import HOST, STACK_DIR, Service, log, read_pid

ENDPOINTS_FILE = STACK_DIR / "endpoints.json"  # written by `up`: the tests and bench read it

SERVICES: dict[str, Service] = {service.name: service for service in (
    postgres.SERVICE,
    valkey.shard("valkey-a"),
    valkey.shard("valkey-b"),
    valkey.ACL,  # Valkey with ACL users (stack/security.py)
    valkey.TLS,  # stunnel: TLS in front of valkey-acl
    sentinel.SERVICE,  # a primary, a replica and three Sentinels (stack/sentinel.py)
    kafka.SERVICE,
    connect.SERVICE,
    connect.SECOND_SERVICE,  # the nd2 database and its connector: a second source
    valkey_cluster.SERVICE,  # 3 primaries + 3 replicas (stack/valkey_cluster.py)
    apicurio.SERVICE,  # the schema registry and the Avro connector (stack/apicurio.py)
    flat.SERVICE,  # the flattened connector: ExtractNewRecordState (stack/flat.py)
)}
START_ORDER = list(SERVICES)
# Started only when named (apicurio: the schema registry and the Avro connector,
# for the Avro tests): stunnel, installed by the test set-up, for the security tests;
# the Sentinel-managed Valkey, for the sentinel shard kind's tests; the six nodes of
# the Valkey Cluster, for the cluster shard kind's tests; the second source database
# (nd2) and its connector, for the several sources' tests; the flattened connector
# (connect-flat), for the flattened topics' tests.
ON_DEMAND = ("valkey-tls", "valkey-sentinel", "valkey-cluster", "connect-nd2", "apicurio",
             "connect-flat")
DEFAULT = [name for name in START_ORDER if name not in ON_DEMAND]  # what `up` starts

ENV_NAMES = {  # `python -m stack env`: endpoints() key -> variable the tests read
    "kafka_bootstrap": "CR_KAFKA_BOOTSTRAP",
    "connect_url": "CR_CONNECT_URL",
    "postgres_dsn": "CR_POSTGRES_DSN",
    "postgres_reconciler_dsn": "CR_POSTGRES_RECONCILER_DSN",
}


def endpoints() -> dict[str, object]:
    pg = f"{HOST}:{postgres.PG_PORT}/{postgres.PG_DB}"
    return {
        "kafka_bootstrap": kafka.bootstrap(),
        "connect_url": connect.connect_url(),
        "connector": connect.CONNECTOR_NAME,
        "topic_prefix": connect.TOPIC_PREFIX,
        "second_source": {  # connect-nd2, when started
            "connector": connect.SECOND_NAME, "topic_prefix": connect.SECOND_PREFIX,
            "database": postgres.PG_DB2},
        "postgres_dsn": f"postgresql://app:{postgres.PG_ROLES['app']}@{pg}",
        "postgres_reconciler_dsn":
            f"postgresql://reconciler:{postgres.PG_ROLES['reconciler']}@{pg}",
        "valkey": {name: f"valkey://{HOST}:{port}/0"
                   for name, port in valkey.VALKEY_PORTS.items()},
        "stack_dir": str(STACK_DIR),
        "security": security.endpoints(),
        "sentinel": sentinel.endpoints(),
        **valkey_cluster.endpoints(),
        **apicurio.endpoints(),
        **flat.endpoints(),
    }


def env_lines() -> Iterator[str]:
    data = endpoints()
    for key, var in ENV_NAMES.items():
        yield f"export {var}='{data[key]}'"
    shards = data["valkey"]
    assert isinstance(shards, dict)
    for name, url in shards.items():
        yield f"export CR_{name.upper().replace('-', '_')}_URL='{url}'"
    yield from valkey_cluster.iter_env()
    yield f"export CR_VALKEY_SENTINEL_URLS='{','.join(sentinel.sentinel_urls())}'"
    yield f"export CR_VALKEY_SENTINEL_SERVICE='{sentinel.SERVICE_NAME}'"
    yield f"export CR_SCHEMA_REGISTRY_URL='{apicurio.CCOMPAT_URL}'"


def up(names: list[str] | None = None) -> float:
    """Start `names` (default: `DEFAULT`) in start order; the seconds it took."""
    started = time.monotonic()
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or DEFAULT:
        t0 = time.monotonic()
        SERVICES[name].start()
        log(f"{name} ready ({time.monotonic() - t0:.1f}s)")
    ENDPOINTS_FILE.write_text(json.dumps(endpoints(), indent=2) + "\n")
    return time.monotonic() - started


def down(names: list[str] | None = None) -> None:
    """Stop `names` (default: every service) in reverse start order."""
    for name in reversed(names or START_ORDER):
        if SERVICES[name].running() or read_pid(name) is not None:
            log(f"stopping {name}")
        SERVICES[name].stop()


def restart(names: list[str] | None = None) -> float:
    """Stop and start `names`; by default what `up` starts and every on-demand service
    that was running."""
    if names is None:
        names = [name for name in START_ORDER
                 if name in DEFAULT or SERVICES[name].running()]
    down(names)
    return up(names)


def status() -> dict[str, bool]:
    state = {name: SERVICES[name].running() for name in START_ORDER}
    if state["connect"]:
        state["debezium connector"] = connect.connector_running()
    return state


# Read here by the fault suite (tests/faults), which is being rewritten: it moves to the
# service modules' names with its next change, and these lines go with it.
CONNECTOR_NAME, connect_url = connect.CONNECTOR_NAME, connect.connect_url
connector_running, connector_status = connect.connector_running, connect.connector_status
KAFKA_PORT, VALKEY_PORTS = kafka.KAFKA_PORT, valkey.VALKEY_PORTS
LOG_DIR, StackError, http_json = process.LOG_DIR, process.StackError, process.http_json
