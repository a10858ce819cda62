"""The pipeline driven by an in-memory record source and fake shards: the order of
each shard's operations, offsets only after acknowledgement, dead letters before
offsets, and a failure mid-batch leaving nothing stored (beside the e2e tests, which
run the same code against Kafka and Valkey)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.debezium import Decoder
from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.protocols import PendingApply
from connectors.valkey.testing import FakeShard
from reconciler.errors import FatalError, RetryBudgetExceeded
from reconciler.observe.metrics import Metrics
from reconciler.pipeline.hooks import NoHooks
from reconciler.pipeline.invalidator import Invalidator
from reconciler.pipeline.pipeline import Pipeline
from reconciler.pipeline.testing import MemoryDeadLetters, MemorySource
from tests.unit.connectors.debezium import recorded as r
from tests.unit.reconciler.planning import LOCAL_PLANNER

TOPIC = "nd.public.posts"


def post(post_id: int, neighbourhood: int, version: int) -> tuple[bytes, bytes]:
    """A recorded post insert (schemas.enable) with its id, neighbourhood, version."""
    rec = r.record(r.SCHEMAS_TRUE, r.POSTS_INSERT).with_payload(
        lambda p: p["after"].update(id=post_id, neighborhood_id=neighbourhood,
                                    system_version=version)).with_key(
        lambda k: k.__setitem__("id", post_id))
    key, value = rec.key_bytes(), rec.value_bytes()
    assert key is not None and value is not None
    return key, value


class Journaled(FakeShard):
    """A FakeShard that writes its sends and reads to the shared journal."""

    def __init__(self, name: str, journal: list[str]) -> None:
        super().__init__(name)
        self.journal = journal

    def send(self, keys: Sequence[str], ops: Sequence[str],
             versions: Sequence[int]) -> PendingApply:
        self.journal.append(f"send {self.name} {' '.join(keys)}")
        pending = super().send(keys, ops, versions)
        shard = self

        class Read:
            def result(self) -> list[str]:
                shard.journal.append(f"read {shard.name}")
                return pending.result()

            def discard(self) -> None:
                shard.journal.append(f"discard {shard.name}")
                pending.discard()

        return Read()


class Points(NoHooks):
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    def decoded(self) -> None:
        self.journal.append("decoded")

    def acknowledged(self) -> None:
        self.journal.append("acknowledged")

    def stored(self) -> None:
        self.journal.append("stored")


def pipeline(source: MemorySource, shards: dict[str, FakeShard], journal: list[str], *,
             dry_run: bool = False, budget: float = 0.2) -> tuple[Pipeline, MemoryDeadLetters]:
    dead = MemoryDeadLetters(journal=journal)
    invalidator = Invalidator(lambda: shards, retry_budget_seconds=budget,
                              truncate_max_keys_per_second=1e9)
    return Pipeline(source, Decoder(), LOCAL_PLANNER, invalidator, dead,
                    Metrics.create(CollectorRegistry()), max_event_bytes=1 << 20,
                    hooks=Points(journal), dry_run=dry_run), dead


def run(pipe: Pipeline, batch: int = 2) -> None:
    """The worker's loop over a source that is drained."""
    while messages := pipe.poll(batch, 0):
        pipe.push(messages)
    pipe.drain()


def test_each_shard_sees_every_keys_operations_in_record_order() -> None:
    journal: list[str] = []
    a, b = Journaled("a", journal), Journaled("b", journal)
    source = MemorySource(journal=journal)
    # post 1 on a (neighbourhood 7), post 2 on b (700), updated in turn, 2 per batch.
    for version in (1, 2, 3):
        source.add(TOPIC, 0, *post(1, 7, version))
        source.add(TOPIC, 1, *post(2, 700, version))
    pipe, _ = pipeline(source, {"a": a, "b": b}, journal)
    run(pipe)
    assert [(k, v) for k, _, v, _ in a.applied if k == "post:1"] == [
        ("post:1", 1), ("post:1", 2), ("post:1", 3)]
    assert [(k, v) for k, _, v, _ in b.applied if k == "post:2"] == [
        ("post:2", 1), ("post:2", 2), ("post:2", 3)]
    assert a.entry("post:1") == {b"v": b"3"} and b.entry("post:2") == {b"v": b"3"}
    assert source.stored == {(TOPIC, 0): 3, (TOPIC, 1): 3}


def test_offsets_are_stored_only_after_the_batch_is_acknowledged() -> None:
    journal: list[str] = []
    a, b = Journaled("a", journal), Journaled("b", journal)
    source = MemorySource(journal=journal)
    source.add(TOPIC, 0, *post(1, 7, 1))
    source.add(TOPIC, 1, *post(2, 700, 1))
    source.add(TOPIC, 0, *post(3, 7, 1))
    source.add(TOPIC, 1, *post(4, 700, 1))
    pipe, _ = pipeline(source, {"a": a, "b": b}, journal)
    pipe.push(pipe.poll(2, 0))  # batch 1 sent, in flight: nothing stored
    assert source.stored == {}
    assert journal == ["decoded", "send a post:1 feed:7", "send b post:2 feed:700"]
    pipe.push(pipe.poll(2, 0))  # batch 2 planned, batch 1 completed, then batch 2 sent
    assert journal[3:] == [
        "read a", "read b", "acknowledged", f"store {TOPIC}[0]@1", f"store {TOPIC}[1]@1",
        "stored", "decoded", "send a post:3 feed:7", "send b post:4 feed:700"]
    assert source.stored == {(TOPIC, 0): 1, (TOPIC, 1): 1}  # batch 2 not yet
    pipe.drain()
    assert source.stored == {(TOPIC, 0): 2, (TOPIC, 1): 2}


