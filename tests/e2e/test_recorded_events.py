"""Recorded real Debezium events through the real worker: dead letters, and `reconciler
plan` printing exactly what the worker does.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from reconciler import cli
from reconciler.pipeline.invalidator import Flight, Invalidator
from reconciler.pipeline.planner import Action
from tests.conftest import ROOT, Stack
from tests.e2e.support import (
    InProcessWorker,
    create_topic,
    read_topic,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
FIXTURES = ROOT / "tests" / "fixtures" / "debezium"


def recorded(name: str = "schemas_true.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def renamed(topic: str, prefix: str) -> str:
    """capjson.public.posts → <prefix>.public.posts (and the heartbeat topic alike)."""
    head, _, rest = topic.partition(".")
    if head == "__debezium-heartbeat":
        return f"__debezium-heartbeat.{prefix}"
    return f"{prefix}.{rest}"


def produce(stack: Stack, records: list[dict[str, Any]]) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for record in records:
        producer.produce(
            record["topic"],
            key=None if record["key"] is None else record["key"].encode(),
            value=None if record["value"] is None else record["value"].encode(),
            headers=[(k, None if v is None else v.encode()) for k, v in record["headers"]],
        )
    assert producer.flush(30) == 0


class Recorder:
    """Records every action the worker hands to the invalidator (then runs it)."""

    def __init__(self, invalidator: Invalidator) -> None:
        self.actions: Counter[Action] = Counter()
        self._start = invalidator.start

    def __call__(self, actions: Any) -> Flight:
        actions = list(actions)
        self.actions.update(actions)
        return self._start(actions)


def test_plan_prints_exactly_the_actions_the_worker_performs(
        stack: Stack, tmp_path: Path, uid: str, valkey_clients: dict[str, Any]) -> None:
    prefix = f"rec{uid}"
    records = [{**r, "topic": renamed(r["topic"], prefix)} for r in recorded()]
    topics = sorted({r["topic"] for r in records})
    for topic in topics:
        create_topic(stack, topic, partitions=1)  # one partition keeps the recorded order
    produce(stack, records)

    config = write_config(tmp_path, stack, group=f"plan-{uid}", topics=topics)
    recording = tmp_path / "records.jsonl"
    recording.write_text("".join(json.dumps(r) + "\n" for r in records))
    planned_lines = _run_plan(config, recording)
    assert len(planned_lines) == len(records)
    planned = Counter(
        Action(a["shard"], a.get("key") or a["pattern"], a["kind"], a.get("version"),
               a.get("fence", True))
        for line in planned_lines for a in line.get("actions", []))
    planned_skips = Counter(line["skip"] for line in planned_lines if "skip" in line)
    assert not [line for line in planned_lines if "dead_letter" in line]
    assert planned, "the recording must cause actions"

    with InProcessWorker(config) as running:
        recorder = Recorder(running.worker.pipeline.invalidator)
        running.worker.pipeline.invalidator.start = recorder  # type: ignore[method-assign]
        running.wait_caught_up(stack, topics)
        skips = {reason: running.metric("reconciler_skipped_total", {"reason": reason})
                 for reason in planned_skips}
    assert recorder.actions == planned
    assert skips == {reason: float(n) for reason, n in planned_skips.items()}


def _run_plan(config: Path, recording: Path) -> list[dict[str, Any]]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["plan", "-c", str(config), "--input", str(recording)]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _mutate(record: dict[str, Any], change: Any) -> dict[str, Any]:
    value = json.loads(record["value"])
    change(value["payload"])
    return {**record, "value": json.dumps(value)}


def test_poison_records_are_dead_lettered_with_headers_and_the_rest_applied(
        stack: Stack, tmp_path: Path, uid: str, valkey_clients: dict[str, Any]) -> None:
    topic = create_topic(stack, f"dlq-in-{uid}", partitions=1)
    by_step = recorded()
    update = next(r for r in by_step if r["topic"].endswith(".posts") and r["value"]
                  and '"op":"u"' in r["value"])
    create = next(r for r in by_step if r["topic"].endswith(".comments") and r["value"]
                  and '"op":"c"' in r["value"])
    large = max((r for r in by_step if r["value"]), key=lambda r: len(r["value"]))
    assert len(large["value"]) > 16384, "the recording has a large (TOASTed) row"

    def op(value: str) -> Any:
        return lambda payload: payload.__setitem__("op", value)

    poison = {
        "invalid_json": {**update, "value": update["value"][: len(update["value"]) // 2]},
        "invalid_envelope": _mutate(update, lambda p: p.__setitem__("before", [1, 2])),
        "unknown_op": _mutate(update, op("x")),
        "unknown_table": _mutate(update, lambda p: p["source"].__setitem__("table", "ghosts")),
        "oversized": large,
        "invalid_key": {**create, "key": "not json {"},
    }
    valid = [update, create]
    stream = [valid[0], *poison.values(), valid[1]]
    produce(stack, [{**r, "topic": topic} for r in stream])

    group = f"dlq-{uid}"
    config = write_config(tmp_path, stack, group=group, topics=[topic],
                          overrides={"unknown_tables": "error", "max_event_bytes": 16384})
    with InProcessWorker(config) as running:
        running.wait_caught_up(stack, [topic])
        dead = {reason: running.metric("reconciler_dead_letters_total", {"reason": reason})
                for reason in poison}
        assert running.worker._stopping.is_set() is False
    assert dead == dict.fromkeys(poison, 1.0)

    letters = read_topic(stack, f"{group}.dlq", expected=len(poison))
    assert len(letters) == len(poison)
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers()}
        reason = headers["reconciler.reason"]
        sent = poison[reason]
        assert headers["reconciler.original.topic"] == topic
        assert headers["reconciler.original.partition"] == "0"
        assert int(headers["reconciler.original.offset"]) == stream.index(sent)
        assert headers["reconciler.error"]
        # The record itself is kept whole: nothing is lost.
        assert letter.value() == sent["value"].encode()
        assert letter.key() == (sent["key"].encode() if sent["key"] is not None else None)

    # The valid records around the poison were applied.
    a = valkey_clients["valkey-a"]
    update_id = json.loads(update["key"])["payload"]["id"]
    create_id = json.loads(create["key"])["payload"]["id"]
    wait_until(lambda: a.exists(f"post:{update_id}") and a.exists(f"comment:{create_id}"), 10,
               "the valid records' fences")
