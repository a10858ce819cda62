"""Doctor's format checks: what a flattened topic cannot do, and whether the connector
writes what the formats say.

A table read from a flattened topic (``kafka.format``/``formats: flattened``: rows of
Debezium's ``ExtractNewRecordState``) gets one line. Its rows carry no ``before``: a
row whose shard key changes is invalidated on its new shard only. A template built
from the shard key (``feed:{neighborhood_id}``) then keeps the old value's key on the
old shard — still read there, stale until its TTL or the next change there: WARN,
"loses move detection", naming the templates. Otherwise OK: a moved row's entries on
its old shard are read by nobody who routes by its new neighbourhood. Either way a
TRUNCATE never arrives (the SMT drops it).

With the connector's config (`connect_checks`), its ``ExtractNewRecordState``
settings against the formats of its tables' topics (``<topic.prefix>.<table>``):

- the SMT on a connector whose topics are read as change events, or the reverse:
  FAIL (every change would be dead-lettered: no ``op``, or no version column);
- ``delete.tombstone.handling.mode=drop``: FAIL (deletes never reach Kafka);
- another ``add.fields.prefix``: FAIL (``__op``, ``__deleted``… are what is read);
- otherwise OK, saying what the settings leave out (no ``op``: rows are upserts; no
  ``source.ts_ms``: no commit times).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from reconciler.formats import FLATTENED
from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check
from reconciler.settings import Settings, TableSpec

SMT = "io.debezium.transforms.ExtractNewRecordState"  # Debezium's "unwrap" SMT
DEFAULT_PREFIX = "__"  # the SMT's add.fields.prefix, the one the decoder reads
DEFAULT_DELETES = "tombstone"  # the SMT's delete.tombstone.handling.mode


def flattened_tables(settings: Settings) -> list[str]:
    """The configured tables some flattened topic carries: every table with
    ``kafka.format: flattened`` (unless each of its listed topics is given another
    format), else those a ``kafka.formats`` topic is named after."""
    kafka = settings.kafka
    topics = {*kafka.topics, *kafka.formats}
    found = []
    for name, spec in settings.tables.items():
        own = [topic for topic in topics if _named_after(topic, name, spec)]
        kinds = {kafka.formats.get(topic, kafka.format) for topic in own}
        if FLATTENED in kinds or (kafka.format == FLATTENED and not own):
            found.append(name)
    return found


def _named_after(topic: str, table: str, spec: TableSpec) -> bool:
    """Whether `topic` is `table`'s (``<prefix>.<schema>.<table>``) or a leaf's of it."""
    if topic == table or topic.endswith("." + table):
        return True
    last = ".".join(topic.rsplit(".", 2)[-2:])
    schema, _, leaf = last.partition(".")
    return any(re.fullmatch(pattern, last) or (
        schema == table.split(".", 1)[0] and re.fullmatch(pattern, leaf))
        for pattern in spec.partitions)


def move_checks(settings: Settings) -> Iterator[Check]:
    """One line per table read from a flattened topic: does it lose move detection?"""
    for name in flattened_tables(settings):
        spec = settings.tables[name]
        check = f"table {name} format"
        truncate = "; a TRUNCATE never arrives (the SMT drops it)"
        if spec.shard_key in spec.primary_key:
            yield Check(OK, check, f"flattened: the shard key {spec.shard_key} is in the "
                                   f"primary key, so rows never move{truncate}")
            continue
        shard_templates = [t.source for t in spec.templates()
                           if spec.shard_key in t.columns]
        if not shard_templates:
            yield Check(OK, check, f"flattened (no `before`): a row whose {spec.shard_key} "
                                   "changes is invalidated on its new shard only, and no "
                                   "template is built from the shard key: its entries on "
                                   "the old shard are left to their TTL, unread by readers "
                                   f"routing by the new {spec.shard_key}{truncate}")
            continue
        yield Check(WARN, check, f"flattened (no `before`): loses move detection — a row "
                                 f"whose {spec.shard_key} changes is invalidated on its new "
                                 "shard only; the old shard keeps "
                                 f"{', '.join(shard_templates)} for the old "
                                 f"{spec.shard_key} until its TTL or its next change "
                                 f"there{truncate}",
                    f"read {name}'s topic as change events (no ExtractNewRecordState) to "
                    "detect moves, or accept those entries stale up to "
                    "their TTL (README: Formats)")


def connector_checks(settings: Settings, connector: dict[str, str] | None) -> Iterator[Check]:
    """The connector's ExtractNewRecordState settings against its topics' formats."""
    if not connector or not connector.get("topic.prefix"):
        return
    kafka = settings.kafka
    name = connector.get("name", connector["topic.prefix"])
    topics = [f"{connector['topic.prefix']}.{table}" for table in settings.tables]
    flattened = [t for t in topics if kafka.formats.get(t, kafka.format) == FLATTENED]
    enveloped = [t for t in topics if t not in flattened]
    aliases = [a.strip() for a in connector.get("transforms", "").split(",") if a.strip()]
    smt = next((a for a in aliases if connector.get(f"transforms.{a}.type") == SMT), None)
    check = f"connector {name} format"
    if smt is None:
        if flattened:
            yield Check(FAIL, check, f"{', '.join(flattened)} read as flattened, but the "
                                     "connector writes change events (no "
                                     "ExtractNewRecordState): every change would be "
                                     "dead-lettered (invalid_version)",
                        "drop those topics from kafka.formats (or kafka.format: json)")
        return
    if enveloped:
        yield Check(FAIL, check, f"the connector flattens its rows (ExtractNewRecordState, "
                                 f"transforms.{smt}) but {', '.join(enveloped)} are read as "
                                 f"{kafka.format if kafka.format != FLATTENED else 'json'}: "
                                 "every change would be dead-lettered (no op)",
                    "set kafka.formats.<topic>: flattened for them (or kafka.format: "
                    "flattened)")
        return
    option = f"transforms.{smt}."
    deletes = connector.get(option + "delete.tombstone.handling.mode", DEFAULT_DELETES)
    prefix = connector.get(option + "add.fields.prefix", DEFAULT_PREFIX)
    if deletes == "drop":
        yield Check(FAIL, check, "delete.tombstone.handling.mode=drop: deletes never reach "
                                 "Kafka, so deleted rows' entries stay cached until their TTL",
                    f"set {option}delete.tombstone.handling.mode=rewrite (or tombstone)")
        return
    if prefix != DEFAULT_PREFIX:
        yield Check(FAIL, check, f"add.fields.prefix={prefix!r}: the reconciler reads the "
                                 "SMT's fields by the default prefix (__op, __deleted, "
                                 "__table, __source_ts_ms)",
                    f"remove {option}add.fields.prefix")
        return
    fields = {f.strip() for f in connector.get(option + "add.fields", "").split(",")
              if f.strip() and ":" not in f}  # a renamed field is not read
    notes = [f"delete.tombstone.handling.mode={deletes}"]
    if "op" not in fields:
        notes.append("no op: rows are upserts (a snapshot read fences what is absent)")
    if "source.ts_ms" not in fields:
        notes.append("no source.ts_ms: no commit times, freshness from heartbeats only")
    yield Check(OK, check, f"flattened by ExtractNewRecordState ({'; '.join(notes)})")
