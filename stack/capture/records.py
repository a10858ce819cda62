"""What the capture records and how it reads it: the fixture files, the error, a
`Record` as read from Kafka, and the fields of its JSON-converter payload."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stack.process import ROOT

FIXTURE_DIR = ROOT / "tests" / "fixtures" / "debezium"
# prefix -> (schemas.enable, fixture file)
PREFIXES: dict[str, tuple[bool, str]] = {
    "capjson": (True, "schemas_true.jsonl"),
    "capbare": (False, "schemas_false.jsonl"),
}
UNAVAILABLE = "__debezium_unavailable_value"  # Debezium's value of an unchanged TOASTed column
PK = {"posts": "id", "comments": "id", "profiles": "user_id"}  # the captured tables' keys
HEARTBEATS_KEPT = 2  # heartbeats kept after the last workload record
TIMEOUT = 180.0  # seconds to wait for a connector, a snapshot, the last events
COMMAND = ".venv/bin/python -m stack.capture"
EPOCH = dt.date(1970, 1, 1)  # Debezium's io.debezium.time.Date counts days from it


class CaptureError(RuntimeError):
    """The capture could not run, or what Debezium emitted misses a required shape."""


def log(message: str) -> None:
    print(f"[capture] {message}", file=sys.stderr, flush=True)


def heartbeat_topic(prefix: str) -> str:
    return f"__debezium-heartbeat.{prefix}"


def owned_topic(prefix: str, topic: str) -> bool:
    return topic.startswith(prefix + ".") or topic == heartbeat_topic(prefix)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: str | None
    headers: list[tuple[str, str | None]]
    # a binary (Avro) record's bytes: `key` and `value` then hold their decoded JSON
    raw_key: bytes | None = None
    raw_value: bytes | None = None
    # filled in while analysing
    key_payload: Any = None
    payload: Any = None
    step: str = ""
    description: str = ""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def has_header(self, name: str) -> bool:
        return any(k == name for k, _ in self.headers)

    def fixture_line(self) -> str:
        """The record as a line of `reconciler plan --input`: its raw text, or a binary
        record's bytes in base64 (`key_b64`, `value_b64`)."""
        if self.raw_key is not None or self.raw_value is not None:
            data: dict[str, Any] = {"key_b64": _b64(self.raw_key),
                                    "value_b64": _b64(self.raw_value)}
        else:
            data = {"key": self.key, "value": self.value}
        return json.dumps({
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "timestamp": self.timestamp, **data,
            "headers": [[k, v] for k, v in self.headers],
        })


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def unwrap(raw: str | None, schemas: bool) -> tuple[Any, Any]:
    """(payload, schema) of a raw JSON-converter string."""
    if raw is None:
        return None, None
    obj = json.loads(raw)
    if not schemas:
        return obj, None
    if not isinstance(obj, dict) or set(obj) != {"schema", "payload"}:
        raise CaptureError(f"schemas.enable=true record is not an envelope: {raw[:200]}")
    return obj["payload"], obj["schema"]


def source_lsn(payload: Any) -> int:
    if isinstance(payload, dict) and isinstance(payload.get("source"), dict):
        return int(payload["source"].get("lsn") or 0)
    return 0


def txid_of(rec: Record, prefix: str) -> int | None:
    p = rec.payload
    if not isinstance(p, dict):
        return None
    if rec.topic == f"{prefix}.transaction":
        return int(str(p["id"]).split(":")[0])
    source = p.get("source")
    if isinstance(source, dict) and source.get("txId") is not None:
        return int(source["txId"])
    return None


def table_of(rec: Record) -> str | None:
    p = rec.payload
    if isinstance(p, dict) and isinstance(p.get("source"), dict):
        table = p["source"].get("table")
        return None if table is None else str(table)
    return None


def row_pk(rec: Record) -> str | None:
    p, table = rec.payload, table_of(rec)
    if table is None or table not in PK or not isinstance(p, dict):
        return None
    row = p.get("after") or p.get("before") or {}
    value = row.get(PK[table])
    return None if value is None else str(value)


def decimal_of(encoded: str, scale: int) -> Decimal:
    unscaled = int.from_bytes(base64.b64decode(encoded), "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def field_schema(value_schema: Any, part: str, column: str) -> dict[str, Any]:
    block = next(f for f in value_schema["fields"] if f["field"] == part)
    found: dict[str, Any] = next(f for f in block["fields"] if f["field"] == column)
    return found
