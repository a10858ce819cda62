"""The capture's scripted workload: rows seeded before the connectors start (their
snapshot), then one transaction per step covering every event shape of SPEC section
3, and the removal of every row the run created."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from stack import services
from stack.capture.records import PK, log


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


@dataclass(frozen=True)
class Sql:
    """One statement of a step: its parameters are facts (`Workload.facts`) by name;
    with `keep`, the key it RETURNs is kept as that fact and as a row of `table`."""

    text: str
    params: tuple[str, ...] = ()
    keep: str | None = None
    table: str = ""


POST = ("INSERT INTO posts (neighborhood_id, author_id, title, body, score{}) "
        "VALUES ({}) RETURNING id")
COMMENT = ("INSERT INTO comments (post_id, neighborhood_id, author_id, body) "
           "VALUES (%s, 7, {}) RETURNING id")
# Every step, in order: (label, tables, what it makes Debezium emit, its statements).
# posts and profiles have REPLICA IDENTITY DEFAULT, comments FULL.
STEPS: tuple[tuple[str, tuple[str, ...], str, tuple[Sql, ...]], ...] = (
    ("posts_insert", ("posts",),
     "insert: 20,000-char random-hex body (TOASTed out of line), score 12.50, jsonb",
     (Sql(POST.format(", metadata", "7, 42, 'first title', %s, 12.50, %s::jsonb"),
          ("big_body", "metadata_json"), "post", "posts"),)),
    ("posts_update_title", ("posts",),
     "update of title only: before null, unchanged TOASTed body unavailable",
     (Sql("UPDATE posts SET title = 'second title' WHERE id = %s", ("post",)),)),
    ("posts_update_neighborhood", ("posts",),
     "update of neighborhood_id 7 -> 8 (DEFAULT identity: before null)",
     (Sql("UPDATE posts SET neighborhood_id = 8 WHERE id = %s", ("post",)),)),
    ("posts_delete", ("posts",), "delete (DEFAULT identity: before holds the real PK only)",
     (Sql("DELETE FROM posts WHERE id = %s", ("post",)),)),
    ("posts_insert_for_pk_change", ("posts",), "insert of the row whose PK changes next",
     (Sql(POST.format("", "9, 44, 'pk change', 'short body', 0.10"), (), "pk_post", "posts"),)),
    ("posts_pk_change", ("posts",),
     "primary-key change id -> id + 1000000: delete + tombstone (old key), create (new key)",
     (Sql("UPDATE posts SET id = id + 1000000 WHERE id = %s RETURNING id", ("pk_post",),
          "pk_post_new", "posts"),)),
    ("comments_insert", ("comments",), "insert",
     (Sql(COMMENT.format("45, 'first comment'"), ("pk_post_new",), "comment", "comments"),)),
    ("comments_update_body", ("comments",),
     "update of body (FULL identity: before is the true old row)",
     (Sql("UPDATE comments SET body = 'edited comment' WHERE id = %s", ("comment",)),)),
    ("comments_move", ("comments",),
     "update of neighborhood_id 7 -> 8, a move (before is the true old row)",
     (Sql("UPDATE comments SET neighborhood_id = 8 WHERE id = %s", ("comment",)),)),
    ("comments_delete", ("comments",), "delete (before is the true old row)",
     (Sql("DELETE FROM comments WHERE id = %s", ("comment",)),)),
    ("comments_truncate", ("comments",), "TRUNCATE comments",
     (Sql("SET LOCAL lock_timeout = '10s'"), Sql("TRUNCATE comments"))),
    ("profiles_insert", ("profiles",),
     "insert: uuid PK, karma 3.25, birthday 1990-02-28, updated_at 2024-05-06 07:08:09.123456",
     (Sql("INSERT INTO profiles (user_id, neighborhood_id, display_name, karma, birthday, "
          "updated_at) VALUES (%s, 7, 'Ada', 3.25, '1990-02-28', '2024-05-06 07:08:09.123456')",
          ("user",)),)),
    ("profiles_update_name", ("profiles",), "update of display_name (before null)",
     (Sql("UPDATE profiles SET display_name = 'Ada L.' WHERE user_id = %s", ("user",)),)),
    ("profiles_delete", ("profiles",), "delete (DEFAULT identity)",
     (Sql("DELETE FROM profiles WHERE user_id = %s", ("user",)),)),
    ("multi_table_tx", ("posts", "comments", "profiles"),
     "one transaction: insert post, comment, profile, then update the post",
     (Sql(POST.format("", "7, 46, 'multi', 'multi body', 2.00"), (), "multi_post", "posts"),
      Sql(COMMENT.format("46, 'multi comment'"), ("multi_post",), "multi_comment", "comments"),
      Sql("INSERT INTO profiles (user_id, neighborhood_id, display_name, karma) "
          "VALUES (%s, 7, 'Multi', 1.00)", ("multi_user",)),
      Sql("UPDATE posts SET title = 'multi, edited' WHERE id = %s", ("multi_post",)))),
    ("logical_message", (), "SELECT pg_logical_emit_message(true, 'cr-demo', 'hello')",
     (Sql("SELECT pg_logical_emit_message(true, 'cr-demo', 'hello')"),)),
)


def run_workload(conn: Any, work: Workload) -> None:
    """Every step of STEPS, each in a transaction of its own."""
    facts = work.facts
    facts["big_body"] = secrets.token_hex(10_000)  # 20,000 random hex chars: TOASTed
    facts["metadata"] = {"tags": ["cdc", "cache"], "pinned": True, "weight": 0.5}
    facts["metadata_json"] = json.dumps(facts["metadata"])
    for user in ("user", "multi_user"):  # profiles' keys are ours: known before the insert
        facts[user] = str(uuid.uuid4())
        work.created["profiles"].add(facts[user])
    for label, tables, what, statements in STEPS:
        with conn.transaction():
            txid = conn.execute("SELECT txid_current()").fetchone()[0]
            for sql in statements:
                params = tuple(facts[name] for name in sql.params)
                cursor = conn.execute(sql.text, params or None)
                if sql.keep is not None:
                    facts[sql.keep] = cursor.fetchone()[0]
                    work.created[sql.table].add(str(facts[sql.keep]))
        work.steps.append(Step(label, int(txid), tables, what))
        log(f"step {label} (txid {txid})")
        time.sleep(0.2)  # distinct produce timestamps between steps


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


