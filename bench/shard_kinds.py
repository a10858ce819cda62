"""Shard kinds: the worker's throughput with a shard on a Valkey Cluster beside the
standalone one, and the cost of `wait: {replicas: 1}` (WAIT), in one run.

One topic of the sweep's base point (`bench.dimensions.BASE`: 6 partitions, the local
map's two shards, `post:{id}` and `feed:{neighborhood_id}`) is written once; then per
run, each layout (`LAYOUTS`) in turn, as the sweep measures a point: the ceiling
(consume and discard with the worker's own consumer settings), then the worker (the
cache reset first), its invalidation counts checked against the model. Every server is
the benchmark's own (`bench.servers`, `bench.cluster`):

- standalone: shards a and b each a standalone valkey-server;
- standalone + WAIT: two other standalone primaries, each with a replica of its own
  (`--replicaof`), and `wait: {replicas: 1}` on both shards;
- cluster: shard a as in standalone, shard b on a Valkey Cluster of 3 primaries and 3
  replicas. Only shard b moves, so the difference from standalone is the cluster's
  cost on b's share of the cache operations (about half). Both shards on one cluster
  pass the shard map's validation, but their keys would share one keyspace (`post:7`
  of shard a would be `post:7` of shard b), so the worker's counts would no longer be
  the two-shard model's; and a deployment would name one cluster as one shard;
- cluster + WAIT: shard a as in standalone + WAIT, shard b on the cluster, both with
  `wait: {replicas: 1}`.

Each layout is read against the others that differ from it in one thing (`references`:
the cluster's cost, WAIT's cost) and against standalone (`compare`). The cluster has its
replicas in both cluster layouts, so WAIT's cost on the cluster is the waiting alone;
between the standalone layouts it is the replicas' too. Results go to
`bench/results/shards-*.json`.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import valkey
import yaml

from bench.cache import CacheMix, by_shard, cached_rows, expected
from bench.cluster import Nodes
from bench.dimensions import BASE
from bench.env import Code, Endpoints, Router, delete_topic, retrying, server_stats
from bench.events import Envelope, Workload
from bench.harness import Harness, write_topic
from bench.report import RESULTS_DIR, machine, table, write_result
from bench.runner import Spec
from bench.servers import HOST, ValkeyServers
from bench.sweep import judge_run, summarise_runs
from connectors.valkey.functions import load_functions
from connectors.valkey.topology import cluster_client

CLUSTER_SHARD = "b"  # the shard the cluster layouts put on the Valkey Cluster
WAIT = {"replicas": 1}  # shards.<name>.wait of the WAIT layouts
CLUSTER_PRIMARIES, CLUSTER_REPLICAS = 3, 1  # the cluster: 3 primaries, a replica each
SEEDS = 3  # the cluster's nodes named in the shard map
EXTRAS = ("b_fcalls", "b_server_cpu_seconds")  # shard b's server figures, per worker run


@dataclass(frozen=True, slots=True)
class Layout:
    name: str  # in the results file
    title: str  # as printed
    cluster: bool  # shard b on the Valkey Cluster (shard a stays a standalone server)
    wait: bool  # wait on every shard, each standalone primary with a replica of its own


LAYOUTS = (
    Layout("standalone", "standalone", cluster=False, wait=False),
    Layout("standalone_wait", "standalone + WAIT", cluster=False, wait=True),
    Layout("cluster", "cluster", cluster=True, wait=False),
    Layout("cluster_wait", "cluster + WAIT", cluster=True, wait=True),
)
STANDALONE = LAYOUTS[0]


@dataclass(frozen=True, slots=True)
class ShardKindOptions:
    events: int = 200_000  # Kafka records, tombstones included (a sweep point's)
    keys: int = 100_000  # rows at the start
    runs: int = 1  # every layout measured once per run, in LAYOUTS order
    seed: int = 1
    compression: str = "lz4"
    worker_ref: str | None = None  # measure this commit's worker code, not the working tree
    worker_client: dict[str, str] = field(default_factory=dict)  # librdkafka overrides
    mix: CacheMix = field(default_factory=CacheMix)


def references(layout: Layout) -> list[tuple[Layout, str]]:
    """The layouts `layout` is read against, and what each ratio shows: the one without
    the cluster (the cluster's cost), the one without WAIT (WAIT's cost), standalone."""
    found: list[tuple[Layout, str]] = []
    for other in LAYOUTS:
        if layout.cluster and (other.cluster, other.wait) == (False, layout.wait):
            found.append((other, "the cluster's cost" + (" under WAIT" if layout.wait else "")))
        if layout.wait and (other.cluster, other.wait) == (layout.cluster, False):
            found.append((other, "WAIT's cost" + (" on the cluster" if layout.cluster else "")))
    if layout != STANDALONE and all(other != STANDALONE for other, _ in found):
        found.append((STANDALONE, "the cluster's and WAIT's together"))
    return found


def compare(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per layout, its events/s and CPU per event as multiples of each reference's."""
    out: dict[str, list[dict[str, Any]]] = {}
    for layout in LAYOUTS:
        if layout.name not in summaries:
            continue
        mine = summaries[layout.name]
        out[layout.name] = [{
            "against": other.name, "shows": shows,
            "events_per_second": round(mine["worker_events_per_second"] /
                                       summaries[other.name]["worker_events_per_second"], 3),
            "cpu_per_event": round(mine["worker_cpu_us_per_event"] /
                                   summaries[other.name]["worker_cpu_us_per_event"], 3),
        } for other, shows in references(layout) if other.name in summaries]
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's medians and spreads over the undisturbed runs, plus shard b's."""
    out = summarise_runs(runs)
    kept = [run for run in runs if not run["disturbed"]] or runs
    for extra in EXTRAS:
        values = [run[extra] for run in kept if run.get(extra) is not None]
        out[extra] = round(statistics.median(values), 3) if values else None
        out[f"{extra}_range"] = [min(values), max(values)] if values else None
    return out


@dataclass(frozen=True, slots=True)
class Servers:
    """The benchmark's servers, by port: which a layout's shards are on."""

    plain: tuple[int, ...]  # standalone primaries of shards a and b
    waited: tuple[int, ...]  # the WAIT layouts' standalone primaries of a and b…
    replicas: tuple[int, ...]  # …and a replica of each
    cluster: tuple[int, ...]  # the cluster's nodes (any of them is a seed)

    def nodes(self, layout: Layout) -> dict[str, tuple[int, ...]]:
        """Shard -> the ports of its nodes: its primary (and replica), or the cluster's."""
        primaries = self.waited if layout.wait else self.plain
        out: dict[str, tuple[int, ...]] = {
            name: (port, replica) if layout.wait else (port,)
            for name, port, replica in zip(("a", "b"), primaries, self.replicas, strict=True)}
        if layout.cluster:
            out[CLUSTER_SHARD] = self.cluster
        return out

    def shard_map(self, layout: Layout, db: int) -> dict[str, Any]:
        """The base point's shard map on the layout's servers: a standalone shard on its
        primary's database `db`, shard b of a cluster layout on three of the cluster's
        nodes as seeds (a cluster has only database 0); `wait` on every shard of a WAIT
        layout."""
        shards: dict[str, Any] = {}
        for name, ports in self.nodes(layout).items():
            spec: dict[str, Any] = (
                {"cluster": [f"valkey://{HOST}:{port}" for port in ports[:SEEDS]]}
                if layout.cluster and name == CLUSTER_SHARD
                else {"url": f"valkey://{HOST}:{ports[0]}/{db}"})
            if layout.wait:
                spec["wait"] = dict(WAIT)
            shards[name] = spec
        return {**BASE.shard_map(), "shards": shards}


