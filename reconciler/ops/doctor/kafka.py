"""Doctor's Kafka checks: brokers, topics, the dead-letter topic, the group's offsets.

The brokers answer; every configured topic exists (or the regex matches some); every
table has a topic (a table with ``partitions``: its own or a leaf's; with several
``sources``, one with each source's prefix); the dead-letter topic exists; the group's
committed offsets are not below the log start (retention deleted changes it never
processed) nor beyond the end.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from connectors.kafka import admin_config
from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check
from reconciler.pipeline.clients import kafka_security
from reconciler.pipeline.partitions import compile_partitions
from reconciler.settings import Settings, SourceSettings

TIMEOUT = 10.0  # seconds for one Kafka request
EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]  # the log start offset
LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # the high watermark


def kafka_checks(settings: Settings) -> Iterator[Check]:
    """The brokers, the topics (or the regex), a topic per table, the dead-letter topic,
    the group's committed offsets."""
    kafka = settings.kafka
    admin = AdminClient(admin_config(  # type: ignore[arg-type]
        kafka.bootstrap_servers, kafka_security(settings), kafka.client,
        logger=logging.getLogger("kafka")))
    try:
        metadata = admin.list_topics(timeout=TIMEOUT)
    except KafkaException as exc:
        yield Check(FAIL, "kafka", f"cannot reach {kafka.bootstrap_servers}: {exc}",
                    "check kafka.bootstrap_servers, the network and kafka.security; "
                    "topic and offset checks skipped")
        return
    yield Check(OK, "kafka", f"{kafka.bootstrap_servers}: {len(metadata.brokers)} "
                             "broker(s)")
    existing = metadata.topics
    if kafka.topic_regex:
        regex = re.compile(kafka.topic_regex)
        topics = sorted(t for t in existing if regex.search(t) and not t.startswith("__")
                        and t != kafka.dead_letter_topic)
        yield (Check(OK, "topic_regex", f"{kafka.topic_regex!r} matches {len(topics)} "
                                        f"topic(s): {', '.join(topics)}") if topics else
               Check(FAIL, "topic_regex", f"{kafka.topic_regex!r} matches no topic",
                     "fix kafka.topic_regex, or check that the connector runs (it "
                     "creates a topic per table on the first change)"))
    else:
        topics = []
        for topic in kafka.topics:
            found = existing.get(topic)
            if found is None:
                yield Check(FAIL, f"topic {topic}", "does not exist",
                            "fix kafka.topics (Debezium names topics <topic.prefix>."
                            "<schema>.<table>), or check that the connector captures the "
                            "table (table.include.list); it creates the topic on the "
                            "table's first change")
            elif found.error is not None:
                yield Check(FAIL, f"topic {topic}", f"not readable: {found.error.str()}",
                            "grant this principal Describe and Read on the topic")
            else:
                topics.append(topic)
                yield Check(OK, f"topic {topic}", f"{len(found.partitions)} partition(s)")
    yield from _table_topics(settings, kafka.topics or topics)
    dlq = kafka.dead_letter_topic
    yield (Check(OK, "dead-letter topic", f"{dlq} exists") if dlq in existing else
           Check(WARN, "dead-letter topic", f"{dlq} does not exist",
                 "the worker creates it at start-up if its ACLs allow CreateTopics; "
                 f"otherwise create it (e.g. kafka-topics --create --topic {dlq})"))
    partitions = [TopicPartition(t, p) for t in topics for p in existing[t].partitions]
    if partitions:
        yield from _group_offsets(kafka.group_id, admin, partitions)


def _table_topics(settings: Settings, consumed: list[str]) -> Iterator[Check]:
    """A WARN per table (per source, with several) without a consumed topic: one named
    `<prefix>.<schema>.<table>`, or after a leaf the table's `partitions` match."""
    sources: list[SourceSettings | None] = [*settings.sources] or [None]
    for source in sources:
        prefix = f"{source.topic_prefix}." if source is not None else ""
        for table, spec in settings.tables.items():
            leaves = compile_partitions(table, spec.partitions)
            if any(topic.startswith(prefix) and (
                    topic.endswith(f".{table}") or (leaves is not None and leaves.fullmatch(
                        ".".join(topic.rsplit(".", 2)[-2:])))) for topic in consumed):
                continue
            name = f"table {table} topic"
            yield Check(WARN, f"{source.name}/{name}" if source is not None else name,
                        f"no consumed topic is {prefix or '<prefix>.'}{table}"
                        + (" or one of its leaves'" if leaves is not None else "")
                        + ": its changes never reach the reconciler",
                        f"add {prefix or '<topic.prefix>.'}{table} to kafka.topics (or a "
                        "kafka.topic_regex that matches it)")


def _group_offsets(group: str, admin: AdminClient,
                   partitions: list[TopicPartition]) -> Iterator[Check]:
    name = f"group {group}"
    try:
        request = [ConsumerGroupTopicPartitions(group, partitions)]
        future = admin.list_consumer_group_offsets(request, request_timeout=TIMEOUT)[group]
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in future.result().topic_partitions if tp.offset >= 0}
        low = _offsets(admin, partitions, EARLIEST)
        high = _offsets(admin, partitions, LATEST)
    except KafkaException as exc:
        yield Check(WARN, name, f"committed offsets not readable: {exc}",
                    "grant this principal Describe on the group")
        return
    bounds = {tp: (low[tp], high[tp]) for tp in low if tp in high}
    if not committed:
        yield Check(OK, name, "no committed offsets yet: a new group starts at the "
                              "earliest offset")
        return
    lost = {tp: (offset, bounds[tp][0]) for tp, offset in committed.items()
            if tp in bounds and offset < bounds[tp][0]}
    ahead = {tp: (offset, bounds[tp][1]) for tp, offset in committed.items()
             if tp in bounds and offset > bounds[tp][1]}
    if lost:
        gone = sum(start - offset for offset, start in lost.values())
        where = ", ".join(f"{t}[{p}] at {o} < log start {s}"
                          for (t, p), (o, s) in sorted(lost.items()))
        yield Check(FAIL, name, f"committed offsets below the log start ({where}): "
                                f"retention deleted {gone} change(s) the group never "
                                "processed, so the cache may hold entries stale since",
                    "run `reconciler audit --repair` (and a replay from the log "
                    "start); then raise the topics' retention.ms above the longest "
                    "outage the worker may have")
    if ahead:
        where = ", ".join(f"{t}[{p}] at {o} > end {e}" for (t, p), (o, e) in
                          sorted(ahead.items()))
        yield Check(WARN, name, f"committed offsets beyond the end ({where}): was the "
                                "topic recreated?",
                    "the worker restarts those partitions from the earliest offset")
    if not lost and not ahead:
        lag = sum(max(0, bounds[tp][1] - offset) for tp, offset in committed.items()
                  if tp in bounds)
        yield Check(OK, name, f"committed on {len(committed)} partition(s), lag {lag}")


def _offsets(admin: AdminClient, partitions: list[TopicPartition],
             spec: Any) -> dict[tuple[str, int], int]:
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=TIMEOUT)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}
