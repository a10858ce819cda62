"""`reconciler audit` against the real stack: a cache corrupted behind the reconciler's
back is reported with exact counts, repaired by `--repair`, and then audits clean.

Each test uses key templates prefixed with its own id, so the entries it plants are
the only ones its audit sees, whatever else runs against the shared shards.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import valkey
import yaml

from connectors.valkey.writer import CacheWriter
from reconciler.cli import main
from stack import security
from tests.conftest import Stack
from tests.e2e.support import COMMENTS, POSTS, PROFILES, Rows, write_config

pytestmark = pytest.mark.e2e
MAX_VERSION = str(2**63 - 1).encode()  # the delete fence's version


@dataclass
class Cache:
    prefix: str
    a: valkey.Valkey
    b: valkey.Valkey

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def writer(self, shard: str) -> CacheWriter:
        return CacheWriter(self.a if shard == "a" else self.b)

    def snapshot(self) -> dict[tuple[str, bytes], Any]:
        out: dict[tuple[str, bytes], Any] = {}
        for name, client in (("a", self.a), ("b", self.b)):
            for key in client.scan_iter(f"{self.prefix}*"):
                kind = client.type(key)
                out[name, key] = client.hgetall(key) if kind == b"hash" else client.get(key)
        return out


@pytest.fixture
def cache(stack: Stack, uid: str) -> Iterator[Cache]:
    prefix = f"audit-{uid}:"
    a = valkey.Valkey.from_url(stack.valkey["valkey-a"])
    b = valkey.Valkey.from_url(stack.valkey["valkey-b"])
    yield Cache(prefix, a, b)
    for client in (a, b):
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture
def config(stack: Stack, tmp_path: Path, uid: str, cache: Cache) -> Path:
    path = write_config(tmp_path, stack, group=f"audit-{uid}", topics=[POSTS, COMMENTS, PROFILES])
    data = yaml.safe_load(path.read_text())
    for table in data["tables"].values():
        for key in table["keys"]:
            key["template"] = cache.prefix + key["template"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def db(stack: Stack) -> Iterator[Rows]:
    rows = Rows(stack.postgres_dsn)
    yield rows
    rows.close()


def audit(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["audit", "-c", str(config), "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def insert_profile(db: Rows, neighborhood_id: int) -> tuple[str, int]:
    user_id = str(uuid.uuid4())
    version = db.one("INSERT INTO profiles (user_id, neighborhood_id, display_name) "
                     "VALUES (%s, %s, 'p') RETURNING system_version",
                     (user_id, neighborhood_id))[0]
    return user_id, int(version)


def test_a_corrupted_cache_is_reported_exactly_repaired_and_then_clean(
        config: Path, cache: Cache, db: Rows, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b = cache.writer("a"), cache.writer("b")
    # posts: one fresh entry, three stale (two behind the row, one not a valid entry at
    # all), two for deleted rows, one fence, one key that names no row.
    fresh, v_fresh = db.insert_post(7)
    assert a.set_if_newer(cache.key(f"post:{fresh}"), v_fresh, {"t": "ok"}, 600)
    behind, v1 = db.insert_post(7)
    db.update_post(behind)
    v_behind = db.update_post(behind)
    assert a.set_if_newer(cache.key(f"post:{behind}"), v1, {"t": "old"}, 600)
    behind_b, v1_b = db.insert_post(700)
    v_behind_b = db.update_post(behind_b)
    assert b.set_if_newer(cache.key(f"post:{behind_b}"), v1_b, {"t": "old on b"}, 600)
    foreign, v_foreign = db.insert_post(7)
    cache.a.set(cache.key(f"post:{foreign}"), b"written by something else")
    gone, v_gone = db.insert_post(7)
    assert a.set_if_newer(cache.key(f"post:{gone}"), v_gone, {"t": "deleted"}, 600)
    gone_b, v_gone_b = db.insert_post(700)
    assert b.set_if_newer(cache.key(f"post:{gone_b}"), v_gone_b, {"t": "deleted"}, 600)
    db.delete_post(gone)
    db.delete_post(gone_b)
    cache.a.hset(cache.key("post:123456789012"), b"v", b"5")  # a fence: not data
    cache.a.pexpire(cache.key("post:123456789012"), 600_000)
    cache.a.hset(cache.key("post:not-a-number"), mapping={b"v": b"1", b"d": b"\x01x"})
    # comments (FULL identity, on b): one stale entry.
    comment, c1 = db.insert_comment(behind_b, 700)
    db.update_comment(comment, body="edited")
    assert b.set_if_newer(cache.key(f"comment:{comment}"), c1, {"b": "old"}, 600)
    # profiles (uuid primary key): one fresh, one orphan.
    profile, p1 = insert_profile(db, 7)
    assert a.set_if_newer(cache.key(f"profile:{profile}"), p1, {"n": "p"}, 600)
    lost, lost_v = insert_profile(db, 7)
    db.conn.execute("DELETE FROM profiles WHERE user_id = %s", (lost,))
    assert a.set_if_newer(cache.key(f"profile:{lost}"), lost_v, {"n": "gone"}, 600)

    before = cache.snapshot()
    code, found = audit(config, capsys, "--grace", "0.2")
    assert code == 1  # stale and orphaned entries remain
    assert cache.snapshot() == before, "audit without --repair must not write"
    posts, comments, profiles = (found["tables"][t] for t in
                                 ("public.posts", "public.comments", "public.profiles"))
    counts = ("fresh", "stale", "orphan", "ahead", "fence", "unparsed")
    assert [posts[s] for s in counts] == [1, 3, 2, 0, 1, 1]
    assert posts["shards"]["b"]["stale"] == 1 and posts["shards"]["b"]["orphan"] == 1
    assert [comments[s] for s in counts] == [0, 1, 0, 0, 0, 0]
    assert [profiles[s] for s in counts] == [1, 0, 1, 0, 0, 0]
    assert found["remaining"] == {"stale": 4, "orphan": 3, "ahead": 0}
    assert found["not_auditable"]["public.posts"] == [
        {"template": cache.key("feed:{neighborhood_id}"),
         "reason": "unversioned (a derived key: nothing to compare)"}]

    metrics = tmp_path / "audit.prom"
    code, repaired = audit(config, capsys, "--grace", "0", "--repair",
                           "--metrics-file", str(metrics))
    assert code == 0  # everything found was repaired
    assert repaired["tables"]["public.posts"]["repaired"] == {"stale": 3, "orphan": 2, "ahead": 0}
    assert repaired["remaining"] == {"stale": 0, "orphan": 0, "ahead": 0}
    # The reconciler's own protocol: stale → a fence at the row's version, orphan → the
    # delete fence; fresh data untouched.
    assert cache.a.hgetall(cache.key(f"post:{behind}")) == {b"v": str(v_behind).encode()}
    assert cache.b.hgetall(cache.key(f"post:{behind_b}")) == {b"v": str(v_behind_b).encode()}
    assert cache.a.hgetall(cache.key(f"post:{foreign}")) == {b"v": str(v_foreign).encode()}
    assert cache.a.hgetall(cache.key(f"post:{gone}")) == {b"v": MAX_VERSION}
    assert cache.a.hgetall(cache.key(f"profile:{lost}")) == {b"v": MAX_VERSION}
    assert a.get(cache.key(f"post:{fresh}")) == {"t": "ok"}
    assert 0 < cache.a.pttl(cache.key(f"post:{behind}")) <= 60_000  # fences expire
    text = metrics.read_text()
    assert 'reconciler_audit_entries{state="stale",table="public.posts"} 3.0' in text
    assert 'reconciler_audit_entries{state="orphan",table="public.profiles"} 1.0' in text
    assert 'reconciler_audit_repaired_entries{state="orphan",table="public.posts"} 2.0' in text
    assert "reconciler_audit_last_run_timestamp_seconds " in text

    code, after = audit(config, capsys, "--grace", "0")
    assert code == 0
    assert after["totals"]["stale"] == 0 and after["totals"]["orphan"] == 0
    assert after["tables"]["public.posts"]["fence"] == 1 + 5
    assert after["tables"]["public.posts"]["fresh"] == 1
    assert after["totals"]["fence"] == 6 + 1 + 1


def test_a_sample_looks_at_n_entries_and_postgres_reads_are_rate_limited(
        config: Path, cache: Cache, db: Rows, capsys: pytest.CaptureFixture[str]) -> None:
    writer = cache.writer("a")
    for _ in range(30):
        post, version = db.insert_post(7)
        writer.set_if_newer(cache.key(f"post:{post}"), version, {"t": "x"}, 600)
    code, sampled = audit(config, capsys, "--table", "public.posts", "--sample", "5")
    assert code == 0
    shard_a = sampled["tables"]["public.posts"]["shards"]["a"]
    assert sum(shard_a.values()) == 5 and shard_a["fresh"] == 5
    assert sampled["sample"] == 5 and list(sampled["tables"]) == ["public.posts"]

    started = time.monotonic()
    code, full = audit(config, capsys, "--table", "public.posts", "--rows-per-second", "20")
    elapsed = time.monotonic() - started
    assert code == 0 and full["tables"]["public.posts"]["fresh"] == 30
    assert elapsed >= 1.2, f"30 rows at 20/s took only {elapsed:.2f}s"


def test_the_result_can_be_pushed_to_a_pushgateway(
        config: Path, cache: Cache, db: Rows, capsys: pytest.CaptureFixture[str]) -> None:
    """A minimal HTTP endpoint stands in for the Pushgateway (none runs in the stack):
    what matters is the request the audit makes."""
    received: list[tuple[str, str, bytes]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # the http.server API names it so
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(("PUT", self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        post, version = db.insert_post(7)
        cache.writer("a").set_if_newer(cache.key(f"post:{post}"), version, {"t": "x"}, 600)
        db.update_post(post)
        code, _ = audit(config, capsys, "--table", "public.posts", "--grace", "0",
                        "--pushgateway", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert [(method, path) for method, path, _ in received] == [
        ("PUT", "/metrics/job/cache-reconciler-audit")]
    body = received[0][2].decode()
    assert 'reconciler_audit_entries{state="stale",table="public.posts"} 1.0' in body


def test_an_entry_ahead_of_postgres_is_a_finding_and_repair_removes_it(
        config: Path, cache: Cache, db: Rows, capsys: pytest.CaptureFixture[str]) -> None:
    """Data cached at a version above the row's: the row's versions went back (a delete
    and re-insert that restarted the version) or the DSN lags. The reconciler would call
    it fresh forever, so audit reports it, fails, and --repair removes it."""
    post, version = db.insert_post(7)
    key = cache.key(f"post:{post}")
    assert cache.writer("a").set_if_newer(key, version + 10, {"t": "older life"}, 600)
    fresh, v_fresh = db.insert_post(7)
    assert cache.writer("a").set_if_newer(cache.key(f"post:{fresh}"), v_fresh, {"t": "ok"}, 600)

    code = main(["audit", "-c", str(config), "--table", "public.posts", "--grace", "0.2"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "1 ahead" in out
    assert "1 entry ahead of Postgres" in err
    assert "versions went back" in err and "lagging replica" in err
    assert "reconciler doctor" in err and "--repair" in err

    code, found = audit(config, capsys, "--table", "public.posts", "--grace", "0")
    assert code == 1
    posts = found["tables"]["public.posts"]
    assert (posts["fresh"], posts["ahead"], posts["stale"]) == (1, 1, 0)
    assert found["remaining"] == {"stale": 0, "orphan": 0, "ahead": 1}

    code, repaired = audit(config, capsys, "--table", "public.posts", "--grace", "0",
                           "--repair")
    assert code == 0
    assert repaired["tables"]["public.posts"]["repaired"]["ahead"] == 1
    assert cache.a.hgetall(key) == {b"v": MAX_VERSION}  # removed, and fenced like a delete
    assert cache.writer("a").get(cache.key(f"post:{fresh}")) == {"t": "ok"}
    code, after = audit(config, capsys, "--table", "public.posts", "--grace", "0")
    assert code == 0 and after["totals"]["ahead"] == 0


# --------------------------------------------------------------------------- ACLs


@dataclass
class AclValkey:
    """The stack's Valkey with ACL users (valkey-acl), as its admin, and the users a
    test made there (deleted afterwards)."""

    admin: valkey.Valkey
    url: str
    users: list[str]

    def user(self, name: str, password: str, rule: str) -> None:
        """ACL SETUSER `name` from a rule line as ACL files spell it ("user NAME ...")."""
        _, _, *parts = rule.split()
        self.admin.execute_command("ACL", "SETUSER", name, "reset", *parts)
        self.users.append(name)
        assert name in self.admin.acl_users()


@pytest.fixture
def acl_valkey(stack: Stack) -> Iterator[AclValkey]:
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex((security.HOST, security.VALKEY_ACL_PORT)) != 0:
            pytest.fail(f"valkey-acl is not listening on {security.HOST}:"
                        f"{security.VALKEY_ACL_PORT}: `python -m stack up` starts it",
                        pytrace=False)
    admin = valkey.Valkey(host=security.HOST, port=security.VALKEY_ACL_PORT,
                          username=security.VALKEY_ADMIN,
                          password=security.secret(f"valkey-{security.VALKEY_ADMIN}"))
    found = AclValkey(admin, f"valkey://{security.HOST}:{security.VALKEY_ACL_PORT}/0", [])
    yield found
    for user in found.users:
        admin.acl_deluser(user)
    admin.close()


def acl_config(config: Path, acl: AclValkey, user: str, password: str) -> Path:
    """The audit's config, its one shard the ACL Valkey, as `user`."""
    data = yaml.safe_load(config.read_text())
    data["valkey"] = {**data.get("valkey", {}), "username": user, "password": password}
    shard_map = config.parent / "shard_map.yaml"
    shards = yaml.safe_load(shard_map.read_text())
    shards.update(shards={"a": {"url": acl.url}}, moving=[],
                  ranges=[{"from": 1, "to": 1000, "shard": "a"}])
    shard_map.write_text(yaml.safe_dump(shards, sort_keys=False))
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def audit_rule(cache: Cache, user: str, password: str, *, without: str | None = None,
               patterns: tuple[str, ...] | None = None) -> str:
    """The documented audit ACL (stack/security.py, docs/operations.md) for the test's
    keys, minus one command if asked."""
    rule = security.valkey_audit_acl_rule(
        hashlib.sha256(password.encode()).hexdigest(), user=user,
        key_patterns=patterns or tuple(cache.prefix + p for p in security.VALKEY_KEY_PATTERNS))
    return rule if without is None else rule.replace(f" +{without}", "")


