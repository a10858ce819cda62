"""Shard kinds: a standalone primary (url), a Valkey Cluster (cluster: seed URLs) or a
primary found through Sentinel (sentinel: URLs, service) — exactly one per shard, every
URL valid, and each described without its password."""

from __future__ import annotations

from typing import Any

import pytest

from shard_map import CLUSTER, SENTINEL, STANDALONE, Wait, parse_shard_map, validate_document
from tests.unit.shard_map.maps import PATH, example, only_problem

SEEDS = ["valkey://10.0.1.1:6379", "valkey://:secret@10.0.1.2:6379"]
SENTINELS = ["valkey://10.0.2.1:26379", "valkey://10.0.2.2:26379"]


def with_b(spec: dict[str, Any]) -> dict[str, Any]:
    doc = example()
    doc["shards"]["b"] = spec
    return doc


def test_the_spec_example_with_every_kind() -> None:
    shard_map = parse_shard_map(
        "version: 7\n"
        "shards:\n"
        '  a: {url: "valkey://127.0.0.1:6379/0"}\n'
        '  b: {cluster: ["valkey://10.0.1.1:6379", "valkey://10.0.1.2:6379"]}\n'
        '  c: {sentinel: ["valkey://10.0.2.1:26379"], service: cache-c}\n'
        "ranges:\n"
        "  - {from: 1, to: 500, shard: a}\n"
        "  - {from: 501, to: 1000, shard: b}\n"
        "  - {from: 1001, to: 1500, shard: c}\n")
    a, b, c = (shard_map.endpoint(name) for name in "abc")
    assert (a.kind, a.urls, a.service) == (STANDALONE, ("valkey://127.0.0.1:6379/0",), None)
    assert (b.kind, b.urls) == (CLUSTER, ("valkey://10.0.1.1:6379", "valkey://10.0.1.2:6379"))
    assert (c.kind, c.urls, c.service) == (SENTINEL, ("valkey://10.0.2.1:26379",), "cache-c")
    assert shard_map.describe(1200)["urls"] == {
        "c": "sentinel valkey://10.0.2.1:26379 service cache-c"}


def test_a_cluster_is_described_without_passwords() -> None:
    doc = with_b({"cluster": SEEDS})
    endpoint = parse_shard_map(_yaml(doc)).endpoint("b")
    assert endpoint.describe() == ("cluster valkey://10.0.1.1:6379, "
                                   "valkey://:***@10.0.1.2:6379")
    assert "secret" not in repr(endpoint)


@pytest.mark.parametrize(("spec", "problem"), [
    ({"url": "valkey://h:1", "cluster": SEEDS},
     "shards.b: give exactly one of url (a standalone primary), cluster (the seed nodes of a "
     "Valkey Cluster) or sentinel (the Sentinels, with service), got url, cluster"),
    ({}, "shards.b: give exactly one of url (a standalone primary), cluster (the seed nodes "
         "of a Valkey Cluster) or sentinel (the Sentinels, with service), got none"),
    ({"sentinel": SENTINELS},
     "shards.b.service is required with sentinel: the name the Sentinels monitor the primary "
     "under (SENTINEL MONITOR <service> ...)"),
    ({"url": "valkey://h:1", "service": "x"},
     "shards.b.service: only a sentinel shard names a service"),
    ({"cluster": []}, "shards.b.cluster is empty: list at least one URL"),
    ({"cluster": ["valkey://h:1", "http://h:2"]},
     "shards.b.cluster[1] http://h:2 must be a URL with one of the schemes valkey://, "
     "valkeys://, redis://, rediss://"),
    ({"cluster": ["valkey://h:1/3"]},
     "shards.b.cluster[0] valkey://h:1/3 selects a database: a cluster has only database 0, "
     "and a sentinel shard's primary is used with database 0"),
    ({"sentinel": ["valkeys://s:1", "valkey://s:2"], "service": "c"},
     "shards.b: mixes TLS and plain URLs: use valkeys:// (or rediss://) for all of them, or "
     "for none"),
    ({"cluster": "valkey://h:1"}, "shards.b.cluster must be a list, got valkey://h:1"),
    ({"clutser": SEEDS}, "shards.b: unknown key 'clutser' (did you mean 'cluster'?)"),
])
def test_a_shard_must_be_exactly_one_valid_kind(spec: dict[str, Any], problem: str) -> None:
    assert only_problem(with_b(spec)) == problem


def test_valid_cluster_and_sentinel_shards_pass() -> None:
    validate_document(with_b({"cluster": SEEDS}), PATH)
    validate_document(with_b({"sentinel": SENTINELS, "service": "cache-b"}), PATH)
    validate_document(with_b({"cluster": ["valkeys://h:1", "rediss://h:2/0"]}), PATH)


def _yaml(doc: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(doc)


def test_a_shard_may_wait_for_its_replicas_and_aof() -> None:
    doc = with_b({"url": "valkey://h:2", "wait": {"replicas": 1, "aof": True, "timeout_ms": 200}})
    assert parse_shard_map(_yaml(doc)).endpoint("b").wait == Wait(1, True, 200)
    assert parse_shard_map(_yaml(with_b({"cluster": SEEDS, "wait": {"replicas": 2}}))
                           ).endpoint("b").wait == Wait(2, False, 1000)
    assert parse_shard_map(_yaml(example())).endpoint("a").wait is None


@pytest.mark.parametrize(("wait", "problem"), [
    ({"replicas": -1}, "shards.b.wait.replicas input should be greater than or equal to 0, "
                       "got -1"),
    ({"replicas": 1, "timeout_ms": 0}, "shards.b.wait.timeout_ms input should be greater "
                                       "than 0, got 0"),
    ({}, "shards.b.wait.replicas is required"),
])
def test_a_bad_wait_names_the_field(wait: dict[str, Any], problem: str) -> None:
    assert only_problem(with_b({"url": "valkey://h:2", "wait": wait})) == problem
