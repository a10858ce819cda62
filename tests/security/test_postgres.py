"""Postgres least privilege: Debezium streams as a replication role that is not a
superuser and cannot write; the reconciler's own role (audit, doctor) only reads."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.conftest import Stack
from tests.e2e.support import rows, wait_until

pytestmark = pytest.mark.e2e

SLOT = "nd_debezium"  # stack/connect/nd-postgres.json's slot.name


def role(db: Any, name: str) -> dict[str, bool]:
    row = db.one("SELECT rolsuper, rolreplication, rolcreaterole, rolcreatedb, rolbypassrls "
                 "FROM pg_roles WHERE rolname = %s", (name,))
    return dict(zip(["super", "replication", "createrole", "createdb", "bypassrls"], row,
                    strict=True))


def test_debezium_is_a_replication_role_without_superuser(stack: Stack) -> None:
    with rows(stack) as db:
        assert role(db, "debezium") == {"super": False, "replication": True,
                                        "createrole": False, "createdb": False,
                                        "bypassrls": False}
        for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            assert db.one("SELECT has_table_privilege('debezium', 'posts', %s)",
                          (privilege,)) == (False,), privilege
        assert db.one("SELECT has_table_privilege('debezium', 'posts', 'SELECT')") == (True,)


def test_the_connector_streams_as_the_debezium_role(stack: Stack) -> None:
    with rows(stack) as db:
        streaming = db.conn.execute(
            "SELECT a.usename FROM pg_replication_slots s "
            "JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = %s",
            (SLOT,)).fetchall()
        assert streaming == [("debezium",)]
        # Every walsender streams as that role: the connectors started on demand (the
        # second source, the Avro and the flattened ones) have slots of their own.
        senders = [r[0] for r in db.conn.execute(
            "SELECT usename FROM pg_stat_replication").fetchall()]
        assert senders and set(senders) == {"debezium"}, senders
        # ...and it keeps up: a change made now is confirmed by that walsender's client.
        db.insert_post(7, "streamed by the debezium role")
        written = db.one("SELECT pg_current_wal_lsn()")[0]

        def confirmed() -> bool:
            return bool(db.one(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                "WHERE slot_name = %s", (written, SLOT))[0])

        wait_until(confirmed, 30, f"slot {SLOT} to confirm {written}", interval=0.2)


def test_the_reconciler_role_reads_and_cannot_write(stack: Stack) -> None:
    with rows(stack) as db:
        assert role(db, "reconciler") == {"super": False, "replication": False,
                                          "createrole": False, "createdb": False,
                                          "bypassrls": False}
    with psycopg.connect(stack.postgres_reconciler_dsn, autocommit=True) as conn:
        conn.execute("SELECT id, system_version FROM posts LIMIT 1").fetchall()
        for statement in (
                "INSERT INTO posts (neighborhood_id, author_id, title, body) "
                "VALUES (1, 1, 'x', 'y')",
                "UPDATE posts SET title = 'x' WHERE id = -1",
                "DELETE FROM posts WHERE id = -1",
                "CREATE TABLE reconciler_was_here (id int)",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)
