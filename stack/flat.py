"""The flattened connector (``connect-flat``, on demand): the stack's Debezium connector
with Debezium's ``ExtractNewRecordState`` SMT ("unwrap"), as teams run it to hand rows,
not change events, to their consumers.

`connector_config()`: ``stack/connect/nd-postgres.json`` with

- the SMT (in ``debezium-core``, on Connect's plugin path with the connector):
  ``delete.tombstone.handling.mode=rewrite`` (a delete becomes its row with
  ``__deleted: "true"``, no tombstone follows) and ``add.fields=op,table,source.ts_ms``
  (``__op``, ``__table``, ``__source_ts_ms`` on every row) — `unwrap()` builds the SMT's
  settings for other modes, as the capture records them;
- topic prefix ``ndflat`` (``ndflat.public.<table>``), its own replication slot and its
  own publication (`PUBLICATION`: posts, comments, profiles and the heartbeat table,
  created here by the tables' owner, as schema.sql creates the stack's), no initial
  snapshot (only what changes after it starts).

What the SMT does to the stack's events (seen on this connector, recorded by
``python -m stack.capture flattened``): a row per change (its ``after``, or for a
delete its ``before``: with REPLICA IDENTITY DEFAULT the key and the columns' defaults);
TRUNCATE events dropped; transaction markers, logical messages and heartbeats passed on
unchanged. Stopping it deletes the connector and drops its slot (a slot left behind
retains WAL forever); its topics stay.
"""

from __future__ import annotations

from stack import connect, postgres
from stack.process import LOG_DIR, Service, StackError, http_json, log, wait_for

CONNECTOR_NAME = "nd-flat"
TOPIC_PREFIX = "ndflat"  # the flattened connector's topic.prefix
SLOT = "ndflat_debezium"  # its replication slot
PUBLICATION = "ndflat_publication"  # its publication, in the stack's database
TABLES = ("posts", "comments", "profiles", "debezium_heartbeat")  # what it captures
SMT = "io.debezium.transforms.ExtractNewRecordState"  # Debezium's "unwrap" SMT
DELETES = "rewrite"  # delete.tombstone.handling.mode: a __deleted row, no tombstone
ADD_FIELDS = "op,table,source.ts_ms"  # added as __op, __table, __source_ts_ms


def unwrap(deletes: str = DELETES, add_fields: str | None = ADD_FIELDS) -> dict[str, str]:
    """The SMT's connector settings: deletes as `deletes` (Debezium 3's
    delete.tombstone.handling.mode: rewrite, rewrite-with-tombstone, tombstone,
    delete-to-tombstone or drop), `add_fields` added to every row (None: none)."""
    config = {
        "transforms": "unwrap",
        "transforms.unwrap.type": SMT,
        "transforms.unwrap.delete.tombstone.handling.mode": deletes,
    }
    if add_fields:
        config["transforms.unwrap.add.fields"] = add_fields
    return config


def connector_config() -> dict[str, str]:
    config = connect.connector_config()
    config.update({
        "topic.prefix": TOPIC_PREFIX,
        "slot.name": SLOT,
        "publication.name": PUBLICATION,
        "table.include.list": ",".join(f"public.{table}" for table in TABLES),
        "snapshot.mode": "no_data",
        **unwrap(),
    })
    return config


def ensure_publication() -> None:
    """`PUBLICATION`, created by the tables' owner (the connector creates none:
    publication.autocreate.mode=disabled)."""
    if not postgres.psql(f"SELECT 1 FROM pg_publication WHERE pubname = '{PUBLICATION}'",
                         db=postgres.PG_DB):
        postgres.psql(f"SET ROLE app; CREATE PUBLICATION {PUBLICATION} FOR TABLE "
                      f"{', '.join(TABLES)}", db=postgres.PG_DB)


def start() -> None:
    if not connect.SERVICE.running():
        raise StackError("connect-flat needs kafka connect: python -m stack up connect-flat "
                         "(after, or with, the default services)")
    ensure_publication()
    connect.register_connector(CONNECTOR_NAME, connector_config())


def stop() -> None:
    """Stop the connector, reset its offsets and delete it (Connect would restart it
    with the default services otherwise), then drop its slot."""
    if connect.SERVICE.running() and connect.connector_exists(CONNECTOR_NAME):
        log(f"removing connector {CONNECTOR_NAME}")
        http_json("PUT", connect.connect_url(f"/connectors/{CONNECTOR_NAME}/stop"))
        wait_for(f"connector {CONNECTOR_NAME} to stop",
                 lambda: connect.connector_status(CONNECTOR_NAME)
                 .get("connector", {}).get("state") == "STOPPED", LOG_DIR / "connect.log")
        http_json("DELETE", connect.connect_url(f"/connectors/{CONNECTOR_NAME}/offsets"))
        http_json("DELETE", connect.connect_url(f"/connectors/{CONNECTOR_NAME}"))
    if postgres.running():
        where = f"FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        wait_for(f"slot {SLOT} to be released",
                 lambda: not postgres.psql(f"SELECT 1 {where} AND active"),
                 LOG_DIR / "connect.log")
        postgres.psql(f"SELECT pg_drop_replication_slot(slot_name) {where}")


def running() -> bool:
    return connect.SERVICE.running() and connect.connector_running(CONNECTOR_NAME)


SERVICE = Service("connect-flat", start, stop, running)


def endpoints() -> dict[str, object]:
    return {"flat_topic_prefix": TOPIC_PREFIX, "flat_connector": CONNECTOR_NAME}
