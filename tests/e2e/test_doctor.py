"""`reconciler doctor` against the real stack: the healthy stack passes, and each
misconfiguration named in the issue fails with its own line and what to do."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from reconciler.cli import main
from tests.conftest import Stack
from tests.e2e.support import (
    COMMENTS,
    FLAT_PREFIX,
    POSTS,
    PROFILES,
    PrivateValkey,
    admin,
    create_topic,
    flat_overrides,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
TOPICS = [POSTS, COMMENTS, PROFILES]


def doctor(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["doctor", "-c", str(config)])
    return code, capsys.readouterr().out.splitlines()


def line(lines: list[str], status: str, check: str) -> str:
    """The checklist line of `check` with `status`; fails listing them all if absent."""
    prefix = f"{status:<4} {check}: "
    found = [text for text in lines if text.startswith(prefix)]
    assert found, f"no {status} line for {check!r} in:\n" + "\n".join(lines)
    return found[0]


def edit(config: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load(config.read_text())
    change(data)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


@pytest.fixture
def config(stack: Stack, tmp_path: Path, uid: str) -> Path:
    return write_config(tmp_path, stack, group=f"doctor-{uid}", topics=TOPICS,
                        overrides={"connect": {"url": stack.connect_url}})


def test_the_healthy_local_stack_passes(config: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = doctor(config, capsys)
    assert code == 0, "\n".join(lines)
    assert not [text for text in lines if text.startswith("FAIL")]
    for check in ("kafka", f"topic {POSTS}", f"topic {COMMENTS}", f"topic {PROFILES}",
                  "shard a", "shard a functions", "shard a acl", "shard b",
                  "shard b functions", "shard b acl", "connector nd-postgres", "postgres",
                  "table public.posts version trigger", "table public.comments replica identity",
                  "publication nd_publication", "replication slot nd_debezium",
                  *(f"table public.{t} version on re-insert"
                    for t in ("posts", "comments", "profiles"))):
        line(lines, "OK", check)
    # posts: DEFAULT identity with a derived key on a non-key column: a warning, not a
    # failure (the reconciler counts those keys as unresolved), with the fix.
    assert "ALTER TABLE public.posts REPLICA IDENTITY FULL" in line(
        lines, "WARN", "table public.posts replica identity")
    assert lines[-1].startswith("doctor: ") and lines[-1].endswith(" 0 FAIL")


def test_a_missing_topic_fails(config: Path, uid: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"nd.public.missing_{uid}"
    edit(config, lambda c: c["kafka"]["topics"].append(missing))
    code, lines = doctor(config, capsys)
    assert code == 1
    text = line(lines, "FAIL", f"topic {missing}")
    assert "does not exist" in text and "table.include.list" in text
    line(lines, "OK", f"topic {POSTS}")


def test_an_unreachable_shard_fails(stack: Stack, tmp_path: Path, uid: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    config = write_config(tmp_path, stack, group=f"doctor-{uid}", topics=TOPICS, shard_map={
        "shards": {"a": {"url": stack.valkey["valkey-a"]},
                   "b": {"url": f"valkey://127.0.0.1:{dead}/0"}}})
    code, lines = doctor(config, capsys)
    assert code == 1
    text = line(lines, "FAIL", "shard b")
    assert f"127.0.0.1:{dead}" in text and "unreachable" in text and "shard map" in text
    line(lines, "OK", "shard a")


@pytest.fixture
def scratch_table(stack: Stack, uid: str) -> Iterator[str]:
    """A table with a version column and no trigger, dropped afterwards."""
    name = f"doctor_{uid}"
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, neighborhood_id bigint "
                     "NOT NULL, system_version bigint NOT NULL DEFAULT 1)")
        conn.execute(f"GRANT SELECT ON {name} TO reconciler")
        try:
            yield name
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(f"DROP FUNCTION IF EXISTS bump_{uid}()")


def test_a_table_without_the_version_trigger_fails(
        stack: Stack, config: Path, scratch_table: str, uid: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    table = f"public.{scratch_table}"
    edit(config, lambda c: c["tables"].update({table: {
        "primary_key": ["id"], "shard_key": "neighborhood_id",
        "keys": [{"template": f"doctor-{uid}:{{id}}", "versioned": True}]}}))
    code, lines = doctor(config, capsys)
    assert code == 1
    text = line(lines, "FAIL", f"table {table} version trigger")
    assert "no BEFORE UPDATE trigger bumps system_version" in text
    assert f"BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW" in text  # the statement to run
    # With the trigger it asks for, the same check passes.
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE FUNCTION bump_{uid}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                     "BEGIN NEW.system_version := OLD.system_version + 1; RETURN NEW; END $$")
        conn.execute(f"CREATE TRIGGER bump BEFORE UPDATE ON {scratch_table} FOR EACH ROW "
                     f"EXECUTE FUNCTION bump_{uid}()")
    _, lines = doctor(config, capsys)
    line(lines, "OK", f"table {table} version trigger")


def test_templates_that_need_full_identity_on_a_default_table_fail(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A versioned key built from a non-key column: a DEFAULT-identity delete cannot name it.
    edit(config, lambda c: c["tables"]["public.posts"]["keys"].append(
        {"template": "hood_post:{neighborhood_id}:{id}", "versioned": True}))
    code, lines = doctor(config, capsys)
    assert code == 1
    text = line(lines, "FAIL", "table public.posts replica identity")
    assert "hood_post:{neighborhood_id}:{id} needs neighborhood_id" in text
    assert "ALTER TABLE public.posts REPLICA IDENTITY FULL" in text
    line(lines, "OK", "table public.comments replica identity")  # FULL already


def test_a_paused_connector_fails(stack: Stack, config: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    base = f"{stack.connect_url}/connectors/{stack.connector}"

    def state() -> str:
        with urllib.request.urlopen(f"{base}/status", timeout=10) as response:
            return str(json.loads(response.read())["connector"]["state"])

    def put(action: str) -> None:
        request = urllib.request.Request(f"{base}/{action}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()

    put("pause")
    try:
        wait_until(lambda: state() == "PAUSED", 30, "the connector to pause")
        code, lines = doctor(config, capsys)
    finally:
        put("resume")
        wait_until(lambda: state() == "RUNNING", 60, "the connector to resume")
    assert code == 1
    text = line(lines, "FAIL", f"connector {stack.connector}")
    assert "PAUSED" in text and f"curl -X PUT {base}/resume" in text


def test_committed_offsets_below_the_log_start_fail(
        stack: Stack, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]) -> None:
    topic = create_topic(stack, f"doctor-{uid}", partitions=1)
    group = f"doctor-{uid}"
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for n in range(10):
        producer.produce(topic, value=str(n).encode())
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    consumer.close()
    # Retention, made instant: the log now starts at 6; the group never processed 2..5.
    client = admin(stack)  # kept alive until its futures are done
    for future in client.delete_records([TopicPartition(topic, 0, 6)]).values():
        future.result(timeout=30)
    config = write_config(tmp_path, stack, group=group, topics=[topic])
    code, lines = doctor(config, capsys)
    assert code == 1
    text = line(lines, "FAIL", f"group {group}")
    assert f"{topic}[0] at 2 < log start 6" in text and "deleted 4 change(s)" in text
    assert "audit --repair" in text


@pytest.fixture
def valkey_user(stack: Stack, uid: str,
                request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """An ACL user on both shards with every command but one (FCALL, unless the test is
    parametrized indirectly with another), and its password."""
    import valkey

    user, password = f"doctor-{uid}", f"pw-{uid}"
    refused = getattr(request, "param", "fcall")
    clients = [valkey.Valkey.from_url(url) for url in stack.valkey.values()]
    for client in clients:
        client.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                           commands=["+@all", f"-{refused}"])
    try:
        yield user, password
    finally:
        for client in clients:
            client.acl_deluser(user)
            client.close()


def test_a_valkey_user_refused_a_needed_command_fails_with_the_grant(
        config: Path, valkey_user: tuple[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    user, password = valkey_user
    edit(config, lambda c: c.update(valkey={**c.get("valkey", {}), "username": user,
                                            "password": password}))
    code, lines = doctor(config, capsys)
    assert code == 1
    line(lines, "OK", "shard a")  # reachable: the refusal is the ACL line's
    text = line(lines, "FAIL", "shard a acl")
    assert f"user {user} is refused" in text and "FCALL" in text
    assert f"ACL SETUSER {user} +fcall" in text
    line(lines, "FAIL", "shard b acl")


@pytest.mark.parametrize("valkey_user", ["type"], indirect=True)
def test_a_valkey_user_refused_only_what_audit_needs_warns(
        config: Path, valkey_user: tuple[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    user, password = valkey_user
    edit(config, lambda c: c.update(valkey={**c.get("valkey", {}), "username": user,
                                            "password": password}))
    code, lines = doctor(config, capsys)
    text = line(lines, "WARN", "shard a acl")
    assert f"user {user} may run every command the worker needs" in text
    assert "`reconciler audit` as this user would be refused TYPE" in text
    assert f"ACL SETUSER {user} +type" in text and "docs/operations.md" in text
    assert code == 0, "\n".join(lines)


def test_the_workers_documented_least_privilege_passes_the_acl_check(
        stack: Stack, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The `reconciler` user of stack/security.py (docs/security.md) on valkey-acl: it
    may not run ACL DRYRUN, so doctor probes; it lacks only audit's TYPE (a warning)."""
    from stack import security

    url = f"valkey://{security.HOST}:{security.VALKEY_ACL_PORT}/0"
    shard_map = config.parent / "shard_map.yaml"
    shards = yaml.safe_load(shard_map.read_text())
    shards.update(shards={"a": {"url": url}}, moving=[],
                  ranges=[{"from": 1, "to": 1000, "shard": "a"}])
    shard_map.write_text(yaml.safe_dump(shards, sort_keys=False))
    edit(config, lambda c: c.update(valkey={
        **c.get("valkey", {}), "username": security.VALKEY_USER,
        "password": security.secret(f"valkey-{security.VALKEY_USER}")}))
    code, lines = doctor(config, capsys)
    line(lines, "OK", "shard a")
    text = line(lines, "WARN", "shard a acl")
    assert f"user {security.VALKEY_USER}: probes passed on " in text
    assert "`reconciler audit` as this user would be refused" in text and "'type'" in text
    assert code == 0, "\n".join(lines)


