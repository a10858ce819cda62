"""Postgres → Debezium → Kafka → reconciler → Valkey: the cache protocol, for real.

Each test writes rows through psycopg as an application would, caches them through
the writer helper as a reader would, and checks what the running worker leaves in
both Valkey shards. Its worker's key templates carry a prefix of the test's own: other
tests' workers consume the same Debezium topics, and never write these keys.

Every test runs three times, on the same rows: on the JSON topics (``nd.*``), on the
Avro topics the second connector writes through the schema registry (``ndavro.*``,
`python -m stack up apicurio`), and on the flattened topics (``ndflat.*``, `python -m
stack up connect-flat`: Debezium's ExtractNewRecordState, deletes as ``__deleted`` rows,
``__op``). Where a flattened row cannot do what the envelope does — a move, a TRUNCATE,
a delete's tombstone — its test asserts what it does instead (the README's Formats).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import valkey

from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.e2e.support import (
    AVRO_PREFIX,
    COMMENTS,
    FLAT_PREFIX,
    POSTS,
    PROFILES,
    InProcessWorker,
    Rows,
    avro_overrides,
    flat_overrides,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
TOPICS = [POSTS, COMMENTS, PROFILES]
AVRO_TOPICS = [topic.replace("nd.", f"{AVRO_PREFIX}.", 1) for topic in TOPICS]
FLAT_TOPICS = [topic.replace("nd.", f"{FLAT_PREFIX}.", 1) for topic in TOPICS]
MAX_VERSION = str(2**63 - 1).encode()  # the delete fence's version


@dataclass
class Live:
    stack: Stack
    worker: InProcessWorker
    db: Rows
    a: valkey.Valkey
    b: valkey.Valkey
    writer_a: CacheWriter
    writer_b: CacheWriter
    prefix: str
    topics: list[str]
    format: str  # json, avro or flattened

    @property
    def flattened(self) -> bool:
        return self.format == "flattened"

    def key(self, name: str) -> str:
        """`name` (e.g. "post:7") as this test's worker writes it."""
        return self.prefix + name

    def entry(self, shard: valkey.Valkey, key: str) -> dict[bytes, bytes]:
        return shard.hgetall(key)  # type: ignore[return-value]

    def settle(self) -> None:
        """Wait until the worker has reconciled every change committed so far.

        A marker row is committed last; once its fence is in Valkey, Debezium has
        published everything before it, and the worker is then waited for up to the
        topics' current ends."""
        marker, _ = self.db.insert_post(1, "marker")
        wait_until(lambda: self.a.exists(self.key(f"post:{marker}")), 30, "the marker row's fence")
        self.worker.wait_caught_up(self.stack, self.topics)


@pytest.fixture
def prefix(uid: str) -> str:
    return f"rec-{uid}:"


@pytest.fixture(params=["json", "avro", "flattened"])
def live(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path, uid: str, prefix: str,
         shards: dict[str, valkey.Valkey]) -> Iterator[Live]:
    """A worker on the JSON topics, on the Avro ones (the same changes, read through the
    schema registry), or on the flattened ones (the same changes as rows)."""
    group = f"test-{uid}"
    topics, overrides = {
        "json": (TOPICS, None),
        "avro": (AVRO_TOPICS, avro_overrides(stack) if request.param == "avro" else None),
        "flattened": (FLAT_TOPICS,
                      flat_overrides(stack) if request.param == "flattened" else None),
    }[request.param]
    config = write_config(tmp_path, stack, group=group, topics=topics, key_prefix=prefix,
                          overrides=overrides)
    start_group_at_end(stack, group, topics)
    db = Rows(stack.postgres_dsn)
    a, b = shards["a"], shards["b"]
    with InProcessWorker(config) as worker:
        yield Live(stack, worker, db, a, b, CacheWriter(a), CacheWriter(b), prefix, topics,
                   request.param)
    db.close()


def fence(version: int | bytes) -> dict[bytes, bytes]:
    return {b"v": version if isinstance(version, bytes) else str(version).encode()}


# --------------------------------------------------------------------------- versions


def test_an_update_replaces_stale_cached_data_with_a_fence(live: Live) -> None:
    post_id, v1 = live.db.insert_post(7)
    live.settle()
    assert live.entry(live.a, live.key(f"post:{post_id}")) == fence(v1)  # absent → fenced at v1
    assert live.writer_a.set_if_newer(live.key(f"post:{post_id}"), v1, {"title": "hello"}, 300)
    v2 = live.db.update_post(post_id, title="changed")
    wait_until(lambda: live.entry(live.a, live.key(f"post:{post_id}")) == fence(v2), 30,
               "the stale v1 entry to become a v2 fence")
    assert live.writer_a.get(live.key(f"post:{post_id}")) is None
    # The fence is visible as soon as Valkey applied it; the batch's counts are published
    # a moment later, when the worker has collected every shard's answer.
    wait_until(lambda: live.worker.metric("reconciler_invalidations_total",
                                          {"shard": "a", "result": "repaired"}) >= 1, 10,
               "the repair to be counted")
    assert live.a.pttl(live.key(f"post:{post_id}")) <= 60_000


