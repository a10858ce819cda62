"""Leaf partitions of configured tables: which configured table a leaf's changes are
planned by (``tables.<parent>.partitions``).

A publication without ``publish_via_partition_root`` (Postgres' default) publishes a
partitioned table's changes under each leaf's name (``source.table`` is
``events_2026_12``, the topic ``<prefix>.public.events_2026_12``); with it, under the
root's, which is configured as it is. The worker cannot ask Postgres on its hot path, and
a leaf created next month must not need a restart: the config names the leaves with
regular expressions, each matching a whole leaf name in the parent's schema, or a whole
``schema.table``. ``reconciler doctor`` checks them against ``pg_inherits``.

`Partitions.parent` is asked only for a name that is not a configured table (a miss of
the planner's dict), and remembers its answer: a leaf costs one regular-expression
search per name, once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
MEMO_LIMIT = 10_000  # names remembered (a stream carries a bounded set of table names)


def compile_partitions(parent: str, patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One expression matching the `schema.table` of every leaf `patterns` name, or
    None without patterns. A pattern matches a whole leaf name in the parent's schema,
    or a whole `schema.table`."""
    if not patterns:
        return None
    schema = re.escape(parent.partition(".")[0])
    either = "|".join(f"(?:{pattern})" for pattern in patterns)
    return re.compile(rf"(?:{schema}\.(?:{either}))|(?:{either})")


def is_partition(parent: str, patterns: Sequence[str], leaf: str) -> bool:
    """Whether `leaf` (`schema.table`) is one of the leaves `patterns` name."""
    compiled = compile_partitions(parent, patterns)
    return compiled is not None and compiled.fullmatch(leaf) is not None


class Partitions(Generic[T]):
    """Leaf name → the configured parent's value (its compiled rules), by the parents'
    `partitions` patterns; the first parent in config order wins."""

    __slots__ = ("_memo", "_parents")

    def __init__(self, parents: Mapping[str, tuple[Sequence[str], T]]) -> None:
        """`parents`: configured table → (its partition patterns, what to answer)."""
        self._parents = [(compiled, value) for name, (patterns, value) in parents.items()
                         if (compiled := compile_partitions(name, patterns)) is not None]
        self._memo: dict[str, T | None] = {}

    def __bool__(self) -> bool:
        return bool(self._parents)

    def parent(self, leaf: str) -> T | None:
        """The value of the table `leaf` is a partition of, or None."""
        try:
            return self._memo[leaf]
        except KeyError:
            pass
        found = next((value for compiled, value in self._parents
                      if compiled.fullmatch(leaf)), None)
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[leaf] = found
        return found
