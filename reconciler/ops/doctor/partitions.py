"""Doctor's partition checks: a partitioned table, how its publication publishes it, and
whether the config plans every leaf (``tables.<table>.partitions``).

- Published via the root (``publish_via_partition_root``): changes arrive under the
  table's own name: OK, whatever ``partitions`` says. Postgres does not publish a
  TRUNCATE of one leaf then (truncate the root).
- Published per leaf (the default): changes arrive under each leaf's name; a leaf no
  pattern of ``partitions`` matches (and not configured itself) is skipped as an
  unknown table → FAIL, with the patterns to set. Without the publication (no
  connector known) the same is a WARN.
- A configured table that is itself a leaf, under a publication via the root: its
  changes arrive as the root's → FAIL.
- ``partitions`` on a table that is not partitioned → WARN.
- The WAL carries each leaf's own replica identity: leaves that lack what the config
  says (FULL) → FAIL, with the statements.
- The connector's ``table.include.list`` must capture the leaves (per leaf) or the
  root (via the root) → WARN.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence

from connectors.postgres import Partitioning, Publication
from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check
from reconciler.pipeline.partitions import is_partition
from reconciler.settings import TableSpec


def partition_checks(name: str, spec: TableSpec, found: Partitioning | None,
                     publication: Publication | None, include: Sequence[str],
                     configured: Collection[str]) -> Iterator[Check]:
    """`found`: the table's place in its partition tree (None: missing, checked
    elsewhere); `include`: the connector's table.include.list (empty: everything)."""
    check = f"table {name} partitions"
    if found is None:
        return
    via_root = publication is not None and publication.via_root
    if not found.partitioned:
        if found.root is not None and via_root:
            assert publication is not None
            yield Check(FAIL, check, f"a partition of {found.root}, and publication "
                                     f"{publication.name} publishes via the root: its "
                                     f"changes arrive under {found.root}, never under {name}",
                        f"configure {found.root} under `tables:` instead")
        elif spec.partitions:
            yield Check(WARN, check, f"not a partitioned table: tables.{name}.partitions "
                                     "is unused", "remove it, or fix the table's name")
        return
    leaves = found.leaves
    unmatched = [leaf for leaf in leaves
                 if leaf not in configured and not is_partition(name, spec.partitions, leaf)]
    count = f"{len(leaves)} leaf partition(s)"
    fix = (f"set tables.{name}.partitions: {suggest(name, list(leaves))} (or publish via "
           "the root: ALTER PUBLICATION … SET (publish_via_partition_root = true), then "
           "restart the connector)")
    if via_root:
        assert publication is not None
        yield Check(OK, check, f"{count}; publication {publication.name} publishes via the "
                               f"root: changes arrive under {name} (a TRUNCATE of one leaf is "
                               f"not published: truncate {name} itself)")
    elif unmatched:
        how = (f"publication {publication.name} publishes per leaf partition" if publication
               else "if the publication publishes per leaf partition (the default)")
        yield Check(FAIL if publication else WARN, check,
                    f"{count}; {how}, and tables.{name}.partitions does not match "
                    f"{', '.join(unmatched)}: their changes are skipped as unknown tables",
                    fix)
    else:
        how = (f"publication {publication.name} publishes per leaf partition; " if publication
               else "")
        yield Check(OK, check, f"{count}; {how}tables.{name}.partitions matches every leaf")
    yield from _identity(check, spec, leaves)
    wanted = [name] if via_root else list(leaves)
    missing = [t for t in wanted if include and not any(re.fullmatch(p, t) for p in include)]
    if missing:
        yield Check(WARN, f"{check} capture", f"the connector's table.include.list does not "
                                              f"capture {', '.join(missing)}",
                    "add them (a pattern, e.g. " + re.escape(name) + "_.*, for leaves made "
                    "later) to table.include.list")


def _identity(check: str, spec: TableSpec, leaves: dict[str, str]) -> Iterator[Check]:
    nothing = [leaf for leaf, identity in leaves.items() if identity == "nothing"]
    short = nothing if spec.replica_identity != "full" else [
        leaf for leaf, identity in leaves.items() if identity != "full"]
    if short:
        what = ("NOTHING: their deletes carry no key" if spec.replica_identity != "full" else
                "not FULL, as the config says: their `before` holds fake defaults")
        yield Check(FAIL, f"{check} replica identity",
                    f"leaf partition(s) {', '.join(short)} are {what} (the WAL carries each "
                    "leaf's own replica identity)",
                    " ".join(f"ALTER TABLE {leaf} REPLICA IDENTITY "
                             f"{'FULL' if spec.replica_identity == 'full' else 'DEFAULT'};"
                             for leaf in short))


def suggest(parent: str, leaves: Sequence[str]) -> str:
    """`partitions` patterns for these leaves: their names with each run of digits as
    `\\d{n}`, e.g. ['events_\\d{4}_\\d{2}', 'events_default']."""
    schema = parent.partition(".")[0]
    patterns: dict[str, None] = {}
    for leaf in leaves:
        leaf_schema, _, table = leaf.partition(".")
        text = table if leaf_schema == schema else leaf
        pattern = "".join(rf"\d{{{len(part)}}}" if part.isdigit() else re.escape(part)
                          for part in re.split(r"(\d+)", text) if part)
        patterns[pattern] = None
    return "[" + ", ".join(f"'{p}'" for p in patterns) + "]"
