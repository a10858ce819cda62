"""Postgres reads for `audit` and `doctor`: row versions by primary key, and the catalog.

Read-only, and gentle: one statement per batch of keys (a join against ``unnest`` of
the key arrays, so the primary-key index answers it), a statement timeout on every
session, and nothing that takes a lock beyond ``ACCESS SHARE``.

Errors: ``PostgresError`` (a ``ConnectorError``) for anything the server or the
network refused, with the operation in the message; the DSN is never included.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import psycopg
from psycopg import sql

from connectors.errors import ConnectorError

CONNECT_TIMEOUT = 10  # seconds to establish a session
STATEMENT_TIMEOUT_MS = 30_000  # no single read may run longer than this
APPLICATION_NAME = "cache-reconciler"  # shows in pg_stat_activity
INVALID: Final = "invalid"  # a key value that is not a literal of the column's type

# Trigger type bits (pg_trigger.tgtype, from catalog/pg_trigger.h).
TRIGGER_ROW = 1 << 0
TRIGGER_BEFORE = 1 << 1
TRIGGER_INSERT = 1 << 2
TRIGGER_UPDATE = 1 << 4

REPLICA_IDENTITY = {"d": "default", "f": "full", "n": "nothing", "i": "index"}
_INTEGER = re.compile(r"-?[0-9]{1,19}")  # the text of an integer key value
_INT_RANGE = {"int2": 2**15, "int4": 2**31, "int8": 2**63}  # exclusive magnitude bounds


class PostgresError(ConnectorError):
    """Postgres refused a read or could not be reached (the message says which)."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # format_type(): "bigint", "character varying(20)", "uuid"…
    base: str  # pg_type.typname: "int8", "varchar", "uuid"…
    not_null: bool
    default: str | None = None  # the DEFAULT expression (pg_get_expr): "nextval('s'::regclass)"
    identity: bool = False  # GENERATED … AS IDENTITY: its values come from a sequence


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    enabled: bool  # tgenabled != 'D'
    before: bool
    row: bool
    on_update: bool
    function: str  # schema-qualified function name
    language: str
    source: str  # the function body (prosrc)
    args: tuple[str, ...]  # CREATE TRIGGER … EXECUTE FUNCTION f(args)
    on_insert: bool = False  # fires on INSERT (as well as, or instead of, UPDATE)


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    columns: dict[str, Column]
    primary_key: tuple[str, ...]
    replica_identity: str  # default | full | nothing | index
    identity_columns: tuple[str, ...]  # what a delete's `before` carries (besides FULL)
    triggers: tuple[Trigger, ...]
    can_select: bool  # the session user may SELECT from it


@dataclass(frozen=True, slots=True)
class Partitioning:
    """Where a table stands in a partition tree."""

    partitioned: bool  # a partitioned table (relkind p): its rows live in its leaves
    leaves: dict[str, str]  # its leaf partitions, every level: schema.table → replica identity
    root: str | None  # schema.table of the partitioned table it is a partition of, if any


@dataclass(frozen=True, slots=True)
class Publication:
    name: str
    via_root: bool  # publish_via_partition_root: a partitioned table's changes as the root's
    tables: frozenset[str]  # schema.table of what it publishes (leaves, or roots via_root)


@dataclass(frozen=True, slots=True)
class Slot:
    name: str
    plugin: str | None
    database: str | None
    active: bool
    wal_status: str | None  # reserved | extended | unreserved | lost (Postgres ≥ 13)
    retained_bytes: int | None  # WAL kept for the slot (current LSN - restart_lsn)