@dataclass(slots=True)
class KindHarness(Harness):
    """The sweep's harness, with the shards a layout gives them: its shard map written
    whole into each config (`write_config` knows standalone URLs only), a cluster
    client for a cluster shard, and each shard's server figures added up over its
    nodes, replicas included."""

    nodes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # shard -> ports
    _node_clients: dict[int, valkey.Valkey] = field(default_factory=dict, init=False,
                                                    repr=False)

    @property
    def clients(self) -> dict[str, valkey.Valkey]:
        if self._clients is None:
            self._clients = retrying(self._connect, "connecting")
        return self._clients

    def _connect(self) -> dict[str, valkey.Valkey]:
        """Per shard a client with the functions loaded: a ValkeyCluster for a cluster
        (FLUSHDB and FUNCTION LOAD go to every primary, FCALLs to their key's)."""
        assert self.shard_map is not None
        clients: dict[str, Any] = {}
        for name, spec in self.shard_map["shards"].items():
            clients[name] = (cluster_client(spec["cluster"]) if "cluster" in spec
                             else valkey.Valkey.from_url(spec["url"]))
            load_functions(clients[name], shard=name)
        return clients

    def spec(self, kind: str, label: str, kafka: Mapping[str, Any] | None = None,
             **extra: Any) -> Spec:
        spec = Harness.spec(self, kind, label, kafka, **extra)
        assert self.shard_map is not None
        (Path(spec.config).parent / "shard_map.yaml").write_text(
            yaml.safe_dump(dict(self.shard_map), sort_keys=False))
        return spec

    def _server_stats(self) -> dict[str, dict[str, float]]:
        for port in (port for ports in self.nodes.values() for port in ports):
            if port not in self._node_clients:
                self._node_clients[port] = valkey.Valkey(host=HOST, port=port)
        try:
            found = server_stats({str(port): client
                                  for port, client in self._node_clients.items()})
        except (valkey.ConnectionError, valkey.TimeoutError):
            return {}
        return {shard: {figure: sum(found[str(port)][figure] for port in ports)
                        for figure in found[str(ports[0])]}
                for shard, ports in self.nodes.items()}


