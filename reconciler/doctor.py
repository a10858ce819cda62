"""Doctor: a preflight checklist that catches misconfiguration before it bites.

Each check yields one line, ``OK | WARN | FAIL <check>: <detail> — <what to do>``:

- kafka: the brokers answer; every configured topic exists (or the regex matches
  some); every table has a topic; the dead-letter topic exists; the group's committed
  offsets are not below the log start (retention deleted changes it never processed).
- shards: each answers, runs Valkey/Redis ≥ 7 (Functions), has (or accepts) the
  functions library, and lets the ACL user run every command the reconciler and the
  functions need (ACL DRYRUN, else a harmless probe); what only audit needs is a WARN.
- connect (optional ``connect.url``): the Debezium connector and its tasks RUNNING,
  and capturing every configured table.
- postgres (optional ``postgres.dsn``): each table exists with its primary key, shard
  key and version column; a BEFORE UPDATE trigger bumps the version, and the version
  never goes back across a delete and re-insert (a sequence on INSERT and UPDATE, not
  ``DEFAULT 1`` plus ``OLD + 1``: a WARN with the SQL); the replica identity carries
  what deletes and moves need; the table is in the connector's publication; the
  replication slot is active and its retained WAL bounded.

Any FAIL makes the exit status non-zero. Checks never write, except loading the
functions library on a shard where it is missing (what the worker does on first use).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry

from connectors.errors import ConnectorError, ValkeyRejected, ValkeyShardError
from connectors.kafka import admin_config
from connectors.valkey.functions import APPLY_FUNCTION, LIBRARY_NAME, LUA_SOURCE
from connectors.valkey.shard import Shard
from reconciler.checklist import FAIL, OK, WARN, Check
from reconciler.doctor_postgres import DEFAULT_MAX_RETAINED_WAL, postgres_checks
from reconciler.observe.metrics import Metrics
from reconciler.pipeline.clients import kafka_security
from reconciler.pipeline.shards import ShardPool
from reconciler.settings import Settings
from shard_map import ShardMapError, load_shard_map

log = logging.getLogger(__name__)

MIN_VERSION = (7, 0)  # Valkey/Redis Functions (FUNCTION LOAD, FCALL) arrived in 7.0
TIMEOUT = 10.0  # seconds for one Kafka / Connect request
PROBE_VALUE = "doctor-probe"  # placeholder value used to render template keys for ACL checks
# Commands on a cache key: the reconciler's FCALL and what the functions call inside it
# (ACLs apply there too), and UNLINK (truncate).
KEY_COMMANDS = (("FCALL", APPLY_FUNCTION, "1", "{key}", "60000", "u", "0"),
                ("HGET", "{key}", "v"), ("HSET", "{key}", "v", "1"), ("HEXISTS", "{key}", "d"),
                ("EXISTS", "{key}"), ("DEL", "{key}"), ("PEXPIRE", "{key}", "1000"),
                ("UNLINK", "{key}"))
SERVER_COMMANDS = (("PING",), ("INFO", "server"), ("SCAN", "0"), ("FUNCTION", "LOAD", "x"))
# What `reconciler audit` needs besides those: a WARN only, since audit may run as a user
# of its own (docs/operations.md), and the worker's least privilege lacks them.
AUDIT_KEY_COMMANDS = (("TYPE", "{key}"),)
AUDIT_SERVER_COMMANDS = (("DBSIZE",), ("RANDOMKEY",))
PROBE_KEY = "__cache-reconciler:doctor-probe"  # a key nothing else uses, for probes
EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]  # the log start offset
LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # the high watermark


class Doctor:
    """Runs every check against the services the config names."""

    def __init__(self, settings: Settings, *,
                 max_retained_wal_bytes: int = DEFAULT_MAX_RETAINED_WAL) -> None:
        self.settings = settings
        self.max_retained_wal = max_retained_wal_bytes

    def run(self) -> list[Check]:
        checks = list(self.kafka())
        checks += self.shards()
        connector: dict[str, str] | None = None
        for check in self.connect():
            if isinstance(check, dict):
                connector = check
            else:
                checks.append(check)
        checks += postgres_checks(self.settings, connector,
                                  max_retained_wal_bytes=self.max_retained_wal)
        return checks

    # ------------------------------------------------------------------ kafka

    def kafka(self) -> Iterator[Check]:
        kafka = self.settings.kafka
        admin = AdminClient(admin_config(  # type: ignore[arg-type]
            kafka.bootstrap_servers, kafka_security(self.settings), kafka.client,
            logger=logging.getLogger("kafka")))
        try:
            metadata = admin.list_topics(timeout=TIMEOUT)
        except KafkaException as exc:
            yield Check(FAIL, "kafka", f"cannot reach {kafka.bootstrap_servers}: {exc}",
                        "check kafka.bootstrap_servers, the network and kafka.security; "
                        "topic and offset checks skipped")
            return
        yield Check(OK, "kafka", f"{kafka.bootstrap_servers}: {len(metadata.brokers)} "
                                 "broker(s)")
        existing = metadata.topics
        if kafka.topic_regex:
            regex = re.compile(kafka.topic_regex)
            topics = sorted(t for t in existing if regex.search(t) and not t.startswith("__")
                            and t != kafka.dead_letter_topic)
            yield (Check(OK, "topic_regex", f"{kafka.topic_regex!r} matches {len(topics)} "
                                            f"topic(s): {', '.join(topics)}") if topics else
                   Check(FAIL, "topic_regex", f"{kafka.topic_regex!r} matches no topic",
                         "fix kafka.topic_regex, or check that the connector runs (it "
                         "creates a topic per table on the first change)"))
        else:
            topics = []
            for topic in kafka.topics:
                found = existing.get(topic)
                if found is None:
                    yield Check(FAIL, f"topic {topic}", "does not exist",
                                "fix kafka.topics (Debezium names topics <topic.prefix>."
                                "<schema>.<table>), or check that the connector captures the "
                                "table (table.include.list); it creates the topic on the "
                                "table's first change")
                elif found.error is not None:
                    yield Check(FAIL, f"topic {topic}", f"not readable: {found.error.str()}",
                                "grant this principal Describe and Read on the topic")
                else:
                    topics.append(topic)
                    yield Check(OK, f"topic {topic}", f"{len(found.partitions)} partition(s)")
        for table in self.settings.tables:
            if not any(t.endswith(f".{table}") for t in (kafka.topics or topics)):
                yield Check(WARN, f"table {table} topic",
                            f"no consumed topic ends with .{table}: its changes never "
                            "reach the reconciler",
                            "add <topic.prefix>." + table + " to kafka.topics")
        dlq = kafka.dead_letter_topic
        yield (Check(OK, "dead-letter topic", f"{dlq} exists") if dlq in existing else
               Check(WARN, "dead-letter topic", f"{dlq} does not exist",
                     "the worker creates it at start-up if its ACLs allow CreateTopics; "
                     f"otherwise create it (e.g. kafka-topics --create --topic {dlq})"))
        partitions = [TopicPartition(t, p) for t in topics for p in existing[t].partitions]
        if partitions:
            yield from self._group_offsets(admin, partitions)

    def _group_offsets(self, admin: AdminClient,
                       partitions: list[TopicPartition]) -> Iterator[Check]:
        group = self.settings.kafka.group_id
        name = f"group {group}"
        try:
            request = [ConsumerGroupTopicPartitions(group, partitions)]
            future = admin.list_consumer_group_offsets(request, request_timeout=TIMEOUT)[group]
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in future.result().topic_partitions if tp.offset >= 0}
            low = _offsets(admin, partitions, EARLIEST)
            high = _offsets(admin, partitions, LATEST)
        except KafkaException as exc:
            yield Check(WARN, name, f"committed offsets not readable: {exc}",
                        "grant this principal Describe on the group")
            return
        bounds = {tp: (low[tp], high[tp]) for tp in low if tp in high}
        if not committed:
            yield Check(OK, name, "no committed offsets yet: a new group starts at the "
                                  "earliest offset")
            return
        lost = {tp: (offset, bounds[tp][0]) for tp, offset in committed.items()
                if tp in bounds and offset < bounds[tp][0]}
        ahead = {tp: (offset, bounds[tp][1]) for tp, offset in committed.items()
                 if tp in bounds and offset > bounds[tp][1]}
        if lost:
            gone = sum(start - offset for offset, start in lost.values())
            where = ", ".join(f"{t}[{p}] at {o} < log start {s}"
                              for (t, p), (o, s) in sorted(lost.items()))
            yield Check(FAIL, name, f"committed offsets below the log start ({where}): "
                                    f"retention deleted {gone} change(s) the group never "
                                    "processed, so the cache may hold entries stale since",
                        "run `reconciler audit --repair` (and a replay from the log "
                        "start); then raise the topics' retention.ms above the longest "
                        "outage the worker may have")
        if ahead:
            where = ", ".join(f"{t}[{p}] at {o} > end {e}" for (t, p), (o, e) in
                              sorted(ahead.items()))
            yield Check(WARN, name, f"committed offsets beyond the end ({where}): was the "
                                    "topic recreated?",
                        "the worker restarts those partitions from the earliest offset")
        if not lost and not ahead:
            lag = sum(max(0, bounds[tp][1] - offset) for tp, offset in committed.items()
                      if tp in bounds)
            yield Check(OK, name, f"committed on {len(committed)} partition(s), lag {lag}")

    # ------------------------------------------------------------------ shards

    def shards(self) -> Iterator[Check]:
        try:
            shard_map = load_shard_map(self.settings.shard_map)
        except ShardMapError as exc:
            yield Check(FAIL, "shard map", str(exc), f"fix {self.settings.shard_map}")
            return
        pool = ShardPool(self.settings, Metrics.create(CollectorRegistry()))
        pool.update(shard_map)
        try:
            for name, shard in sorted(pool.clients().items()):
                yield from self._shard(name, shard)
        finally:
            pool.close()

    def _shard(self, name: str, shard: Shard) -> Iterator[Check]:
        check = f"shard {name}"
        try:
            version = shard.server_version()
        except ValkeyRejected as exc:
            yield Check(FAIL, check, f"{shard.url} refused us: {exc}",
                        "check valkey.username/password and the ACL user")
            return
        except ValkeyShardError as exc:
            yield Check(FAIL, check, f"{shard.url} unreachable: {exc}",
                        "check the URL in the shard map, the network, and that the server "
                        "is up; the worker cannot invalidate keys routed there")
            return
        numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
        if len(numbers) == 2 and numbers < MIN_VERSION:
            yield Check(FAIL, check, f"{shard.url} runs {version}: Functions need 7.0 or "
                                     "later", "upgrade to Valkey 7.2+ (or Redis 7+)")
            return
        yield Check(OK, check, f"{shard.url} reachable, version {version}")
        client: Any = shard.client
        try:
            libraries = client.function_list(library=LIBRARY_NAME, withcode=True)
            found = [_pairs(entry) for entry in libraries
                     if _pairs(entry).get(b"library_name") == LIBRARY_NAME.encode()]
        except Exception as exc:  # noqa: BLE001 - FUNCTION LIST refused: try loading
            log.debug("FUNCTION LIST on %s failed: %s", name, exc)
            found = []
        code = found[0].get(b"library_code") if found else None
        if code is not None and code.decode() == LUA_SOURCE:
            yield Check(OK, f"{check} functions", f"{LIBRARY_NAME} loaded")
        elif code is not None:
            yield Check(WARN, f"{check} functions", f"{LIBRARY_NAME} is loaded but differs "
                                                    "from this build's code",
                        "a worker of another build loaded it; it is replaced when that "
                        f"build is gone (FUNCTION DELETE {LIBRARY_NAME}, then any worker "
                        "reloads its own)")
        else:
            try:
                shard.ensure_functions()
                yield Check(OK, f"{check} functions", f"{LIBRARY_NAME} was missing; loaded "
                                                      "it")
            except ConnectorError as exc:
                yield Check(FAIL, f"{check} functions", f"cannot load {LIBRARY_NAME}: {exc}",
                            "allow FUNCTION LOAD for the ACL user, or load "
                            "connectors/valkey/functions.lua once as an admin")
        yield self._acl(name, shard)

    def _acl(self, name: str, shard: Shard) -> Check:
        check = f"shard {name} acl"
        user = self.settings.valkey.username or "default"
        client: Any = shard.client
        keys = sorted({t.render(dict.fromkeys(t.columns, PROBE_VALUE))
                       for spec in self.settings.tables.values() for t in spec.templates()})

        def on_keys(templates: tuple[tuple[str, ...], ...]) -> list[tuple[str, ...]]:
            return [tuple(part.replace("{key}", key) for part in command)
                    for key in keys for command in templates]

        worker = list(SERVER_COMMANDS) + on_keys(KEY_COMMANDS)
        audit = list(AUDIT_SERVER_COMMANDS) + on_keys(AUDIT_KEY_COMMANDS)
        try:
            pipe = client.pipeline(transaction=False)
            for command in worker + audit:
                pipe.execute_command("ACL", "DRYRUN", user, *command)
            replies = pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - the shard answered a moment ago
            return Check(WARN, check, f"could not check: {exc}", "run doctor again")
        if isinstance(replies[0], Exception):  # ACL DRYRUN itself not allowed: probe
            return self._probe(check, user, shard, keys[0] if keys else PROBE_KEY)

        def refused(commands: list[tuple[str, ...]], answers: list[Any]) -> list[tuple[str, str]]:
            return [(" ".join(command[:2] if command[0] == "FUNCTION" else command[:1]),
                     str(reply) if isinstance(reply, Exception) else reply.decode())
                    for command, reply in zip(commands, answers, strict=True)
                    if reply != b"OK"]

        denied = refused(worker, replies[:len(worker)])
        audit_denied = refused(audit, replies[len(worker):])
        if denied:
            first = "; ".join(sorted({f"{cmd}: {reason}" for cmd, reason in denied})[:4])
            needed = sorted({cmd.lower().replace(" ", "|") for cmd, _ in denied})
            return Check(FAIL, check, f"user {user} is refused {len(denied)} command(s): "
                                      f"{first}",
                         f"ACL SETUSER {user} " + " ".join(f"+{c}" for c in needed)
                         + " and key patterns for " + ", ".join(keys))
        shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        if audit_denied:
            needed = sorted({cmd.lower() for cmd, _ in audit_denied})
            return Check(WARN, check, f"user {user} may run every command the worker needs "
                                      f"(ACL DRYRUN on {shown}), but `reconciler audit` as "
                                      f"this user would be refused {', '.join(needed).upper()}",
                         "run audit as a user of its own (its ACL: docs/operations.md), or "
                         f"ACL SETUSER {user} " + " ".join(f"+{c}" for c in needed))
        return Check(OK, check, f"user {user} may run every command needed (ACL DRYRUN "
                                f"on {shown})")

    @staticmethod
    def _probe(check: str, user: str, shard: Shard, key: str) -> Check:
        """Without ACL DRYRUN: harmless calls on a template's key (the FCALL removes a
        key of a row that cannot exist, `doctor-probe`)."""
        client: Any = shard.client
        try:
            client.ping()
            client.info("server")
            client.scan(0, count=1)
            client.fcall(APPLY_FUNCTION, 1, key, 60000, "u", 0)
        except Exception as exc:  # noqa: BLE001 - any refusal is the finding
            return Check(FAIL, check, f"user {user}: {exc}",
                         "grant +fcall +function|load +ping +info +scan +unlink +hget +hset "
                         "+hexists +exists +del +pexpire and the key patterns of every "
                         "template")
        passed = (f"user {user}: probes passed on {key} (ACL DRYRUN not permitted, so "
                  "only one key was checked)")
        try:
            client.type(key)
        except Exception as exc:  # noqa: BLE001 - audit's command only: a warning
            return Check(WARN, check, f"{passed}, but `reconciler audit` as this user "
                                      f"would be refused: {exc}",
                         "run audit as a user of its own (its ACL: docs/operations.md), or "
                         f"ACL SETUSER {user} +type")
        return Check(OK, check, passed)

    # ------------------------------------------------------------------ connect

    def connect(self) -> Iterator[Check | dict[str, str]]:
        connect = self.settings.connect
        if connect is None:
            yield Check(WARN, "connect", "not configured: the Debezium connector's state is "
                                         "not checked",
                        "set connect.url (the Kafka Connect REST API, e.g. "
                        "http://connect:8083)")
            return
        base = connect.url.rstrip("/")
        try:
            found = self._get(f"{base}/connectors?expand=status&expand=info")
        except (OSError, ValueError) as exc:
            yield Check(FAIL, "connect", f"cannot reach {base}: {exc}",
                        "check connect.url and the network")
            return
        assert isinstance(found, dict)
        name = connect.connector or self._guess_connector(found)
        if name is None or name not in found:
            what = (f"{name} not found" if name else
                    "no single Debezium Postgres connector whose topic.prefix names the topics")
            yield Check(FAIL, "connector", f"{what} (connectors: "
                                           f"{', '.join(sorted(found)) or 'none'})",
                        "deploy the connector, or set connect.connector to its name")
            return
        status = found[name].get("status", {})
        config = found[name].get("info", {}).get("config", {})
        state = status.get("connector", {}).get("state", "UNKNOWN")
        tasks = status.get("tasks") or []
        bad = [t for t in tasks if t.get("state") != "RUNNING"]
        check = f"connector {name}"
        if state == "RUNNING" and tasks and not bad:
            yield Check(OK, check, f"RUNNING with {len(tasks)} task(s) RUNNING")
        elif state in ("PAUSED", "STOPPED"):
            yield Check(FAIL, check, f"{state}: no change is streamed, so the cache goes "
                                     "stale unnoticed",
                        f"resume it: curl -X PUT {base}/connectors/{name}/resume")
        elif state != "RUNNING":
            yield Check(FAIL, check, f"connector is {state}: {_trace(status.get('connector'))}",
                        f"fix the cause, then curl -X POST {base}/connectors/{name}/restart")
        else:
            task = bad[0] if bad else {}
            yield Check(FAIL, check, f"task {task.get('id', '?')} is "
                                     f"{task.get('state', 'missing')}: {_trace(task)}",
                        f"fix the cause, then curl -X POST {base}/connectors/{name}/tasks/"
                        f"{task.get('id', 0)}/restart")
        include = [p.strip() for p in config.get("table.include.list", "").split(",")
                   if p.strip()]
        missing = [t for t in self.settings.tables
                   if include and not any(re.fullmatch(p, t) for p in include)]
        if missing:
            yield Check(WARN, f"{check} tables", f"table.include.list does not capture "
                                                 f"{', '.join(missing)}",
                        "add them to the connector's table.include.list (and publication)")
        yield {k: v for k, v in config.items() if "password" not in k}

    def _guess_connector(self, found: dict[str, Any]) -> str | None:
        prefixes = {t.split(".", 1)[0] for t in self.settings.kafka.topics}
        candidates = [name for name, entry in found.items()
                      if "postgres" in entry.get("info", {}).get("config", {})
                      .get("connector.class", "").lower()
                      and entry["info"]["config"].get("topic.prefix") in prefixes]
        return candidates[0] if len(candidates) == 1 else None

    def _get(self, url: str) -> Any:
        connect = self.settings.connect
        assert connect is not None
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if connect.username is not None:
            secret = connect.password.get_secret_value() if connect.password else ""
            token = base64.b64encode(f"{connect.username}:{secret}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=connect.timeout_seconds) as response:
            return json.loads(response.read())

def _offsets(admin: AdminClient, partitions: list[TopicPartition],
             spec: Any) -> dict[tuple[str, int], int]:
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=TIMEOUT)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


def _pairs(entry: Any) -> dict[bytes, Any]:
    items = list(entry)
    return {items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}


def _trace(item: Any) -> str:
    trace = (item or {}).get("trace") or ""
    return trace.strip().splitlines()[0][:300] if trace.strip() else "no trace"


def run_doctor(settings: Settings, *,
               max_retained_wal_bytes: int = DEFAULT_MAX_RETAINED_WAL) -> list[Check]:
    return Doctor(settings, max_retained_wal_bytes=max_retained_wal_bytes).run()
