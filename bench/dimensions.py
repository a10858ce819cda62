"""The sweep's dimensions: what each varies, and how a point is laid out.

A `Point` is one configuration of the throughput benchmark's set-up. `BASE` is that
benchmark's own: 6 partitions, the local shard map's two shards, `post:{id}` and
`feed:{neighborhood_id}` on public.posts, bodies of 400 to 1,600 characters (~1 KB), one
worker. A dimension varies one field of it and leaves the others at the base:

- partitions: the topic's partition count (the workload is keyed by row id, so rows
  spread over them as before);
- shards: the shard map splits neighbourhoods 1..1000 into equal ranges over N shards
  (`a`, `b`, … — with 2 it is the local map) and keeps 400..450 moving from its home
  shard to the next; each shard is a Valkey server of its own. Deletes, whose
  neighbourhood is unknown, are broadcast to every shard, so the cache operations per
  event grow with N;
- keys: N key templates on public.posts: `post:{id}`, then `feed:{neighborhood_id}`,
  then versioned renderings of the post (`post_card:{id}`, …), each cached for the rows
  that are cached;
- size: the rows' body, N times the base's 400 to 1,600 characters (the record also
  carries the 3.3 KB schema block and ~0.6 KB of other fields);
- workers: N worker processes in one consumer group reading the topic (and N ceiling
  consumers in one group for its ceiling); figures summed over the processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bench.cache import Keys

SHARD_NAMES = "abcdefghijklmnop"  # shard-map names of up to 16 shards (a, b: the local map's)
NEIGHBORHOODS = 1000  # the workload's neighbourhood ids, 1..1000
MOVING = (400, 450)  # the local map's neighbourhoods in migration, kept at every shard count
RENDERINGS = ("post_card", "post_page", "post_json", "post_meta", "post_preview",
              "post_amp")  # versioned keys beyond post:{id} and feed:{neighborhood_id}
BODY_CHARS = (400, 1600)  # the workload's body length at size 1 (~1 KB on average)
CONSTANT, ACTIONS, BYTES = "constant", "actions", "bytes"  # what the work per event is


@dataclass(frozen=True, slots=True)
class Point:
    partitions: int = 6
    shards: int = 2
    keys: int = 2  # key templates on public.posts
    size: int = 1  # body length, in multiples of BODY_CHARS (~KB)
    workers: int = 1  # worker processes in the consumer group

    def at(self, dimension: str, value: int) -> Point:
        return replace(self, **{dimension: value})

    @property
    def label(self) -> str:
        return (f"p{self.partitions}-s{self.shards}-k{self.keys}-b{self.size}"
                f"-w{self.workers}")

    def shard_map(self) -> dict[str, Any]:
        """The local shard map's shape over `shards` shards (their URLs left to fill)."""
        names = SHARD_NAMES[:self.shards]
        bounds = [round(i * NEIGHBORHOODS / self.shards) for i in range(self.shards + 1)]
        ranges: list[dict[str, Any]] = [
            {"from": bounds[i] + 1, "to": bounds[i + 1], "shard": name}
            for i, name in enumerate(names)]
        home = next(i for i, r in enumerate(ranges) if r["from"] <= MOVING[0] <= r["to"])
        moving = [{"from": MOVING[0], "to": min(MOVING[1], ranges[home]["to"]),
                   "source": names[home], "target": names[(home + 1) % self.shards]}
                  ] if self.shards > 1 else []
        return {"version": 1, "shards": {name: {"url": ""} for name in names},
                "ranges": ranges, "moving": moving, "default": None}

    def posts_keys(self) -> Keys:
        if self.keys == 1:
            return Keys(("post",), ())
        return Keys(("post", *RENDERINGS[:self.keys - 2]), ("feed",))

    def body_chars(self) -> tuple[int, int]:
        return BODY_CHARS[0] * self.size, BODY_CHARS[1] * self.size


BASE = Point()


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str  # the Point field it varies
    title: str  # the plot's axis
    points: tuple[int, ...]  # swept by default
    limits: tuple[int, int]  # the values accepted
    work: str  # what the work per event grows with: CONSTANT, ACTIONS (cache
    #            operations per event, from the model) or BYTES (mean record value)


DIMENSIONS = {dimension.name: dimension for dimension in (
    Dimension("partitions", "topic partitions", (6, 12, 24, 48, 96), (1, 1024), CONSTANT),
    Dimension("shards", "shards (a Valkey server each)", (2, 4, 8, 16),
              (1, len(SHARD_NAMES)), ACTIONS),
    Dimension("keys", "key templates per event", (1, 2, 4, 8), (1, 2 + len(RENDERINGS)),
              ACTIONS),
    Dimension("size", "body size (KB)", (1, 4, 16, 64), (1, 256), BYTES),
    Dimension("workers", "worker processes in the group", (1, 2, 3), (1, BASE.partitions),
              CONSTANT),
)}


def choose(names: list[str] | None, points: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Dimension -> its points, from `--dimension` (repeatable; default: all) and
    `--points` (comma-separated values, one per `--dimension`, in the same order)."""
    names = names or list(DIMENSIONS)
    unknown = [name for name in names if name not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension {', '.join(unknown)}: choose from "
                         f"{', '.join(DIMENSIONS)}")
    if points and len(points) != len(names):
        raise ValueError(f"--points given {len(points)} times for {len(names)} dimension(s):"
                         " give it once per --dimension, in the same order")
    out: dict[str, tuple[int, ...]] = {}
    for index, name in enumerate(names):
        dimension = DIMENSIONS[name]
        try:
            values = tuple(sorted({int(v) for v in points[index].split(",") if v.strip()})) \
                if points else dimension.points
        except ValueError:
            raise ValueError(f"--points {points[index] if points else ''}: integers, "
                             "comma-separated") from None
        low, high = dimension.limits
        if len(values) < 2 or not all(low <= v <= high for v in values):
            raise ValueError(f"{name}: give two or more points in {low}..{high}, got "
                             f"{', '.join(map(str, values))}")
        out[name] = values
    return out
