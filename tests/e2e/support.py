"""Helpers for end-to-end tests against the real stack: configs, workers, rows.

- ``write_config``: a reconciler.yaml + shard_map.yaml for the stack's endpoints, with a
  fresh consumer group per test.
- ``start_group_at_end``: commit a new group's offsets at the topics' current ends, so
  a test processes only the changes it makes (Debezium's topics are shared).
- ``InProcessWorker``: the real Worker in a thread (fast, observable).
- ``WorkerProcess``: ``reconciler run`` as a subprocess (for kills and signals).
- ``Rows``: the demo schema's rows, written through psycopg as an application would.
- ``post_insert``: a recorded Debezium insert of a post, its id, neighbourhood and version
  changed, to produce to a topic of the test's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
import valkey
import yaml
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry

from reconciler.pipeline.worker import Worker
from reconciler.settings import load_settings
from stack.valkey import server_argv
from tests.conftest import ENDPOINTS_FILE, ROOT, Stack
from tests.unit.connectors.debezium.recorded import MULTI_POST_INSERT, SCHEMAS_TRUE, record

LOCAL_CONFIG = ROOT / "config" / "local" / "reconciler.yaml"
POSTS, COMMENTS, PROFILES = "nd.public.posts", "nd.public.comments", "nd.public.profiles"
SHARD_A_IDS = range(1, 400)  # neighbourhoods on shard a only (1..500, minus the move)
SHARD_B_IDS = range(501, 1001)  # neighbourhoods on shard b
MOVING_IDS = range(400, 451)  # being moved from a to b: on both


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def write_config(directory: Path, stack: Stack, *, group: str, topics: list[str] | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 shard_map: Mapping[str, Any] | None = None, key_prefix: str = "") -> Path:
    """The local config, pointed at `stack`, with its own group and metrics on port 0.

    `key_prefix` goes before every key template: the test's keys are then its own, never
    written by another test's worker consuming the same Debezium topics."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    shards = yaml.safe_load((LOCAL_CONFIG.parent / "shard_map.yaml").read_text())
    shards["shards"] = {"a": {"url": stack.valkey["valkey-a"]},
                        "b": {"url": stack.valkey["valkey-b"]}}
    if shard_map:
        shards.update(shard_map)
    config["kafka"]["bootstrap_servers"] = stack.kafka_bootstrap
    config["kafka"]["group_id"] = group
    config["kafka"]["dead_letter_topic"] = f"{group}.dlq"
    if topics is not None:
        config["kafka"]["topics"] = topics
    config["metrics"] = {"host": "127.0.0.1", "port": 0, "lag_refresh_seconds": 0.5}
    config["postgres"] = {"dsn": stack.postgres_reconciler_dsn}
    config["shard_map_reload_seconds"] = 0.5
    for table in config["tables"].values():
        for key in table["keys"]:
            key["template"] = key_prefix + key["template"]
    for key, value in (overrides or {}).items():
        _merge(config, key.split("."), value)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "shard_map.yaml").write_text(yaml.safe_dump(shards, sort_keys=False))
    path = directory / "reconciler.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


AVRO_PREFIX = "ndavro"  # the Avro connector's topic prefix (stack/apicurio.py)


def schema_registry_url(stack: Stack) -> str:
    """The stack's schema registry (`python -m stack up apicurio`), checked to answer and
    to have the Avro connector running; the test fails saying how to start them."""
    url = os.environ.get("CR_SCHEMA_REGISTRY_URL")
    if url is None and ENDPOINTS_FILE.exists():
        url = json.loads(ENDPOINTS_FILE.read_text()).get("schema_registry_url")
    how = "start them with `python -m stack up apicurio` (scripts/test does)"
    if not url:
        pytest.fail(f"no schema registry in the stack's endpoints: {how}", pytrace=False)
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=5):
            pass
        connect = stack.connect_url.rstrip("/")
        with urllib.request.urlopen(f"{connect}/connectors/nd-avro/status",
                                    timeout=5) as answer:
            state = json.loads(answer.read())
    except OSError as exc:
        pytest.fail(f"the schema registry ({url}) or the Avro connector does not answer "
                    f"({exc}): {how}", pytrace=False)
    tasks = state.get("tasks") or []
    if state["connector"]["state"] != "RUNNING" or not tasks or any(
            task["state"] != "RUNNING" for task in tasks):
        pytest.fail(f"the Avro connector nd-avro is not running ({state}): {how}",
                    pytrace=False)
    return str(url)


def avro_overrides(stack: Stack) -> dict[str, Any]:
    """`write_config` overrides for the Avro topics."""
    return {"kafka.format": "avro",
            "kafka.schema_registry": {"url": schema_registry_url(stack)}}


