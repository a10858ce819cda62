"""The local stack as the benchmarks use it: endpoints, configs, topics, shards.

The benchmarks keep their cache entries in Valkey database `BENCH_DB` on both shards
(the smoke test in `SMOKE_DB`),
so that resetting the cache between measurements (FLUSHDB) never touches the demo's
database 0. Topics are named `bench.<kind>.…`; consumer groups are fresh per
measurement.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import valkey
import yaml
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connectors.errors import ValkeyUnavailable
from connectors.valkey.functions import load_functions

ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = ROOT / "config" / "local" / "reconciler.yaml"  # the stack's worker config
ENDPOINTS_FILE = ROOT / ".stack" / "endpoints.json"  # written by `python -m stack up`
BENCH_DB = 9  # Valkey database of the benchmarks' cache entries (FLUSHDB between runs)
SMOKE_DB = 10  # the smoke test's database: it may run while a benchmark does
DEAD_LETTER_TOPIC = "bench.dlq"  # the workers' dead-letter topic (stays empty)
FENCE_TTL_SECONDS = 600  # longer than any run, so that expected results are exact
SHARD_SERVERS = {"a": "valkey-a", "b": "valkey-b"}  # shard-map name -> stack service
CODE_PACKAGES = ("reconciler", "connectors", "shard_map")  # the code under measurement
CODE_CONFIG = "config/local"  # extracted with the code: its config matches its settings
SHARD_WAIT = 120.0  # seconds to wait for a shard that refuses connections

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the stack's services listen."""

    kafka: str
    valkey: dict[str, str]  # shard name -> URL (any database: `db` is used)
    postgres_dsn: str  # the application's DSN: writes rows for the Debezium run
    db: int = BENCH_DB  # the Valkey database of the cache entries

    @classmethod
    def load(cls) -> Endpoints:
        """From CR_* variables (as the tests), else `.stack/endpoints.json`."""
        env = os.environ
        if "CR_KAFKA_BOOTSTRAP" in env:
            return cls(env["CR_KAFKA_BOOTSTRAP"],
                       {"a": env["CR_VALKEY_A_URL"], "b": env["CR_VALKEY_B_URL"]},
                       env["CR_POSTGRES_DSN"])
        if not ENDPOINTS_FILE.exists():
            raise SystemExit(f"no stack endpoints ({ENDPOINTS_FILE} is missing): start the "
                             "stack with `.venv/bin/python -m stack up`")
        found = json.loads(ENDPOINTS_FILE.read_text())
        return cls(found["kafka_bootstrap"],
                   {shard: found["valkey"][name] for shard, name in SHARD_SERVERS.items()},
                   found["postgres_dsn"])

    def shard_url(self, shard: str) -> str:
        """The shard's URL, pointed at the benchmarks' database."""
        parts = urlsplit(self.valkey[shard])
        return urlunsplit(parts._replace(path=f"/{self.db}"))


@dataclass(frozen=True, slots=True)
class Router:
    """Neighbourhood id -> shards, read from the local shard map (independently of the
    worker's resolver, so that expected results do not borrow the code under test)."""

    ranges: tuple[tuple[int, int, str], ...]
    moving: tuple[tuple[int, int, str, str], ...]
    names: tuple[str, ...]

    @classmethod
    def load(cls, path: Path) -> Router:
        return cls.of(yaml.safe_load(path.read_text()))

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Router:
        """From a shard map document (SPEC §4)."""
        return cls(tuple((r["from"], r["to"], r["shard"]) for r in doc["ranges"]),
                   tuple((m["from"], m["to"], m["source"], m["target"])
                         for m in doc.get("moving") or ()),
                   tuple(sorted(doc["shards"])))

    def home(self, neighborhood_id: int) -> str:
        for low, high, shard in self.ranges:
            if low <= neighborhood_id <= high:
                return shard
        raise ValueError(f"neighbourhood {neighborhood_id} is outside every range")

    def shards(self, neighborhood_id: int) -> tuple[str, ...]:
        """Where a row's keys live: its home shard, plus the target while it moves."""
        home = self.home(neighborhood_id)
        for low, high, source, target in self.moving:
            if low <= neighborhood_id <= high and source == home:
                return (home, target)
        return (home,)


