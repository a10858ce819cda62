"""The capture's checks: every event shape of SPEC section 3 is present, and each is
what the workload step that caused it should have made.

One check per shape, in `SHAPES` by (workload step, op); heartbeats, transaction
metadata and tombstones, which carry no op, have one each too. A check states what
it needs (`Checker.need`), and names the shape (`Checker.shape`) only when all of it
holds; `REQUIRED` lists the shapes a capture must have seen.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stack.capture.records import (
    EPOCH,
    HEARTBEATS_KEPT,
    PK,
    UNAVAILABLE,
    CaptureError,
    Record,
    decimal_of,
    field_schema,
    source_lsn,
    table_of,
    unwrap,
)
from stack.capture.workload import Workload

REQUIRED = (  # every shape a capture must contain
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
)
# The steps whose events may hold UNAVAILABLE (an unchanged TOASTed body).
TOAST_STEPS = ("posts_update_title", "posts_update_neighborhood")


@dataclass(frozen=True)
class Event:
    """A record under check, with what the checks read of it."""

    rec: Record
    following: Record | None  # the next record (a delete's tombstone)
    facts: dict[str, Any]  # what the workload wrote (Workload.facts)

    @property
    def payload(self) -> Any:
        return self.rec.payload

    @property
    def op(self) -> str | None:
        op = self.payload.get("op") if isinstance(self.payload, dict) else None
        return None if op is None else str(op)

    @property
    def table(self) -> str | None:
        return table_of(self.rec)

    @property
    def before(self) -> Any:
        return self.payload.get("before")

    @property
    def after(self) -> Any:
        return self.payload.get("after")

    def tombstone_follows(self) -> bool:
        nxt = self.following
        return nxt is not None and nxt.value is None and nxt.key == self.rec.key


class Checker:
    """Runs the checks over one prefix's records, annotating each record, and fails
    naming every missing shape and every problem."""

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

    def scale(self, rec: Record, column: str, default: int) -> int:
        if not self.schemas:
            return default  # bare payloads carry no scale: the table's numeric(p, 2)
        _, schema = unwrap(rec.value, True)
        params = field_schema(schema, "after", column).get("parameters") or {}
        return int(params.get("scale", default))

    def run(self) -> None:
        for index, rec in enumerate(self.records):
            following = self.records[index + 1] if index + 1 < len(self.records) else None
            event = Event(rec, following, self.work.facts)
            self.check(event)
            if not rec.description:
                rec.description = f"op {event.op} on {event.table} in step {rec.step}"
        self.verdict()

    def check(self, e: Event) -> None:
        rec = e.rec
        if rec.step == "heartbeat":
            heartbeat(self, e)
        elif rec.topic == f"{self.prefix}.transaction":
            transaction(self, e)
        elif rec.value is None:
            tombstone(self, e)
        else:
            if rec.step != "snapshot" and e.table in PK:
                envelope(self, e)
            check = SHAPES.get((rec.step, e.op or ""))
            if check is None:
                self.problems.append(f"unexpected record {rec.topic}@{rec.partition}/"
                                     f"{rec.offset} op={e.op} in step {rec.step}")
            else:
                check(self, e)

    def verdict(self) -> None:
        missing = [name for name in REQUIRED if name not in self.seen]
        beats = sum(1 for r in self.records if r.step == "heartbeat")
        self.need(beats >= HEARTBEATS_KEPT, f"only {beats} heartbeat(s)")
        self.need(not any(UNAVAILABLE in (r.value or "") for r in self.records
                          if r.step not in TOAST_STEPS),
                  f"{UNAVAILABLE} outside the title update")
        if missing or self.problems:
            raise CaptureError(
                f"{self.prefix} ({'schemas.enable=true' if self.schemas else 'bare'}): "
                f"missing shapes {missing}; problems: {self.problems}")


# --------------------------------------------------------------------------- no op

Check = Callable[[Checker, Event], None]


def heartbeat(c: Checker, e: Event) -> None:
    p = e.payload
    c.need(isinstance(p, dict) and "ts_ms" in p, f"heartbeat value {e.rec.value}")
    c.shape("heartbeat", e.rec, "heartbeat (value {ts_ms}); skip")


def transaction(c: Checker, e: Event) -> None:
    p, rec = e.payload, e.rec
    collections = [d["data_collection"] for d in p.get("data_collections") or []]
    desc = f"transaction {p['status']} id={p['id']} of step {rec.step}"
    if p["status"] == "END":
        desc += (f", event_count={p.get('event_count')}, data_collections="
                 f"{','.join(collections) or '-'}")
        if len(collections) >= 3:
            c.shape("tx_end_multi_table", rec, desc + " (multi-table)")
            return
    c.shape(f"tx_{p['status'].lower()}", rec, desc)
    if rec.step == "multi_table_tx" and p["status"] == "BEGIN":
        c.seen.setdefault("tx_begin_multi_table", rec)


def tombstone(c: Checker, e: Event) -> None:
    rec = e.rec
    table = rec.topic.rsplit(".", 1)[-1]
    newkey = " with __debezium.newkey header" if rec.has_header("__debezium.newkey") else ""
    c.shape(f"{rec.step}:tombstone", rec,
            f"tombstone after the {table} delete{newkey} (key {json.dumps(rec.key_payload)});"
            " skip")


def envelope(c: Checker, e: Event) -> None:
    """A workload event of a table carries its transaction block."""
    p = e.payload
    c.need(isinstance(p.get("transaction"), dict) and
           {"id", "total_order", "data_collection_order"} <= set(p["transaction"]),
           f"{e.rec.topic}@{e.rec.offset}: no transaction block")
    c.seen.setdefault("envelope_transaction_block", e.rec)


# --------------------------------------------------------------------------- by step and op

SHAPES: dict[tuple[str, str], Check] = {}  # (workload step, op) -> its check


def when(step: str, *ops: str) -> Callable[[Check], Check]:
    """Register the check of the events `step` makes with each of `ops`."""
    def register(check: Check) -> Check:
        for op in ops:
            SHAPES[(step, op)] = check
        return check
    return register


@when("snapshot", "r")
def snapshot(c: Checker, e: Event) -> None:
    c.need(source_lsn(e.payload) > 0 and e.after is not None, "snapshot read without after")
    c.shape(f"snapshot:{e.table}", e.rec,
            f"op r, initial snapshot of the seeded {e.table} row "
            f"(source.snapshot={e.payload['source'].get('snapshot')})")


@when("posts_insert", "c")
def posts_create(c: Checker, e: Event) -> None:
    after, f = e.after, e.facts
    body_ok = c.need(len(after["body"]) == 20_000 and after["body"] == f["big_body"],
                     "posts create: body not the 20,000 chars")
    score = decimal_of(after["score"], c.scale(e.rec, "score", 2))
    c.need(score == Decimal("12.50"), f"posts score decoded as {score}")
    c.need(isinstance(after["metadata"], str) and
           json.loads(after["metadata"]) == f["metadata"], f"posts metadata {after['metadata']!r}")
    if body_ok:
        c.shape("posts:create", e.rec, f"op c, 20,000-char body, score {after['score']!r} "
                "(=12.50), jsonb metadata as a string")


@when("posts_update_title", "u")
def posts_update_title(c: Checker, e: Event) -> None:
    after = e.after
    ok = c.need(e.before is None, "posts title update has a before")
    ok &= c.need(after["body"] == UNAVAILABLE, f"no {UNAVAILABLE} in the posts title update: "
                 f"body starts {str(after['body'])[:40]!r}")
    ok &= c.need(after["title"] == "second title", "title not updated")
    if ok:
        c.shape("posts:update_toast_unavailable", e.rec,
                f"op u, before null, title changed, body = {UNAVAILABLE}")


@when("posts_update_neighborhood", "u")
def posts_update_neighborhood(c: Checker, e: Event) -> None:
    after = e.after
    if c.need(e.before is None and after["neighborhood_id"] == 8 and after["body"] == UNAVAILABLE,
              "posts neighborhood update: before not null or wrong after"):
        c.shape("posts:update_neighborhood", e.rec,
                "op u, before null, neighborhood_id 7 -> 8 only in after (DEFAULT identity); "
                f"body again {UNAVAILABLE}")


@when("posts_delete", "d")
def posts_delete(c: Checker, e: Event) -> None:
    before = e.before
    ok = c.need(e.after is None and before is not None and before["id"] == e.facts["post"],
                "posts delete before.id")
    ok &= c.need(before.get("neighborhood_id") != 8,
                 "posts delete before holds the real neighborhood_id")
    ok &= c.need(e.tombstone_follows(), "posts delete not followed by its tombstone")
    if ok:
        others = {k: v for k, v in before.items() if k != "id"}
        c.shape("posts:delete_default_identity", e.rec,
                f"op d, before has real id only, other columns {json.dumps(others)}")


# A primary-key change's two events, each naming the other key in a header:
# op -> (the row, the fact holding its key, which key, the header, the shape)
PK_CHANGE = {
    "d": ("before", "pk_post", "old", "__debezium.newkey", "posts:pk_change_delete"),
    "c": ("after", "pk_post_new", "new", "__debezium.oldkey", "posts:pk_change_create"),
}


@when("posts_pk_change", "d", "c")
def posts_pk_change(c: Checker, e: Event) -> None:
    rec, op = e.rec, e.op or ""
    row, fact, which, header, name = PK_CHANGE[op]
    kind = "delete" if op == "d" else "create"
    ok = c.need(e.payload[row]["id"] == e.facts[fact], f"pk change {kind}: {which} id")
    ok &= c.need(rec.has_header(header), f"pk change {kind} without {header} header")
    if op == "d":
        ok &= c.need(e.tombstone_follows(), "pk change delete not followed by its tombstone")
    if ok:
        c.shape(name, rec, f"op {op} for the {which} key, header {header}={rec.header(header)}")


@when("posts_insert_for_pk_change", "c")
def posts_create_small(c: Checker, e: Event) -> None:
    c.shape("posts:create_small", e.rec, "op c, a small row (its PK changes next)")


@when("comments_insert", "c")
def comments_create(c: Checker, e: Event) -> None:
    c.shape("comments:create", e.rec, "op c (FULL identity table)")


@when("comments_update_body", "u")
def comments_update_body(c: Checker, e: Event) -> None:
    before, after = e.before, e.after
    if c.need(before is not None and before["body"] == "first comment" and
              after["body"] == "edited comment", "comments update before/after"):
        c.shape("comments:update_full_before", e.rec,
                "op u, before is the true old row (body 'first comment')")


@when("comments_move", "u")
def comments_move(c: Checker, e: Event) -> None:
    before, after = e.before, e.after
    if c.need(before is not None and before["neighborhood_id"] == 7 and
              after["neighborhood_id"] == 8, "comments move before/after"):
        c.shape("comments:move", e.rec,
                "op u, neighborhood_id 7 -> 8 with the true before (a move)")


@when("comments_delete", "d")
def comments_delete(c: Checker, e: Event) -> None:
    before = e.before
    ok = c.need(before is not None and before["body"] == "edited comment" and
                before["neighborhood_id"] == 8 and e.after is None,
                "comments delete before is not the true row")
    ok &= c.need(e.tombstone_follows(), "comments delete not followed by its tombstone")
    if ok:
        c.shape("comments:delete_full_before", e.rec,
                "op d, before is the true old row (neighborhood_id 8)")


@when("comments_truncate", "t")
def comments_truncate(c: Checker, e: Event) -> None:
    ok = c.need(e.rec.key is None, "truncate has a key")
    ok &= c.need(e.before is None and e.after is None, "truncate has before/after")
    ok &= c.need(e.table == "comments", "truncate names another table")
    if ok:
        c.shape("comments:truncate", e.rec, "op t, null key, no before/after (keys present: "
                f"{sorted(e.payload)}), table only in source")


@when("profiles_insert", "c")
def profiles_create(c: Checker, e: Event) -> None:
    after = e.after
    uid = after["user_id"]
    ok = c.need(uid == e.facts["user"] and uid == uid.lower(), f"profile uuid {uid}")
    karma = decimal_of(after["karma"], c.scale(e.rec, "karma", 2))
    ok &= c.need(karma == Decimal("3.25"), f"karma decoded as {karma}")
    ok &= c.need(after["birthday"] == (dt.date(1990, 2, 28) - EPOCH).days,
                 f"birthday {after['birthday']!r} is not epoch days")
    micros = int((dt.datetime(2024, 5, 6, 7, 8, 9, 123456) -
                  dt.datetime(1970, 1, 1)).total_seconds() * 1_000_000)
    ok &= c.need(after["updated_at"] == micros,
                 f"updated_at {after['updated_at']!r} is not epoch micros")
    if ok:
        c.shape("profiles:create", e.rec,
                f"op c, uuid {uid}, karma {after['karma']!r} (=3.25), birthday "
                f"{after['birthday']} (epoch days), updated_at {after['updated_at']} "
                "(epoch micros)")


@when("profiles_update_name", "u")
def profiles_update(c: Checker, e: Event) -> None:
    if c.need(e.before is None and e.after["display_name"] == "Ada L.", "profiles update"):
        c.shape("profiles:update", e.rec, "op u, before null, display_name changed")


@when("profiles_delete", "d")
def profiles_delete(c: Checker, e: Event) -> None:
    before = e.before
    ok = c.need(before is not None and before["user_id"] == e.facts["user"],
                "profiles delete before.user_id")
    ok &= c.need(e.tombstone_follows(), "profiles delete not followed by its tombstone")
    if ok:
        others = {k: v for k, v in before.items() if k != "user_id"}
        c.shape("profiles:delete", e.rec, "op d, before has real user_id only, other "
                f"columns {json.dumps(others)}")


@when("multi_table_tx", "c", "u")
def multi_table(c: Checker, e: Event) -> None:
    t = e.payload["transaction"]
    c.shape(f"multi:{e.table}:{e.op}", e.rec,
            f"op {e.op} on {e.table} inside the multi-table transaction (total_order "
            f"{t['total_order']}, data_collection_order {t['data_collection_order']})")


@when("logical_message", "m")
def message(c: Checker, e: Event) -> None:
    rec = e.rec
    body = e.payload.get("message") or {}
    ok = c.need(rec.topic == f"{c.prefix}.message", f"message on topic {rec.topic}")
    ok &= c.need(body.get("prefix") == "cr-demo" and
                 base64.b64decode(body.get("content", "")) == b"hello",
                 f"message payload {body}")
    if ok:
        c.shape("message", rec, f"op m, message.prefix cr-demo, content {body['content']!r} "
                "(base64 of 'hello')")