def test_an_entry_at_or_above_the_event_version_is_untouched(live: Live) -> None:
    live.worker.stop()  # the events wait on the topic while a reader caches the latest row
    post_id, _ = live.db.insert_post(7)
    v2 = live.db.update_post(post_id, title="latest")
    assert live.writer_a.set_if_newer(live.key(f"post:{post_id}"), v2, {"title": "latest"}, 300)
    with InProcessWorker(_config(live)) as worker:
        live.worker = worker
        live.settle()
        assert live.writer_a.get(live.key(f"post:{post_id}")) == {"title": "latest"}
        assert live.entry(live.a, live.key(f"post:{post_id}"))[b"v"] == str(v2).encode()
        assert worker.metric("reconciler_invalidations_total",
                             {"shard": "a", "result": "fresh"}) >= 2  # the c and the u


def _config(live: Live) -> Path:
    return live.worker.settings.shard_map.parent / "reconciler.yaml"


def test_a_delete_removes_the_entry_and_blocks_a_stale_writer(live: Live) -> None:
    post_id, v1 = live.db.insert_post(7)
    live.settle()
    assert live.writer_a.set_if_newer(live.key(f"post:{post_id}"), v1, {"title": "cached"}, 300)
    live.db.delete_post(post_id)
    wait_until(lambda: live.entry(live.a, live.key(f"post:{post_id}")) == fence(MAX_VERSION), 30,
               "the delete fence")
    # A slow reader that loaded the row before the delete cannot put it back.
    assert not live.writer_a.set_if_newer(live.key(f"post:{post_id}"), v1, {"title": "stale"}, 300)
    assert live.writer_a.get(live.key(f"post:{post_id}")) is None


@pytest.mark.parametrize("fences", [True, False], ids=["with-fences", "without-fences"])
def test_the_delete_then_stale_set_race_leaves_nothing_stale(live: Live, fences: bool) -> None:
    """Reader loads version N, the change to N+1 is reconciled, the reader writes N.

    With fences the stale write is refused. The control run removes the fence the
    reconciler wrote — as a reconciler that only deletes would leave things — and the
    same stale write then lands: the test can fail, and fences are why it passes."""
    post_id, _ = live.db.insert_post(7)
    live.settle()
    key = live.key(f"post:{post_id}")
    reader_saw = live.db.post_version(post_id)  # the slow reader's SELECT
    assert reader_saw is not None
    latest = live.db.update_post(post_id, title="newer")
    wait_until(lambda: live.entry(live.a, key) == fence(latest), 30, "the change's fence")
    if not fences:
        live.a.delete(key)
    wrote = live.writer_a.set_if_newer(key, reader_saw, {"title": "stale"}, 300)
    cached = live.entry(live.a, key)
    stale = b"d" in cached and int(cached[b"v"]) < latest
    if fences:
        assert not wrote and not stale
    else:
        assert wrote and stale, "without the fence the stale value must land"


# --------------------------------------------------------------------------- shards


def test_each_key_lands_on_the_shard_the_map_says(live: Live) -> None:
    on_a, _ = live.db.insert_post(7)
    on_b, _ = live.db.insert_post(700)
    moving, _ = live.db.insert_post(420)
    live.settle()
    assert live.a.exists(live.key(f"post:{on_a}")) and not live.b.exists(live.key(f"post:{on_a}"))
    assert live.b.exists(live.key(f"post:{on_b}")) and not live.a.exists(live.key(f"post:{on_b}"))
    assert live.a.exists(live.key(f"post:{moving}")) and live.b.exists(live.key(f"post:{moving}"))


def test_a_row_moving_neighbourhood_under_full_identity_is_invalidated_on_both(
        live: Live) -> None:
    """The envelope's `before` names the old shard. A flattened row has no `before`: the
    new shard alone is told, and the old one keeps its copy (what the docs say)."""
    post_id, _ = live.db.insert_post(7)
    comment_id, v1 = live.db.insert_comment(post_id, 7)
    live.settle()
    key = live.key(f"comment:{comment_id}")
    assert live.writer_a.set_if_newer(key, v1, {"body": "on a"}, 300)
    assert live.writer_b.set_if_newer(key, v1, {"body": "stale copy on b"}, 300)
    v2 = live.db.update_comment(comment_id, neighborhood_id=700)
    if live.flattened:
        wait_until(lambda: live.entry(live.b, key) == fence(v2), 30, "the new shard's fence")
        live.settle()
        assert live.writer_a.get(key) == {"body": "on a"}, "the old shard is never told"
        assert live.entry(live.a, key)[b"v"] == str(v1).encode()
        return
    wait_until(lambda: live.entry(live.a, key) == fence(v2)
               and live.entry(live.b, key) == fence(v2), 30, "fences on both shards")


