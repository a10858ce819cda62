"""A TRUNCATE of a million keys under load: `python -m bench.truncate [--keys N]`.

Seeds `keys` cached posts on shard a of the benchmarks' database, then sends the
worker a `public.posts` TRUNCATE followed by a stream of updates of posts on shard b
(`--rate` per second) for as long as the truncate runs. Prints how long the truncate
took and at what rate, the longest the worker's loop went without asking Kafka for
records (its liveness: a truncate inline held it for the whole scan), and how long the
updates on shard b took from being produced to their fence being visible — with the
truncate running in steps, they do not wait for it. Needs the local stack
(`python -m stack up`); prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from bench.env import Endpoints, create_topic, delete_topic, shard_clients, write_config
from bench.events import Change, Envelope
from reconciler.logs import configure_logging
from reconciler.pipeline.hooks import NoHooks
from reconciler.pipeline.worker import Worker
from reconciler.settings import load_settings

ON_B = 700  # a neighbourhood on shard b


class LoopGaps(NoHooks):
    """The longest time between two consume() calls of the worker's loop."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.longest = 0.0

    def polled(self, records: int, seconds: float) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last - seconds)
        self.last = now


def seed(client: object, keys: int) -> float:
    started = time.monotonic()
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for n in range(1, keys + 1):
        pipe.hset(f"post:{n}", mapping={"v": 1, "d": b"x"})
        if n % 10_000 == 0:
            pipe.execute()
    pipe.execute()
    return time.monotonic() - started


def truncate_value() -> bytes:
    """A posts TRUNCATE as the connector writes it (bare payload: op t, table in source)."""
    now = int(time.time() * 1000)
    return json.dumps({"op": "t", "ts_ms": now, "source": {
        "schema": "public", "table": "posts", "ts_ms": now, "db": "nd"}}).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.truncate", description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=200.0, help="updates/s on shard b")
    parser.add_argument("--max-keys-per-second", type=float, default=50_000.0)
    args = parser.parse_args(argv)
    configure_logging("WARNING", False)
    endpoints = Endpoints.load()
    topic = f"bench-truncate-{uuid.uuid4().hex[:8]}"
    clients = shard_clients(endpoints)
    create_topic(endpoints, topic, 1)
    envelope = Envelope(schemas=True)
    try:
        print(f"seeding {args.keys:,} keys on shard a ...", flush=True)
        print(f"  {seed(clients['a'], args.keys):.1f}s")
        workdir = Path(tempfile.mkdtemp(prefix="bench-truncate-"))
        path = write_config(workdir, endpoints, group=f"bench-truncate-{uuid.uuid4().hex[:6]}",
                            topics=[topic])
        config = yaml.safe_load(path.read_text())
        config["valkey"] = {"truncate_max_keys_per_second": args.max_keys_per_second}
        path.write_text(yaml.safe_dump(config))
        gaps = LoopGaps()
        worker = Worker(load_settings(path), registry=CollectorRegistry(), serve_metrics=False,
                        hooks=gaps)
        runner = threading.Thread(target=worker.run, daemon=True)
        runner.start()
        producer = Producer({"bootstrap.servers": endpoints.kafka})
        started = time.monotonic()
        producer.produce(topic, key=None, value=truncate_value())
        producer.flush(30)
        delays: list[float] = []
        row = 0
        b: Any = clients["b"]
        registry = worker.metrics.registry
        while True:
            removed = registry.get_sample_value("reconciler_truncated_keys_total",
                                                {"shard": "a"}) or 0.0
            if removed >= args.keys:
                break
            row += 1
            change = Change("u", 10_000_000 + row, ON_B, 5)
            producer.produce(topic, key=envelope.key(change.id), value=envelope.value(change))
            producer.flush(5)
            sent = time.monotonic()
            key = f"post:{change.id}"
            while b.hget(key, "v") != b"5" and time.monotonic() - sent < 30:
                time.sleep(0.002)
            delays.append(time.monotonic() - sent)
            time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - sent)))
        took = time.monotonic() - started
        worker.stop()
        runner.join(60)
        print(f"truncate of {args.keys:,} keys: {took:.1f}s ({args.keys / took:,.0f} keys/s, "
              f"limit {args.max_keys_per_second:,.0f}/s)")
        print(f"longest loop turn without asking Kafka: {gaps.longest * 1000:.0f} ms")
        if delays:
            delays.sort()
            print(f"{len(delays)} updates on shard b during it, produce -> fence: p50 "
                  f"{statistics.median(delays) * 1000:.0f} ms, p99 "
                  f"{delays[int(len(delays) * 0.99) - 1] * 1000:.0f} ms, max "
                  f"{delays[-1] * 1000:.0f} ms")
    finally:
        for client in clients.values():
            for key in client.scan_iter("post:*", count=10_000):
                client.delete(key)
        delete_topic(endpoints, topic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
