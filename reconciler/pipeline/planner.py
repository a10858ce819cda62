"""The decision: this event means these cache actions on these shards.

``Planner.plan(event)`` is a pure function of the event, the table rules and the
shard map: no I/O, no clock. The worker executes what it returns, ``reconciler plan``
prints it, and the tests drive it exhaustively.

The rules (SPEC §2, §3):

- c, u, r: every key template rendered from ``after`` is invalidated on the shard(s)
  of ``after``'s shard key — versioned keys compared by version (a snapshot read ``r``
  fences nothing that is absent), derived keys deleted. With ``replica_identity:
  full`` an update also invalidates the keys rendered from ``before`` on the shard(s)
  of ``before``'s shard key (a row that moved neighbourhood, a key column that changed).
- d with FULL identity: every key rendered from ``before`` is deleted and fenced on
  its shard(s). With DEFAULT identity ``before`` holds only the primary key (the other
  columns are fake defaults): keys built from the primary key alone are deleted on
  every shard (broadcast) unless the shard key is part of the primary key; the other
  templates are reported unresolved.
- t: every key of every template of the table is removed on every shard.
- A leaf partition of a configured table (``tables.<table>.partitions``: published per
  leaf, ``source.table`` is the leaf) is planned, and counted, as that table
  (``partitions.py``); a truncate of one leaf removes every key of the table's
  templates.
- A tombstone (the key alone) is a key-only delete: on a compacted topic it may be all
  that is left of the delete. Its table is the one its key schema names, else the one
  its topic is named after (``<prefix>.<schema>.<table>``); the keys buildable from the
  key are deleted and fenced as for a DEFAULT-identity delete, the others reported
  unresolved (expected, like a DEFAULT delete's). The same key-only delete is planned
  for a record that is dead-lettered but whose key decodes (``key_only``).
- An unchanged TOASTed column (``__debezium_unavailable_value``) or a NULL is never a
  value: a template that needs it is unresolved; a shard key that is unknown means
  every shard.
- A key is built only from values under the caps (``values.MAX_VALUE_CHARS``,
  ``MAX_DECIMAL_BYTES``), and is at most ``MAX_KEY_BYTES``: a record past them is
  dead-lettered (``key_too_large``, naming the column, the size and the cap); the
  key-only delete of a dead letter leaves such templates unresolved.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from connectors.debezium import model
from connectors.debezium.model import Event
from connectors.debezium.values import ValueTooLarge, format_value
from connectors.valkey.protocols import MAX_VERSION
from reconciler.errors import PoisonRecordError
from reconciler.pipeline.rules import TableLookup, TableRules
from reconciler.settings import Settings, TableSpec
from reconciler.templates import KeyTemplate
from shard_map import ShardMap, ShardResolutionError

# Action kinds (the `kind` of `reconciler plan` output).
VERSIONED = "versioned"  # compare by version: repair stale data, fence the change
DELETE = "delete"  # remove the entry and fence every version for fence_ttl
UNVERSIONED = "unversioned"  # a derived key: plain delete
TRUNCATE = "truncate"  # remove every key matching a pattern

# Why an event causes nothing (the `reason` label of reconciler_skipped_total).
SKIP_REASONS = {
    model.TOMBSTONE: "tombstone",
    model.HEARTBEAT: "heartbeat",
    model.TRANSACTION: "transaction",
    model.MESSAGE: "message",
}
UNKNOWN_TABLE = "unknown_table"
TOMBSTONE_OP = "tombstone"  # the op a tombstone is counted and printed under
# Why a key template was not built (the `cause` label of reconciler_unresolved_keys_total).
MISSING = "missing"  # the event lacks a column the template needs (NULL, TOAST, absent)
KEY_ONLY = "key_only"  # only the key is known (DEFAULT-identity delete, tombstone): expected
HEARTBEAT = "heartbeat"  # a heartbeat record, or a change to the heartbeat table
KEY_TOO_LARGE = "key_too_large"  # dead-letter reason: a key, or a value it is built from, too large
MAX_KEY_BYTES = 1024  # a cache key longer than this (UTF-8) is never built
_SHORT_KEY = MAX_KEY_BYTES // 4  # a key of at most this many characters fits: 4 bytes a character


class Action(msgspec.Struct, frozen=True, gc=False):
    """One cache operation on one shard (a hashable msgspec Struct: cheap to build)."""

    shard: str
    key: str  # the key, or the SCAN pattern of a truncate
    kind: str  # VERSIONED, DELETE, UNVERSIONED or TRUNCATE
    version: int | None = None  # the row's version, for VERSIONED
    fence: bool = True  # False for a snapshot read: an absent entry is left absent

    def as_json(self) -> dict[str, Any]:
        if self.kind == TRUNCATE:
            return {"shard": self.shard, "pattern": self.key, "kind": self.kind}
        out: dict[str, Any] = {"shard": self.shard, "key": self.key, "kind": self.kind}
        if self.kind == VERSIONED:
            out["version"] = self.version
            if not self.fence:
                out["fence"] = False
        return out


class Plan(msgspec.Struct, frozen=True, gc=False):
    """What one event means for the cache."""

    event: Event
    actions: tuple[Action, ...] = ()
    unresolved: tuple[str, ...] = ()  # templates that needed a column the event lacks
    skip: str | None = None  # why the event causes nothing
    key_only: tuple[str, ...] = ()  # of `unresolved`, those expected: only the key is known

    def causes(self) -> Iterator[tuple[str, str]]:
        """(template, MISSING or KEY_ONLY) for every unresolved template."""
        for template in self.unresolved:
            yield template, KEY_ONLY if template in self.key_only else MISSING

    def as_json(self) -> dict[str, Any]:
        event = self.event
        if event.table is None or (self.skip is not None and event.kind != model.CHANGE
                                   and event.kind != model.TRUNCATE):
            # heartbeats, transaction markers, messages, tombstones of unknown tables
            return {"topic": event.topic, "skip": self.skip}
        out: dict[str, Any] = {"topic": event.topic, "table": event.table, "op": event.op}
        if self.skip is not None:
            out["skip"] = self.skip
            return out
        out["actions"] = [action.as_json() for action in self.actions]
        out["unresolved"] = list(self.unresolved)
        return out


class Planner:
    """Turns events into plans, for a fixed set of tables and a shard map."""

    __slots__ = ("_lookup", "heartbeat_tables", "shard_map", "tombstones",
                 "unknown_tables_error")

    def __init__(self, tables: Mapping[str, TableSpec], shard_map: ShardMap, *,
                 unknown_tables_error: bool = False,
                 heartbeat_tables: frozenset[str] = frozenset(),
                 tombstones: bool = True) -> None:
        self._lookup = TableLookup(tables)
        self.shard_map = shard_map
        self.unknown_tables_error = unknown_tables_error
        self.heartbeat_tables = heartbeat_tables  # Debezium's heartbeat.action.query table
        self.tombstones = tombstones  # False only for the fault suite's broken worker

    @classmethod
    def for_settings(cls, settings: Settings, shard_map: ShardMap, *,
                     tombstones: bool = True) -> Planner:
        heartbeat = settings.freshness.heartbeat_table
        return cls(settings.tables, shard_map,
                   unknown_tables_error=settings.unknown_tables == "error",
                   heartbeat_tables=frozenset([heartbeat] if heartbeat else []),
                   tombstones=tombstones)

    def with_shard_map(self, shard_map: ShardMap) -> Planner:
        planner = copy.copy(self)  # the same compiled tables and topic memo
        planner.shard_map = shard_map
        return planner

    @property
    def tables(self) -> Mapping[str, TableRules]:
        return self._lookup.tables

    @property
    def columns(self) -> frozenset[str]:
        """Every row column a plan may read, of any table: what the decoder keeps of the
        row images (`Decoder(columns=...)`)."""
        return frozenset(
            column for rules in self._lookup.tables.values()
            for column in (*rules.primary_key, rules.shard_key, rules.version_column,
                           *(c for template in rules.templates for c in template.columns)))

    def plan(self, event: Event) -> Plan:
        """The plan for one event; raises PoisonRecordError for a record to dead-letter."""
        kind = event.kind
        if kind != model.CHANGE and kind != model.TRUNCATE:
            if kind == model.TOMBSTONE and self.tombstones:
                return (self.key_only(event, lenient=False)
                        or Plan(event, skip=SKIP_REASONS[kind]))
            return Plan(event, skip=SKIP_REASONS[kind])
        assert event.table is not None
        rules = self._lookup.by_name(event.table)
        if rules is not None and rules.name != event.table:
            # a leaf partition: planned, and counted, as its table
            event = msgspec.structs.replace(event, table=rules.name)
        if rules is None:
            if event.table in self.heartbeat_tables:
                return Plan(event, skip=HEARTBEAT)
            if self.unknown_tables_error:
                raise PoisonRecordError(
                    UNKNOWN_TABLE,
                    f"table {event.table} is not configured (unknown_tables: error); add it "
                    "under `tables:` or set unknown_tables: skip",
                )
            return Plan(event, skip=UNKNOWN_TABLE)
        if kind == model.TRUNCATE:
            shards = self.shard_map.shard_names()
            return Plan(event, tuple(
                Action(shard, template.pattern(), TRUNCATE)
                for template in rules.templates for shard in shards
            ))
        if event.op == "d":
            return self._delete(event, rules)
        return self._change(event, rules)

    # ------------------------------------------------------------------ c, u, r

    def _change(self, event: Event, rules: TableRules) -> Plan:
        after = event.after
        assert after is not None
        version = after.get(rules.version_column)
        if type(version) is not int or not 0 <= version <= MAX_VERSION:
            raise PoisonRecordError(
                "invalid_version",
                f"{rules.name}: version column {rules.version_column!r} is "
                f"{_show(version)} in `after`; expected an integer from 0 to 2^63-1 "
                "(check tables.<table>.version_column)",
            )
        fence = event.op != "r"
        actions: list[Action] = []
        unresolved: list[str] = []
        self._emit(event, rules, after, self._shards(rules, after.get(rules.shard_key), event),
                   rules.templates, version, fence, VERSIONED, actions, unresolved)
        before = event.before
        if rules.full_identity and before is not None and event.op == "u":
            self._emit(event, rules, before,
                       self._shards(rules, before.get(rules.shard_key), event),
                       rules.templates, version, True, VERSIONED, actions, unresolved)
            # The before and after images usually name the same keys on the same shard.
            return Plan(event, _unique(actions), _sources(unresolved))
        return Plan(event, tuple(actions), _sources(unresolved))

    # ------------------------------------------------------------------ d, key only

    def _delete(self, event: Event, rules: TableRules) -> Plan:
        before = event.before
        assert before is not None
        if rules.full_identity:
            actions: list[Action] = []
            unresolved: list[str] = []
            shards = self._shards(rules, before.get(rules.shard_key), event)
            self._emit(event, rules, before, shards, rules.templates, None, True, DELETE,
                       actions, unresolved)
            return Plan(event, tuple(actions), _sources(unresolved))
        # DEFAULT identity: only the primary-key columns of `before` are real.
        known = {column: before[column] for column in rules.primary_key if column in before}
        if event.key:
            known.update((c, v) for c, v in event.key.items() if c in rules.primary_key)
        return self._delete_known(event, rules, known)

    def key_only(self, event: Event, *, lenient: bool = True) -> Plan | None:
        """The key-only delete of a record known by its key alone (`Decoder.key_event`):
        every key buildable from the record key deleted and fenced on its shard(s) — on
        every shard unless the shard key is part of the key — the other templates
        reported unresolved. None when the record's table is not configured. A value
        past a cap raises PoisonRecordError, or (`lenient`: a dead letter's) leaves its
        templates unresolved."""
        # The table the record names (its envelope, its key schema) wins; the topic's
        # name is the fallback for a key without a schema.
        rules = (self._lookup.by_name(event.table) if event.table
                 else self._lookup.by_topic(event.topic))
        if rules is None or not event.key:
            return None
        event = msgspec.structs.replace(event, table=rules.name, op=TOMBSTONE_OP)
        assert event.key is not None
        known = {c: v for c, v in event.key.items() if c in rules.primary_key}
        try:
            return self._delete_known(event, rules, known, lenient=lenient)
        except PoisonRecordError as exc:  # a shard key in the key that routes nowhere
            if exc.reason == KEY_TOO_LARGE and not lenient:
                raise
            return self._delete_known(event, rules, known, broadcast=True, lenient=lenient)

    def _delete_known(self, event: Event, rules: TableRules, known: Mapping[str, Any], *,
                      broadcast: bool = False, lenient: bool = False) -> Plan:
        actions: list[Action] = []
        unresolved: list[str] = []
        if rules.shard_key in rules.primary_key and not broadcast:
            shards = self._shards(rules, known.get(rules.shard_key), event)
        else:
            shards = self.shard_map.shard_names()
        self._emit(event, rules, known, shards, rules.key_templates, None, True, DELETE,
                   actions, unresolved, lenient)
        expected = tuple(t.source for t in rules.templates if t not in rules.key_templates)
        return Plan(event, tuple(actions), _sources([*unresolved, *expected]),
                    key_only=expected)

    # ------------------------------------------------------------------ helpers

    def _emit(self, event: Event, rules: TableRules, row: Mapping[str, Any],
              shards: tuple[str, ...], templates: Iterable[KeyTemplate], version: int | None,
              fence: bool, versioned_kind: str, actions: list[Action],
              unresolved: list[str], lenient: bool = False) -> None:
        """Keys from `row` (those past a cap: PoisonRecordError, or `lenient`, unresolved)."""
        types = event.column_types
        hints = rules.hints
        for template in templates:
            columns = template.columns
            column = columns[0] if columns else ""
            try:  # free unless raised (3.11): format_value checks the caps
                if len(columns) == 1:  # the common case, without the intermediate mapping
                    text = format_value(row.get(column), types.get(column) if types is not None
                                        else hints.get(column))
                    if text is None:
                        unresolved.append(template.source)
                        continue
                    literals = template.literals
                    key = literals[0] + text + literals[1]
                else:
                    values: dict[str, str] = {}
                    for column in columns:
                        logical = types.get(column) if types is not None else hints.get(column)
                        text = format_value(row.get(column), logical)
                        if text is None:
                            break
                        values[column] = text
                    else:
                        key = template.render(values)
                    if len(values) < len(columns):
                        unresolved.append(template.source)
                        continue
            except ValueTooLarge as exc:
                problem = f"column {column!r} is {exc.message}"
            else:
                if len(key) <= _SHORT_KEY or _utf8_len(key) <= MAX_KEY_BYTES:
                    if template.versioned:
                        for shard in shards:
                            actions.append(Action(shard, key, versioned_kind, version, fence))
                    else:
                        for shard in shards:
                            actions.append(Action(shard, key, UNVERSIONED))
                    continue
                problem = (f"its key would be {_utf8_len(key):,} bytes, more than "
                           f"MAX_KEY_BYTES ({MAX_KEY_BYTES:,})")
            if not lenient:
                raise PoisonRecordError("key_too_large", f"{rules.name}: key template "
                                        f"{template.source!r}: {problem}; no key is built")
            unresolved.append(template.source)

    def _shards(self, rules: TableRules, value: Any, event: Event) -> tuple[str, ...]:
        if type(value) is not int:
            value = _neighbourhood(rules, value, event)
            if value is None:  # unknown (TOAST placeholder, NULL): every shard
                return self.shard_map.shard_names()
        try:
            return self.shard_map.resolve(value)
        except ShardResolutionError as exc:
            raise PoisonRecordError("unroutable", f"{rules.name}: {exc}") from None


def _neighbourhood(rules: TableRules, value: Any, event: Event) -> int | None:
    types = event.column_types
    logical = types.get(rules.shard_key) if types is not None else rules.hints.get(rules.shard_key)
    try:
        text = format_value(value, logical)
    except ValueTooLarge as exc:  # no integer is that long
        raise PoisonRecordError(
            "invalid_shard_key", f"{rules.name}: shard key {rules.shard_key!r} is "
            f"{exc.message}; expected an integer neighbourhood id") from None
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise PoisonRecordError(
            "invalid_shard_key",
            f"{rules.name}: shard key {rules.shard_key!r} is {_show(value)}; expected an "
            "integer neighbourhood id (check tables.<table>.shard_key)",
        ) from None


def _utf8_len(key: str) -> int:
    return len(key.encode("utf-8", "surrogatepass"))


def _sources(unresolved: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(unresolved)) if unresolved else ()


def _unique(actions: list[Action]) -> tuple[Action, ...]:
    return tuple(dict.fromkeys(actions)) if len(actions) > 1 else tuple(actions)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