class Postgres:
    """A read-only session for audits and preflight checks."""

    def __init__(self, dsn: str, *, connect_timeout: float = CONNECT_TIMEOUT,
                 statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> None:
        try:
            self._conn = psycopg.connect(
                dsn, autocommit=True, connect_timeout=max(1, round(connect_timeout)),
                application_name=APPLICATION_NAME,
                options=f"-c statement_timeout={statement_timeout_ms} "
                        "-c default_transaction_read_only=on")
        except psycopg.Error as exc:
            raise PostgresError(f"postgres: cannot connect: {_reason(exc)} (check "
                                "postgres.dsn, the network and pg_hba.conf)") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Postgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ catalog

    def server_version(self) -> str:
        return str(self._one("SHOW server_version", (), "server version")[0])

    def current_user(self) -> str:
        return str(self._one("SELECT current_user", (), "current user")[0])

    def database(self) -> str:
        return str(self._one("SELECT current_database()", (), "current database")[0])

    def table(self, schema: str, name: str) -> Table | None:
        """The table's columns (with their defaults), keys, replica identity and
        triggers (with their functions' source); None if missing."""
        found = self._all(
            "SELECT c.oid, c.relreplident, has_table_privilege(c.oid, 'SELECT') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, name), f"table {schema}.{name}")
        if not found:
            return None
        oid, identity, can_select = found[0]
        columns = {
            row[0]: Column(row[0], row[1], row[2], row[3], row[4], row[5] != "")
            for row in self._all(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, "
                "a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum", (oid,), f"columns of {schema}.{name}")}
        primary_key = self._index_columns(oid, "i.indisprimary")
        identity_columns = (self._index_columns(oid, "i.indisreplident")
                            if identity == "i" else primary_key)
        triggers = tuple(
            Trigger(name=row[0], enabled=row[1] != "D",
                    before=bool(row[2] & TRIGGER_BEFORE), row=bool(row[2] & TRIGGER_ROW),
                    on_update=bool(row[2] & TRIGGER_UPDATE), function=row[3],
                    language=row[4], source=row[5] or "", args=_trigger_args(row[6]),
                    on_insert=bool(row[2] & TRIGGER_INSERT))
            for row in self._all(
                "SELECT t.tgname, t.tgenabled, t.tgtype, "
                "p.pronamespace::regnamespace || '.' || p.proname, l.lanname, p.prosrc, "
                "t.tgargs FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                "JOIN pg_language l ON l.oid = p.prolang "
                "WHERE t.tgrelid = %s AND NOT t.tgisinternal ORDER BY t.tgname",
                (oid,), f"triggers of {schema}.{name}"))
        return Table(schema, name, columns, primary_key, REPLICA_IDENTITY.get(identity, identity),
                     identity_columns, triggers, bool(can_select))

    def _index_columns(self, oid: int, which: str) -> tuple[str, ...]:
        rows = self._all(
            "SELECT a.attname FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            f"WHERE i.indrelid = %s AND {which} ORDER BY k.n", (oid,), "index columns")
        return tuple(row[0] for row in rows)

    def replication_slots(self) -> list[Slot]:
        """Every replication slot, with the WAL it keeps from being recycled."""
        recovery = bool(self._one("SELECT pg_is_in_recovery()", (), "recovery state")[0])
        current = "pg_last_wal_replay_lsn()" if recovery else "pg_current_wal_lsn()"
        rows = self._all(
            "SELECT slot_name, plugin, database, active, wal_status, "
            f"pg_wal_lsn_diff({current}, restart_lsn)::bigint "
            "FROM pg_replication_slots ORDER BY slot_name", (), "replication slots")
        return [Slot(row[0], row[1], row[2], bool(row[3]), row[4],
                     None if row[5] is None else int(row[5])) for row in rows]

    def partitioning(self, schema: str, name: str) -> Partitioning | None:
        """The table's leaves (if partitioned) and root (if a partition); None if missing."""
        found = self._all(
            "SELECT c.oid, c.relkind = 'p', rn.nspname || '.' || r.relname "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid) "
            "LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, name), f"partitioning of {schema}.{name}")
        if not found:
            return None
        oid, partitioned, root = found[0]
        leaves = {} if not partitioned else {
            row[0]: REPLICA_IDENTITY.get(row[1], row[1]) for row in self._all(
                "SELECT n.nspname || '.' || c.relname, c.relreplident "
                "FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf ORDER BY 1",
                (oid,), f"leaf partitions of {schema}.{name}")}
        return Partitioning(bool(partitioned), leaves, root)

    def publication(self, name: str) -> Publication | None:
        """The publication, whether it publishes via partition roots, and its tables."""
        found = self._all("SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (name,),
                          f"publication {name}")
        if not found:
            return None
        tables = self.publication_tables(name)
        return Publication(name, bool(found[0][0]), frozenset(tables or ()))

    def publication_tables(self, publication: str) -> set[str] | None:
        """`schema.table` of every table in the publication; None if it does not exist."""
        if not self._all("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,),
                         f"publication {publication}"):
            return None
        return {f"{row[0]}.{row[1]}" for row in self._all(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
            (publication,), f"tables of publication {publication}")}

    # ------------------------------------------------------------------ versions

    def versions(self, table: Table, primary_key: Sequence[str], version_column: str,
                 keys: Sequence[Sequence[str]]) -> list[int | str | None]:
        """The version of the row behind each key, in input order, in ONE statement.

        `keys[i]` holds the text of each primary-key column (as a cache key spells
        it). The answer for each: the row's version, None when no such row exists, or
        `INVALID` when a value is not a literal of its column's type (then the key
        cannot name a row).
        """
        types = [table.columns[column] for column in primary_key]
        out: list[int | str | None] = [None] * len(keys)
        valid: list[int] = []
        for index, values in enumerate(keys):
            if all(_literal_ok(value, column.base) for value, column in zip(
                    values, types, strict=True)):
                valid.append(index)
            else:
                out[index] = INVALID
        if not valid:
            return out
        query = self._versions_query(table, primary_key, version_column)
        try:
            found = self._rows(query, [[keys[i][n] for i in valid]
                                       for n in range(len(primary_key))])
        except psycopg.errors.DataError:
            found = {}  # a literal the quick checks let through: one statement per key
            for position, index in enumerate(valid, start=1):
                try:
                    row = self._rows(query, [[value] for value in keys[index]])
                except psycopg.errors.DataError:
                    out[index] = INVALID
                    continue
                if 1 in row:
                    found[position] = row[1]
        for position, index in enumerate(valid, start=1):
            if out[index] != INVALID:
                out[index] = found.get(position)
        return out

    def _versions_query(self, table: Table, primary_key: Sequence[str],
                        version_column: str) -> sql.Composed:
        names = [sql.Identifier(f"k{n}") for n in range(len(primary_key))]
        arrays = sql.SQL(", ").join(
            sql.SQL("%s::{}[]").format(sql.SQL(table.columns[column].type))
            for column in primary_key)
        join = sql.SQL(" AND ").join(
            sql.SQL("t.{} = k.{}").format(sql.Identifier(column), name)
            for column, name in zip(primary_key, names, strict=True))
        return sql.SQL(
            "SELECT k.ord, t.{version} FROM unnest({arrays}) WITH ORDINALITY "
            "AS k({names}, ord) JOIN {table} t ON {join}"
        ).format(version=sql.Identifier(version_column), arrays=arrays,
                 names=sql.SQL(", ").join(names),
                 table=sql.Identifier(table.schema, table.name), join=join)

    def _rows(self, query: sql.Composed, arrays: list[list[str]]) -> dict[int, int]:
        try:
            rows = self._conn.execute(query, arrays).fetchall()
        except psycopg.errors.DataError:
            raise
        except psycopg.Error as exc:
            raise PostgresError(f"postgres: reading row versions failed: {_reason(exc)}") \
                from exc
        # A NULL version compares as 0: any cached data is at least as new.
        return {int(row[0]): int(row[1] or 0) for row in rows}

    # ------------------------------------------------------------------ helpers

    def _all(self, query: str, params: tuple[Any, ...], what: str) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise PostgresError(f"postgres: reading {what} failed: {_reason(exc)}") from exc

    def _one(self, query: str, params: tuple[Any, ...], what: str) -> tuple[Any, ...]:
        rows = self._all(query, params, what)
        if not rows:
            raise PostgresError(f"postgres: reading {what} returned nothing")
        return rows[0]


def _literal_ok(text: str, base: str) -> bool:
    """A cheap check that `text` is a literal of type `base` (False means surely not)."""
    bound = _INT_RANGE.get(base)
    if bound is not None:
        return bool(_INTEGER.fullmatch(text)) and -bound <= int(text) < bound
    if base == "uuid":
        try:
            uuid.UUID(text)
        except ValueError:
            return False
        return True
    if base == "numeric":
        try:
            return Decimal(text).is_finite()
        except InvalidOperation:
            return False
    return True


def _trigger_args(raw: bytes | None) -> tuple[str, ...]:
    if not raw:
        return ()
    parts = bytes(raw).split(b"\x00")  # each argument ends with a NUL byte
    return tuple(part.decode("utf-8", "replace") for part in parts[:-1])


def _reason(exc: psycopg.Error) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