def run_shard_kinds(endpoints: Endpoints, options: ShardKindOptions,
                    out_dir: Path = RESULTS_DIR) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    info, code = machine(), Code.resolve(options.worker_ref)
    uid = uuid.uuid4().hex[:8]
    topic = f"bench.shards.{uid}"
    router, keys = Router.of(BASE.shard_map()), BASE.posts_keys()
    workload = Workload(records=options.events, keys=options.keys, seed=options.seed)
    envelope = Envelope(body_chars=BASE.body_chars(), seed=options.seed)
    print(f"shards: {', '.join(layout.title for layout in LAYOUTS)}; {options.events:,} "
          f"records into {topic}, {options.runs} run(s); work files in {workdir}")
    runs: dict[str, list[dict[str, Any]]] = {layout.name: [] for layout in LAYOUTS}
    with contextlib.ExitStack() as stack:
        stack.callback(delete_topic, endpoints, topic)
        ports = [_port(url) for url in stack.enter_context(ValkeyServers(4)).urls]
        nodes = stack.enter_context(Nodes())
        plain, waited = ports[:2], ports[2:]
        replicas = [nodes.replica(primary) for primary in waited]
        cluster = nodes.cluster(CLUSTER_PRIMARIES, CLUSTER_REPLICAS)
        produced, ends = write_topic(endpoints, topic, BASE.partitions, workload, envelope,
                                     options.compression)
        rows = cached_rows(workload, options.mix)
        want, ops = expected(workload, router, rows, keys)
        share = sum(n for (shard, _), n in want.items() if shard == CLUSTER_SHARD) / \
            sum(want.values())
        print(f"cluster layouts: shard {CLUSTER_SHARD} ({share:.0%} of the cache operations)"
              " on the cluster, shard a standalone")
        servers = Servers(tuple(plain), tuple(waited), tuple(replicas), tuple(cluster))
        benches = {}
        for layout in LAYOUTS:
            doc = servers.shard_map(layout, endpoints.db)
            benches[layout.name] = KindHarness(
                _ours(endpoints, doc), code, workdir, topic, ends, workload, router, rows,
                keys=keys, shard_map=doc, client=options.worker_client, uid=uid,
                nodes=servers.nodes(layout))
        for index in range(options.runs):
            for layout in LAYOUTS:
                bench, label = benches[layout.name], f"{layout.name}-{index}"
                ceiling = bench.measure("ceiling", f"ceiling-{label}", reset_first=False)
                worker = bench.measure("worker", f"worker-{label}", reset_first=True)
                runs[layout.name].append(_run(ceiling, worker, want, options.events))
                _print_run(layout, index, runs[layout.name][-1])
    summaries = {name: summarise(found) for name, found in runs.items()}
    ratios = compare(summaries)
    data = {"kind": "shards", "options": {**asdict(options), "topic": topic},
            "base": asdict(BASE), "machine": info, "code": code.as_json(),
            "load_average_after": machine()["load_average"],
            "produced": produced.as_json(), "workload_ops": dict(ops),
            "expected_invalidations": by_shard(want), "cluster_shard": CLUSTER_SHARD,
            "cluster_shard_share": round(share, 4),
            "layouts": {layout.name: {"title": layout.title,
                                      "shard_map": benches[layout.name].shard_map,
                                      "nodes": benches[layout.name].nodes,
                                      "runs": runs[layout.name],
                                      "summary": summaries[layout.name],
                                      "ratios": ratios[layout.name]}
                        for layout in LAYOUTS}}
    path = write_result("shards", data, out_dir)
    _print_summary(summaries, ratios, share)
    print(f"results: {path}")
    return path


