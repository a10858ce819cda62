"""A table's rules: its config (`tables.<table>`), compiled once for the planner's hot
path; and finding them by the name an event or a topic gives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from connectors.debezium.values import LogicalType, hint_type
from reconciler.pipeline.partitions import Partitions
from reconciler.settings import TableSpec
from reconciler.templates import KeyTemplate


@dataclass(frozen=True, slots=True)
class TableRules:
    """A table's config, compiled for the hot path."""

    name: str
    primary_key: frozenset[str]
    shard_key: str
    version_column: str
    full_identity: bool
    templates: tuple[KeyTemplate, ...]
    key_templates: tuple[KeyTemplate, ...]  # those built from the primary key alone
    hints: Mapping[str, LogicalType] = field(default_factory=dict)

    @classmethod
    def compile(cls, name: str, spec: TableSpec) -> TableRules:
        templates = spec.templates()
        primary_key = frozenset(spec.primary_key)
        return cls(
            name=name,
            primary_key=primary_key,
            shard_key=spec.shard_key,
            version_column=spec.version_column,
            full_identity=spec.replica_identity == "full",
            templates=templates,
            key_templates=tuple(t for t in templates if set(t.columns) <= primary_key),
            hints={column: hint_type(kind) for column, kind in spec.column_types.items()},
        )


class TableLookup:
    """The configured tables' rules, found by the table an event names — a configured
    table, or a leaf partition of one (`tables.<t>.partitions`) — or by a topic named
    after one (``<prefix>.<schema>.<table>``)."""

    __slots__ = ("_partitions", "_topics", "tables")

    def __init__(self, specs: Mapping[str, TableSpec]) -> None:
        self.tables = {name: TableRules.compile(name, spec) for name, spec in specs.items()}
        self._partitions = Partitions({name: (spec.partitions, self.tables[name])
                                       for name, spec in specs.items()})  # leaf → parent
        self._topics: dict[str, TableRules | None] = {}  # topic → its table (memo)

    def by_name(self, table: str) -> TableRules | None:
        """The rules of a configured table, or of the table `table` is a leaf of."""
        rules = self.tables.get(table)
        if rules is None and self._partitions:
            return self._partitions.parent(table)
        return rules

    def by_topic(self, topic: str) -> TableRules | None:
        """The configured table a topic is named after: the longest configured name the
        topic ends with, else the table whose leaf the topic's last two parts name."""
        try:
            return self._topics[topic]
        except KeyError:
            pass
        found = None
        for name, rules in self.tables.items():
            if (topic == name or topic.endswith("." + name)) and (
                    found is None or len(name) > len(found.name)):
                found = rules
        if found is None and self._partitions:
            found = self._partitions.parent(".".join(topic.rsplit(".", 2)[-2:]))
        self._topics[topic] = found
        return found