def plant(acl: AclValkey, cache: Cache, db: Rows) -> tuple[str, str, int]:
    """A fresh and a stale post entry on the ACL Valkey: (fresh key, stale key, the stale
    row's version)."""
    fresh, v_fresh = db.insert_post(7)
    behind, v_old = db.insert_post(7)
    v_new = db.update_post(behind)
    fresh_key, stale_key = cache.key(f"post:{fresh}"), cache.key(f"post:{behind}")
    acl.admin.hset(fresh_key, mapping={"v": v_fresh, "d": b"\x01fresh"})
    acl.admin.hset(stale_key, mapping={"v": v_old, "d": b"\x01old"})
    for key in (fresh_key, stale_key):
        acl.admin.pexpire(key, 600_000)
    return fresh_key, stale_key, v_new


@pytest.mark.parametrize(("command", "category"), [
    ("hget", "@hash"), ("type", "@keyspace"), ("hexists", "@hash"), ("scan", "@keyspace")])
def test_a_command_the_acl_refuses_is_an_error_naming_it_never_stale(
        config: Path, cache: Cache, db: Rows, acl_valkey: AclValkey, uid: str,
        command: str, category: str, capsys: pytest.CaptureFixture[str]) -> None:
    user, password = f"audit-{uid}-no-{command}", f"pw-{uid}"
    acl_valkey.user(user, password, audit_rule(cache, user, password, without=command))
    plant(acl_valkey, cache, db)
    try:
        code = main(["audit", "-c", str(acl_config(config, acl_valkey, user, password)),
                     "--table", "public.posts", "--grace", "0"])
        out, err = capsys.readouterr()
    finally:
        for key in acl_valkey.admin.scan_iter(f"{cache.prefix}*"):
            acl_valkey.admin.delete(key)
    assert code == 2, out + err  # a dependency failed: not a finding
    assert "stale" not in out + err
    assert f"refused {command.upper()}" in err and f"user {user}" in err
    assert category in err and "@read" in err  # the ACL categories it belongs to
    assert f"ACL SETUSER {user} +{command}" in err
    assert password not in out + err