def test_a_default_identity_delete_is_broadcast_and_never_routed_by_fake_defaults(
        live: Live) -> None:
    post_id, v1 = live.db.insert_post(700)  # lives on b
    live.settle()
    key = live.key(f"post:{post_id}")
    assert live.writer_b.set_if_newer(key, v1, {"title": "on b"}, 300)
    assert live.writer_a.set_if_newer(key, v1, {"title": "stray copy on a"}, 300)
    unresolved = {"table": "public.posts", "template": live.key("feed:{neighborhood_id}"),
                  "cause": "key_only"}
    before = live.worker.metric("reconciler_unresolved_keys_total", unresolved)
    live.db.delete_post(post_id)
    # The delete's `before` says neighborhood_id 0 (a default): outside every range,
    # it would be dead-lettered if it were used. Broadcast reaches both copies.
    wait_until(lambda: live.entry(live.a, key) == fence(MAX_VERSION)
               and live.entry(live.b, key) == fence(MAX_VERSION), 30, "delete fences on both")
    assert live.worker.metric("reconciler_dead_letters_total", {"reason": "unroutable"}) == 0
    # feed:{neighborhood_id} cannot be built from a DEFAULT-identity delete, nor from
    # the tombstone that follows it (a key-only delete of its own): expected, key_only.
    # The flattened connector rewrites deletes as rows (`__deleted`) with no tombstone.
    records = 1 if live.flattened else 2
    wait_until(lambda: live.worker.metric("reconciler_unresolved_keys_total",
                                          unresolved) == before + records, 10,
               f"the unresolved feed key to be counted for the delete ({records} record(s))")


def test_a_truncate_clears_the_tables_keys_on_every_shard(live: Live) -> None:
    post_id, pv1 = live.db.insert_post(7)
    c1, v1 = live.db.insert_comment(post_id, 7)
    c2, v2 = live.db.insert_comment(post_id, 700)
    live.settle()
    assert live.writer_a.set_if_newer(live.key(f"post:{post_id}"), pv1, {"title": "p"}, 300)
    assert live.writer_a.set_if_newer(live.key(f"comment:{c1}"), v1, {"body": "x"}, 300)
    assert live.writer_b.set_if_newer(live.key(f"comment:{c2}"), v2, {"body": "y"}, 300)
    live.a.set(live.key(f"post_comments:{post_id}"), b"derived on a")
    live.b.set(live.key(f"post_comments:{post_id}"), b"derived on b")
    # Each shard holds the table's keys before the truncate: a cached comment and the
    # derived key, so a truncate that removed nothing could not pass.
    comments = live.key("comment:*")
    derived = live.key(f"post_comments:{post_id}")
    assert live.a.keys(comments) == [live.key(f"comment:{c1}").encode()]
    assert live.b.keys(comments) == [live.key(f"comment:{c2}").encode()]
    assert live.writer_a.get(live.key(f"comment:{c1}")) == {"body": "x"}
    assert live.writer_b.get(live.key(f"comment:{c2}")) == {"body": "y"}
    assert live.a.exists(derived) and live.b.exists(derived)
    live.db.conn.execute("TRUNCATE comments")
    if live.flattened:
        # ExtractNewRecordState drops TRUNCATE events: nothing arrives, and the entries
        # stay until their TTL (audit reports them as orphans; the docs say so).
        live.settle()
        assert live.a.keys(comments) == [live.key(f"comment:{c1}").encode()]
        assert live.b.keys(comments) == [live.key(f"comment:{c2}").encode()]
        assert live.a.exists(derived) and live.b.exists(derived)
        return
    wait_until(lambda: not live.a.keys(comments) and not live.b.keys(comments)
               and not live.a.exists(derived) and not live.b.exists(derived), 30,
               "the truncate")
    assert live.writer_a.get(live.key(f"post:{post_id}")) == {"title": "p"}, \
        "keys of other tables stay"


def test_a_primary_key_change_invalidates_both_keys(live: Live) -> None:
    post_id, v1 = live.db.insert_post(7)
    live.settle()
    assert live.writer_a.set_if_newer(live.key(f"post:{post_id}"), v1, {"title": "old id"}, 300)
    new_id = post_id + 10_000_000
    live.db.update_post(post_id, id=new_id)
    wait_until(lambda: live.entry(live.a, live.key(f"post:{post_id}")) == fence(MAX_VERSION)
               and live.entry(live.a, live.key(f"post:{new_id}")).get(b"v") is not None, 30,
               "both keys to be invalidated")
    assert b"d" not in live.entry(live.a, live.key(f"post:{new_id}"))