FLAT_PREFIX = "ndflat"  # the flattened connector's topic prefix (stack/flat.py)


def flat_overrides(stack: Stack) -> dict[str, Any]:
    """`write_config` overrides for the flattened topics, once the flattened connector
    (nd-flat) is checked to run; the test fails saying how to start it."""
    how = "start it with `python -m stack up connect-flat` (scripts/test does)"
    try:
        with urllib.request.urlopen(f"{stack.connect_url.rstrip('/')}/connectors/nd-flat/"
                                    "status", timeout=5) as answer:
            state = json.loads(answer.read())
    except OSError as exc:
        pytest.fail(f"the flattened connector nd-flat does not answer ({exc}): {how}",
                    pytrace=False)
    tasks = state.get("tasks") or []
    if state["connector"]["state"] != "RUNNING" or not tasks or any(
            task["state"] != "RUNNING" for task in tasks):
        pytest.fail(f"the flattened connector nd-flat is not running ({state}): {how}",
                    pytrace=False)
    return {"kafka.format": "flattened"}


def _merge(config: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        config = config.setdefault(part, {})
    config[path[-1]] = value


# --------------------------------------------------------------------------- Kafka


def post_insert(post_id: int, neighborhood_id: int, version: int = 1) -> tuple[bytes, bytes]:
    """Key and value of the recorded insert (op `c`) of a post, with its id, neighbourhood
    and version changed: what Debezium emits for such a row."""

    def change(payload: dict[str, Any]) -> None:
        payload["after"].update(id=post_id, neighborhood_id=neighborhood_id,
                                system_version=version)

    event = record(SCHEMAS_TRUE, MULTI_POST_INSERT).with_payload(change).with_key(
        lambda key: key.__setitem__("id", post_id))
    assert event.payload()["op"] == "c" and event.payload()["source"]["table"] == "posts"
    key, value = event.key_bytes(), event.value_bytes()
    assert key is not None and value is not None
    return key, value


def admin(stack: Stack) -> AdminClient:
    return AdminClient({"bootstrap.servers": stack.kafka_bootstrap})


def create_topic(stack: Stack, name: str, partitions: int = 3) -> str:
    client = admin(stack)  # kept alive until the future completes
    futures = client.create_topics([NewTopic(name, num_partitions=partitions,
                                             replication_factor=1)])
    futures[name].result(timeout=30)
    wait_until(lambda: name in client.list_topics(timeout=5).topics, 30, f"topic {name}")
    return name


def end_offsets(stack: Stack, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "cr-probe"})
    try:
        out = {}
        metadata = consumer.list_topics(timeout=10)
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                         timeout=10)
                out[topic, partition] = high
        return out
    finally:
        consumer.close()


def start_group_at_end(stack: Stack, group: str, topics: list[str]) -> None:
    """Commit `group`'s offsets at the current end of `topics` (it skips their history)."""
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        offsets = [TopicPartition(t, p, o) for (t, p), o in end_offsets(stack, topics).items()]
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def committed(stack: Stack, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group})
    try:
        partitions = [TopicPartition(t, p) for t, p in end_offsets(stack, topics)]
        return {(tp.topic, tp.partition): tp.offset
                for tp in consumer.committed(partitions, timeout=10)}
    finally:
        consumer.close()


