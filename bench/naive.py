"""The naive baseline, run by `bench.runner`: what a team would write first.

One message at a time (`poll()`), `json.loads`, one synchronous `FCALL cr<N>_apply` per
key (the same semantic work as the worker: the same keys, shards and ops), a
synchronous commit per message; it stops at the spec's `limit_records` /
`limit_seconds`, and its rate is extrapolated.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import valkey
import yaml
from confluent_kafka import Consumer

from bench.cache import actions, by_shard
from bench.env import Router
from bench.events import DELETE, Change
from bench.meter import STALL_SECONDS, Meter
from connectors.valkey.functions import APPLY_FUNCTION
from reconciler.settings import Settings

if TYPE_CHECKING:
    from bench.runner import Spec


def naive(spec: Spec, settings: Settings) -> dict[str, Any]:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": settings.kafka.group_id,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([spec.topic])
    shard_map = yaml.safe_load(settings.shard_map.read_text())
    clients: dict[str, Any] = {name: valkey.Valkey.from_url(shard["url"])
                               for name, shard in shard_map["shards"].items()}
    router = Router.load(settings.shard_map)
    ttl_ms = settings.fence_ttl_seconds * 1000
    results: Counter[tuple[str, str]] = Counter()
    meter = Meter()
    limit = min(spec.records, spec.limit_records or spec.records)
    spent = {"parse_and_valkey": 0.0, "commit": 0.0, "shard_down": 0.0}  # seconds in each
    clock = time.perf_counter
    deadline = float("inf")
    last = clock()
    while meter.records < limit and clock() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            if clock() - last > STALL_SECONDS:
                break
            continue
        if meter.started is None:
            meter.start()
            deadline = clock() + (spec.limit_seconds or float("inf"))
        value = message.value()
        last = clock()
        if value is not None:
            change = _naive_change(json.loads(value))
            for shard, key, op, version in actions(change, router):
                reply = _fcall(clients[shard], key, ttl_ms, op, version, spent)
                results[shard, reply[0].decode()] += 1
            spent["parse_and_valkey"] += clock() - last
            last = clock()
        consumer.commit(message=message, asynchronous=False)
        spent["commit"] += clock() - last
        last = clock()
        meter.records += 1
    meter.finish()
    consumer.close()
    return {**meter.as_json(), "capped": meter.records < spec.records,
            "seconds_in": {k: round(v, 3) for k, v in spent.items()},
            "invalidations": by_shard(results)}


def _fcall(client: Any, key: str, ttl_ms: int, op: str, version: int,
           spent: dict[str, float]) -> Any:
    """One FCALL; while the shard refuses connections (a test restarting it), wait."""
    while True:
        try:
            return client.execute_command("FCALL", APPLY_FUNCTION, 1, key, ttl_ms, op, version)
        except (valkey.ConnectionError, valkey.TimeoutError):
            started = time.perf_counter()
            time.sleep(0.5)
            spent["shard_down"] += time.perf_counter() - started


def _naive_change(event: dict[str, Any]) -> Change:
    payload = event["payload"] if "schema" in event and "payload" in event else event
    op = payload["op"]
    row = payload["before"] if op == DELETE else payload["after"]
    return Change(op, row["id"], row["neighborhood_id"], row["system_version"])
