"""Record real Debezium events into ``tests/fixtures/debezium/``.

``python -m stack.capture`` (the stack must be up: ``python -m stack up``):

1. seeds one row in each of posts, comments and profiles (the initial snapshot's
   ``op: r`` events);
2. registers two temporary connectors derived from ``stack/connect/nd-postgres.json``:
   topic prefix ``capjson`` (JSON converter, ``schemas.enable=true``) and ``capbare``
   (``schemas.enable=false``), each with its own replication slot, on the same
   publication, and waits until both run and have finished their snapshot;
3. runs a scripted workload covering every event shape of SPEC section 3, one
   transaction per step;
4. reads every topic of each prefix from the beginning, keeps the records this run
   caused (by transaction id and seeded key: other tests may write concurrently),
   orders them as the workload ran, checks that every shape is present (failing
   loudly otherwise) and writes ``schemas_true.jsonl`` / ``schemas_false.jsonl`` (the
   input format of ``reconciler plan``) and a generated ``README.md``;
5. always (``finally``) stops the connectors, resets their offsets, deletes them,
   drops their replication slots (as the superuser: a leftover slot retains WAL
   forever), deletes their topics and the rows the run created.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import heapq
import json
import secrets
import sys
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from stack import connect as stack_connect
from stack import kafka, postgres, services
from stack.process import LOG_DIR, ROOT, STACK_DIR, StackError, http_json

FIXTURE_DIR = ROOT / "tests" / "fixtures" / "debezium"
CONNECTOR_PREFIX = "cr-capture-"
SLOT_PREFIX = "cr_capture_"
# prefix -> (schemas.enable, fixture file)
PREFIXES: dict[str, tuple[bool, str]] = {
    "capjson": (True, "schemas_true.jsonl"),
    "capbare": (False, "schemas_false.jsonl"),
}
UNAVAILABLE = "__debezium_unavailable_value"
PK = {"posts": "id", "comments": "id", "profiles": "user_id"}
HEARTBEATS_KEPT = 2
TIMEOUT = 180.0
COMMAND = ".venv/bin/python -m stack.capture"


class CaptureError(RuntimeError):
    """The capture could not run, or what Debezium emitted misses a required shape."""


def log(message: str) -> None:
    print(f"[capture] {message}", file=sys.stderr, flush=True)


def bootstrap() -> str:
    return kafka.bootstrap()


def heartbeat_topic(prefix: str) -> str:
    return f"__debezium-heartbeat.{prefix}"


def owned_topic(prefix: str, topic: str) -> bool:
    return topic.startswith(prefix + ".") or topic == heartbeat_topic(prefix)


# --------------------------------------------------------------------------- Kafka


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: str | None
    headers: list[tuple[str, str | None]]
    # filled in while analysing
    key_payload: Any = None
    payload: Any = None
    step: str = ""
    description: str = ""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def has_header(self, name: str) -> bool:
        return any(k == name for k, _ in self.headers)

    def fixture_line(self) -> str:
        return json.dumps({
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "timestamp": self.timestamp, "key": self.key, "value": self.value,
            "headers": [[k, v] for k, v in self.headers],
        })


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8")


def admin() -> Any:
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": bootstrap()})


def prefix_topics(prefix: str) -> list[str]:
    topics = admin().list_topics(timeout=10).topics
    return sorted(t for t in topics if owned_topic(prefix, t))


def read_all(prefix: str) -> dict[tuple[str, int], list[Record]]:
    """Every record of every topic of ``prefix``, from the beginning to the current end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    metadata = admin().list_topics(timeout=10)
    partitions = [TopicPartition(t, p, OFFSET_BEGINNING)
                  for t, meta in sorted(metadata.topics.items()) if owned_topic(prefix, t)
                  for p in sorted(meta.partitions)]
    out: dict[tuple[str, int], list[Record]] = {}
    if not partitions:
        return out
    consumer = Consumer({"bootstrap.servers": bootstrap(),
                         "group.id": f"cr-capture-reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.auto.offset.store": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    try:
        remaining: dict[tuple[str, int], int] = {}
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            out[(tp.topic, tp.partition)] = []
            if high > low:
                remaining[(tp.topic, tp.partition)] = high
        consumer.assign(partitions)
        deadline = time.monotonic() + 60
        while remaining:
            if time.monotonic() > deadline:
                raise CaptureError(f"timed out reading {prefix} topics; still missing {remaining}")
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                raise CaptureError(f"kafka error while reading {msg.topic()}: {msg.error()}")
            tp_key = (msg.topic(), msg.partition())
            out[tp_key].append(Record(
                topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                timestamp=msg.timestamp()[1], key=_text(msg.key()), value=_text(msg.value()),
                headers=[(k, _text(v)) for k, v in (msg.headers() or [])],
            ))
            if tp_key in remaining and msg.offset() + 1 >= remaining[tp_key]:
                del remaining[tp_key]
    finally:
        consumer.close()
    return out


def delete_topics(prefix: str) -> None:
    topics = prefix_topics(prefix)
    if not topics:
        return
    log(f"deleting topics {', '.join(topics)}")
    client = admin()  # must outlive the futures
    for topic, future in client.delete_topics(topics, operation_timeout=30).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - reported, cleanup goes on
            log(f"could not delete topic {topic}: {exc}")
    deadline = time.monotonic() + 60
    while prefix_topics(prefix) and time.monotonic() < deadline:
        time.sleep(0.5)


# --------------------------------------------------------------------------- Connect


def connector_name(prefix: str) -> str:
    return CONNECTOR_PREFIX + prefix


def slot_name(prefix: str) -> str:
    return SLOT_PREFIX + prefix


def capture_config(prefix: str, schemas: bool, seeds: dict[str, list[str]]) -> dict[str, str]:
    config = stack_connect.connector_config()
    enabled = "true" if schemas else "false"
    config.update({
        "topic.prefix": prefix,
        "slot.name": slot_name(prefix),
        "key.converter.schemas.enable": enabled,
        "value.converter.schemas.enable": enabled,
        # The snapshot reads only the rows this run seeded, never other tests' data.
        "snapshot.select.statement.overrides": ",".join(f"public.{t}" for t in PK),
    })
    for table, pk in PK.items():
        ids = ", ".join(f"'{v}'" for v in seeds[table])
        config[f"snapshot.select.statement.overrides.public.{table}"] = (
            f"SELECT * FROM public.{table} WHERE {pk} IN ({ids})")
    return config


def connect(method: str, path: str, body: object | None = None) -> Any:
    return http_json(method, stack_connect.connect_url(path), body)


def connector_state(name: str) -> tuple[str, list[dict[str, Any]]]:
    status = connect("GET", f"/connectors/{name}/status")
    return status["connector"]["state"], status.get("tasks") or []


def wait_running(name: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.HTTPError):
            state, tasks = connector_state(name)
            for task in tasks:
                if task.get("state") == "FAILED":
                    raise CaptureError(f"connector {name} task failed:\n"
                                       f"{task.get('trace', '')[:3000]}")
            if state == "FAILED":
                raise CaptureError(f"connector {name} failed")
            if state == "RUNNING" and tasks and all(t["state"] == "RUNNING" for t in tasks):
                return
        time.sleep(0.5)
    raise CaptureError(f"connector {name} not RUNNING after {TIMEOUT:.0f}s; see "
                       f"{LOG_DIR / 'connect.log'}")


def remove_connector(name: str) -> None:
    """Stop, reset the offsets (a re-created connector must snapshot again) and delete."""
    try:
        connect("GET", f"/connectors/{name}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return
        raise
    log(f"removing connector {name}")
    try:
        connect("PUT", f"/connectors/{name}/stop")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and connector_state(name)[0] != "STOPPED":
            time.sleep(0.5)
        connect("DELETE", f"/connectors/{name}/offsets")
    except Exception as exc:  # noqa: BLE001 - deletion below still matters most
        log(f"could not reset the offsets of {name}: {exc}")
    connect("DELETE", f"/connectors/{name}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connect("GET", f"/connectors/{name}")
        except urllib.error.HTTPError:
            return
        time.sleep(0.5)


def drop_slot(slot: str) -> None:
    """Drop a replication slot as the superuser, ending its walsender if still attached."""
    where = f"FROM pg_replication_slots WHERE slot_name = '{slot}'"
    if postgres.psql(f"SELECT count(*) {where}") != "1":
        return
    deadline = time.monotonic() + 30
    while (pid := postgres.psql(f"SELECT coalesce(active_pid::text, '') {where}")) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    if pid:
        log(f"slot {slot} still in use by pid {pid}: terminating that walsender")
        postgres.psql(f"SELECT pg_terminate_backend({int(pid)})")
        time.sleep(1)
    log(f"dropping replication slot {slot}")
    postgres.psql(f"SELECT pg_drop_replication_slot(slot_name) {where}")


# --------------------------------------------------------------------------- Postgres


@dataclass
class Step:
    label: str
    txid: int
    tables: tuple[str, ...]
    what: str


@dataclass
class Workload:
    seeds: dict[str, list[str]] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    created: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in PK})

    def step_of(self, txid: int | None) -> Step | None:
        if txid is None:
            return None
        return next((s for s in self.steps if s.txid % 2**32 == txid % 2**32), None)


def pg_connect() -> Any:
    import psycopg
    return psycopg.connect(str(services.endpoints()["postgres_dsn"]))


def seed(conn: Any, work: Workload) -> None:
    """Rows that exist before the connectors start: their snapshot reads them."""
    with conn.transaction():
        post = conn.execute(
            "INSERT INTO posts (neighborhood_id, author_id, title, body, score, metadata) "
            "VALUES (7, 42, 'seeded post', 'seeded body', 1.50, '{\"seed\": true}') "
            "RETURNING id").fetchone()[0]
        comment = conn.execute(
            "INSERT INTO comments (post_id, neighborhood_id, author_id, body) "
            "VALUES (%s, 7, 43, 'seeded comment') RETURNING id", (post,)).fetchone()[0]
        user = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO profiles (user_id, neighborhood_id, display_name, karma, birthday, "
            "updated_at) VALUES (%s, 7, 'Seeded Sam', 0.75, '1985-12-31', "
            "'2024-01-02 03:04:05.678901')", (user,))
    work.seeds = {"posts": [str(post)], "comments": [str(comment)], "profiles": [user]}
    for table, ids in work.seeds.items():
        work.created[table].update(ids)
    log(f"seeded posts.id={post} comments.id={comment} profiles.user_id={user}")


def run_workload(conn: Any, work: Workload) -> None:
    facts = work.facts

    def step(label: str, tables: tuple[str, ...], what: str,
             body: Callable[[Any], None]) -> None:
        with conn.transaction():
            txid = conn.execute("SELECT txid_current()").fetchone()[0]
            body(conn)
        work.steps.append(Step(label, int(txid), tables, what))
        log(f"step {label} (txid {txid})")
        time.sleep(0.2)  # distinct produce timestamps between steps

    def one(sql: str, params: tuple[Any, ...] = ()) -> Any:
        return conn.execute(sql, params).fetchone()[0]

    # ---- posts (REPLICA IDENTITY DEFAULT)
    facts["big_body"] = secrets.token_hex(10_000)  # 20,000 random hex chars: TOASTed
    facts["metadata"] = {"tags": ["cdc", "cache"], "pinned": True, "weight": 0.5}

    def posts_insert(c: Any) -> None:
        facts["post"] = one(
            "INSERT INTO posts (neighborhood_id, author_id, title, body, score, metadata) "
            "VALUES (7, 42, 'first title', %s, 12.50, %s::jsonb) RETURNING id",
            (facts["big_body"], json.dumps(facts["metadata"])))
        work.created["posts"].add(str(facts["post"]))
    step("posts_insert", ("posts",),
         "insert: 20,000-char random-hex body (TOASTed out of line), score 12.50, jsonb",
         posts_insert)
    step("posts_update_title", ("posts",),
         "update of title only: before null, unchanged TOASTed body unavailable",
         lambda c: c.execute("UPDATE posts SET title = 'second title' WHERE id = %s",
                             (facts["post"],)))
    step("posts_update_neighborhood", ("posts",),
         "update of neighborhood_id 7 -> 8 (DEFAULT identity: before null)",
         lambda c: c.execute("UPDATE posts SET neighborhood_id = 8 WHERE id = %s",
                             (facts["post"],)))
    step("posts_delete", ("posts",),
         "delete (DEFAULT identity: before holds the real PK only)",
         lambda c: c.execute("DELETE FROM posts WHERE id = %s", (facts["post"],)))

    def pk_insert(c: Any) -> None:
        facts["pk_post"] = one(
            "INSERT INTO posts (neighborhood_id, author_id, title, body, score) "
            "VALUES (9, 44, 'pk change', 'short body', 0.10) RETURNING id")
        work.created["posts"].add(str(facts["pk_post"]))
    step("posts_insert_for_pk_change", ("posts",), "insert of the row whose PK changes next",
         pk_insert)

    def pk_change(c: Any) -> None:
        facts["pk_post_new"] = one("UPDATE posts SET id = id + 1000000 WHERE id = %s "
                                   "RETURNING id", (facts["pk_post"],))
        work.created["posts"].add(str(facts["pk_post_new"]))
    step("posts_pk_change", ("posts",),
         "primary-key change id -> id + 1000000: delete + tombstone (old key), create (new key)",
         pk_change)

    # ---- comments (REPLICA IDENTITY FULL)
    def comments_insert(c: Any) -> None:
        facts["comment"] = one(
            "INSERT INTO comments (post_id, neighborhood_id, author_id, body) "
            "VALUES (%s, 7, 45, 'first comment') RETURNING id", (facts["pk_post_new"],))
        work.created["comments"].add(str(facts["comment"]))
    step("comments_insert", ("comments",), "insert", comments_insert)
    step("comments_update_body", ("comments",),
         "update of body (FULL identity: before is the true old row)",
         lambda c: c.execute("UPDATE comments SET body = 'edited comment' WHERE id = %s",
                             (facts["comment"],)))
    step("comments_move", ("comments",),
         "update of neighborhood_id 7 -> 8, a move (before is the true old row)",
         lambda c: c.execute("UPDATE comments SET neighborhood_id = 8 WHERE id = %s",
                             (facts["comment"],)))
    step("comments_delete", ("comments",), "delete (before is the true old row)",
         lambda c: c.execute("DELETE FROM comments WHERE id = %s", (facts["comment"],)))
    step("comments_truncate", ("comments",), "TRUNCATE comments",
         lambda c: (c.execute("SET LOCAL lock_timeout = '10s'"),
                    c.execute("TRUNCATE comments")))

    # ---- profiles (REPLICA IDENTITY DEFAULT, uuid PK, numeric, date, timestamp)
    facts["user"] = str(uuid.uuid4())
    work.created["profiles"].add(facts["user"])
    step("profiles_insert", ("profiles",),
         "insert: uuid PK, karma 3.25, birthday 1990-02-28, updated_at 2024-05-06 07:08:09.123456",
         lambda c: c.execute(
             "INSERT INTO profiles (user_id, neighborhood_id, display_name, karma, birthday, "
             "updated_at) VALUES (%s, 7, 'Ada', 3.25, '1990-02-28', "
             "'2024-05-06 07:08:09.123456')", (facts["user"],)))
    step("profiles_update_name", ("profiles",), "update of display_name (before null)",
         lambda c: c.execute("UPDATE profiles SET display_name = 'Ada L.' WHERE user_id = %s",
                             (facts["user"],)))
    step("profiles_delete", ("profiles",), "delete (DEFAULT identity)",
         lambda c: c.execute("DELETE FROM profiles WHERE user_id = %s", (facts["user"],)))

    # ---- one transaction touching all three tables
    facts["multi_user"] = str(uuid.uuid4())
    work.created["profiles"].add(facts["multi_user"])

    def multi(c: Any) -> None:
        post = one("INSERT INTO posts (neighborhood_id, author_id, title, body, score) "
                   "VALUES (7, 46, 'multi', 'multi body', 2.00) RETURNING id")
        facts["multi_post"] = post
        work.created["posts"].add(str(post))
        comment = one("INSERT INTO comments (post_id, neighborhood_id, author_id, body) "
                      "VALUES (%s, 7, 46, 'multi comment') RETURNING id", (post,))
        work.created["comments"].add(str(comment))
        c.execute("INSERT INTO profiles (user_id, neighborhood_id, display_name, karma) "
                  "VALUES (%s, 7, 'Multi', 1.00)", (facts["multi_user"],))
        c.execute("UPDATE posts SET title = 'multi, edited' WHERE id = %s", (post,))
    step("multi_table_tx", ("posts", "comments", "profiles"),
         "one transaction: insert post, comment, profile, then update the post", multi)

    # ---- logical decoding message
    step("logical_message", (), "SELECT pg_logical_emit_message(true, 'cr-demo', 'hello')",
         lambda c: c.execute("SELECT pg_logical_emit_message(true, 'cr-demo', 'hello')"))


def cleanup_rows(work: Workload) -> None:
    """Remove what the run left behind (after the capture connectors are gone)."""
    if not any(work.created.values()):
        return
    try:
        with pg_connect() as conn, conn.transaction():
            for table, ids in work.created.items():
                if ids:
                    conn.execute(f"DELETE FROM {table} WHERE {PK[table]}::text = ANY(%s)",
                                 (sorted(ids),))
    except Exception as exc:  # noqa: BLE001 - reported, cleanup goes on
        log(f"could not delete the rows this run created: {exc}")


# --------------------------------------------------------------------------- analysis


def unwrap(raw: str | None, schemas: bool) -> tuple[Any, Any]:
    """(payload, schema) of a raw JSON-converter string."""
    if raw is None:
        return None, None
    obj = json.loads(raw)
    if not schemas:
        return obj, None
    if not isinstance(obj, dict) or set(obj) != {"schema", "payload"}:
        raise CaptureError(f"schemas.enable=true record is not an envelope: {raw[:200]}")
    return obj["payload"], obj["schema"]


def source_lsn(payload: Any) -> int:
    if isinstance(payload, dict) and isinstance(payload.get("source"), dict):
        return int(payload["source"].get("lsn") or 0)
    return 0


def txid_of(rec: Record, prefix: str) -> int | None:
    p = rec.payload
    if not isinstance(p, dict):
        return None
    if rec.topic == f"{prefix}.transaction":
        return int(str(p["id"]).split(":")[0])
    source = p.get("source")
    if isinstance(source, dict) and source.get("txId") is not None:
        return int(source["txId"])
    return None


def table_of(rec: Record) -> str | None:
    p = rec.payload
    if isinstance(p, dict) and isinstance(p.get("source"), dict):
        return p["source"].get("table")
    return None


def row_pk(rec: Record) -> str | None:
    p, table = rec.payload, table_of(rec)
    if table not in PK or not isinstance(p, dict):
        return None
    row = p.get("after") or p.get("before") or {}
    value = row.get(PK[table])
    return None if value is None else str(value)


def select(prefix: str, schemas: bool, work: Workload,
           by_partition: dict[tuple[str, int], list[Record]]) -> list[Record]:
    """This run's records of ``prefix`` in workload order (each partition's order kept)."""
    hb_topic = heartbeat_topic(prefix)
    kept: dict[tuple[str, int], list[Record]] = {}
    heartbeats: list[Record] = []
    dropped = 0
    for tp, records in sorted(by_partition.items()):
        out: list[Record] = []
        for rec in records:
            rec.key_payload, _ = unwrap(rec.key, schemas)
            rec.payload, _ = unwrap(rec.value, schemas)
            if rec.topic == hb_topic:
                heartbeats.append(rec)
                continue
            if rec.value is None:  # tombstone: keep when it follows a kept delete
                prev = out[-1] if out else None
                if (prev is not None and prev.payload.get("op") == "d" and prev.key == rec.key
                        and prev.offset == rec.offset - 1):
                    rec.step = prev.step
                    out.append(rec)
                else:
                    dropped += 1
                continue
            p = rec.payload
            if isinstance(p, dict) and p.get("op") == "r":
                table = table_of(rec)
                if table in work.seeds and row_pk(rec) in work.seeds[table]:
                    rec.step = "snapshot"
                    out.append(rec)
                else:
                    dropped += 1
                continue
            s = work.step_of(txid_of(rec, prefix))
            if s is None:
                dropped += 1
                continue
            rec.step = s.label
            out.append(rec)
        kept[tp] = out
    if dropped:
        log(f"{prefix}: left out {dropped} record(s) not caused by this run")
    last_ts = max((r.timestamp for rs in kept.values() for r in rs), default=0)
    after = sorted((r for r in heartbeats if r.timestamp >= last_ts),
                   key=lambda r: (r.timestamp, r.partition, r.offset))[:HEARTBEATS_KEPT]
    for rec in after:
        rec.step = "heartbeat"
    for rec in after:
        kept.setdefault((rec.topic, rec.partition), []).append(rec)
    for recs in kept.values():
        recs.sort(key=lambda r: r.offset)
    return merge(prefix, work, kept)


def merge(prefix: str, work: Workload,
          kept: dict[tuple[str, int], list[Record]]) -> list[Record]:
    """k-way merge of the partitions (only heads are compared, so every partition keeps
    its own order) by: snapshot, then the workload steps in commit order (within a
    step: BEGIN, the events by source LSN with a PK change's delete before its create,
    END), then the heartbeats; produce time breaks the remaining ties."""
    step_index = {s.label: i for i, s in enumerate(work.steps)}
    op_rank = {"d": 0, "c": 1}
    streams = []
    for (topic, partition), recs in sorted(kept.items()):
        keyed = []
        prev: tuple[int, ...] | None = None
        for rec in recs:
            p = rec.payload
            key: tuple[int, ...]
            if rec.value is None and prev is not None:
                key = prev  # a tombstone goes right after its delete
            elif rec.step == "snapshot":
                key = (0, 0, 0, rec.timestamp, source_lsn(p), 0)
            elif rec.step == "heartbeat":
                key = (2, 0, 0, rec.timestamp, 0, 0)
            elif topic == f"{prefix}.transaction":
                key = (1, step_index[rec.step], 0 if p["status"] == "BEGIN" else 2, 0, 0, 0)
            else:
                key = (1, step_index[rec.step], 1, source_lsn(p),
                       op_rank.get(p.get("op"), 0), rec.timestamp)
            prev = key
            keyed.append((key, topic, partition, rec.offset, rec))
        streams.append(keyed)
    return [item[-1] for item in heapq.merge(*streams, key=lambda i: i[:4])]


# --------------------------------------------------------------------------- checks


EPOCH = dt.date(1970, 1, 1)


def decimal_of(encoded: str, scale: int) -> Decimal:
    unscaled = int.from_bytes(base64.b64decode(encoded), "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def field_schema(value_schema: Any, part: str, column: str) -> dict[str, Any]:
    block = next(f for f in value_schema["fields"] if f["field"] == part)
    return next(f for f in block["fields"] if f["field"] == column)


class Checker:
    """Asserts every SPEC section 3 shape is present and annotates each record."""

    def __init__(self, prefix: str, schemas: bool, work: Workload, records: list[Record]):
        self.prefix, self.schemas, self.work, self.records = prefix, schemas, work, records
        self.seen: dict[str, Record] = {}
        self.problems: list[str] = []

    def need(self, ok: bool, message: str) -> bool:
        if not ok:
            self.problems.append(message)
        return ok

    def shape(self, name: str, rec: Record, description: str) -> None:
        self.seen.setdefault(name, rec)
        rec.description = description

    def scale(self, rec: Record, table: str, column: str, default: int) -> int:
        if not self.schemas:
            return default  # bare payloads carry no scale: the table's numeric(p, 2)
        _, schema = unwrap(rec.value, True)
        params = field_schema(schema, "after", column).get("parameters") or {}
        return int(params.get("scale", default))

    def run(self) -> None:
        f = self.work.facts
        for index, rec in enumerate(self.records):
            p = rec.payload
            nxt = self.records[index + 1] if index + 1 < len(self.records) else None
            if rec.step == "heartbeat":
                self.need(isinstance(p, dict) and "ts_ms" in p, f"heartbeat value {rec.value}")
                self.shape("heartbeat", rec, "heartbeat (value {ts_ms}); skip")
                continue
            if rec.topic == f"{self.prefix}.transaction":
                collections = [c["data_collection"] for c in p.get("data_collections") or []]
                desc = (f"transaction {p['status']} id={p['id']} of step {rec.step}")
                if p["status"] == "END":
                    desc += (f", event_count={p.get('event_count')}, data_collections="
                             f"{','.join(collections) or '-'}")
                    if len(collections) >= 3:
                        self.shape("tx_end_multi_table", rec, desc + " (multi-table)")
                        continue
                self.shape(f"tx_{p['status'].lower()}", rec, desc)
                if rec.step == "multi_table_tx" and p["status"] == "BEGIN":
                    self.seen.setdefault("tx_begin_multi_table", rec)
                continue
            if rec.value is None:
                table = rec.topic.rsplit(".", 1)[-1]
                newkey = " with __debezium.newkey header" if rec.has_header(
                    "__debezium.newkey") else ""
                self.shape(f"{rec.step}:tombstone", rec,
                           f"tombstone after the {table} delete{newkey} (key "
                           f"{json.dumps(rec.key_payload)});"
                           " skip")
                continue
            op = p.get("op")
            table = table_of(rec)
            before, after = p.get("before"), p.get("after")
            if rec.step != "snapshot" and table in PK:
                self.need(isinstance(p.get("transaction"), dict) and
                          {"id", "total_order", "data_collection_order"} <= set(p["transaction"]),
                          f"{rec.topic}@{rec.offset}: no transaction block")
                self.seen.setdefault("envelope_transaction_block", rec)
            label = f"{rec.step}"
            if op == "r":
                self.need(source_lsn(p) > 0 and after is not None, "snapshot read without after")
                self.shape(f"snapshot:{table}", rec,
                           f"op r, initial snapshot of the seeded {table} row "
                           f"(source.snapshot={p['source'].get('snapshot')})")
            elif label == "posts_insert" and op == "c":
                body_ok = self.need(len(after["body"]) == 20_000 and after["body"] ==
                                    f["big_body"], "posts create: body not the 20,000 chars")
                score = decimal_of(after["score"], self.scale(rec, "posts", "score", 2))
                self.need(score == Decimal("12.50"), f"posts score decoded as {score}")
                self.need(isinstance(after["metadata"], str) and
                          json.loads(after["metadata"]) == f["metadata"],
                          f"posts metadata {after['metadata']!r}")
                if body_ok:
                    self.shape("posts:create", rec,
                               f"op c, 20,000-char body, score {after['score']!r} (=12.50), "
                               "jsonb metadata as a string")
            elif label == "posts_update_title" and op == "u":
                ok = self.need(before is None, "posts title update has a before")
                ok &= self.need(after["body"] == UNAVAILABLE,
                                f"no {UNAVAILABLE} in the posts title update: "
                                f"body starts {str(after['body'])[:40]!r}")
                ok &= self.need(after["title"] == "second title", "title not updated")
                if ok:
                    self.shape("posts:update_toast_unavailable", rec,
                               f"op u, before null, title changed, body = {UNAVAILABLE}")
            elif label == "posts_update_neighborhood" and op == "u":
                if self.need(before is None and after["neighborhood_id"] == 8 and
                             after["body"] == UNAVAILABLE,
                             "posts neighborhood update: before not null or wrong after"):
                    self.shape("posts:update_neighborhood", rec,
                               "op u, before null, neighborhood_id 7 -> 8 only in after "
                               f"(DEFAULT identity); body again {UNAVAILABLE}")
            elif label == "posts_delete" and op == "d":
                ok = self.need(after is None and before is not None and
                               before["id"] == f["post"], "posts delete before.id")
                ok &= self.need(before.get("neighborhood_id") != 8,
                                "posts delete before holds the real neighborhood_id")
                ok &= self.need(nxt is not None and nxt.value is None and nxt.key == rec.key,
                                "posts delete not followed by its tombstone")
                if ok:
                    others = {k: v for k, v in before.items() if k != "id"}
                    self.shape("posts:delete_default_identity", rec,
                               f"op d, before has real id only, other columns {json.dumps(others)}")
            elif label == "posts_pk_change" and op == "d":
                ok = self.need(before["id"] == f["pk_post"], "pk change delete: old id")
                ok &= self.need(rec.has_header("__debezium.newkey"),
                                "pk change delete without __debezium.newkey header")
                ok &= self.need(nxt is not None and nxt.value is None and nxt.key == rec.key,
                                "pk change delete not followed by its tombstone")
                if ok:
                    self.shape("posts:pk_change_delete", rec,
                               f"op d for the old key, header __debezium.newkey="
                               f"{rec.header('__debezium.newkey')}")
            elif label == "posts_pk_change" and op == "c":
                ok = self.need(after["id"] == f["pk_post_new"], "pk change create: new id")
                ok &= self.need(rec.has_header("__debezium.oldkey"),
                                "pk change create without __debezium.oldkey header")
                if ok:
                    self.shape("posts:pk_change_create", rec,
                               f"op c for the new key, header __debezium.oldkey="
                               f"{rec.header('__debezium.oldkey')}")
            elif label == "posts_insert_for_pk_change" and op == "c":
                self.shape("posts:create_small", rec, "op c, a small row (its PK changes next)")
            elif label == "comments_insert" and op == "c":
                self.shape("comments:create", rec, "op c (FULL identity table)")
            elif label == "comments_update_body" and op == "u":
                if self.need(before is not None and before["body"] == "first comment" and
                             after["body"] == "edited comment", "comments update before/after"):
                    self.shape("comments:update_full_before", rec,
                               "op u, before is the true old row (body 'first comment')")
            elif label == "comments_move" and op == "u":
                if self.need(before is not None and before["neighborhood_id"] == 7 and
                             after["neighborhood_id"] == 8, "comments move before/after"):
                    self.shape("comments:move", rec,
                               "op u, neighborhood_id 7 -> 8 with the true before (a move)")
            elif label == "comments_delete" and op == "d":
                ok = self.need(before is not None and before["body"] == "edited comment" and
                               before["neighborhood_id"] == 8 and after is None,
                               "comments delete before is not the true row")
                ok &= self.need(nxt is not None and nxt.value is None and nxt.key == rec.key,
                                "comments delete not followed by its tombstone")
                if ok:
                    self.shape("comments:delete_full_before", rec,
                               "op d, before is the true old row (neighborhood_id 8)")
            elif label == "comments_truncate" and op == "t":
                ok = self.need(rec.key is None, "truncate has a key")
                ok &= self.need(p.get("before") is None and p.get("after") is None,
                                "truncate has before/after")
                ok &= self.need(table == "comments", "truncate names another table")
                if ok:
                    self.shape("comments:truncate", rec,
                               f"op t, null key, no before/after (keys present: "
                               f"{sorted(p)}), table only in source")
            elif label == "profiles_insert" and op == "c":
                uid = after["user_id"]
                ok = self.need(uid == f["user"] and uid == uid.lower(), f"profile uuid {uid}")
                karma = decimal_of(after["karma"], self.scale(rec, "profiles", "karma", 2))
                ok &= self.need(karma == Decimal("3.25"), f"karma decoded as {karma}")
                ok &= self.need(after["birthday"] == (dt.date(1990, 2, 28) - EPOCH).days,
                                f"birthday {after['birthday']!r} is not epoch days")
                micros = int((dt.datetime(2024, 5, 6, 7, 8, 9, 123456) -
                              dt.datetime(1970, 1, 1)).total_seconds() * 1_000_000)
                ok &= self.need(after["updated_at"] == micros,
                                f"updated_at {after['updated_at']!r} is not epoch micros")
                if ok:
                    self.shape("profiles:create", rec,
                               f"op c, uuid {uid}, karma {after['karma']!r} (=3.25), birthday "
                               f"{after['birthday']} (epoch days), updated_at "
                               f"{after['updated_at']} (epoch micros)")
            elif label == "profiles_update_name" and op == "u":
                if self.need(before is None and after["display_name"] == "Ada L.",
                             "profiles update"):
                    self.shape("profiles:update", rec, "op u, before null, display_name changed")
            elif label == "profiles_delete" and op == "d":
                ok = self.need(before is not None and before["user_id"] == f["user"],
                               "profiles delete before.user_id")
                ok &= self.need(nxt is not None and nxt.value is None and nxt.key == rec.key,
                                "profiles delete not followed by its tombstone")
                if ok:
                    others = {k: v for k, v in before.items() if k != "user_id"}
                    self.shape("profiles:delete", rec,
                               f"op d, before has real user_id only, other columns "
                               f"{json.dumps(others)}")
            elif label == "multi_table_tx" and op in ("c", "u"):
                t = p["transaction"]
                self.shape(f"multi:{table}:{op}", rec,
                           f"op {op} on {table} inside the multi-table transaction "
                           f"(total_order {t['total_order']}, data_collection_order "
                           f"{t['data_collection_order']})")
            elif label == "logical_message" and op == "m":
                message = p.get("message") or {}
                ok = self.need(rec.topic == f"{self.prefix}.message",
                               f"message on topic {rec.topic}")
                ok &= self.need(message.get("prefix") == "cr-demo" and
                                base64.b64decode(message.get("content", "")) == b"hello",
                                f"message payload {message}")
                if ok:
                    self.shape("message", rec,
                               f"op m, message.prefix cr-demo, content {message['content']!r} "
                               "(base64 of 'hello')")
            else:
                self.problems.append(f"unexpected record {rec.topic}@{rec.partition}/"
                                     f"{rec.offset} op={op} in step {rec.step}")
            if not rec.description:
                rec.description = f"op {op} on {table} in step {rec.step}"

        required = [
            "snapshot:posts", "snapshot:comments", "snapshot:profiles",
            "posts:create", "posts:update_toast_unavailable", "posts:update_neighborhood",
            "posts:delete_default_identity", "posts_delete:tombstone",
            "posts:pk_change_delete", "posts_pk_change:tombstone", "posts:pk_change_create",
            "comments:create", "comments:update_full_before", "comments:move",
            "comments:delete_full_before", "comments_delete:tombstone", "comments:truncate",
            "profiles:create", "profiles:update", "profiles:delete",
            "profiles_delete:tombstone",
            "multi:posts:c", "multi:comments:c", "multi:profiles:c", "multi:posts:u",
            "tx_begin", "tx_end", "tx_begin_multi_table", "tx_end_multi_table",
            "envelope_transaction_block", "message", "heartbeat",
        ]
        missing = [name for name in required if name not in self.seen]
        beats = sum(1 for r in self.records if r.step == "heartbeat")
        self.need(beats >= HEARTBEATS_KEPT, f"only {beats} heartbeat(s)")
        self.need(not any(UNAVAILABLE in (r.value or "") for r in self.records
                          if r.step not in ("posts_update_title",
                                            "posts_update_neighborhood")),
                  f"{UNAVAILABLE} outside the title update")
        if missing or self.problems:
            raise CaptureError(
                f"{self.prefix} ({'schemas.enable=true' if self.schemas else 'bare'}): "
                f"missing shapes {missing}; problems: {self.problems}")


def complete(prefix: str, schemas: bool, work: Workload) -> bool:
    """The message (last step) has arrived, followed by two heartbeats."""
    records = select(prefix, schemas, work, read_all(prefix))
    message = [r for r in records if r.step == "logical_message" and r.value is not None
               and r.payload.get("op") == "m"]
    beats = [r for r in records if r.step == "heartbeat"]
    return bool(message) and len(beats) >= HEARTBEATS_KEPT


def snapshot_done(prefix: str, schemas: bool) -> bool:
    for records in read_all(prefix).values():
        for rec in records:
            payload, _ = unwrap(rec.value, schemas)
            if (isinstance(payload, dict) and isinstance(payload.get("source"), dict)
                    and payload["source"].get("snapshot") == "last"):
                return True
    return False


def slot_active(slot: str) -> bool:
    return postgres.psql(f"SELECT active FROM pg_replication_slots "
                         f"WHERE slot_name = '{slot}'") == "t"


def wait(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - e.g. a topic still being created
            last_error = f" (last error: {exc})"
        time.sleep(1)
    raise CaptureError(f"timed out after {timeout:.0f}s waiting for {what}{last_error}")


# --------------------------------------------------------------------------- output


def encodings(records: list[Record]) -> list[str]:
    """Column encodings as declared by the value schemas (schemas.enable=true)."""
    lines: list[str] = []
    seen: set[str] = set()
    for rec in records:
        if rec.value is None or rec.topic.count(".") != 2:
            continue
        payload, schema = unwrap(rec.value, True)
        table = rec.topic.rsplit(".", 1)[-1]
        if table in seen or not isinstance(payload, dict) or payload.get("op") not in "cr":
            continue
        seen.add(table)
        after_schema = next(f for f in schema["fields"] if f["field"] == "after")
        for column in after_schema["fields"]:
            sample = payload["after"][column["field"]]
            if isinstance(sample, str) and len(sample) > 40:
                sample = sample[:20] + f"...({len(sample)} chars)"
            params = column.get("parameters")
            default = f"`{json.dumps(column['default'])}`" if "default" in column else ""
            lines.append(
                f"| {table}.{column['field']} | `{column['type']}` | "
                f"`{column.get('name', '')}` | {json.dumps(params) if params else ''} | "
                f"{str(column.get('optional', False)).lower()} | {default} | "
                f"`{json.dumps(sample)}` |")
    return lines


def observations(records: list[Record], prefix: str) -> list[str]:
    """Facts a decoder must know, computed from the recorded (schemas.enable=true) records."""
    facts: list[str] = []
    kinds: dict[str, set[str]] = {}
    for rec in records:
        if rec.topic == f"{prefix}.transaction":
            kind = "transaction metadata"
        elif rec.step == "heartbeat":
            kind = "heartbeats"
        elif rec.topic == f"{prefix}.message":
            kind = "logical messages"
        elif rec.value is None:
            kind = "tombstones"
        else:
            kind = f"op {rec.payload.get('op')}"
        kinds.setdefault(kind, set()).update(k for k, _ in rec.headers)
    for kind, names in sorted(kinds.items()):
        facts.append(f"headers on {kind}: "
                     f"{', '.join(f'`{n}`' for n in sorted(names)) if names else 'none'}")
    facts.append("header values are the key as bare JSON even with schemas.enable=true, e.g. "
                 + ", ".join(f"`{k}` = `{v}`" for rec in records for k, v in rec.headers
                             if k in ("__debezium.newkey", "__debezium.oldkey")
                             and rec.value is not None))
    begins = {str(r.payload["id"]).split(":")[0]: r.payload["id"] for r in records
              if r.topic == f"{prefix}.transaction" and r.payload["status"] == "BEGIN"}
    ends = {str(r.payload["id"]).split(":")[0]: r.payload["id"] for r in records
            if r.topic == f"{prefix}.transaction" and r.payload["status"] == "END"}
    differ = sorted(t for t in begins if ends.get(t) != begins[t])
    if differ:
        t = differ[0]
        facts.append(f"transaction ids are `<txId>:<lsn>`; for {len(differ)} of {len(begins)} "
                     f"transactions BEGIN and END ids differ in the LSN part (e.g. BEGIN "
                     f"`{begins[t]}`, END `{ends[t]}`; the events' `transaction.id` equals the "
                     "BEGIN id): pair BEGIN/END by the txId part")
    for r in records:
        if r.topic == f"{prefix}.transaction" and r.step == "logical_message" \
                and r.payload["status"] == "END":
            facts.append("the END of a transaction holding only a logical message lists "
                         f"data_collections {json.dumps(r.payload['data_collections'])}")
    snaps = sorted({str(r.payload["source"].get("snapshot")) for r in records
                    if r.value is not None and isinstance(r.payload.get("source"), dict)})
    facts.append(f"`source.snapshot` values seen: {', '.join(f'`{v}`' for v in snaps)} "
                 "(strings, not booleans)")
    return facts


def write_readme(work: Workload, configs: dict[str, dict[str, str]],
                 base: dict[str, str], ordered: dict[str, list[Record]],
                 versions: dict[str, str]) -> None:
    lines = [
        "# Recorded Debezium events",
        "",
        "Generated by `stack/capture.py` — do not edit by hand. Regenerate with",
        "",
        "```sh",
        ".venv/bin/python -m stack up   # if the stack is not running",
        COMMAND,
        "```",
        "",
        f"Recorded on {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} from "
        f"Debezium PostgreSQL connector {versions['debezium']} (pgoutput), "
        f"Kafka / Kafka Connect {versions['kafka']}, PostgreSQL {versions['postgres']}.",
        "",
        "Every line is one Kafka record in the input format of `reconciler plan` "
        "(SPEC section 5):",
        '`{"topic", "partition", "offset", "timestamp" (Kafka timestamp, ms), "key" '
        '(raw string or null), "value" (raw string or null), "headers" ([name, value string '
        "or null], ...)}`. Records are in workload order: the snapshot, then each workload "
        "step in commit order (its transaction BEGIN, its events by source LSN, a "
        "primary-key change's delete and tombstone before its create, then END), then the "
        "heartbeats; every topic-partition keeps its own offset order. Only records this "
        "run caused are kept "
        "(transaction ids of the workload steps, seeded keys for the snapshot, tombstones "
        f"of kept deletes, and the first {HEARTBEATS_KEPT} heartbeats after the last "
        "workload record). Ids, LSNs and timestamps differ from run to run.",
        "",
        "| file | topic prefix | converters |",
        "|---|---|---|",
    ]
    for prefix, (schemas, name) in PREFIXES.items():
        lines.append(f"| `{name}` | `{prefix}` | JsonConverter, key and value "
                     f"`schemas.enable={str(schemas).lower()}` |")
    lines += ["", "## Connector configuration",
              "", "Both connectors are `stack/connect/nd-postgres.json` (via "
              "`stack_connect.connector_config()`) with these differences, on the same "
              f"publication `{base['publication.name']}`:", ""]
    for prefix, config in configs.items():
        lines.append(f"`{connector_name(prefix)}`:")
        lines.append("")
        for key in sorted(set(config) | set(base)):
            if config.get(key) != base.get(key):
                lines.append(f"- `{key}`: `{base.get(key, '(unset)')}` → `{config.get(key)}`")
        lines.append("")
    lines += ["The snapshot overrides restrict the initial snapshot to the rows the run "
              "seeded, so the fixtures never contain other tests' data. The connectors, "
              "their offsets, their replication slots, their topics and the rows the run "
              "created are removed at the end of the run.", "",
              "## Workload", "", "| step | txid | what |", "|---|---|---|",
              "| seed | (before the connectors) | one row in each of posts, comments, "
              "profiles: read by the initial snapshot (`op: r`) |"]
    for s in work.steps:
        lines.append(f"| {s.label} | {s.txid} | {s.what} |")
    lines += ["", "## Column encodings (from the `schemas.enable=true` value schemas)", "",
              "| column | type | logical name | parameters | optional | default | sample |",
              "|---|---|---|---|---|---|---|"]
    lines += encodings(ordered["capjson"])
    lines += ["", "## Observed in these recordings", ""]
    lines += [f"- {fact}" for fact in observations(ordered["capjson"], "capjson")]
    for prefix, (_, name) in PREFIXES.items():
        lines += ["", f"## `{name}`", "", "| line | topic | partition/offset | step | record |",
                  "|---|---|---|---|---|"]
        for number, rec in enumerate(ordered[prefix], start=1):
            lines.append(f"| {number} | `{rec.topic}` | {rec.partition}/{rec.offset} | "
                         f"{rec.step} | {rec.description.replace('|', '/')} |")
    (FIXTURE_DIR / "README.md").write_text("\n".join(lines) + "\n")


def versions() -> dict[str, str]:
    plugins = connect("GET", "/connector-plugins")
    debezium = next(p["version"] for p in plugins if "PostgresConnector" in p["class"])
    return {"debezium": debezium, "kafka": connect("GET", "/")["version"],
            "postgres": postgres.psql("SHOW server_version")}


def same_shapes(ordered: dict[str, list[Record]]) -> None:
    """Both wire formats must carry the same sequence of records."""
    def shapes(prefix: str) -> list[tuple[str, str, str]]:
        return [(r.topic.removeprefix(prefix + ".").replace(prefix, "<prefix>"), r.step,
                 "tombstone" if r.value is None else str(
                     r.payload.get("op") or r.payload.get("status") or "heartbeat"))
                for r in ordered[prefix]]
    a, b = shapes("capjson"), shapes("capbare")
    if a != b:
        diff = [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y][:5]
        raise CaptureError(f"the two formats differ: {len(a)} vs {len(b)} records; "
                           f"first differences {diff}")


# --------------------------------------------------------------------------- main


def preclean() -> None:
    """Leftovers of an earlier, interrupted run."""
    for name in connect("GET", "/connectors"):
        if name.startswith(CONNECTOR_PREFIX):
            remove_connector(name)
    for slot in postgres.psql("SELECT slot_name FROM pg_replication_slots WHERE slot_name "
                              f"LIKE '{SLOT_PREFIX}%'").split():
        drop_slot(slot)
    for prefix in PREFIXES:
        delete_topics(prefix)
        if prefix_topics(prefix):
            raise CaptureError(f"topics of {prefix} still exist after deleting them")


def cleanup(work: Workload) -> list[str]:
    errors: list[str] = []
    for prefix in PREFIXES:
        actions: list[Callable[[], None]] = [
            lambda p=prefix: remove_connector(connector_name(p)),  # type: ignore[misc]
            lambda p=prefix: drop_slot(slot_name(p)),  # type: ignore[misc]
            lambda p=prefix: delete_topics(p),  # type: ignore[misc]
        ]
        for action in actions:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - every cleanup step is attempted
                errors.append(f"{prefix}: {exc}")
                log(f"cleanup error ({prefix}): {exc}")
    cleanup_rows(work)
    leftover = postgres.psql("SELECT slot_name FROM pg_replication_slots WHERE slot_name "
                             f"LIKE '{SLOT_PREFIX}%'")
    if leftover:
        errors.append(f"replication slots left behind: {leftover}")
    return errors


def capture() -> None:
    state = services.status()
    if not all(state.get(n) for n in ("postgres", "kafka", "connect")):
        raise CaptureError(f"the stack is not running ({state}); start it with "
                           "`.venv/bin/python -m stack up`")
    base = stack_connect.connector_config()
    preclean()
    work = Workload()
    failed = True
    try:
        with pg_connect() as conn:
            conn.autocommit = True
            seed(conn, work)
            configs = {prefix: capture_config(prefix, schemas, work.seeds)
                       for prefix, (schemas, _) in PREFIXES.items()}
            for prefix, config in configs.items():
                log(f"registering {connector_name(prefix)}")
                connect("PUT", f"/connectors/{connector_name(prefix)}/config", config)
            for prefix, (schemas, _) in PREFIXES.items():
                log(f"waiting for {connector_name(prefix)} to run and finish its snapshot")
                wait_running(connector_name(prefix))
                wait(f"the {prefix} snapshot", lambda p=prefix, s=schemas: snapshot_done(p, s))
                wait(f"slot {slot_name(prefix)} streaming",
                     lambda p=prefix: slot_active(slot_name(p)))
            log("both connectors running, snapshots done; running the workload")
            run_workload(conn, work)
        log(f"waiting for the last events and {HEARTBEATS_KEPT} heartbeats")
        for prefix, (schemas, _) in PREFIXES.items():
            wait(f"the {prefix} message event and {HEARTBEATS_KEPT} heartbeats after it",
                 lambda p=prefix, s=schemas: complete(p, s, work))
        ordered: dict[str, list[Record]] = {}
        for prefix, (schemas, _) in PREFIXES.items():
            ordered[prefix] = select(prefix, schemas, work, read_all(prefix))
        try:
            for prefix, (schemas, _) in PREFIXES.items():
                Checker(prefix, schemas, work, ordered[prefix]).run()
            same_shapes(ordered)
        except CaptureError:
            for prefix, records in ordered.items():
                dump = STACK_DIR / f"capture-failed-{prefix}.jsonl"
                dump.write_text("".join(r.fixture_line() + "\n" for r in records))
                log(f"what was captured is in {dump}")
            raise
        FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
        for prefix, (_, name) in PREFIXES.items():
            (FIXTURE_DIR / name).write_text(
                "".join(rec.fixture_line() + "\n" for rec in ordered[prefix]))
            log(f"wrote {len(ordered[prefix])} records to {FIXTURE_DIR / name}")
        write_readme(work, configs, base, ordered, versions())
        failed = False
    finally:
        errors = cleanup(work)
        if errors and not failed:
            raise CaptureError("cleanup failed: " + "; ".join(errors))


def main(argv: Iterable[str] | None = None) -> int:
    del argv
    try:
        capture()
    except (CaptureError, StackError) as exc:
        print(f"[capture] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
