"""The local config's tables and shard map as a Planner, and helpers to read plans."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from reconciler.pipeline.planner import Plan, Planner
from reconciler.settings import TableSpec
from shard_map import ShardMap, load_shard_map, parse_shard_map
from tests.unit.connectors.debezium.recorded import Recorded

LOCAL = Path(__file__).resolve().parents[3] / "config" / "local"
CONFIG = LOCAL / "reconciler.yaml"
SHARD_MAP = LOCAL / "shard_map.yaml"  # a = 1..500, b = 501..1000, 400..450 moving a -> b


@functools.cache
def _tables_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CONFIG.read_text())["tables"]
    return data


def tables(change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, TableSpec]:
    """The `tables:` of the local config (read without the environment), optionally
    changed first."""
    raw = copy.deepcopy(_tables_yaml())
    if change is not None:
        change(raw)
    return {name: TableSpec.model_validate(spec) for name, spec in raw.items()}


def shard_map(change: Callable[[dict[str, Any]], None] | None = None) -> ShardMap:
    """The local shard map, optionally changed first."""
    if change is None:
        return load_shard_map(SHARD_MAP)
    raw = yaml.safe_load(SHARD_MAP.read_text())
    change(raw)
    return parse_shard_map(yaml.safe_dump(raw), "test_shard_map.yaml")


def planner(*, table_change: Callable[[dict[str, Any]], None] | None = None,
            map_change: Callable[[dict[str, Any]], None] | None = None,
            unknown_tables_error: bool = False, tombstones: bool = True) -> Planner:
    return Planner(tables(table_change), shard_map(map_change),
                   unknown_tables_error=unknown_tables_error, tombstones=tombstones)


LOCAL_PLANNER = planner()


def plan(rec: Recorded, using: Planner = LOCAL_PLANNER) -> Plan:
    return using.plan(rec.decode())


def actions(result: Plan) -> list[tuple[Any, ...]]:
    """(shard, key, kind[, version]) per action, sorted: order is not part of the contract."""
    out = []
    for action in result.actions:
        row: tuple[Any, ...] = (action.shard, action.key, action.kind)
        if action.kind == "versioned":
            row += (action.version,)
        out.append(row)
    return sorted(out)


def canonical(items: Iterable[dict[str, Any]]) -> list[str]:
    """JSON objects in a comparable, order-insensitive form."""
    return sorted(json.dumps(item, sort_keys=True) for item in items)
