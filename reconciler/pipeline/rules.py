"""A table's rules: its config (`tables.<table>`), compiled once for the planner's hot
path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from connectors.debezium.values import LogicalType, hint_type
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
