"""Measure Shard.apply(): µs per key, split into Python work and the whole round trip.

    .venv/bin/python -m bench.apply [URL]

Not a test (no timing asserts anywhere): run it by hand when touching the hot path.
Keys start half absent, a quarter fresh data, a quarter stale data; each round then
raises every fence (the write path). The server's own time comes from INFO
commandstats (cmdstat_fcall); "apply" is the whole call as the worker sees it.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any, cast

from connectors.valkey.commands import apply_commands
from connectors.valkey.shard import Shard

DEFAULT_URL = "valkey://127.0.0.1:26380/0"  # valkey-b of the local stack
BATCHES = (1, 100, 1_000, 10_000, 50_000)  # keys per apply() call
ROUNDS_KEYS = 200_000  # keys applied per batch size (at least one call)


def fcall_usec(shard: Shard) -> tuple[int, int]:
    info = cast(dict[str, Any], shard.client.info("commandstats"))  # a sync client's answer
    stats = info.get("cmdstat_fcall", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def main(url: str) -> None:
    prefix = uuid.uuid4().hex[:8]
    with Shard("bench", url) as shard:
        shard.ensure_functions()
        print(f"server {shard.server_version()} at {shard.url}")
        print(f"{'batch':>7} {'build µs/key':>13} {'apply µs/key':>13} "
              f"{'server µs/key':>14} {'keys/s':>10}")
        for batch in BATCHES:
            keys = [f"{prefix}:post:{i}" for i in range(batch)]
            pipe = shard.client.pipeline(transaction=False)
            for i in range(0, batch, 2):
                pipe.hset(keys[i], mapping={"v": "10" if i % 4 else "1", "d": b"x" * 200})
            pipe.execute()  # type: ignore[no-untyped-call]
            ops = ["v"] * batch
            versions = [5] * batch
            rounds = max(1, ROUNDS_KEYS // batch)
            started = time.perf_counter()
            for _ in range(rounds):
                apply_commands(keys, ops, versions, 60_000)
            build = (time.perf_counter() - started) / (rounds * batch) * 1e6
            _, usec0 = fcall_usec(shard)
            started = time.perf_counter()
            for round_ in range(rounds):  # a higher version each round: fences are raised
                shard.apply(keys, ops, [5 + round_] * batch)
            total = (time.perf_counter() - started) / (rounds * batch) * 1e6
            _, usec1 = fcall_usec(shard)
            server = (usec1 - usec0) / (rounds * batch)
            print(f"{batch:>7} {build:>13.3f} {total:>13.3f} {server:>14.3f} "
                  f"{1e6 / total:>10,.0f}")
            shard.truncate(f"{prefix}:*")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL)
