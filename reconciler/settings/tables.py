"""``tables:``: each table's key, shard key, version column and key templates."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from reconciler.settings.base import Strict
from reconciler.templates import KeyTemplate, TemplateError


class KeySpec(Strict):
    template: str = Field(description="key template, e.g. post:{id}")
    versioned: bool = Field(True, description="a versioned hash entry (v/d), or a plain key")

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            KeyTemplate.compile(value, versioned=True)
        except TemplateError as exc:
            raise ValueError(f"template {value!r}: {exc}") from exc
        return value


class TableSpec(Strict):
    primary_key: list[str] = Field(min_length=1)
    shard_key: str
    version_column: str = "system_version"
    replica_identity: Literal["default", "full"] = "default"
    keys: list[KeySpec] = Field(min_length=1)
    # Logical types of columns used in templates, for topics without embedded schemas
    # (value.converter.schemas.enable=false): decimal:<scale>, date, timestamp-ms,
    # timestamp-us, timestamp-ns, string, int.
    column_types: dict[str, str] = Field(default_factory=dict)
    # A partitioned table published per leaf partition (publish_via_partition_root off,
    # Postgres' default): its leaves, whose changes are planned by this config. Regular
    # expressions, each matching a whole leaf name (in this table's schema) or
    # schema.table, e.g. ['events_\d{4}_\d{2}', events_default]. `doctor` checks them.
    partitions: list[str] = Field(default_factory=list)

    @field_validator("partitions")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"partitions: {pattern!r} is not a regular expression: "
                                 f"{exc}") from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> TableSpec:
        for entry in self.keys:
            template = KeyTemplate.compile(entry.template, versioned=entry.versioned)
            if not template.columns:
                raise ValueError(f"template {entry.template!r} has no {{column}} placeholder")
            if not "".join(template.literals):
                raise ValueError(
                    f"template {entry.template!r} has no literal text: its truncate pattern "
                    "would be `*`, every key on every shard (write e.g. post:{id})")
        for column, kind in self.column_types.items():
            if not re.fullmatch(r"decimal:\d+|date|timestamp-(ms|us|ns)|string|int", kind):
                raise ValueError(
                    f"column_types.{column}: {kind!r} is not one of decimal:<scale>, date, "
                    "timestamp-ms, timestamp-us, timestamp-ns, string, int"
                )
        return self

    def templates(self) -> tuple[KeyTemplate, ...]:
        return tuple(KeyTemplate.compile(k.template, versioned=k.versioned) for k in self.keys)