def write_config(directory: Path, endpoints: Endpoints, *, group: str, topics: list[str],
                 client: Mapping[str, str] | None = None, base: Path = LOCAL_CONFIG,
                 shard_map: Mapping[str, Any] | None = None,
                 posts_keys: list[dict[str, Any]] | None = None,
                 kafka: Mapping[str, Any] | None = None) -> Path:
    """The local worker config (`base`, and the shard map next to it, or `shard_map`)
    with the stack's endpoints, `group`, `topics`, extra librdkafka properties `client`
    (kafka.client), the shards pointed at the benchmarks' database and, if given,
    `posts_keys` as public.posts' key templates and more `kafka` settings; returns its
    path."""
    config = yaml.safe_load(base.read_text())
    shard_map = dict(shard_map or yaml.safe_load((base.parent / "shard_map.yaml").read_text()))
    shard_map["shards"] = {name: {"url": endpoints.shard_url(name)}
                           for name in shard_map["shards"]}
    if posts_keys is not None:
        config["tables"]["public.posts"]["keys"] = posts_keys
    config["kafka"].update(bootstrap_servers=endpoints.kafka, group_id=group, topics=topics,
                           dead_letter_topic=DEAD_LETTER_TOPIC)
    config["kafka"].setdefault("client", {}).update(client or {})
    config["kafka"].update(kafka or {})
    config["fence_ttl_seconds"] = FENCE_TTL_SECONDS
    config["metrics"] = {"host": "127.0.0.1", "port": 0}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "shard_map.yaml").write_text(yaml.safe_dump(shard_map, sort_keys=False))
    path = directory / "reconciler.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------- code


@dataclass(frozen=True, slots=True)
class Code:
    """The worker code the runners import: the working tree, or a commit extracted
    with `git archive` (other engineers may be editing the working tree mid-run)."""

    directory: Path  # the runners' working directory: first on their sys.path
    ref: str  # "working tree", or the ref asked for
    commit: str
    dirty: bool  # the working tree's packages differ from the commit
    digest: str  # sha256 of the packages' files: equal digests, same code measured

    @classmethod
    def resolve(cls, ref: str | None) -> Code:
        head = _git("rev-parse", "HEAD")
        if ref is None:
            dirty = bool(_git("status", "--porcelain", "--", *CODE_PACKAGES))
            return cls(ROOT, "working tree", head, dirty, _digest(ROOT))
        commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
        directory = Path(tempfile.gettempdir()) / f"cr-bench-code-{commit[:12]}"
        if not directory.exists():
            staging = Path(tempfile.mkdtemp(prefix="cr-bench-code-"))
            archive = subprocess.run(["git", "archive", commit, *CODE_PACKAGES, CODE_CONFIG],
                                     cwd=ROOT,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(staging)], input=archive, check=True)
            (staging / "bench").symlink_to(ROOT / "bench")  # the runners themselves
            staging.rename(directory)
        return cls(directory, ref, commit, False, _digest(directory))

    @property
    def config(self) -> Path:
        """The local config that goes with this code (the working tree's if the commit
        has none)."""
        path = self.directory / CODE_CONFIG / LOCAL_CONFIG.name
        return path if path.exists() else LOCAL_CONFIG

    @property
    def router(self) -> Router:
        """Where this code's local shard map puts each neighbourhood."""
        return Router.load(self.config.parent / "shard_map.yaml")

    def as_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "commit": self.commit, "dirty": self.dirty,
                "digest": self.digest[:16], "directory": str(self.directory)}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def _digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((directory / package).rglob("*")):
            if path.suffix in (".py", ".lua"):
                digest.update(str(path.relative_to(directory)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- Kafka


def admin(endpoints: Endpoints) -> AdminClient:
    return AdminClient({"bootstrap.servers": endpoints.kafka})


def create_topic(endpoints: Endpoints, topic: str, partitions: int,
                 config: Mapping[str, str] | None = None) -> None:
    client = admin(endpoints)  # kept alive until the future resolves
    client.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                   config=dict(config or {}))])[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while topic not in client.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} was created but never appeared")
        time.sleep(0.2)