def test_a_wrong_valkey_password_fails_naming_the_credentials(
        config: Path, valkey_user: tuple[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    user, _password = valkey_user
    edit(config, lambda c: c.update(valkey={**c.get("valkey", {}), "username": user,
                                            "password": "not-the-password"}))
    code, lines = doctor(config, capsys)
    assert code == 1
    text = line(lines, "FAIL", "shard a")
    assert "refused us" in text and "check valkey.username/password" in text
    assert "not-the-password" not in "\n".join(lines), "the password is never printed"


def test_an_inactive_replication_slot_warns_with_the_statement_to_drop_it(
        stack: Stack, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Without connect.url doctor checks every logical slot of the database.
    config = write_config(tmp_path, stack, group=f"doctor-{uid}", topics=TOPICS)
    slot = f"doctor_{uid}"
    # The connector's role may make slots (REPLICATION); the app's may not.
    from stack.postgres import PG_ROLES

    parsed = urlsplit(stack.postgres_dsn)
    replication_dsn = parsed._replace(
        netloc=f"debezium:{PG_ROLES['debezium']}@{parsed.hostname}:{parsed.port}").geturl()
    with psycopg.connect(replication_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            code, lines = doctor(config, capsys)
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    text = line(lines, "WARN", f"replication slot {slot}")
    assert "inactive, retaining" in text
    assert f"SELECT pg_drop_replication_slot('{slot}')" in text
    line(lines, "OK", "replication slot nd_debezium")  # the connector's, active
    assert code == 0, "a warning alone does not fail doctor"


def doctor_json(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, str]]:
    """The checks of `doctor --json`, by name."""
    main(["doctor", "-c", str(config), "--json"])
    return {check["check"]: check for check in json.loads(capsys.readouterr().out)["checks"]}


def add_table(config: Path, table: str, uid: str) -> None:
    edit(config, lambda c: c["tables"].update({table: {
        "primary_key": ["id"], "shard_key": "neighborhood_id",
        "keys": [{"template": f"doctor-{uid}:{{id}}", "versioned": True}]}}))


@pytest.fixture
def versioned_table(stack: Stack, uid: str) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    """A table name for the test to create (as the application's role), dropped after,
    with the functions the test made."""
    name = f"doctor_v_{uid}"
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        try:
            yield name, conn
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(f"DROP SEQUENCE IF EXISTS {name}_system_version_seq")
            conn.execute(f"DROP FUNCTION IF EXISTS bump_{uid}()")


def test_a_version_that_restarts_on_re_insert_warns_and_its_fix_keeps_it_rising(
        config: Path, versioned_table: tuple[str, psycopg.Connection[Any]], uid: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    name, conn = versioned_table
    table = f"public.{name}"
    # The old recommendation: DEFAULT 1, and OLD + 1 on every UPDATE.
    conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, neighborhood_id bigint "
                 "NOT NULL, system_version bigint NOT NULL DEFAULT 1)")
    conn.execute(f"GRANT SELECT ON {name} TO reconciler")
    conn.execute(f"CREATE FUNCTION bump_{uid}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                 "BEGIN NEW.system_version := OLD.system_version + 1; RETURN NEW; END $$")
    conn.execute(f"CREATE TRIGGER bump BEFORE UPDATE ON {name} FOR EACH ROW "
                 f"EXECUTE FUNCTION bump_{uid}()")

    def version(sql: str, *params: object) -> int:
        row = conn.execute(f"{sql} RETURNING system_version", params).fetchone()
        assert row is not None
        return int(row[0])

    # What it breaks: deleted and re-inserted, a row starts again below its old version.
    version(f"INSERT INTO {name} VALUES (1, 7)")
    version(f"UPDATE {name} SET neighborhood_id = 8 WHERE id = 1")
    before = version(f"UPDATE {name} SET neighborhood_id = 9 WHERE id = 1")
    conn.execute(f"DELETE FROM {name} WHERE id = 1")
    assert version(f"INSERT INTO {name} VALUES (1, 7)") == 1 < before == 3

    add_table(config, table, uid)
    checks = doctor_json(config, capsys)
    assert checks[f"table {table} version trigger"]["status"] == "OK"  # it does bump
    check = checks[f"table {table} version on re-insert"]
    assert check["status"] == "WARN", check
    assert f"{table}: a row deleted and re-inserted starts again at DEFAULT 1" in (
        f"{table}: {check['detail']}")
    assert "OLD.system_version + 1" in check["detail"] and "bump" in check["detail"]
    fix = check["fix"]
    assert f"CREATE SEQUENCE IF NOT EXISTS public.{name}_system_version_seq" in fix
    assert f"OWNED BY {table}.system_version" in fix  # dropped with the table
    assert f"BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW" in fix
    assert f"DROP TRIGGER IF EXISTS bump ON {table}" in fix

    # The fix, run as printed: existing rows keep their versions, the sequence starts
    # above them, and a re-inserted row now rises above what it had.
    for n in range(2, 7):
        version(f"UPDATE {name} SET neighborhood_id = %s WHERE id = 1", n)
    assert version(f"UPDATE {name} SET neighborhood_id = 1 WHERE id = 1") == 7
    conn.execute(fix)
    assert conn.execute(f"SELECT system_version FROM {name}").fetchall() == [(7,)]
    risen = version(f"UPDATE {name} SET neighborhood_id = 2 WHERE id = 1")
    assert risen > 7
    conn.execute(f"DELETE FROM {name} WHERE id = 1")
    assert version(f"INSERT INTO {name} VALUES (1, 7)") > risen
    assert version(f"INSERT INTO {name} (id, neighborhood_id, system_version) "
                   "VALUES (2, 7, 1)") > risen  # an explicit version is overridden too
    checks = doctor_json(config, capsys)
    assert checks[f"table {table} version trigger"]["status"] == "OK"
    ok = checks[f"table {table} version on re-insert"]
    assert ok["status"] == "OK", ok
    assert (f"INSERT and UPDATE: trigger {name}_next_system_version (public.next_system_"
            f"version('public.{name}_system_version_seq')) sets NEW.system_version := "
            "nextval(TG_ARGV[0]::regclass)") in ok["detail"]


def test_a_sequence_default_and_an_update_trigger_from_the_sequence_pass(
        config: Path, versioned_table: tuple[str, psycopg.Connection[Any]], uid: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    name, conn = versioned_table
    table = f"public.{name}"
    conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, neighborhood_id bigint "
                 f"NOT NULL, system_version bigserial NOT NULL)")
    conn.execute(f"GRANT SELECT ON {name} TO reconciler")
    conn.execute(f"CREATE FUNCTION bump_{uid}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                 f"BEGIN NEW.system_version := nextval('{name}_system_version_seq'); "
                 "RETURN NEW; END $$")
    conn.execute(f"CREATE TRIGGER bump BEFORE UPDATE ON {name} FOR EACH ROW "
                 f"EXECUTE FUNCTION bump_{uid}()")
    add_table(config, table, uid)
    check = doctor_json(config, capsys)[f"table {table} version on re-insert"]
    assert check["status"] == "OK", check
    assert f"INSERT: DEFAULT nextval('{name}_system_version_seq'::regclass)" in check["detail"]
    assert "UPDATE: trigger bump" in check["detail"]


# --------------------------------------------------------------------------- eviction


@pytest.mark.parametrize(("policy", "status"), [
    ("allkeys-lru", "WARN"), ("volatile-ttl", "WARN"), ("noeviction", "OK")])
def test_an_eviction_policy_that_can_evict_fences_warns_naming_the_shard_and_the_fix(
        stack: Stack, tmp_path: Path, uid: str, private: PrivateValkey, policy: str,
        status: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A fence evicted before its TTL reopens the delete-then-stale-set race (SPEC §2).
    allkeys-* evicts any key; volatile-* evicts keys with a TTL, and every fence has
    one (volatile-ttl the fences first: theirs are the shortest): only noeviction keeps
    them. The policy is set on a Valkey of the test's own, shard c."""
    import valkey

    client = valkey.Valkey(port=private.port)
    client.config_set("maxmemory", "64mb")
    client.config_set("maxmemory-policy", policy)
    client.close()
    config = write_config(tmp_path, stack, group=f"doctor-{uid}", topics=TOPICS, shard_map={
        "shards": {"a": {"url": stack.valkey["valkey-a"]},
                   "b": {"url": stack.valkey["valkey-b"]}, "c": {"url": private.url}}})
    code, lines = doctor(config, capsys)
    text = line(lines, status, "shard c eviction")
    assert policy in text
    if status == "WARN":
        assert "fence" in text and "CONFIG SET maxmemory-policy noeviction" in text
        assert private.url in text
    line(lines, "OK", "shard a eviction")  # the stack's shards keep the default
    assert code == 0, "\n".join(lines)


def test_flattened_topics_say_which_tables_lose_move_detection(
        stack: Stack, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]) -> None:
    """On the stack's flattened connector (nd-flat): the tables whose templates use the
    shard key lose move detection (a WARN, not a failure); the connector's SMT settings
    agree with `kafka.format: flattened`, and fail when the topics are read as JSON."""
    topics = [topic.replace("nd.", f"{FLAT_PREFIX}.", 1) for topic in TOPICS]
    connect = {"url": stack.connect_url, "connector": "nd-flat"}
    config = write_config(tmp_path, stack, group=f"doctor-{uid}", topics=topics,
                          overrides={**flat_overrides(stack), "connect": connect})
    code, lines = doctor(config, capsys)
    assert code == 0, "\n".join(lines)
    posts = line(lines, "WARN", "table public.posts format")
    assert "loses move detection" in posts and "feed:{neighborhood_id}" in posts
    line(lines, "OK", "table public.comments format")
    line(lines, "OK", "table public.profiles format")
    smt = line(lines, "OK", "connector nd-flat format")
    assert "delete.tombstone.handling.mode=rewrite" in smt
    line(lines, "OK", "connector nd-flat")
    line(lines, "OK", "replication slot ndflat_debezium")
    as_json = edit(config, lambda data: data["kafka"].pop("format"))
    code, lines = doctor(as_json, capsys)
    assert code == 1
    assert "flattens its rows" in line(lines, "FAIL", "connector nd-flat format")
    assert not [text for text in lines if " table public.posts format:" in text]