class Asked(MemorySource):
    """A MemorySource that writes each consume() call to the journal."""

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        self.journal.append(f"consume {num_messages} {timeout:g}")
        return super().consume(num_messages, timeout)


def test_the_queue_is_asked_first_only_after_a_full_batch() -> None:
    journal: list[str] = []
    a, b = Journaled("a", journal), Journaled("b", journal)
    source = Asked(journal=journal)
    for post_id in (1, 3, 5):
        source.add(TOPIC, 0, *post(post_id, 7, 1))
    pipe, _ = pipeline(source, {"a": a, "b": b}, journal)
    pipe.push(pipe.poll(2, 0.5))  # a full batch: sent, in flight
    del journal[:]
    # After a full batch more may be waiting: asked first, while batch 1's calls run.
    pipe.push(pipe.poll(2, 0.5))  # one record: a partial batch
    assert journal[:2] == ["consume 2 0", "read a"]  # asked before batch 1 was read
    del journal[:]
    # After a partial one the queue was empty a moment ago: batch 2 completes first,
    # then the wait, without asking the queue again.
    assert pipe.poll(2, 0.5) == []
    assert journal == ["read a", "acknowledged", f"store {TOPIC}[0]@3", "stored",
                       "consume 1 0.5"]
    assert source.stored == {(TOPIC, 0): 3}


def test_dead_letters_are_confirmed_before_the_offsets_are_stored() -> None:
    journal: list[str] = []
    a, b = Journaled("a", journal), Journaled("b", journal)
    source = MemorySource(journal=journal)
    source.add(TOPIC, 0, *post(1, 7, 1))
    source.add(TOPIC, 0, b'{"id": 9}', b"{not json")  # dead-lettered, key-only delete
    pipe, dead = pipeline(source, {"a": a, "b": b}, journal)
    run(pipe)
    assert [(m.offset(), reason) for m, reason, _ in dead.sent] == [(1, "invalid_json")]
    assert journal.index("confirm dead letters") < journal.index(f"store {TOPIC}[0]@2")
    assert journal.index("acknowledged") < journal.index(f"store {TOPIC}[0]@2")
    # The dead letter's key still deleted and fenced post:9 on both shards.
    assert a.entry("post:9") == b.entry("post:9") == {b"v": b"9223372036854775807"}


class Refusing(Journaled):
    """Refuses its calls (an ACL refusal: no retry can help)."""

    def send(self, keys: Sequence[str], ops: Sequence[str],
             versions: Sequence[int]) -> PendingApply:
        self.fail_next.append(ValkeyRejected("NOPERM", shard=self.name, command="FCALL"))
        return super().send(keys, ops, versions)


@pytest.mark.parametrize("error", ["refused", "unavailable"])
def test_a_batch_that_fails_stores_nothing_and_the_earlier_ones_stay(error: str) -> None:
    journal: list[str] = []
    a = Journaled("a", journal)
    b: FakeShard = Journaled("b", journal)
    source = MemorySource(journal=journal)
    source.add(TOPIC, 0, *post(1, 7, 1))  # batch 1: a only
    source.add(TOPIC, 0, *post(2, 7, 1))
    pipe, _ = pipeline(source, {"a": a, "b": b}, journal)
    pipe.push(pipe.poll(2, 0))
    pipe.drain()
    assert source.stored == {(TOPIC, 0): 2}
    source.add(TOPIC, 0, *post(3, 7, 1))  # batch 2: a and b
    source.add(TOPIC, 1, *post(4, 700, 1))
    if error == "refused":
        b = Refusing("b", journal)
        expected: type[Exception] = FatalError
    else:
        b.fail_next.extend(ValkeyUnavailable("down", shard="b", command="FCALL")
                           for _ in range(100))
        expected = RetryBudgetExceeded
    pipe.invalidator = Invalidator(lambda: {"a": a, "b": b}, retry_budget_seconds=0.2,
                                   truncate_max_keys_per_second=1e9)
    pipe.push(pipe.poll(2, 0))
    with pytest.raises(expected):
        pipe.drain()
    pipe.abandon()
    assert source.stored == {(TOPIC, 0): 2}  # nothing of batch 2
    assert "acknowledged" not in journal[journal.index("send b post:4 feed:700"):]


def test_a_dry_run_sends_nothing_and_stores_nothing() -> None:
    journal: list[str] = []
    a = Journaled("a", journal)
    source = MemorySource([(TOPIC, 0, *post(1, 7, 1)), (TOPIC, 0, b"k", b"{bad")],
                          journal=journal)
    pipe, dead = pipeline(source, {"a": a, "b": Journaled("b", journal)}, journal,
                          dry_run=True)
    result = pipe.process(pipe.poll(10, 0))
    assert (a.applied, dead.sent, source.stored) == ([], [], {})
    assert result.actions[("public.posts", "a", "versioned")] == 1
    assert result.dead_letters == {"invalid_json": 1}