def test_keys_outside_the_users_patterns_are_an_error_naming_the_pattern(
        config: Path, cache: Cache, db: Rows, acl_valkey: AclValkey, uid: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    user, password = f"audit-{uid}-nokeys", f"pw-{uid}"
    acl_valkey.user(user, password,
                    audit_rule(cache, user, password, patterns=(f"{cache.prefix}feed:*",)))
    plant(acl_valkey, cache, db)
    try:
        code = main(["audit", "-c", str(acl_config(config, acl_valkey, user, password)),
                     "--table", "public.posts", "--grace", "0"])
        out, err = capsys.readouterr()
    finally:
        for key in acl_valkey.admin.scan_iter(f"{cache.prefix}*"):
            acl_valkey.admin.delete(key)
    assert code == 2, out + err
    assert "stale" not in out + err
    assert "may not access" in err and f"~{cache.prefix}post:*" in err


def test_the_documented_audit_acl_audits_and_repairs(
        config: Path, cache: Cache, db: Rows, acl_valkey: AclValkey, uid: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    docs = Path(__file__).parents[2] / "docs" / "operations.md"
    assert security.valkey_audit_acl_rule() in docs.read_text()
    user, password = f"audit-{uid}", f"pw-{uid}"
    acl_valkey.user(user, password, audit_rule(cache, user, password))
    fresh_key, stale_key, v_new = plant(acl_valkey, cache, db)
    acl_config(config, acl_valkey, user, password)
    try:
        code, found = audit(config, capsys, "--table", "public.posts", "--grace", "0")
        assert code == 1
        posts = found["tables"]["public.posts"]
        assert (posts["fresh"], posts["stale"]) == (1, 1)
        code, sampled = audit(config, capsys, "--table", "public.posts", "--sample", "5",
                              "--grace", "0")
        assert sampled["totals"]["stale"] == 1
        code, repaired = audit(config, capsys, "--table", "public.posts", "--grace", "0",
                               "--repair")
        assert code == 0
        assert repaired["tables"]["public.posts"]["repaired"]["stale"] == 1
        assert acl_valkey.admin.hgetall(stale_key) == {b"v": str(v_new).encode()}
        assert acl_valkey.admin.hget(fresh_key, "d") == b"\x01fresh"
    finally:
        for key in acl_valkey.admin.scan_iter(f"{cache.prefix}*"):
            acl_valkey.admin.delete(key)
