"""The shard-kinds benchmark's pure pieces: the shard map of each layout, what each
layout is read against, the ratios and the summary of its runs. The measurement itself
needs servers of its own and the stack: `python -m bench shards --events 20000`."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bench.dimensions import BASE
from bench.env import Router
from bench.shard_kinds import LAYOUTS, STANDALONE, Servers, compare, references, summarise
from shard_map import CLUSTER, Wait, parse_shard_map
from shard_map import STANDALONE as STANDALONE_KIND

SERVERS = Servers(plain=(24400, 24401), waited=(24402, 24403), replicas=(24404, 24405),
                  cluster=(24406, 24407, 24408, 24409, 24410, 24411))
SEEDS = ("valkey://127.0.0.1:24406", "valkey://127.0.0.1:24407", "valkey://127.0.0.1:24408")
BY_NAME = {layout.name: layout for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_every_layout_is_a_valid_map_routed_as_the_base_point(layout: Any) -> None:
    doc = SERVERS.shard_map(layout, 9)
    resolved = parse_shard_map(yaml.safe_dump(doc))
    base = Router.of(BASE.shard_map())
    assert Router.of(doc) == base and resolved.shard_names() == ("a", "b")
    for hood in range(1, 1001):
        assert resolved.resolve(hood) == base.shards(hood), hood
    a, b = resolved.endpoint("a"), resolved.endpoint("b")
    # the WAIT layouts on the primaries that have replicas, the others on the plain ones
    a_port, b_port = SERVERS.waited if layout.wait else SERVERS.plain
    assert (a.kind, a.urls) == (STANDALONE_KIND, (f"valkey://127.0.0.1:{a_port}/9",))
    if layout.cluster:  # only shard b moves to the cluster, on database 0
        assert (b.kind, b.urls) == (CLUSTER, SEEDS)
    else:
        assert (b.kind, b.urls) == (STANDALONE_KIND, (f"valkey://127.0.0.1:{b_port}/9",))
    want = Wait(replicas=1) if layout.wait else None
    assert a.wait == b.wait == want


def test_each_shards_server_figures_add_up_its_nodes_replicas_included() -> None:
    assert [SERVERS.nodes(layout) for layout in LAYOUTS] == [
        {"a": (24400,), "b": (24401,)},
        {"a": (24402, 24404), "b": (24403, 24405)},
        {"a": (24400,), "b": SERVERS.cluster},
        {"a": (24402, 24404), "b": SERVERS.cluster}]


def test_the_layouts_are_the_four_asked_for() -> None:
    assert [(layout.cluster, layout.wait) for layout in LAYOUTS] == [
        (False, False), (False, True), (True, False), (True, True)]
    assert STANDALONE is LAYOUTS[0]


def test_each_layout_is_read_against_those_one_change_away_and_standalone() -> None:
    def named(name: str) -> list[tuple[str, str]]:
        return [(other.name, shows) for other, shows in references(BY_NAME[name])]

    assert named("standalone") == []
    assert named("standalone_wait") == [("standalone", "WAIT's cost")]
    assert named("cluster") == [("standalone", "the cluster's cost")]
    assert named("cluster_wait") == [
        ("standalone_wait", "the cluster's cost under WAIT"),
        ("cluster", "WAIT's cost on the cluster"),
        ("standalone", "the cluster's and WAIT's together")]


def _summary(rate: float, cpu_us: float) -> dict[str, Any]:
    return {"worker_events_per_second": rate, "worker_cpu_us_per_event": cpu_us}


def test_ratios_are_multiples_of_the_reference() -> None:
    ratios = compare({"standalone": _summary(60_000, 15.0),
                      "standalone_wait": _summary(36_000, 16.5),
                      "cluster": _summary(50_000, 18.0),
                      "cluster_wait": _summary(30_000, 19.8)})
    assert ratios["standalone"] == []
    assert ratios["cluster"] == [{"against": "standalone", "shows": "the cluster's cost",
                                  "events_per_second": 0.833, "cpu_per_event": 1.2}]
    assert [(r["against"], r["events_per_second"], r["cpu_per_event"])
            for r in ratios["cluster_wait"]] == [
        ("standalone_wait", 0.833, 1.2), ("cluster", 0.6, 1.1), ("standalone", 0.5, 1.32)]
    assert ratios["standalone_wait"][0]["events_per_second"] == 0.6
    # a layout not measured is left out, and so is every ratio against it
    partial = compare({"standalone": _summary(60_000, 15.0), "cluster": _summary(50_000, 18.0)})
    assert set(partial) == {"standalone", "cluster"}
    assert len(partial["cluster"]) == 1


def _run(rate: float, cpu_us: float, b_fcalls: int | None, disturbed: bool = False,
         ) -> dict[str, Any]:
    return {"worker_cpu_us_per_event": cpu_us, "worker_events_per_second": rate,
            "ceiling_events_per_second": 200_000.0, "ceiling_cpu_us_per_event": 4.0,
            "worker_vs_ceiling": rate / 200_000, "worker_peak_rss_mb": 150.0,
            "b_fcalls": b_fcalls, "b_server_cpu_seconds": 0.2,
            "disturbed": ["invalidations differ"] if disturbed else []}


def test_the_summary_is_the_median_and_spread_of_the_undisturbed_runs() -> None:
    summary = summarise([_run(50_000, 15.0, 40), _run(10_000, 90.0, 9000, disturbed=True),
                         _run(60_000, 14.0, 42), _run(55_000, 16.0, 41)])
    assert summary["runs"] == 3 and summary["disturbed"] is True  # one left out
    assert summary["worker_events_per_second"] == 55_000
    assert summary["worker_events_per_second_range"] == [50_000, 60_000]
    assert summary["worker_cpu_us_per_event"] == 15.0
    assert (summary["b_fcalls"], summary["b_fcalls_range"]) == (41, [40, 42])
    one = summarise([_run(50_000, 15.0, None)])  # no server figures: a shard restarting
    assert one["runs"] == 1 and one["disturbed"] is False
    assert one["b_fcalls"] is None and one["b_fcalls_range"] is None
