"""The sweep's pure pieces: the layouts its points are measured on, the choice of
dimensions and points, how a group's results add up, and what is flagged as
super-linear. The measurement itself is in tests/e2e/test_bench_sweep_smoke.py."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bench.cache import LOCAL_KEYS, Keys
from bench.dimensions import BASE, DIMENSIONS, Point, choose
from bench.env import LOCAL_CONFIG, Router
from bench.group import combine
from bench.sweep import growth
from shard_map import parse_shard_map


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 8, 16])
def test_every_shard_count_is_a_valid_map_the_bench_routes_as_the_worker(shards: int) -> None:
    doc = Point(shards=shards).shard_map()
    doc["shards"] = {name: {"url": f"valkey://127.0.0.1:{24400 + i}/0"}
                     for i, name in enumerate(doc["shards"])}
    resolved = parse_shard_map(yaml.safe_dump(doc))
    router = Router.of(doc)
    assert resolved.shard_names() == router.names and len(router.names) == shards
    for hood in range(1, 1001):
        assert resolved.resolve(hood) == router.shards(hood), hood
    assert len({router.home(hood) for hood in range(1, 1001)}) == shards


def test_the_base_point_is_the_throughput_benchmarks_set_up() -> None:
    local = yaml.safe_load((LOCAL_CONFIG.parent / "shard_map.yaml").read_text())
    base = BASE.shard_map()
    assert (base["ranges"], base["moving"]) == (local["ranges"], local["moving"])
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    assert BASE.posts_keys() == LOCAL_KEYS
    assert LOCAL_KEYS.templates() == config["tables"]["public.posts"]["keys"]
    assert BASE.body_chars() == (400, 1600) and BASE.workers == 1 and BASE.partitions == 6


@pytest.mark.parametrize("count", range(1, 9))
def test_keys_per_event(count: int) -> None:
    keys = Point(keys=count).posts_keys()
    templates = [t["template"] for t in keys.templates()]
    assert len(templates) == len(set(templates)) == count
    assert templates[0] == "post:{id}"
    assert keys.derived == (() if count == 1 else ("feed",))
    assert isinstance(keys, Keys)


def test_choose_dimensions_and_points() -> None:
    assert choose(None, None) == {name: d.points for name, d in DIMENSIONS.items()}
    assert choose(["partitions"], ["96,6, 24"]) == {"partitions": (6, 24, 96)}
    assert choose(["workers", "keys"], ["1,2", "2,8"]) == {"workers": (1, 2), "keys": (2, 8)}
    for names, points, problem in (
            (["colour"], None, "unknown dimension colour"),
            (["shards"], ["2,32"], r"1\.\.16"),
            (["workers"], ["1,7"], r"1\.\.6"),
            (["keys"], ["4"], "two or more"),
            (["keys"], ["a,b"], "integers"),
            (["keys", "size"], ["1,2"], "once per --dimension")):
        with pytest.raises(ValueError, match=problem):
            choose(names, points)


def _member(records: int, start: float, end: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {"records": records, "window": [start, end], "cpu_seconds": cpu,
            "peak_rss_mb": 80.0 + records / 1000, **extra}


def test_a_group_adds_up_over_the_span_of_its_members() -> None:
    members = [
        _member(600, 10.0, 12.0, 0.3, exit_code=0, retries=0,
                invalidations={"a": {"absent": 5, "fresh": 1}}, coalesced={"a": 2}),
        _member(400, 10.5, 13.0, 0.2, exit_code=0, retries=1,
                invalidations={"a": {"absent": 1}, "b": {"repaired": 3}}, coalesced={}),
        _member(0, None, None, 0.0, exit_code=0, retries=0, invalidations={},  # type: ignore[arg-type]
                coalesced={}),
    ]
    group = combine(members)
    assert group["records"] == 1000 and group["seconds"] == 3.0
    assert group["events_per_second"] == 333 and group["cpu_seconds_per_100k"] == 50.0
    assert group["join_skew_seconds"] == 0.5 and group["peak_rss_mb"] == 80.6
    assert group["invalidations"] == {"a": {"absent": 6, "fresh": 1}, "b": {"repaired": 3}}
    assert group["coalesced"] == {"a": 2} and group["retries"] == 1
    assert group["members"] == members


def _point(name: str, value: int, cpu_us: float, rate: float, **extra: Any) -> dict[str, Any]:
    return {"point": {name: value}, "actions_per_event": extra.get("actions", 2.0),
            "produced": {"mean_value_bytes": extra.get("bytes", 4500)},
            "summary": {"worker_cpu_us_per_event": cpu_us, "worker_events_per_second": rate,
                        "disturbed": extra.get("disturbed", False)}}


def test_growth_is_read_against_the_work_an_event_asks_for() -> None:
    flat = growth("partitions", [_point("partitions", 6, 14.0, 70_000),
                                 _point("partitions", 96, 15.0, 66_000)], 1.5)
    assert flat["super_linear"] == [] and flat["work_growth"] == 1.0
    steep = growth("partitions", [_point("partitions", 6, 14.0, 70_000),
                                  _point("partitions", 96, 28.0, 30_000)], 1.5)
    assert [flag.split(" from")[0] for flag in steep["super_linear"]] == [
        "CPU per event grows 2.00x", "events/s falls 2.33x"]
    # eight keys an event ask for four times the cache operations: 3x the CPU is linear
    keys = growth("keys", [_point("keys", 2, 14.0, 70_000, actions=2.0),
                           _point("keys", 8, 42.0, 25_000, actions=8.0)], 1.5)
    assert keys["super_linear"] == [] and keys["cpu_per_work_vs_first"] == [1.0, 0.75]
    workers = growth("workers", [_point("workers", 1, 14.0, 70_000),
                                 _point("workers", 3, 15.0, 90_000)], 1.5)
    assert workers["super_linear"] == [
        "events/s per worker falls from 70,000 to 30,000 with 3 workers"]
    late = growth("workers", [_point("workers", 1, 14.0, 70_000),
                              _point("workers", 3, 15.0, 90_000, disturbed=True)], 1.5)
    assert late["super_linear"][0].endswith("(from a disturbed point: measure again)")
