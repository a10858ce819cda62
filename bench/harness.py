"""What the throughput benchmark and the sweep share: a topic of the workload, the
cache it starts from, and measured consumers on them.

`write_topic()` creates a topic and writes the workload into it. A `Harness` holds
what one topic's measurements need — the worker code, the shards and the worker's
config — and measures one consumer, or a group of them (`bench.group`), in processes
of their own (`bench.runner`), resetting the cache first when asked; the stack is
shared, so a measurement that fails is tried once more with a fresh group.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import valkey

from bench import process
from bench.cache import LOCAL_KEYS, Keys, populate
from bench.env import (
    Code,
    Endpoints,
    Router,
    create_topic,
    end_offsets,
    flush,
    retrying,
    server_stats,
    shard_clients,
    write_config,
)
from bench.events import Envelope, Workload
from bench.producer import Produced, produce
from bench.report import busy_percent, cpu_ticks
from bench.runner import Spec

GROUP_POLL_SECONDS = 0.05  # kafka.poll_timeout_seconds of a group's members


def write_topic(endpoints: Endpoints, topic: str, partitions: int, workload: Workload,
                envelope: Envelope, compression: str) -> tuple[Produced, dict[int, int]]:
    """Create `topic` and write the workload into it; returns what was produced and
    the end offsets (partition -> offset after the last record)."""
    create_topic(endpoints, topic, partitions)
    produced = produce(endpoints.kafka, topic, workload.changes(), envelope,
                       compression=compression)
    ends = end_offsets(endpoints, topic)
    if sum(ends.values()) != workload.records:
        raise RuntimeError(f"{topic} holds {sum(ends.values())} records, expected "
                           f"{workload.records}")
    print(f"produced in {produced.seconds:.1f}s ({produced.records / produced.seconds:,.0f}"
          f"/s), mean value {produced.mean_value_bytes:,.0f} bytes")
    return produced, ends


@dataclass(slots=True)
class Harness:
    """Measurements of one topic of `workload`, the cache starting from `rows`."""

    endpoints: Endpoints
    code: Code
    workdir: Path
    topic: str
    ends: dict[int, int]
    workload: Workload
    router: Router
    rows: Mapping[int, int]  # id -> version cached at the start
    keys: Keys = LOCAL_KEYS
    shard_map: Mapping[str, Any] | None = None  # the worker's (None: the code's local one)
    client: Mapping[str, str] = field(default_factory=dict)  # the worker's librdkafka extras
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _clients: dict[str, valkey.Valkey] | None = field(default=None, init=False, repr=False)

    @property
    def clients(self) -> dict[str, valkey.Valkey]:
        if self._clients is None:
            self._clients = retrying(lambda: shard_clients(self.endpoints), "connecting")
        return self._clients

    @property
    def budget(self) -> float:
        """Seconds a measurement may take: a very slow worker still ends."""
        return 300 + self.workload.records / 2000

    def reset_cache(self) -> int:
        """Flush the shards and write the start state; returns the entries written."""
        def reset() -> int:
            flush(self.clients)
            return populate(self.clients, self.workload, self.router, self.rows, self.keys)

        return retrying(reset, "resetting the cache")

    def spec(self, kind: str, label: str, kafka: Mapping[str, Any] | None = None,
             **extra: Any) -> Spec:
        """A runner's spec, with a config of its own (with more `kafka` settings, if
        given) and a fresh consumer group."""
        config = write_config(self.workdir / label, self.endpoints,
                              group=f"bench-{label}-{self.uid}", topics=[self.topic],
                              client=self.client, base=self.code.config,
                              shard_map=self.shard_map,
                              posts_keys=None if self.keys == LOCAL_KEYS
                              else self.keys.templates(), kafka=kafka)
        return Spec(kind=kind, config=str(config), topic=self.topic, ends=self.ends,
                    out=str(self.workdir / f"{label}.result.json"), **extra)

    def measure(self, kind: str, label: str, *, reset_first: bool,
                timeout: float | None = None, consumers: int = 1,
                **extra: Any) -> dict[str, Any]:
        """One measurement (of `consumers` processes in one group when more than one);
        tried twice, because the stack is shared (a test may restart Kafka or a shard
        under us), with a fresh group and cache each time."""
        for attempt in (1, 2):
            if reset_first:
                self.reset_cache()
            name = label if attempt == 1 else f"{label}-retry"
            servers, ticks = self._server_stats(), cpu_ticks()
            try:
                result = self._run(kind, name, consumers, timeout or self.budget, extra)
                return {**result, "machine_cpu_busy_percent": busy_percent(ticks, cpu_ticks()),
                        "servers": _server_delta(servers, self._server_stats())}
            except RuntimeError as exc:
                if attempt == 2:
                    raise
                print(f"{label} failed, measuring it again: {str(exc)[:300]}")
        raise AssertionError("unreachable")

    def _run(self, kind: str, name: str, consumers: int, timeout: float,
             extra: dict[str, Any]) -> dict[str, Any]:
        if consumers == 1:
            return process.run(self.spec(kind, name, **extra), self.workdir, name,
                               timeout=timeout, code=self.code.directory)
        if consumers > len(self.ends):
            raise ValueError(f"{consumers} consumers in one group for {len(self.ends)} "
                             "partitions: some would read nothing")
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        # One config, one consumer group. The members wait in consume() for at most
        # GROUP_POLL_SECONDS when idle, so that all resume within that of the go (a
        # worker applies a resume between two polls); while records flow the timeout
        # is never reached.
        group = self.spec(kind, name, {"poll_timeout_seconds": GROUP_POLL_SECONDS}, **extra)
        members = {f"{name}-{index}": replace(
            group, group=str(folder), out=str(self.workdir / f"{name}-{index}.result.json"),
            progress=str(self.workdir / f"{name}-{index}.progress"))
            for index in range(consumers)}
        return process.run_group(members, self.workdir, timeout=timeout,
                                 code=self.code.directory)

    def _server_stats(self) -> dict[str, dict[str, float]]:
        try:
            return server_stats(self.clients)
        except (valkey.ConnectionError, valkey.TimeoutError):  # restarting: no figures
            return {}


def _server_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                  ) -> dict[str, dict[str, float | None]]:
    """Per shard, during one measurement: FCALLs, their server time, server CPU."""
    out: dict[str, dict[str, float | None]] = {}
    for shard, stats in after.items():
        if shard not in before:
            continue
        delta = {k: v - before[shard][k] for k, v in stats.items()}
        calls = delta["fcall_calls"]
        out[shard] = {"fcall_calls": int(calls),
                      "fcall_usec_per_call": round(delta["fcall_usec"] / calls, 1)
                      if calls else None,
                      "fcall_seconds": round(delta["fcall_usec"] / 1e6, 3),
                      "server_cpu_seconds": round(delta["cpu_seconds"], 3)}
    return out


def accounted(worker: Mapping[str, Any]) -> Counter[tuple[str, str]]:
    """The worker's (shard, result) counts, each derived-key delete it coalesced into a
    later one of its batch counted as absent: in these workloads nothing refills a
    derived key during the run, so it would have found nothing."""
    seen = Counter({(shard, result): n for shard, results in worker["invalidations"].items()
                    for result, n in results.items()})
    for shard, n in (worker.get("coalesced") or {}).items():
        seen[shard, "absent"] += n
    return seen
