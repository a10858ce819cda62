"""Watch cache keys until their fence appears: `python -m bench.probe OUT INTERVAL`.

Reads one JSON line per watched entry on stdin — `[index, url, key, version]`, sent
when the change is written — and polls every pending key (one pipelined HGET per
shard every `INTERVAL` seconds) until its `v` field reaches `version`. When stdin
closes it finishes the pending keys (or gives up after `GIVE_UP` seconds) and writes
`{index: seen unix time}` as JSON to `OUT`. The time a fence was seen is the midpoint
between the last poll that did not find it (sent) and the one that did (answered):
the fence was written in between, so the estimate is unbiased, within half a poll
interval and a round trip. It prints `ready` once it listens. A
process of its own, so that polling shares no interpreter with the producer.
"""

from __future__ import annotations

import json
import os
import selectors
import sys
import time
from pathlib import Path
from typing import Any

import valkey

GIVE_UP = 30.0  # seconds after stdin closes before the unseen keys are abandoned


def main(out: str, interval: float) -> int:
    clients: dict[str, valkey.Valkey] = {}
    pending: dict[int, tuple[str, str, int]] = {}  # index -> url, key, version
    last_missed: dict[int, float] = {}  # index -> when the last poll that missed it was sent
    seen: dict[int, float] = {}
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    buffer = b""
    closed_at: float | None = None
    print("ready", flush=True)  # the writer waits for this before it starts
    while closed_at is None or (pending and time.monotonic() - closed_at < GIVE_UP):
        if closed_at is None and selector.select(timeout=0 if pending else interval):
            chunk = os.read(stdin, 65536)
            if not chunk:
                closed_at = time.monotonic()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                index, url, key, version = json.loads(line)
                pending[index] = (url, key, version)
                last_missed[index] = time.time()
                if url not in clients:
                    clients[url] = valkey.Valkey.from_url(url)
        if pending:
            _poll(clients, pending, last_missed, seen)
            time.sleep(interval)
    Path(out).write_text(json.dumps({"seen": seen, "unseen": sorted(pending)}))
    return 0


def _poll(clients: dict[str, valkey.Valkey], pending: dict[int, tuple[str, str, int]],
          last_missed: dict[int, float], seen: dict[int, float]) -> None:
    for url, client in clients.items():
        mine = [(index, key, version) for index, (u, key, version) in pending.items()
                if u == url]
        if not mine:
            continue
        pipe: Any = client.pipeline(transaction=False)
        for _, key, _ in mine:
            pipe.hget(key, "v")
        sent = time.time()
        try:
            replies = pipe.execute()
        except (valkey.ConnectionError, valkey.TimeoutError):
            continue  # a shard restarting (another test?): the worker retries, so do we
        now = time.time()
        for (index, _, version), reply in zip(mine, replies, strict=True):
            if reply is not None and int(reply) >= version:
                seen[index] = (last_missed.pop(index) + now) / 2
                del pending[index]
            else:
                last_missed[index] = sent


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
