"""The shard map: which Valkey shard(s) hold a neighbourhood's cache entries.

Load a file with `load_shard_map` (or keep it current with `ShardMapWatcher`), then
call `ShardMap.resolve(neighbourhood_id)` per event. Pure apart from reading the file;
never imports ``reconciler`` or ``connectors``.
"""

from shard_map.errors import ShardMapError, ShardResolutionError
from shard_map.load import ReloadResult, ShardMapWatcher, load_shard_map, parse_shard_map
from shard_map.model import MovingSpec, RangeSpec, ShardMapFile, ShardSpec, validate_document
from shard_map.resolve import (
    CLUSTER,
    SENTINEL,
    STANDALONE,
    Move,
    Range,
    ShardEndpoint,
    ShardMap,
    Wait,
)

__all__ = [
    "CLUSTER",
    "SENTINEL",
    "STANDALONE",
    "Move",
    "MovingSpec",
    "Range",
    "RangeSpec",
    "ReloadResult",
    "ShardEndpoint",
    "ShardMap",
    "ShardMapError",
    "ShardMapFile",
    "ShardMapWatcher",
    "ShardResolutionError",
    "ShardSpec",
    "Wait",
    "load_shard_map",
    "parse_shard_map",
    "validate_document",
]