def _ours(endpoints: Endpoints, doc: Mapping[str, Any]) -> Endpoints:
    """The stack's Kafka with the layout's servers as the shards (each shard's first
    URL): nothing the harness does reaches the stack's own Valkey servers."""
    return Endpoints(endpoints.kafka, {name: spec.get("url") or spec["cluster"][0]
                                       for name, spec in doc["shards"].items()},
                     endpoints.postgres_dsn, db=endpoints.db)


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def _run(ceiling: dict[str, Any], worker: dict[str, Any],
         want: Mapping[tuple[str, str], int], records: int) -> dict[str, Any]:
    """The sweep's figures and checks of one run, plus shard b's server figures."""
    run = judge_run(ceiling, worker, want, records)
    b = (worker.get("servers") or {}).get(CLUSTER_SHARD) or {}
    run["b_fcalls"] = b.get("fcall_calls")
    run["b_server_cpu_seconds"] = b.get("server_cpu_seconds")
    return run


def _print_run(layout: Layout, index: int, run: Mapping[str, Any]) -> None:
    print(f"run {index + 1} {layout.title}: {run['worker_events_per_second']:,} events/s, "
          f"{run['worker_cpu_us_per_event']:.1f} µs CPU/event, ceiling "
          f"{run['ceiling_events_per_second']:,}/s ({run['worker_vs_ceiling']:.1%}), "
          f"RSS {run['worker_peak_rss_mb']} MB, shard b {run['b_fcalls']} FCALLs")
    for reason in run["disturbed"]:
        print(f"DISTURBED: {reason}")


def _cell(summary: Mapping[str, Any], figure: str, form: str) -> str:
    """A median, with the spread of the runs when there were several."""
    value, spread = summary[figure], summary.get(f"{figure}_range")
    if value is None:
        return "-"
    if summary["runs"] > 1 and spread:
        return f"{value:{form}} ({spread[0]:{form}}-{spread[1]:{form}})"
    return f"{value:{form}}"


def _print_summary(summaries: Mapping[str, Mapping[str, Any]],
                   ratios: Mapping[str, list[dict[str, Any]]], share: float) -> None:
    runs = max(summary["runs"] for summary in summaries.values())
    print(f"\n{'median of ' + str(runs) + ' runs (spread)' if runs > 1 else 'one run'}; "
          f"cluster layouts: shard {CLUSTER_SHARD} ({share:.0%} of the cache operations) on "
          f"{CLUSTER_PRIMARIES} primaries + {CLUSTER_PRIMARIES * CLUSTER_REPLICAS} replicas, "
          "shard a standalone")
    rows = []
    for layout in LAYOUTS:
        summary = summaries[layout.name]
        rows.append([layout.title, _cell(summary, "worker_events_per_second", ",.0f"),
                     _cell(summary, "worker_cpu_us_per_event", ".1f"),
                     _cell(summary, "ceiling_events_per_second", ",.0f"),
                     _cell(summary, "worker_vs_ceiling", ".1%"),
                     _cell(summary, "worker_peak_rss_mb", ".0f"),
                     _cell(summary, "b_fcalls", ",.0f"),
                     _cell(summary, "b_server_cpu_seconds", ".2f"),
                     "DISTURBED" if summary["disturbed"] else ""])
    print(table(["layout", "events/s", "CPU µs/event", "ceiling ev/s", "worker/ceiling",
                 "RSS MB", "b FCALLs", "b server CPU s", ""], rows))
    titles = {layout.name: layout.title for layout in LAYOUTS}
    for layout in LAYOUTS:
        for ratio in ratios[layout.name]:
            print(f"{layout.title}: {ratio['events_per_second']:.2f}x "
                  f"{titles[ratio['against']]} events/s, {ratio['cpu_per_event']:.2f}x "
                  f"CPU/event ({ratio['shows']})")