def read_topic(stack: Stack, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Every record of `topic` from the beginning, once `expected` have arrived."""
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap,
                         "group.id": f"cr-reader-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                records.append(message)
        # and nothing more arrives
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                records.append(message)
    finally:
        consumer.close()
    return records


# --------------------------------------------------------------------------- workers


class InProcessWorker:
    """The real worker, running in a thread of the test process."""

    def __init__(self, config: Path, **kwargs: Any) -> None:
        self.settings = load_settings(config)
        self.registry = CollectorRegistry()
        self.worker = Worker(self.settings, registry=self.registry, **kwargs)
        self.code: int | None = None
        self._thread = threading.Thread(target=self._run, name="test-worker", daemon=True)

    def _run(self) -> None:
        self.code = self.worker.run()

    def __enter__(self) -> InProcessWorker:
        self._thread.start()
        wait_until(lambda: self.worker._joined, 60, "the worker to join its group")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 60.0) -> int | None:
        self.worker.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the worker did not stop"
        return self.code

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value

    def wait_caught_up(self, stack: Stack, topics: list[str], timeout: float = 60.0) -> None:
        """Wait until every record now on `topics` has been reconciled and stored."""
        ends = end_offsets(stack, topics)
        group = self.worker.group_id

        def done() -> bool:
            positions = dict(self.worker._positions)
            if any(positions.get(tp) is None for tp, end in ends.items() if end > 0):
                # Nothing processed there yet: the group's committed offset is its position.
                for tp, offset in committed(stack, group, topics).items():
                    if positions.get(tp) is None and offset >= 0:
                        positions[tp] = offset
            return all((positions.get(tp) or 0) >= end for tp, end in ends.items() if end > 0)

        wait_until(done, timeout, f"the worker to reach {ends}", interval=0.1)


class WorkerProcess:
    """`reconciler run` as a child process."""

    def __init__(self, config: Path, log_path: Path, env: Mapping[str, str] | None = None):
        self.config = config
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "-c", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.port: int | None = None

    def metrics_port(self, timeout: float = 60.0) -> int:
        if self.port is None:
            def find() -> int | None:
                text = self.log_path.read_text(errors="replace")
                marker = "/freshness on "
                for line in text.splitlines():
                    if marker in line:
                        return int(line.rsplit(":", 1)[1])
                assert self.proc.poll() is None, f"worker exited:\n{text[-3000:]}"
                return None

            self.port = wait_until(find, timeout, "the worker's metrics port")
        return self.port

    def get(self, path: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.metrics_port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        return status, (json.loads(body) if path != "/metrics" else body.decode())

    def ready(self) -> dict[str, Any]:
        return self.get("/readyz")[1]  # type: ignore[no-any-return]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._log.close()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def alive(self) -> bool:
        return self.proc.poll() is None


# --------------------------------------------------------------------------- rows


class Rows:
    """Rows of the demo schema, written as the application would."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        assert row is not None, sql
        return row

    def insert_post(self, neighborhood_id: int, title: str = "hello") -> tuple[int, int]:
        return tuple(self.one(  # type: ignore[return-value]
            "INSERT INTO posts (neighborhood_id, author_id, title, body) VALUES (%s, 1, %s, 'b')"
            " RETURNING id, system_version", (neighborhood_id, title)))

    def update_post(self, post_id: int, **columns: Any) -> int:
        columns = columns or {"title": f"t{time.monotonic_ns()}"}
        sets = ", ".join(f"{name} = %s" for name in columns)
        return int(self.one(f"UPDATE posts SET {sets} WHERE id = %s RETURNING system_version",
                            (*columns.values(), post_id))[0])

    def delete_post(self, post_id: int) -> None:
        self.conn.execute("DELETE FROM posts WHERE id = %s", (post_id,))

    def post_version(self, post_id: int) -> int | None:
        row = self.conn.execute("SELECT system_version FROM posts WHERE id = %s",
                                (post_id,)).fetchone()
        return None if row is None else int(row[0])

    def insert_comment(self, post_id: int, neighborhood_id: int) -> tuple[int, int]:
        return tuple(self.one(  # type: ignore[return-value]
            "INSERT INTO comments (post_id, neighborhood_id, author_id, body) "
            "VALUES (%s, %s, 1, 'c') RETURNING id, system_version", (post_id, neighborhood_id)))

    def update_comment(self, comment_id: int, **columns: Any) -> int:
        sets = ", ".join(f"{name} = %s" for name in columns)
        return int(self.one(
            f"UPDATE comments SET {sets} WHERE id = %s RETURNING system_version",
            (*columns.values(), comment_id))[0])


@contextlib.contextmanager
def rows(stack: Stack) -> Iterator[Rows]:
    db = Rows(stack.postgres_dsn)
    try:
        yield db
    finally:
        db.close()


# --------------------------------------------------------------------------- valkey


class PrivateValkey:
    """A valkey-server of the test's own, restartable: without persistence, unless
    `options` (extra server arguments, e.g. ``("--save", "3600 1")``) turn it on —
    it then loads what it saved in `folder` when it starts again."""

    def __init__(self, folder: Path, port: int, options: tuple[str, ...] = ()) -> None:
        self.folder, self.port, self.options = folder, port, options
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_free_port(cls, folder: Path, options: tuple[str, ...] = ()) -> PrivateValkey:
        """One on a free loopback port, started."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        server = cls(folder, port, options)
        server.start()
        return server

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(server_argv(self.port, self.folder, *self.options),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = valkey.Valkey(port=self.port)
        wait_until(lambda: _pings(client), 10, f"valkey on {self.port}")
        client.close()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (which saves, when `options` set save points)."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash; nothing saved on the way down."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections open, nothing answered (a shard cut off)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def thaw_if_frozen(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)


def _pings(client: valkey.Valkey) -> bool:
    try:
        return bool(client.ping())
    except valkey.ConnectionError:
        return False
