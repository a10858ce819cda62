"""The shard map file as pydantic models, and its validation.

Validation runs in two passes and reports every problem of a pass at once, in one
`ShardMapError`:

1. shape: unknown keys (a typo must not pass silently), missing keys, wrong types.
   The models are strict: ``"1"``, ``1.0`` and ``true`` are not integers, ``no`` (a
   YAML boolean) is not a shard name.
2. rules (`shard_map.checks`): names and URLs, ``from <= to``, overlaps, unknown
   shards, moves that do not match the ranges. They need well-typed entries, so they
   run only once the shape is right.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shard_map._text import did_you_mean, render
from shard_map.checks import check
from shard_map.errors import ShardMapError

# Strict types, no unknown keys, immutable once validated.
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
# The sections whose entries are quoted whole in problems about one of their fields.
_ENTRY_LISTS = ("ranges", "moving")


class WaitSpec(BaseModel):
    """``shards.<name>.wait``: acknowledge a batch only once `replicas` replicas (and,
    with `aof`, the primary's and their append-only files) have it — WAIT / WAITAOF
    after the batch's calls, within `timeout_ms`."""

    model_config = _STRICT

    replicas: int = Field(ge=0)
    aof: bool = False
    timeout_ms: int = Field(1000, gt=0)


class ShardSpec(BaseModel):
    """``shards.<name>``: where one Valkey shard lives — exactly one of a standalone
    primary's ``url``, a Valkey Cluster's seed nodes (``cluster``), or the Sentinels
    that know a ``service``'s primary (``sentinel`` + ``service``)."""

    model_config = _STRICT

    url: str | None = None
    cluster: list[str] | None = None
    sentinel: list[str] | None = None
    service: str | None = None
    wait: WaitSpec | None = None


class RangeSpec(BaseModel):
    """``ranges[i]``: the inclusive neighbourhood ids ``from..to`` live on ``shard``."""

    model_config = _STRICT

    from_: int = Field(alias="from")
    to: int
    shard: str


class MovingSpec(BaseModel):
    """``moving[i]``: ids ``from..to`` are migrating; invalidate on both shards."""

    model_config = _STRICT

    from_: int = Field(alias="from")
    to: int
    source: str
    target: str


class ShardMapFile(BaseModel):
    """The whole file. Build it with `validate_document`, which also applies the rules."""

    model_config = _STRICT

    version: int
    shards: dict[str, ShardSpec]
    ranges: list[RangeSpec] = Field(default_factory=list)
    moving: list[MovingSpec] = Field(default_factory=list)
    default: str | None = None


def validate_document(data: object, path: str) -> ShardMapFile:
    """The parsed YAML document `data` of file `path` as a valid `ShardMapFile`.

    Raises `ShardMapError` naming `path` and every problem found.
    """
    if data is None:
        raise ShardMapError(path, ["the file is empty"])
    if not isinstance(data, dict):
        raise ShardMapError(
            path,
            [
                f"the top level must be a mapping with keys {', '.join(_keys(ShardMapFile))}, "
                f"got {type(data).__name__} {render(data)}"
            ],
        )
    try:
        model = ShardMapFile.model_validate(data)
    except ValidationError as exc:
        raise ShardMapError(path, [_problem(err, data) for err in exc.errors()]) from None
    problems = check(model)
    if problems:
        raise ShardMapError(path, problems)
    return model


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


# The model whose keys are allowed at a location (for "did you mean" on unknown keys).
_MODEL_AT: dict[str, type[BaseModel]] = {
    "": ShardMapFile,
    "shards": ShardSpec,
    "ranges": RangeSpec,
    "moving": MovingSpec,
}
# What a pydantic error type means, said the user's way.
_PHRASES = {
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
}


def _problem(err: Any, data: dict[Any, Any]) -> str:
    """One pydantic error as a sentence that names the entry and the field."""
    loc: tuple[str | int, ...] = tuple(err["loc"])
    kind: str = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = loc[-1]
        parent = loc[:-1]
        allowed = _keys(_MODEL_AT.get(str(parent[0]) if parent else "", ShardMapFile))
        hint = did_you_mean(str(key), allowed)
        if not parent:
            return f"unknown top-level key {key!r}{hint}; allowed: {', '.join(allowed)}"
        where = _where(parent, data)
        if len(parent) == 2 and parent[0] in _ENTRY_LISTS:
            where += f" {render(_lookup(data, parent))}"
        return f"{where}: unknown key {key!r}{hint}"
    if loc and loc[-1] == "[key]":
        return (
            f"{_where(loc[:-2], data)}: shard name {render(value)} must be a string"
            f"{_quote_hint(value)}"
        )
    if kind == "missing":
        return f"{_where(loc, data)} is required"
    phrase = _PHRASES.get(kind, str(err["msg"]).lower())
    return f"{_where(loc, data)} {phrase}, got {render(value)}{_quote_hint(value, kind)}"


def _where(loc: tuple[str | int, ...], data: dict[Any, Any]) -> str:
    """``ranges[1] {from: 450, to: "x", shard: b}: to`` for a field of a list entry,
    else the dotted path (``shards.a.url``)."""
    if len(loc) >= 3 and loc[0] in _ENTRY_LISTS and isinstance(loc[1], int):
        entry = _lookup(data, loc[:2])
        rest = _path(loc[2:])
        return f"{loc[0]}[{loc[1]}] {render(entry)}: {rest}"
    return _path(loc) or "the top level"


def _path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _lookup(data: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _quote_hint(value: object, kind: str = "string_type") -> str:
    if isinstance(value, bool):
        if kind == "int_type":
            return " (booleans are not integers)"
        return " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
    if kind == "string_type" and isinstance(value, int | float):
        return " (quote it)"
    return ""
