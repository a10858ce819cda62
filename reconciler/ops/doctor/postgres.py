"""Doctor's Postgres checks: tables, version triggers, replica identity, publication, slot.

Versions never go back (SPEC §2): the delete fence and cached entries are compared with
the versions of a row re-inserted under the same key, so the version column must keep
rising across a delete and re-insert. It does when INSERT takes it from a sequence (a
``nextval(…)`` default or identity, or a BEFORE INSERT trigger calling ``nextval``) and
UPDATE too (a BEFORE UPDATE trigger calling ``nextval``, or a transaction id). The
common ``DEFAULT 1`` plus ``NEW.v := OLD.v + 1`` restarts at 1: a WARN, with the SQL
that moves the table to a sequence (``sequence_fix``). Trigger sources are read
pragmatically: the right-hand side of every ``NEW.<column> :=`` in the function.

Replica identity, against what the templates need (SPEC §3):

- NOTHING: a delete carries no key at all → FAIL.
- config says ``full`` but the table is not FULL: the planner would trust ``before``,
  whose non-key columns are fake defaults (a neighbourhood of 0) → FAIL.
- DEFAULT (or INDEX), and a *versioned* template needs a non-key column: the row's
  cached data survives its delete (and a change of that column) → FAIL.
- DEFAULT, and only derived (unversioned) templates need non-key columns, or the
  shard key is not in the primary key (a row can move neighbourhood; its old shard is
  not told): those keys are left to their TTL → WARN. The reconciler counts them as
  unresolved; FULL closes the gap.

Every FAIL and WARN says the ``ALTER TABLE … REPLICA IDENTITY FULL`` to run.

A partitioned table's leaves and publishing mode: ``partitions``. With several
``sources``, these checks run once per source, against its own database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from connectors.errors import ConnectorError
from connectors.postgres import Postgres, Publication, Table, Trigger
from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check
from reconciler.ops.doctor.partitions import partition_checks
from reconciler.settings import Settings, SourceSettings, TableSpec

DEFAULT_MAX_RETAINED_WAL = 1 << 30  # bytes of WAL a slot may hold before a WARN
INTEGER_TYPES = frozenset({"int2", "int4", "int8", "numeric"})  # usable version columns
# Calls whose value never goes back: a sequence, the transaction id.
RISING = re.compile(r"\b(nextval|txid_current|pg_current_xact_id)\s*\(", re.IGNORECASE)
_NEXTVAL = re.compile(r"nextval\('((?:[^']|'')+)'(?:::regclass)?\)", re.IGNORECASE)
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")  # an identifier that needs no quotes


def postgres_checks(settings: Settings, connector: dict[str, str] | None, *,
                    source: SourceSettings | None = None,
                    max_retained_wal_bytes: int = DEFAULT_MAX_RETAINED_WAL) -> Iterator[Check]:
    """The checks against `source`'s database (default: `postgres`'s)."""
    source = source or settings.source_list()[0]
    field = f"sources[{source.name}].postgres" if settings.sources else "postgres"
    dsn = source.postgres.dsn_value()
    if not dsn:
        yield Check(WARN, "postgres", f"{field}.dsn not set: table, trigger, replica identity "
                                      "and replication slot checks skipped",
                    f"set {field}.dsn (or {field}.dsn_file); audit needs it too")
        return
    try:
        postgres = Postgres(dsn)
    except ConnectorError as exc:
        yield Check(FAIL, "postgres", str(exc), f"check {field}.dsn")
        return
    with postgres:
        try:
            yield Check(OK, "postgres", f"PostgreSQL {postgres.server_version()} as "
                                        f"{postgres.current_user()}")
            tables: dict[str, Table | None] = {}
            for name, spec in settings.tables.items():
                schema, _, table = name.partition(".")
                tables[name] = postgres.table(schema, table)
                yield from table_checks(name, spec, tables[name])
            publication = _publication_of(postgres, connector)
            include = [p.strip() for p in (connector or {}).get("table.include.list", "")
                       .split(",") if p.strip()]
            leaves: dict[str, list[str]] = {}
            for name, spec in settings.tables.items():
                if tables[name] is None:
                    continue
                schema, _, table = name.partition(".")
                found = postgres.partitioning(schema, table)
                leaves[name] = list(found.leaves) if found is not None else []
                yield from partition_checks(name, spec, found, publication, include,
                                            settings.tables)
            if connector is not None:
                yield from _publication(connector, publication, tables, leaves)
            yield from _slot(postgres, connector, max_retained_wal_bytes)
        except ConnectorError as exc:
            yield Check(FAIL, "postgres", str(exc), "check the role's privileges")


def table_checks(name: str, spec: TableSpec, table: Table | None) -> Iterator[Check]:
    """Existence and keys, the version trigger, the replica identity."""
    if table is None:
        yield Check(FAIL, f"table {name}", "does not exist (or this role cannot see it)",
                    "fix the name under `tables:` (schema.table), or GRANT USAGE on the "
                    "schema to this role")
        return
    problems = []
    if set(table.primary_key) != set(spec.primary_key):
        problems.append(f"primary key is ({', '.join(table.primary_key) or 'none'}), the "
                        f"config says [{', '.join(spec.primary_key)}]")
    needed = {spec.shard_key, *(c for t in spec.templates() for c in t.columns)}
    missing = sorted(c for c in needed if c not in table.columns)
    if missing:
        problems.append(f"no column(s) {', '.join(missing)} (used by shard_key or templates)")
    if problems:
        yield Check(FAIL, f"table {name}", "; ".join(problems),
                    f"fix tables.{name} to match the table")
    elif not table.can_select:
        yield Check(WARN, f"table {name}", "exists, but this role may not SELECT from it "
                                           "(audit reads versions)",
                    f"GRANT SELECT ON {name} TO <this role>")
    else:
        yield Check(OK, f"table {name}", f"primary key ({', '.join(table.primary_key)}), "
                                         f"columns present")
    yield _trigger(name, spec.version_column, table)
    reinsert = _reinsert(name, spec.version_column, table)
    if reinsert is not None:
        yield reinsert
    yield _identity(name, spec, table)


def _trigger(name: str, column: str, table: Table) -> Check:
    check = f"table {name} version trigger"
    found = table.columns.get(column)
    if found is None:
        return Check(FAIL, check, f"no column {column}",
                     f"set tables.{name}.version_column, or ALTER TABLE {name} ADD COLUMN "
                     f"{column} bigint NOT NULL DEFAULT 0; then "
                     + sequence_fix(table, column))
    if found.base not in INTEGER_TYPES:
        return Check(FAIL, check, f"{column} is {found.type}, not an integer",
                     "use a bigint version column")
    candidates = [t for t in table.triggers if t.before and t.row and t.on_update]
    bumping = [t for t in candidates if _sets(t, column)]
    if bumping and any(t.enabled for t in bumping):
        trigger = next(t for t in bumping if t.enabled)
        return Check(OK, check, f"{trigger.name} ({trigger.function}) sets NEW.{column} "
                                "before every UPDATE")
    if bumping:
        return Check(FAIL, check, f"trigger {bumping[0].name} bumps {column} but is disabled",
                     f"ALTER TABLE {name} ENABLE TRIGGER {bumping[0].name}")
    if candidates:
        return Check(WARN, check, "BEFORE UPDATE trigger(s) "
                                  f"{', '.join(t.name for t in candidates)} exist, but none "
                                  f"visibly sets NEW.{column}",
                     f"make sure one increments {column} on every UPDATE")
    return Check(FAIL, check, f"no BEFORE UPDATE trigger bumps {column}: updates keep the old "
                              "version, so stale cached data passes for fresh",
                 sequence_fix(table, column))


def _reinsert(name: str, column: str, table: Table) -> Check | None:
    """Whether a row deleted and re-inserted can start again below its old version."""
    found = table.columns.get(column)
    if found is None or found.base not in INTEGER_TYPES:
        return None  # the version trigger check fails already
    check = f"table {name} version on re-insert"
    setters = [t for t in table.triggers
               if t.enabled and t.before and t.row and _rising(t, column) is not None]
    # Triggers of one timing fire in name order (the list is sorted): the last one to
    # set the column decides its value.
    on_insert = [t for t in setters if t.on_insert]
    on_update = [t for t in setters if t.on_update]
    default = found.default
    if on_insert:
        insert_ok = bool(_rising(on_insert[-1], column))
        insert = _shows(on_insert[-1], column)
    elif found.identity:
        insert_ok, insert = True, "an identity (a sequence)"
    else:
        insert_ok = default is not None and bool(RISING.search(default))
        insert = f"DEFAULT {default}" if default is not None else "no DEFAULT (the "\
                                                                   "application's value)"
    if on_update:
        update_ok = bool(_rising(on_update[-1], column))
        update = _shows(on_update[-1], column)
    else:
        update_ok, update = False, "no trigger sets it"
    same = bool(on_insert and on_update and on_insert[-1] is on_update[-1])
    where = f"INSERT and UPDATE: {insert}" if same else f"INSERT: {insert}; UPDATE: {update}"
    if insert_ok and update_ok:
        return Check(OK, check, f"{column} never goes back ({where})")
    if not insert_ok:
        problem = f"a row deleted and re-inserted starts again at {insert}"
    else:
        problem = (f"updates do not take {column} from the sequence, so a row deleted and "
                   "re-inserted can start below the version its updates reached")
    return Check(WARN, check, f"{problem} ({where}): the delete fence and cached entries "
                              "are compared with the re-inserted row's versions, so its "
                              "changes can be taken for old ones (versions must never go "
                              "back)", sequence_fix(table, column))


def sequence_fix(table: Table, column: str) -> str:
    """The SQL that sets `column` from a sequence on every INSERT and UPDATE, in one
    transaction with writes blocked: the sequence (the default's, if it has one; a new
    one belongs to the column) raised above every version in the table, the default,
    the trigger, and the triggers that set the column otherwise dropped. Existing rows
    keep their versions."""
    qualified = f"{_ident(table.schema)}.{_ident(table.name)}"
    found = table.columns.get(column)
    current = _NEXTVAL.search(found.default or "") if found is not None else None
    sequence = (current.group(1).replace("''", "'") if current else
                f"{_ident(table.schema)}.{_ident(f'{table.name}_{column}_seq')}")
    literal = "'" + sequence.replace("'", "''") + "'"
    col = _ident(column)
    function = f"{_ident(table.schema)}.{_ident(f'next_{column}')}"
    trigger = _ident(f"{table.name}_next_{column}")
    drops = "".join(f"DROP TRIGGER IF EXISTS {_ident(t.name)} ON {qualified}; "
                    for t in table.triggers
                    if _rising(t, column) is False and _ident(t.name) != trigger)
    owned = "" if current else f"ALTER SEQUENCE {sequence} OWNED BY {qualified}.{col}; "
    return (f"BEGIN; CREATE SEQUENCE IF NOT EXISTS {sequence}; {owned}"
            f"LOCK TABLE {qualified} IN SHARE ROW EXCLUSIVE MODE; "
            f"SELECT setval({literal}, GREATEST((SELECT max({col}) FROM {qualified}), "
            f"(SELECT last_value FROM {sequence}))); "
            f"ALTER TABLE {qualified} ALTER COLUMN {col} SET DEFAULT nextval({literal}); "
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN NEW.{col} := nextval(TG_ARGV[0]::regclass); RETURN NEW; END $$; "
            f"{drops}CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON "
            f"{qualified} FOR EACH ROW EXECUTE FUNCTION {function}({literal}); COMMIT;")


def _rising(trigger: Trigger, column: str) -> bool | None:
    """Whether the trigger sets `column` from a source that never goes back: True when
    every assignment calls nextval() (or a transaction id), False when it assigns
    something else (OLD.v + 1, a constant), None when it visibly sets nothing."""
    assigned = _assignments(trigger, column)
    if assigned:
        return all(RISING.search(value) for value in assigned)
    if column in trigger.args:  # a generic function told which column to set
        return bool(RISING.search(trigger.source))
    return None


def _assignments(trigger: Trigger, column: str) -> list[str]:
    """The right-hand sides of `NEW.<column> := …;` in the trigger function."""
    assign = re.compile(rf'\bNEW\s*\.\s*"?{re.escape(column)}"?\s*:?=(?!=)\s*([^;]*)',
                        re.IGNORECASE)
    return [" ".join(match.group(1).split()) for match in assign.finditer(trigger.source)]


def _shows(trigger: Trigger, column: str) -> str:
    args = ", ".join(f"'{arg}'" for arg in trigger.args)
    values = " / ".join(f"NEW.{column} := {value}" for value in
                        _assignments(trigger, column)) or f"{column} (an argument)"
    return f"trigger {trigger.name} ({trigger.function}({args})) sets {values}"


def _ident(name: str) -> str:
    """`name` as an SQL identifier (quoted when it must be)."""
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def _sets(trigger: Trigger, column: str) -> bool:
    """Whether the trigger function visibly assigns NEW.<column> (or gets it as an
    argument, as generic version-bump functions do)."""
    assign = re.compile(rf'\bNEW\s*\.\s*"?{re.escape(column)}"?\s*:?=(?!=)', re.IGNORECASE)
    return bool(assign.search(trigger.source)) or column in trigger.args


def _identity(name: str, spec: TableSpec, table: Table) -> Check:
    check = f"table {name} replica identity"
    fix = f"ALTER TABLE {name} REPLICA IDENTITY FULL; and set tables.{name}.replica_identity: full"
    identity = table.replica_identity.upper()
    if table.replica_identity == "full":
        if spec.replica_identity != "full":
            return Check(WARN, check, "FULL in Postgres, but the config says default",
                         f"set tables.{name}.replica_identity: full (moved rows are then "
                         "invalidated on both shards, every template on deletes)")
        return Check(OK, check, "FULL: deletes and updates carry the whole old row")
    if table.replica_identity == "nothing":
        return Check(FAIL, check, "NOTHING: deletes carry no key, nothing can be invalidated",
                     fix)
    if spec.replica_identity == "full":
        return Check(FAIL, check, f"the config says full, but Postgres has {identity}: the "
                                  "non-key columns of `before` are fake defaults "
                                  "(neighbourhood 0), so deletes would be misrouted",
                     f"ALTER TABLE {name} REPLICA IDENTITY FULL; (or set "
                     f"tables.{name}.replica_identity: default)")
    carried = set(table.identity_columns)
    if not set(spec.primary_key) <= carried:
        return Check(FAIL, check, f"{identity} carries ({', '.join(sorted(carried))}), not "
                                  "the whole primary key: deletes cannot be resolved", fix)
    severe: list[str] = []
    mild: list[str] = []
    for template in spec.templates():
        extra = sorted(set(template.columns) - set(spec.primary_key))
        if extra:
            (severe if template.versioned else mild).append(
                f"{template.source} needs {', '.join(extra)}")
    if severe:
        return Check(FAIL, check, f"{identity}, but versioned template(s) need non-key "
                                  f"columns ({'; '.join(severe)}): cached rows survive their "
                                  "delete and changes of those columns", fix)
    if spec.shard_key not in spec.primary_key:
        mild.append(f"shard key {spec.shard_key} is not in the primary key (a moved row's "
                    "old shard is not told)")
    if mild:
        return Check(WARN, check, f"{identity}: {'; '.join(mild)}; those keys are left to "
                                  "their TTL on deletes and moves", fix)
    return Check(OK, check, f"{identity}: every template is built from the primary key")


def _publication_of(postgres: Postgres,
                    connector: dict[str, str] | None) -> Publication | None:
    """The connector's publication (pgoutput's), if it exists."""
    if connector is None or connector.get("plugin.name", "pgoutput") != "pgoutput":
        return None
    return postgres.publication(connector.get("publication.name", "dbz_publication"))


def _publication(connector: dict[str, str], publication: Publication | None,
                 tables: dict[str, Table | None],
                 leaves: dict[str, list[str]]) -> Iterator[Check]:
    """Every configured table published: itself, or (per leaf) every leaf of it."""
    if connector.get("plugin.name", "pgoutput") != "pgoutput":
        return
    name = connector.get("publication.name", "dbz_publication")
    check = f"publication {name}"
    if publication is None:
        autocreate = connector.get("publication.autocreate.mode", "all_tables")
        if autocreate != "disabled":
            yield Check(WARN, check, "does not exist yet",
                        f"the connector creates it (publication.autocreate.mode={autocreate})")
        else:
            yield Check(FAIL, check, "does not exist and the connector does not create it",
                        f"CREATE PUBLICATION {name} FOR TABLE {', '.join(tables)}")
        return
    members = publication.tables
    missing = [t for t, found in tables.items() if found is not None and t not in members
               and not (leaves.get(t) and members.issuperset(leaves[t]))]
    if missing:
        yield Check(FAIL, check, f"does not include {', '.join(missing)}: their changes are "
                                 "never streamed",
                    f"ALTER PUBLICATION {name} ADD TABLE {', '.join(missing)}")
    else:
        yield Check(OK, check, "includes every configured table")


def _slot(postgres: Postgres, connector: dict[str, str] | None, limit: int) -> Iterator[Check]:
    slots = postgres.replication_slots()
    wanted = connector.get("slot.name", "debezium") if connector is not None else None
    database = postgres.database()
    chosen = ([s for s in slots if s.name == wanted] if wanted is not None
              else [s for s in slots if s.plugin is not None and s.database == database])
    if not chosen:
        yield Check(FAIL if wanted else WARN, "replication slot",
                    f"{wanted or 'no logical replication slot'} not found",
                    "the connector creates its slot when it starts: check its status")
        return
    for slot in chosen:
        check = f"replication slot {slot.name}"
        retained = _size(slot.retained_bytes)
        if slot.wal_status == "lost":
            yield Check(FAIL, check, "lost WAL it still needed: changes were skipped",
                        "re-snapshot the connector, then run `reconciler audit --repair`")
        elif not slot.active:
            yield Check(WARN, check, f"inactive, retaining {retained} of WAL",
                        "check the connector; drop the slot if it is gone for good "
                        f"(SELECT pg_drop_replication_slot('{slot.name}'))")
        elif slot.retained_bytes is not None and slot.retained_bytes > limit:
            yield Check(WARN, check, f"active, but retaining {retained} of WAL (more than "
                                     f"{_size(limit)})",
                        "the connector is behind: check its throughput and Kafka, or raise "
                        "--max-retained-wal-mb")
        else:
            yield Check(OK, check, f"active, retaining {retained} of WAL")


def _size(count: int | None) -> str:
    if count is None:
        return "an unknown amount"
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
