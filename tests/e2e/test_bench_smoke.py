"""The throughput benchmark at a tiny size: a well-formed result that measured real work.

Not a timed test: it checks that the harness cannot silently measure nothing — every
consumer read the topic, our worker's invalidation counts are exactly what the
workload's changes call for, and the Camel peer (`--peer camel`: Java, and its jars
from Maven Central the first time) deleted the cached entries of the changed rows.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import valkey

from bench.cache import CacheMix, cached_rows
from bench.env import LOCAL_CONFIG, SMOKE_DB, Endpoints, Router, admin
from bench.events import DELETE, TOMBSTONE, Workload
from bench.throughput import Options, run_throughput
from tests.conftest import Stack

pytestmark = pytest.mark.e2e

EVENTS, KEYS, NAIVE = 2000, 500, 200
FIGURES = ("records", "seconds", "events_per_second", "cpu_seconds", "cpu_seconds_per_100k",
           "peak_rss_mb")


def expected_actions(workload: Workload, router: Router) -> Counter[str]:
    """Per shard: post:{id} and feed:{neighbourhood} on each shard of the row for a
    create or update, post:{id} on every shard for a delete and for its tombstone (a
    key-only delete)."""
    out: Counter[str] = Counter()
    for change in workload.changes():
        if change.op in (DELETE, TOMBSTONE):
            out.update(router.names)
        else:
            for shard in router.shards(change.neighborhood_id):
                out[shard] += 2
    return out


def smoke_endpoints(stack: Stack) -> Endpoints:
    return Endpoints(stack.kafka_bootstrap, {"a": stack.valkey["valkey-a"],
                                             "b": stack.valkey["valkey-b"]},
                     stack.postgres_dsn, db=SMOKE_DB)


def parked_topics(endpoints: Endpoints) -> set[str]:
    return {topic for topic in admin(endpoints).list_topics(timeout=10).topics
            if ".parked." in topic}


def test_throughput_harness_measures_the_work(stack: Stack, tmp_path: Path) -> None:
    endpoints = smoke_endpoints(stack)
    parked_before = parked_topics(endpoints)
    path = run_throughput(endpoints, Options(
        events=EVENTS, keys=KEYS, naive_records=NAIVE, naive_seconds=30), tmp_path)
    # The worker's fresh group made a parking topic per shard at start; the run removed
    # them (others' may come and go meanwhile: only new ones of bench groups count).
    assert {topic for topic in parked_topics(endpoints) - parked_before
            if topic.startswith("bench-")} == set()

    data = json.loads(path.read_text())
    assert path.parent == tmp_path and path.name.startswith("throughput-")
    assert data["kind"] == "throughput"
    assert {"nproc", "python", "librdkafka", "packages"} <= data["machine"].keys()
    assert {"commit", "dirty", "digest"} <= data["code"].keys()
    assert data["produced"]["records"] == EVENTS
    (run,) = data["runs"]
    for name in ("ceiling", "ceiling_worker_settings", "naive", "worker"):
        assert all(run[name][figure] is not None for figure in FIGURES), (name, run[name])
        assert run[name]["events_per_second"] > 0 and run[name]["peak_rss_mb"] > 0
    assert run["ceiling"]["records"] == run["ceiling_worker_settings"]["records"] == EVENTS
    assert run["naive"]["records"] == NAIVE and run["naive"]["capped"]
    assert sum(sum(r.values()) for r in run["naive"]["invalidations"].values()) > 0
    assert data["summary"]["worker_events_per_second"] == run["worker"]["events_per_second"]

    worker = run["worker"]
    assert worker["exit_code"] == 0 and worker["records"] == EVENTS and run["worker_complete"]
    workload = Workload(records=EVENTS, keys=KEYS)
    ops = Counter(change.op for change in workload.changes())
    assert worker["events"] == {"u": ops["u"], "c": ops["c"], "d": ops["d"],
                                "tombstone": ops[TOMBSTONE]}
    assert worker["skipped"].get("tombstone", 0) == 0
    assert worker["dead_letters"] == 0
    # Every action is either answered by a shard or coalesced into a later delete of the
    # same derived key in its batch (which, here, would have found nothing: absent).
    coalesced = worker["coalesced"]
    counted = {shard: sum(results.values()) + coalesced.get(shard, 0)
               for shard, results in worker["invalidations"].items()}
    assert counted == dict(expected_actions(workload, Router.load(LOCAL_CONFIG.parent /
                                                                  "shard_map.yaml")))
    accounted = {shard: {**results, "absent": results["absent"] + coalesced.get(shard, 0)}
                 for shard, results in worker["invalidations"].items()}
    assert accounted == data["expected_invalidations"]
    assert run["invalidations_match_expected"]
    seen = run["invalidation_fractions"]
    assert all(seen[result] > 0 for result in ("repaired", "fresh", "absent", "fenced")), seen


def test_camel_peer_deletes_the_entries_of_changed_rows(stack: Stack, tmp_path: Path) -> None:
    endpoints = smoke_endpoints(stack)
    path = run_throughput(endpoints, Options(events=EVENTS, keys=KEYS, naive_records=NAIVE,
                                             naive_seconds=30, peers=("camel",)), tmp_path)

    data = json.loads(path.read_text())
    (run,) = data["runs"]
    camel = run["camel"]
    assert all(camel[figure] is not None for figure in FIGURES), camel
    assert camel["records"] == EVENTS and camel["events_per_second"] > 0
    assert camel["peak_rss_mb"] > 0 and camel["startup_seconds"] > 0
    assert data["summary"]["camel_events_per_second"] == camel["events_per_second"]
    assert run["worker_vs_camel"] > 0 and not run["disturbed"], run["disturbed"]
    deletes = camel["deletes"]
    assert deletes["entries_to_delete"] > 0 and deletes["entries_to_keep"] > 0, deletes
    assert deletes["left"] == deletes["lost"] == 0, deletes

    # The peer is the run's last measurement: the cache is as its DELs left it. Each
    # cached row's entry is on its home shard: gone if the workload changed the row.
    workload = Workload(records=EVENTS, keys=KEYS)
    router = Router.load(LOCAL_CONFIG.parent / "shard_map.yaml")
    hoods, _ = workload.initial()
    changed = {change.id for change in workload.changes()}
    clients = {name: valkey.Valkey.from_url(endpoints.shard_url(name))
               for name in router.names}
    cached = cached_rows(workload, CacheMix()).keys()
    assert cached & changed and cached - changed  # both kinds are there to look at
    present = {row for row in cached if clients[router.home(hoods[row])].exists(f"post:{row}")}
    assert present == cached - changed
