"""The pipeline on Avro records (the recorded ones, an in-memory source and the fake
shard) while the schema registry is down: the batch waits within the retry budget,
then fails — nothing dead-lettered, no offset stored — and the same records are
processed in full once the registry answers again."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from connectors.debezium.avro import AvroDecoder
from connectors.debezium.registry import Registry
from connectors.errors import RegistryUnavailable
from connectors.valkey.testing import FakeShard
from reconciler.errors import RetryBudgetExceeded
from reconciler.observe.metrics import Metrics
from reconciler.pipeline.decoders import RegistryRetry
from reconciler.pipeline.invalidator import Invalidator
from reconciler.pipeline.pipeline import Pipeline
from reconciler.pipeline.testing import MemoryDeadLetters, MemorySource
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded_avro import AVRO, line, schemas
from tests.unit.reconciler.planning import LOCAL_PLANNER

STEPS = (r.POSTS_INSERT, r.POSTS_UPDATE_TITLE, r.POSTS_DELETE, r.POSTS_DELETE_TOMBSTONE,
         r.PROFILES_INSERT)


class Flaky:
    """A registry fetch that is down until `up` is set."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    def __call__(self, schema_id: int) -> str:
        self.calls += 1
        if not self.up:
            raise RegistryUnavailable("connection refused (the test's registry is down)")
        return schemas()[schema_id]


def pipeline(fetch: Flaky, source: MemorySource, shard: FakeShard,
             registry: CollectorRegistry) -> tuple[Pipeline, MemoryDeadLetters]:
    metrics = Metrics.create(registry)
    retry = RegistryRetry(0.3, should_stop=lambda: False,
                          on_retry=metrics.retries.labels("registry").inc)
    decoder = AvroDecoder(Registry(fetch, retry=retry), avro_topics=lambda topic: True,
                          columns=LOCAL_PLANNER.columns)
    dead = MemoryDeadLetters()
    invalidator = Invalidator(lambda: {"a": shard, "b": FakeShard("b")},
                              retry_budget_seconds=0.2, truncate_max_keys_per_second=1e9)
    return Pipeline(source, decoder, LOCAL_PLANNER, invalidator, dead, metrics,
                    max_event_bytes=1 << 20), dead


def source() -> MemorySource:
    records = MemorySource()
    for number in STEPS:
        recorded = line(AVRO, number)
        records.add(recorded.topic, 0, recorded.key, recorded.value)
    return records


def test_a_registry_down_fails_the_batch_without_dead_letters_or_offsets() -> None:
    fetch, shard, registry = Flaky(), FakeShard("a"), CollectorRegistry()
    records = source()
    pipe, dead = pipeline(fetch, records, shard, registry)
    with pytest.raises(RetryBudgetExceeded, match="registry"):
        pipe.push(pipe.poll(len(STEPS), 0))
    assert dead.sent == [] and records.stored == {}
    assert fetch.calls > 1  # retried, not given up at once
    assert (registry.get_sample_value("reconciler_retries_total", {"target": "registry"})
            or 0) >= 1


def test_once_the_registry_answers_the_same_records_are_reconciled() -> None:
    fetch, shard = Flaky(), FakeShard("a")
    fetch.up = True
    records = source()
    pipe, dead = pipeline(fetch, records, shard, CollectorRegistry())
    pipe.push(pipe.poll(len(STEPS), 0))
    pipe.drain()
    assert dead.sent == []
    assert records.stored == {(line(AVRO, r.POSTS_INSERT).topic, 0): 4,
                              (line(AVRO, r.PROFILES_INSERT).topic, 0): 1}
    post = line(AVRO, r.POSTS_INSERT).decode(pipe.decoder)
    assert post.after is not None
    assert shard.entry(f"post:{post.after['id']}") == {b"v": str(2**63 - 1).encode()}