def delete_topic(endpoints: Endpoints, topic: str) -> None:
    client = admin(endpoints)
    with contextlib.suppress(KafkaException):  # already gone
        client.delete_topics([topic])[topic].result(timeout=30)


def delete_parking_topics(config: str | Path) -> None:
    """Delete the parking topics a worker with this config made at start, one per shard
    (`reconciler.pipeline.parking`), named from the YAML itself so that a config of an
    older commit (`--worker-ref`) reads too. Every benchmark run's group is new, so they
    would pile up on the stack: 978 of them, from benchmarks alone, on the stack this
    was found on, and a broker with thousands of topics is another machine to measure
    on. Tidying only: what it cannot do is printed, never raised."""
    path = Path(config)
    try:
        doc = yaml.safe_load(path.read_text())
        parking = (doc.get("valkey") or {}).get("parking") or {}
        prefix = parking.get("topic_prefix") or f"{doc['kafka']['group_id']}.parked"
        shards = yaml.safe_load((path.parent / doc["shard_map"]).read_text())["shards"]
        client = AdminClient({"bootstrap.servers": doc["kafka"]["bootstrap_servers"]})
        futures = client.delete_topics([f"{prefix}.{shard}" for shard in shards]).values()
    except (OSError, KeyError, TypeError, yaml.YAMLError, KafkaException) as exc:
        print(f"note: parking topics of {config} not deleted: {exc!r}")
        return
    for future in futures:
        with contextlib.suppress(KafkaException):  # never made (parking off), or gone
            future.result(timeout=30)


def topic_exists(endpoints: Endpoints, topic: str) -> bool:
    return topic in admin(endpoints).list_topics(timeout=10).topics


def end_offsets(endpoints: Endpoints, topic: str) -> dict[int, int]:
    """partition -> high watermark (the offset after the last record)."""
    consumer = Consumer({"bootstrap.servers": endpoints.kafka, "group.id": "bench-probe"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in sorted(partitions)}
    finally:
        consumer.close()


def start_group_at_end(endpoints: Endpoints, group: str, topic: str) -> None:
    """Commit `group`'s offsets at the current end of `topic` (it skips the history)."""
    ends = end_offsets(endpoints, topic)
    consumer = Consumer({"bootstrap.servers": endpoints.kafka, "group.id": group,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in ends.items()],
                        asynchronous=False)
    finally:
        consumer.close()


# --------------------------------------------------------------------------- Valkey


def shard_clients(endpoints: Endpoints) -> dict[str, valkey.Valkey]:
    """One client per shard on the benchmarks' database, with the functions loaded."""
    clients = {name: valkey.Valkey.from_url(endpoints.shard_url(name))
               for name in sorted(endpoints.valkey)}
    for name, client in clients.items():
        load_functions(client, shard=name)
    return clients


def server_stats(clients: Mapping[str, valkey.Valkey]) -> dict[str, dict[str, float]]:
    """Per shard: FCALL calls and microseconds (INFO commandstats), server CPU seconds."""
    out = {}
    for name, client in clients.items():
        stats: Any = client.info("commandstats")
        cpu: Any = client.info("cpu")
        fcall = stats.get("cmdstat_fcall", {})
        out[name] = {"fcall_calls": float(fcall.get("calls", 0)),
                     "fcall_usec": float(fcall.get("usec", 0)),
                     "cpu_seconds": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}
    return out


def flush(clients: Mapping[str, valkey.Valkey]) -> None:
    for client in clients.values():
        client.flushdb()


def retrying(call: Callable[[], T], what: str, timeout: float = SHARD_WAIT) -> T:
    """`call()`, retried while a shard refuses connections (the stack is shared: a test
    may be restarting a Valkey server); gives up after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (valkey.ConnectionError, valkey.TimeoutError, ValkeyUnavailable) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: a Valkey shard stayed unreachable: {exc}") from exc
            print(f"{what}: {exc}; retrying")
            time.sleep(1)
